"""``recsys evaluate`` on a saved model: the device it runs on and the test table it reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from recsys.cli import main
from recsys.data.synthetic import SyntheticData
from recsys.errors import UserError
from recsys.evaluation.offline import evaluate_saved_model
from recsys.evaluation.report import REPORT_JSON
from recsys.training.artifact import load_artifact, save_artifact
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
