"""``recsys evaluate`` on a saved model: the device it runs on and the test table it reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from recsys.artifact import load_artifact, save_artifact
from recsys.cli import main
from recsys.data.io import write_table
from recsys.data.synthetic import SyntheticData
from recsys.errors import DataError, UserError
from recsys.evaluation.offline import evaluate_saved_model
from recsys.evaluation.report import REPORT_JSON
from tests.serving.trained_model import trained_tree

HERE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data) / "model"


@pytest.fixture(scope="module")
def cuda_model_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model, as if its training job had run with ``device=cuda``: saved again through the
    artifact API, so that its manifest's checksums match the rewritten ``train_config.json``."""
    artifact = load_artifact(model_dir)
    artifact.train_config = {**artifact.train_config, "device": "cuda"}
    directory = tmp_path_factory.mktemp("trained_on_cuda") / "model"
    save_artifact(artifact, directory)
    return directory


@pytest.fixture(scope="module")
def test_file(tiny_data: SyntheticData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("held_out") / "test.csv"
    tiny_data.interactions.sort_values("timestamp").groupby("user_id").tail(2).to_csv(path, index=False)
    return path


def _accuracy(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: value for name, value in metrics.items() if isinstance(value, float)}


def test_a_model_trained_on_cuda_evaluates_on_this_machines_device(
    model_dir: Path, cuda_model_dir: Path, test_file: Path, tmp_path: Path
) -> None:
    assert load_artifact(cuda_model_dir).train_config["device"] == "cuda"

    on_cpu = evaluate_saved_model(cuda_model_dir, test_file, repeats="count", device="cpu")
    by_default = evaluate_saved_model(cuda_model_dir, test_file, repeats="count", report_dir=tmp_path)

    reference = evaluate_saved_model(model_dir, test_file, repeats="count", device="cpu")
    assert _accuracy(on_cpu) == _accuracy(reference)
    assert by_default["ndcg@10"] == pytest.approx(reference["ndcg@10"], abs=1e-6)
    report = json.loads((tmp_path / REPORT_JSON).read_text(encoding="utf-8"))
    assert report["details"]["device"] == HERE  # auto: this machine's choice, not the job's
    assert report["details"]["loss"] == load_artifact(cuda_model_dir).metrics["loss"]


def test_evaluate_takes_its_device_from_the_command_line(
    cuda_model_dir: Path, test_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--model-dir", str(cuda_model_dir), "--test", str(test_file), "--repeats", "count"]

    code = main([*args, "--json", "--device", "cpu"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    assert 0.0 <= printed["ndcg@10"] <= 1.0
    assert printed["evaluated_interactions"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_user_error(model_dir: Path, test_file: Path) -> None:
    with pytest.raises(UserError, match="--device cuda, but no CUDA device is visible"):
        evaluate_saved_model(model_dir, test_file, device="cuda")


# The test table: read by the validation channel's rules, from one file or a directory of parts.


@pytest.fixture(scope="module")
def latest(tiny_data: SyntheticData) -> pd.DataFrame:
    return tiny_data.interactions.sort_values("timestamp").groupby("user_id").tail(2)


def test_a_directory_of_parts_in_several_formats_evaluates_like_one_file(
    model_dir: Path, latest: pd.DataFrame, test_file: Path, tmp_path: Path
) -> None:
    parts = tmp_path / "test"
    third = len(latest) // 3
    write_table(latest.iloc[:third], parts / "part-0.parquet")
    write_table(latest.iloc[third : 2 * third], parts / "part-1.jsonl.gz")
    iso = latest.iloc[2 * third :].assign(
        timestamp=pd.to_datetime(latest["timestamp"].iloc[2 * third :], unit="s", utc=True).dt.strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    )
    write_table(iso, parts / "part-2.csv")

    from_parts = evaluate_saved_model(model_dir, parts, repeats="count", device="cpu")
    from_file = evaluate_saved_model(model_dir, test_file, repeats="count", device="cpu")

    assert from_parts == from_file
    assert from_file["test_interactions"] == len(latest.drop_duplicates(["user_id", "item_id"]))


def test_unknown_users_and_items_are_skipped_and_counted_once_per_pair(
    model_dir: Path, latest: pd.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ghosts = pd.concat(
        [
            latest.iloc[[0, 0]].assign(user_id="ghost-user"),  # one pair, twice
            latest.iloc[[1]].assign(item_id="ghost-item"),
        ]
    )
    path = tmp_path / "with_ghosts.csv"
    write_table(pd.concat([latest, ghosts]), path)
    known = len(latest.drop_duplicates(["user_id", "item_id"]))

    with caplog.at_level("WARNING", logger="recsys.evaluation.offline"):
        metrics = evaluate_saved_model(model_dir, path, repeats="count", device="cpu")

    assert metrics["skipped_interactions"] == 2
    assert metrics["test_interactions"] == metrics["evaluated_interactions"] == known
    assert f"2 of {known + 2} test interactions name an unknown user or item and are skipped" in caplog.text


def test_repeats_of_training_pairs_are_dropped_or_counted(model_dir: Path, test_file: Path) -> None:
    # The shared model trained on every interaction: each test row repeats a training pair.
    counted = evaluate_saved_model(model_dir, test_file, repeats="count", device="cpu")
    with pytest.raises(DataError, match=re.escape(f"{test_file}: every one of its")) as raised:
        evaluate_saved_model(model_dir, test_file, device="cpu")

    assert counted["repeat_interactions"] == counted["test_interactions"] > 0
    assert "Is this the training data?" in str(raised.value)


def test_a_bad_value_in_the_test_table_names_its_file(model_dir: Path, tmp_path: Path) -> None:
    parts = tmp_path / "test"
    write_table(pd.DataFrame({"user_id": ["u0001"], "item_id": ["i0001"], "timestamp": [5]}), parts / "a.csv")
    bad = parts / "b.jsonl"
    bad.write_text('{"user_id": "u0001", "item_id": "i0002", "timestamp": "yesterday"}\n')
    nobody = tmp_path / "nobody.csv"
    write_table(pd.DataFrame({"user_id": ["ghost"], "item_id": ["i0001"], "timestamp": [5]}), nobody)

    with pytest.raises(DataError, match=re.escape(f"'yesterday' (1 such rows), the first in {bad}")):
        evaluate_saved_model(model_dir, parts, device="cpu")
    with pytest.raises(DataError, match=re.escape(f"{nobody}: no test interaction names a user and an item")):
        evaluate_saved_model(model_dir, nobody, device="cpu")


@pytest.fixture(scope="module")
def context_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data, {"context_columns": "device"}) / "model"


def test_a_model_with_context_columns_reads_them_like_its_validation_channel(
    context_model_dir: Path, latest: pd.DataFrame, tmp_path: Path
) -> None:
    with_device, without = tmp_path / "with_device.csv", tmp_path / "without_device.csv"
    write_table(latest, with_device)
    write_table(latest.drop(columns="device"), without)

    metrics = evaluate_saved_model(context_model_dir, with_device, repeats="count", device="cpu")
    with pytest.raises(DataError, match="the context column\\(s\\) 'device' named by the hyperparameter"):
        evaluate_saved_model(context_model_dir, without, repeats="count", device="cpu")

    assert metrics["evaluated_interactions"] == len(latest.drop_duplicates(["user_id", "item_id"]))
