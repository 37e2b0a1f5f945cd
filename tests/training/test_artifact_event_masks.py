"""``seen_event_masks.npy``: every event type of each stored pair, optional and checked at load.

The artifact of ``tests.training.test_artifact._artifact`` has three stored pairs; here they get
event codes 1 (click) and 2 (purchase) and their bitmasks (bit c: code c).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.artifact import ArtifactError, load_artifact, save_artifact
from tests.training.test_artifact import _artifact

LATEST = np.array([1, 2, 1], dtype=np.int16)  # click, purchase, click
# The first pair was bought, then clicked; the second only bought; the third only clicked.
MASKS = np.array([0b110, 0b100, 0b010], dtype=np.uint8)


def test_event_masks_round_trip_in_their_own_type(tmp_path: Path) -> None:
    artifact = _artifact()
    artifact.seen_events, artifact.seen_event_masks = LATEST, MASKS
    save_artifact(artifact, tmp_path / "model")

    loaded = load_artifact(tmp_path / "model")

    assert loaded.seen_event_masks is not None
    assert loaded.seen_event_masks.dtype == np.uint8
    assert loaded.seen_event_masks.tolist() == MASKS.tolist()


def test_an_artifact_without_event_masks_loads_without_them(tmp_path: Path) -> None:
    artifact = _artifact()
    artifact.seen_events = LATEST
    save_artifact(artifact, tmp_path / "model")

    loaded = load_artifact(tmp_path / "model")

    assert loaded.seen_events is not None and loaded.seen_event_masks is None


@pytest.mark.parametrize(
    ("events", "masks", "problem"),
    [
        (LATEST, MASKS[:2], r"seen_event_masks\.npy holds 2 rows, seen_items\.npy 3"),
        (LATEST, np.stack([MASKS, MASKS], axis=1), r"seen_event_masks\.npy is an array of shape \(3, 2\)"),
        (LATEST, MASKS.astype(np.int8), r"seen_event_masks\.npy must hold unsigned bitmasks, it holds int8"),
        (None, MASKS, r"seen_event_masks\.npy comes without seen_events\.npy"),
        (np.array([1, 2, 9], dtype=np.int16), MASKS, r"event codes outside the 8 bits of seen_event_masks"),
        # The third pair's latest event is a click, but its mask says it was only ever bought.
        (LATEST, np.array([0b110, 0b100, 0b100], dtype=np.uint8), r"lacks the latest event type"),
    ],
    ids=["short", "two-dimensional", "signed", "without-events", "code-past-the-bits", "latest-missing"],
)
def test_event_masks_that_disagree_with_the_seen_arrays_are_named(
    tmp_path: Path, events: np.ndarray | None, masks: np.ndarray, problem: str
) -> None:
    artifact = _artifact()
    artifact.seen_events, artifact.seen_event_masks = events, masks
    save_artifact(artifact, tmp_path / "model")

    with pytest.raises(ArtifactError, match=problem) as caught:
        load_artifact(tmp_path / "model")

    assert "inconsistent" in str(caught.value)
