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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from recsys.artifact import load_artifact
from recsys.data.io import write_table
from recsys.data.synthetic import SyntheticData
from recsys.sagemaker.metric_definitions import METRIC_DEFINITIONS
from tests.conftest import TreeBuilder

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


def _recsys(
    args: Sequence[str], *, base_dir: Path | None = None, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SAGEMAKER_BASE_DIR", None)
    env["PYTHONPATH"] = str(REPO_ROOT)  # `python -m recsys` from any working directory
    if base_dir is not None:
        env["SAGEMAKER_BASE_DIR"] = str(base_dir)
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        cwd=cwd,
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
    # A title per item: text the model ignores (id-like) but a person reads recommendations by.
    titled = tiny_data.items.assign(title=["Title of " + i for i in tiny_data.items["item_id"]])
    data = SyntheticData(interactions=tiny_data.interactions, items=titled, users=tiny_data.users)
    base = make_tree(tmp_path_factory.mktemp("opt_ml"), data, train=train, hyperparameters=HYPERPARAMETERS)
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
    test = pd.read_csv(job.test_file, dtype=str, keep_default_na=False)
    ghost = test.iloc[[0]].assign(user_id="ghost-user")
    pd.concat([test, ghost]).to_csv(test_file, index=False)

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


# --- recsys evaluate: rows the model can never recommend ------------------------------------------


def _evaluate_json(job: Job, test_file: Path, *extra: str) -> dict[str, Any]:
    result = _recsys(
        ["evaluate", "--model-dir", str(job.model_dir), "--test", str(test_file), "--json", *extra]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout))


def test_evaluate_drops_test_rows_already_in_training_and_says_how_many(job: Job, tmp_path: Path) -> None:
    repeats = job.train.groupby("user_id").head(2)  # two training pairs of every user, again
    test_file = tmp_path / "with_repeats.csv"
    write_table(pd.concat([pd.read_csv(job.test_file), repeats]), test_file)
    num_latest = len(pd.read_csv(job.test_file))

    dropped = _evaluate_json(job, test_file)
    counted = _evaluate_json(job, test_file, "--repeats", "count")
    clean = _evaluate_json(job, job.test_file)

    assert dropped["repeats"] == "drop" and counted["repeats"] == "count"
    for metrics in (dropped, counted):
        assert metrics["test_interactions"] == num_latest + len(repeats)
        assert metrics["repeat_interactions"] == len(repeats)
    assert dropped["evaluated_interactions"] == num_latest
    assert counted["evaluated_interactions"] == num_latest + len(repeats)
    # Dropped, the repeats change nothing; counted, they are relevant items never ranked: misses.
    assert dropped["ndcg@10"] == pytest.approx(clean["ndcg@10"])
    assert dropped["recall@10"] == pytest.approx(clean["recall@10"])
    assert counted["recall@10"] < clean["recall@10"] or clean["recall@10"] == 0.0
    # Two thirds of the rows are repeats: most of the test set overlaps training.
    for metrics in (dropped, counted):
        assert any("repeat an item the user already has" in w for w in metrics["warnings"])
    assert not any("repeat" in w for w in clean["warnings"])


def test_evaluate_on_the_training_data_is_an_error_not_zeros(job: Job, tmp_path: Path) -> None:
    train_file = tmp_path / "train.csv"
    write_table(job.train, train_file)

    result = _recsys(["evaluate", "--model-dir", str(job.model_dir), "--test", str(train_file)])
    counted = _evaluate_json(job, train_file, "--repeats", "count")

    assert result.returncode == 1
    assert "Is this the training data?" in result.stderr
    assert "--repeats count" in result.stderr
    assert "Traceback" not in result.stderr
    assert counted["ndcg@10"] == 0.0 and counted["repeat_interactions"] == counted["test_interactions"]
    assert counted["warnings"][0].startswith(f"{len(job.train.drop_duplicates(['user_id', 'item_id']))} of")


def test_evaluate_prints_the_model_beside_most_popular(job: Job) -> None:
    result = _recsys(["evaluate", "--model-dir", str(job.model_dir), "--test", str(job.test_file)])

    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["metric", "model", "most-popular"]
    )
    ndcg = lines[header + 1].split()
    assert ndcg[0] == "ndcg@10" and 0.0 <= float(ndcg[1]) <= 1.0 and 0.0 <= float(ndcg[4]) <= 1.0
    assert any(line.startswith("model vs most-popular on NDCG@10") for line in lines)
    assert lines[0].startswith("test: ") and "0 repeat an item" in lines[0]


# --- recsys recommend: filters, similar items, attributes -----------------------------------------


def _recommended(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.startswith("  ")]


def test_recommend_filters_and_shows_each_items_attributes(job: Job, tiny_data: SyntheticData) -> None:
    user = str(job.train["user_id"].iloc[0])
    genres = tiny_data.items.set_index("item_id")["genres"]
    genre = genres.str.split("|").explode().value_counts().index[0]

    result = _recsys(
        [
            "recommend",
            "--model-dir",
            str(job.model_dir),
            "--user",
            user,
            "--k",
            "4",
            "--filter",
            f"genres={genre}",
        ]
    )

    assert result.returncode == 0, result.stderr[-3000:]
    rows = _recommended(result.stdout)
    assert len(rows) == 4
    for line in [line for line in result.stdout.splitlines() if line.startswith("  ")]:
        item, _, *attributes = line.strip().split("  ")
        shown = dict(a.split("=", 1) for a in attributes)
        assert next(iter(shown)) == "title" and shown["title"] == f"Title of {item}"
        assert genre in genres[item].split("|")
        assert shown["genres"] == genres[item]
        assert float(shown["release_year"]) == tiny_data.items.set_index("item_id").loc[item, "release_year"]


