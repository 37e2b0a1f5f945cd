"""The feature-lift benchmark's split, training trees and lift arithmetic (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.features import ALL_LABEL, ROWS, Row, lifts, synthetic_split, table, write_tree
from benchmarks.quality import DEFAULT_LABEL, variant_deltas
from recsys.data.synthetic import SyntheticSpec, generate


@pytest.fixture(scope="module")
def split():  # type: ignore[no-untyped-def]
    return synthetic_split(SyntheticSpec(num_users=60, num_items=40, seed=3))


def test_the_test_set_is_each_users_latest_interaction(split) -> None:  # type: ignore[no-untyped-def]
    assert split.test["user_id"].is_unique
    latest_train = split.train.groupby("user_id")["timestamp"].max()
    test = split.test.set_index("user_id")["timestamp"]
    assert (test >= latest_train.loc[test.index]).all()
    assert len(split.train) + len(split.test) == len(
        generate(SyntheticSpec(num_users=60, num_items=40, seed=3)).interactions
    )


def test_a_row_without_event_types_or_attributes_gets_neither(split, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    row = next(r for r in ROWS if r.label == "ids and history only")
    paths, test_file = write_tree(tmp_path / "job", split, row)

    train_files = list(paths.channel_dir("train").iterdir())
    assert "event_type" not in train_files[0].read_text().splitlines()[0]
    assert "event_type" not in test_file.read_text().splitlines()[0]
    assert not paths.channel_dir("users").exists()
    assert json.loads(paths.hyperparameters_file.read_text()) == {"time_features": "false"}

    full, full_test = write_tree(tmp_path / "job", split, ROWS[0])
    assert "event_type" in full_test.read_text().splitlines()[0]
    assert full.channel_dir("users").exists()
    assert json.loads(full.hyperparameters_file.read_text()) == {"context_columns": "device"}


def test_lifts_are_differences_from_all_features_in_its_standard_errors() -> None:
    results = {
        ALL_LABEL: {"ndcg": 0.30, "ndcg_se": 0.02, "hr": 0.5, "training_seconds": 10.0},
        "no device context": {"ndcg": 0.25, "ndcg_se": 0.02, "hr": 0.4, "training_seconds": 9.0},
        "no event types": {"ndcg": 0.31, "ndcg_se": 0.02, "hr": 0.5, "training_seconds": 9.0},
    }

    out = lifts(results)

    assert out["no device context"] == pytest.approx({"difference": 0.05, "standard_errors": 2.5})
    assert out["no event types"] == pytest.approx({"difference": -0.01, "standard_errors": -0.5})
    text = table(results)
    assert "+0.0500 (+2.5 SE)" in text and "-0.0100 (-0.5 SE)" in text
    assert table(results, markdown=True).splitlines()[1].startswith("|---|")


def test_every_row_has_its_own_label() -> None:
    assert len({row.label for row in ROWS}) == len(ROWS)
    assert ROWS[0] == Row(ALL_LABEL, {"context_columns": "device"})


def test_a_variant_that_costs_more_than_one_standard_error_says_so() -> None:
    results = {
        "protocols": {
            "a": {
                "models": {
                    DEFAULT_LABEL: {"ndcg@10": 0.10, "ndcg@10_se": 0.01},
                    "no time": {"ndcg@10": 0.095, "ndcg@10_se": 0.01},
                    "worse": {"ndcg@10": 0.08, "ndcg@10_se": 0.01},
                }
            }
        }
    }

    lines = variant_deltas(results, [DEFAULT_LABEL, "no time", "worse"])

    assert lines == [
        f"a: no time - {DEFAULT_LABEL} = -0.0050 NDCG@10 (-0.50 SE): within one standard error",
        f"a: worse - {DEFAULT_LABEL} = -0.0200 NDCG@10 (-2.00 SE): more than one standard error",
    ]
