"""``validation_users``: validation on a fixed sample of held-out users, reported as such."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recsys.data.interactions import IndexedInteractions
from recsys.data.synthetic import SyntheticData
from recsys.evaluation.held_out import sample_validation_users
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import train
from tests.conftest import FAST_HYPERPARAMETERS, TreeBuilder


def _held(num_users: int) -> IndexedInteractions:
    users = np.repeat(np.arange(num_users), 2)
    return IndexedInteractions.from_pairs(users, np.arange(len(users)) % 7, num_users=num_users, num_items=7)


def test_the_sample_is_fixed_by_the_seed_and_keeps_whole_users() -> None:
    held = _held(50)
    first, again = sample_validation_users(held, 10, seed=3), sample_validation_users(held, 10, seed=3)
    other = sample_validation_users(held, 10, seed=4)

    kept = np.flatnonzero(np.diff(first.indptr) > 0)
    assert len(kept) == 10 and np.array_equal(first.users, again.users)
    assert not np.array_equal(first.users, other.users)
    assert (np.diff(first.indptr)[kept] == 2).all()  # every interaction of a chosen user
    assert sample_validation_users(held, 0, seed=3) is held
    assert sample_validation_users(held, 50, seed=3) is held


def test_a_job_validates_on_the_sample_and_says_so(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    base = make_tree(
        tmp_path / "opt_ml", tiny_data, hyperparameters={**FAST_HYPERPARAMETERS, "validation_users": "40"}
    )
    assert train(ContainerPaths(base)) == 0
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert metrics["validation_users"] == {
        "evaluated": 40,
        "held_out": 120,
        "sampled": True,
        "seed": 42,
    }  # the default seed
    assert metrics["validation"]["num_users"] == 40
    # The page a person reads says so too.
    report = json.loads((base / "output" / "data" / "report.json").read_text())
    assert "a fixed random sample of 40 of its 120 users (validation_users)" in report["source"]
