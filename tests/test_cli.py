"""``recsys recommend`` as ``make run`` calls it: stored users, a fresh-event request and context.

The arguments are read from the Makefile's ``run`` target, so that what ``make run`` shows is what
is tested; the model is the session's tiny one, trained with the same ``context_columns=device``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from recsys.artifact import load_artifact
from recsys.cli import main
from recsys.data.synthetic import SyntheticData
from tests.serving.trained_model import trained_tree

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def _make_run_recommend_args() -> list[str]:
    """The arguments after ``recsys recommend`` in the Makefile's ``run`` recipe."""
    recipe = MAKEFILE.read_text(encoding="utf-8").split("\nrun:", 1)[1].split("\n\n", 1)[0]
    command = re.sub(r"\\\n\s*", " ", recipe)  # continuation lines joined
    match = re.search(r"\$\(BIN\)/recsys recommend (.*)", command)
    assert match, "the Makefile's run target no longer calls recsys recommend"
    return shlex.split(match.group(1))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data, {"context_columns": "device"}) / "model"


def test_make_runs_fresh_event_request_names_its_stored_and_fresh_events(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _make_run_recommend_args()
    assert "--fresh" in args and "--context" in args, args
    fresh_user, _, fresh_items = args[args.index("--fresh") + 1].partition("=")
    fresh = fresh_items.split(",")
    args = [str(model_dir) if a == "$(LOCAL_ML)/model" else a for a in args]
    artifact = load_artifact(model_dir)
    user = artifact.users.get(fresh_user)
    stored = set(artifact.seen_items[artifact.seen_indptr[user] : artifact.seen_indptr[user + 1]].tolist())
    # Merged by time: the fresh events are the latest, an item in both counts once (as fresh), and
    # the latest history_length events are used.
    fresh_indices = set(np.asarray(artifact.items.lookup(fresh)).tolist())
    expected_stored = min(len(stored - fresh_indices), artifact.model_config.history_length - len(fresh))

    code = main(["recommend", *args])

    out = capsys.readouterr().out
    assert code == 0
    counts = f"({expected_stored} stored and {len(fresh)} fresh events)"
    heading = f"user {fresh_user} after {fresh_items} just now {counts}:"
    assert heading in out.splitlines(), out
    assert "unknown context" not in out  # device=tv is a value the model knows
    k = int(args[args.index("--k") + 1])
    blocks = re.split(r"^\S.*:$", out, flags=re.M)[1:]
    assert len(blocks) == 4  # two stored users, the fresh request, the new user's history
    assert all(len(block.strip().splitlines()) == k for block in blocks)


def test_a_context_value_the_model_never_saw_is_named(
    model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["recommend", "--model-dir", str(model_dir), "--fresh", "u0001=i0017", "--context", "device=fridge"]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "fresh events) (unknown context: device=fridge):" in out, out