def test_recommend_similar_items_with_a_numeric_range_and_exclusions(
    job: Job, tiny_data: SyntheticData
) -> None:
    items = tiny_data.items.set_index("item_id")
    anchor = str(items.index[0])
    low = float(items["release_year"].median())

    result = _recsys(
        ["recommend", "--model-dir", str(job.model_dir), "--similar", anchor, "--k", "5",
         "--filter", f"release_year={low:g}:", "--exclude", str(items.index[1])]
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"items similar to {anchor} (title=Title of {anchor}  genres=" in result.stdout
    rows = _recommended(result.stdout)
    assert 1 <= len(rows) <= 5
    for fields in rows:
        assert fields[0] != anchor and fields[0] != str(items.index[1])
        assert items.loc[fields[0], "release_year"] >= low


def test_recommend_with_a_bad_filter_is_one_line_and_exit_1(job: Job) -> None:
    for bad, expected in (
        ("colour=red", "unknown item attribute 'colour'"),
        ("release_year=soon", "numeric"),
    ):
        result = _recsys(
            ["recommend", "--model-dir", str(job.model_dir), "--similar", "i0001", "--filter", bad]
        )
        assert result.returncode == 1
        assert expected in result.stderr and "Traceback" not in result.stderr


# --- recsys train --train PATH: your own files, the same contract ---------------------------------


def _own_files(root: Path, tiny_data: SyntheticData) -> tuple[Path, Path]:
    """A user's files, outside any SageMaker tree: one interactions file and an items directory."""
    write_table(tiny_data.interactions, root / "mine" / "ratings.csv")
    write_table(tiny_data.items, root / "mine" / "catalogue" / "items.parquet")
    return root / "mine" / "ratings.csv", root / "mine" / "catalogue"


def test_train_lays_out_the_tree_from_your_own_files_and_runs_the_contract(
    tmp_path: Path, tiny_data: SyntheticData
) -> None:
    ratings, catalogue = _own_files(tmp_path, tiny_data)

    result = _recsys(
        ["train", "--train", str(ratings), "--items", str(catalogue),
         "-H", "epochs=1", "-H", "embedding_dim=8", "-H", "sampled_eval_negatives=20"],
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    base = tmp_path / "local" / "opt_ml"  # the default tree, relative to where it runs
    assert (base / "model" / "manifest.json").is_file()
    assert (base / "output" / "success").exists()
    link = base / "input" / "data" / "train" / "ratings.csv"
    assert link.is_symlink() and link.resolve() == ratings.resolve()
    assert (base / "input" / "data" / "items" / "catalogue").resolve() == catalogue.resolve()
    assert not (base / "input" / "data" / "users").exists()
    hyperparameters = json.loads((base / "input" / "config" / "hyperparameters.json").read_text())
    assert hyperparameters == {"epochs": "1", "embedding_dim": "8", "sampled_eval_negatives": "20"}
    assert load_artifact(base / "model").model_config.embedding_dim == 8
    assert "model: local/opt_ml/model" in result.stdout
    assert "recsys recommend --model-dir local/opt_ml/model" in result.stdout

    # Again without --items and with another hyperparameter: nothing of the first run is left over.
    again = _recsys(
        ["train", "--train", str(ratings), "-H", "epochs=1", "-H", "embedding_dim=4"], cwd=tmp_path
    )

    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert not (base / "input" / "data" / "items").exists()
    assert load_artifact(base / "model").model_config.embedding_dim == 4
    assert ratings.is_file() and (catalogue / "items.parquet").is_file()  # the user's files are untouched


def test_train_refuses_to_replace_files_it_did_not_lay_out(tmp_path: Path, tiny_data: SyntheticData) -> None:
    ratings, _ = _own_files(tmp_path, tiny_data)
    base = tmp_path / "tree"
    theirs = base / "input" / "data" / "validation" / "held_out.csv"
    write_table(tiny_data.interactions.head(5), theirs)

    result = _recsys(
        ["train", "--base-dir", str(base), "--train", str(ratings), "-H", "epochs=1"], cwd=tmp_path
    )

    assert result.returncode == 1
    assert str(base / "input" / "data" / "validation") in result.stderr
    assert "refusing to replace" in result.stderr
    assert theirs.is_file() and len(pd.read_csv(theirs)) == 5
    assert not (base / "model").exists()


def test_train_with_a_missing_path_or_hyperparameters_alone_is_one_line(tmp_path: Path) -> None:
    missing = _recsys(["train", "--train", str(tmp_path / "nope.csv")], cwd=tmp_path)
    alone = _recsys(["train", "-H", "epochs=3"], base_dir=tmp_path / "tree", cwd=tmp_path)

    assert missing.returncode == 1 and f"--train: {tmp_path / 'nope.csv'} does not exist." in missing.stderr
    assert alone.returncode == 1 and "give --train" in alone.stderr
    assert not (tmp_path / "local").exists() and not (tmp_path / "tree").exists()
