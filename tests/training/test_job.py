"""The job without files: ``train(data, config)`` gives back what ``run_training`` saves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from recsys.artifact import load_artifact, save_artifact
from recsys.config import resolve_train_config
from recsys.data.prepared import Channels, prepare_data
from recsys.data.synthetic import SyntheticData, write_channels
from recsys.training.job import train
from tests.conftest import FAST_HYPERPARAMETERS


def _files_under(root: Path) -> set[Path]:
    return {Path(folder) / name for folder, _, names in os.walk(root) for name in names}


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("recsys.evaluation.evaluate.draw_charts", lambda report: {})


def _channels(root: Path, data: SyntheticData) -> Channels:
    write_channels(data, root)
    return Channels(train=root / "train", items=root / "items", users=root / "users")


def test_train_writes_nothing_and_returns_the_artifact_and_its_report(
    tmp_path: Path, tiny_data: SyntheticData
) -> None:
    config = resolve_train_config(FAST_HYPERPARAMETERS)
    data = prepare_data(_channels(tmp_path / "data", tiny_data), config)
    before = _files_under(tmp_path)

    outcome = train(data, config)

    assert _files_under(tmp_path) == before
    assert outcome.artifact is not None and outcome.report is not None
    assert outcome.artifact.metrics is outcome.metrics
    assert len(outcome.records) == outcome.metrics["epochs_run"] == 2
    assert outcome.report["title"] == "recsys evaluation report: validation"
    assert outcome.report["num_users"] == outcome.metrics["validation"]["num_users"]
    # The artifact is the model that was evaluated: saved and loaded, it scores as it did in memory.
    save_artifact(outcome.artifact, tmp_path / "model")
    loaded = load_artifact(tmp_path / "model")
    assert loaded.users.ids == data.users.ids and loaded.model_config == outcome.artifact.model_config
    for name, tensor in outcome.artifact.state_dict.items():
        assert torch.equal(loaded.state_dict[name], tensor), name


def test_a_pretrained_neumf_starts_from_its_trained_gmf_and_mlp(
    tmp_path: Path, tiny_data: SyntheticData, caplog: pytest.LogCaptureFixture
) -> None:
    config = resolve_train_config(
        {**FAST_HYPERPARAMETERS, "model": "neumf", "pretrain": "true", "epochs": "1"}
    )
    data = prepare_data(_channels(tmp_path / "data", tiny_data), config)

    with caplog.at_level("INFO"):
        outcome = train(data, config)

    assert outcome.artifact is not None and outcome.artifact.model_config.kind == "neumf"
    assert "pretraining gmf for NeuMF" in caplog.text and "pretraining mlp for NeuMF" in caplog.text
    assert outcome.metrics["validation"]["ndcg@10"] > 0
