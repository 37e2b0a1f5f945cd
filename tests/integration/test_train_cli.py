"""End to end through the command line: ``python -m recsys train|evaluate|recommend`` as real processes.

One training job runs once for the module (about ten seconds); the tests read its stdout, its
artifact and its report, then call ``evaluate`` and ``recommend`` on the saved model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from recsys.data.io import write_table
from recsys.data.synthetic import SyntheticData
from recsys.sagemaker.metric_definitions import METRIC_DEFINITIONS
from recsys.training.artifact import load_artifact

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
HYPERPARAMETERS = {
    "epochs": "2",
    "embedding_dim": "8",
    "history_length": "10",
    "sampled_eval_negatives": "20",
    # Not the default: exercises the refit pass and its separate log lines.
    "final_fit": "refit",
}
TIMEOUT_SECONDS = 180

TreeBuilder = Callable[..., Path]  # the ``make_tree`` fixture of tests/conftest.py


def _recsys(args: Sequence[str], *, base_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SAGEMAKER_BASE_DIR", None)
    if base_dir is not None:
        env["SAGEMAKER_BASE_DIR"] = str(base_dir)
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


@dataclass(frozen=True)
class Job:
    base: Path
    train: pd.DataFrame  # the interactions of the train channel
    test_file: Path  # each user's latest interaction, held out of training
    result: subprocess.CompletedProcess[str]

    @property
    def model_dir(self) -> Path:
        return self.base / "model"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData, make_tree: TreeBuilder) -> Job:
    interactions = tiny_data.interactions.sort_values(["user_id", "timestamp"])
    latest = interactions.groupby("user_id").tail(1)
    train = interactions.drop(latest.index)
    base = make_tree(
        tmp_path_factory.mktemp("opt_ml"), tiny_data, train=train, hyperparameters=HYPERPARAMETERS
    )
    test_file = base.parent / "held_out.csv"
    write_table(latest, test_file)

    result = _recsys(["train"], base_dir=base)

    return Job(base, train, test_file, result)


def test_train_exits_0_and_writes_success(job: Job) -> None:
    assert job.result.returncode == 0, job.result.stdout[-3000:] + job.result.stderr[-3000:]
    assert (job.base / "output" / "success").exists()
    assert not (job.base / "output" / "failure").exists()
    for name in ("metrics.json", "learning_curves.json", "learning_curves.png"):
        assert (job.base / "output" / "data" / name).is_file()


def test_artifact_sizes_come_from_the_data(job: Job, tiny_data: SyntheticData) -> None:
    artifact = load_artifact(job.model_dir)
    unique_pairs = len(job.train.drop_duplicates(["user_id", "item_id"]))

    assert artifact.model_config.num_users == len(artifact.users) == job.train["user_id"].nunique()
    # The items channel brings the whole catalogue, items without training interactions included.
    assert artifact.model_config.num_items == len(artifact.items) == len(tiny_data.items)
    assert artifact.seen_indptr.shape == (len(artifact.users) + 1,)
    assert artifact.seen_indptr[-1] == len(artifact.seen_items) == unique_pairs


def test_every_metric_definition_matches_the_log(job: Job) -> None:
    lines = job.result.stdout.splitlines()

    for definition in METRIC_DEFINITIONS:
        pattern = re.compile(definition["Regex"])
        values = [float(m.group(1)) for line in lines if (m := pattern.search(line))]
        assert values, f"{definition['Name']}: {definition['Regex']!r} matches no line of stdout"
        assert all(v >= 0 for v in values)
        if definition["Name"].startswith("validation:"):
            assert all(0.0 <= v <= 1.0 for v in values)


def test_epoch_lines_match_epochs_run(job: Job) -> None:
    metrics = json.loads((job.base / "output" / "data" / "metrics.json").read_text())
    epoch_lines = [line for line in job.result.stdout.splitlines() if re.search(r"(?:^|\s)epoch=\d+ ", line)]

    assert len(epoch_lines) == metrics["epochs_run"] == 2
    # The refit pass logs its own lines, which the train:loss regex must not count.
    refit_lines = [line for line in job.result.stdout.splitlines() if "refit_epoch=" in line]
    assert len(refit_lines) == metrics["best_epoch"]


def test_evaluate_prints_json_metrics(job: Job) -> None:
    result = _recsys(["evaluate", "--model-dir", str(job.model_dir), "--test", str(job.test_file), "--json"])

    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert 0.0 <= metrics["ndcg@10"] <= 1.0
    assert 0.0 <= metrics["hr@10"] <= 1.0
    assert metrics["num_users"] == job.train["user_id"].nunique()
    assert metrics["skipped_interactions"] == 0


def test_evaluate_json_stays_parseable_when_rows_are_skipped(job: Job, tmp_path: Path) -> None:
    """The warning about skipped rows is a log line: it must not land in the JSON on stdout."""
    test_file = tmp_path / "with_ghost.csv"
    test_file.write_text(job.test_file.read_text() + "ghost-user,i0001,5,1700000000\n")

    result = _recsys(["evaluate", "--model-dir", str(job.model_dir), "--test", str(test_file), "--json"])

    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["skipped_interactions"] == 1
    assert metrics["num_users"] == job.train["user_id"].nunique()
    assert "unknown user or item" in result.stderr


def test_recommend_prints_k_unseen_items(job: Job, tiny_data: SyntheticData) -> None:
    user = str(job.train["user_id"].iloc[0])

    result = _recsys(["recommend", "--model-dir", str(job.model_dir), "--user", user, "--k", "5"])

    assert result.returncode == 0, result.stderr[-3000:]
    item_lines = [line.split() for line in result.stdout.splitlines() if line.startswith("  ")]
    items = [fields[0] for fields in item_lines]
    assert f"user {user}:" in result.stdout
    assert len(items) == 5
    assert len(set(items)) == 5
    assert set(items) <= set(tiny_data.items["item_id"])
    assert not set(items) & set(job.train.loc[job.train["user_id"] == user, "item_id"])
    scores = [float(fields[1]) for fields in item_lines]
    assert scores == sorted(scores, reverse=True)


def test_train_without_a_train_channel_exits_1(tmp_path: Path, make_tree: TreeBuilder) -> None:
    base = make_tree(tmp_path, hyperparameters=HYPERPARAMETERS)

    result = _recsys(["train"], base_dir=base)

    assert result.returncode == 1
    failure = (base / "output" / "failure").read_text(encoding="utf-8")
    assert "'train'" in failure
    assert str(base / "input" / "data" / "train") in failure
    assert not (base / "output" / "success").exists()


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_help_exits_0(args: list[str]) -> None:
    result = _recsys(args)

    assert result.returncode == 0
    assert "usage: recsys" in result.stdout
    if args[0] == "train":
        assert "SAGEMAKER_BASE_DIR" in result.stdout
