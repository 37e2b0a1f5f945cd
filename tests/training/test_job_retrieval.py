"""Whether a job ships an item index, and what it records either way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from recsys.artifact import ITEM_INDEX, MANIFEST, ArtifactError, load_artifact
from recsys.config import ConfigError, TrainConfig, resolve_train_config
from recsys.data.synthetic import SyntheticData
from recsys.models.retrieval import IndexReport
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import train
from recsys.serving.engine import Recommender
from tests.conftest import FAST_HYPERPARAMETERS, TreeBuilder


def _run(tmp_path: Path, data: SyntheticData, make_tree: TreeBuilder, **extra: str) -> ContainerPaths:
    base = make_tree(tmp_path / "opt_ml", data, hyperparameters={**FAST_HYPERPARAMETERS, **extra})
    paths = ContainerPaths(base)
    assert train(paths) == 0, paths.failure_file.read_text() if paths.failure_file.exists() else ""
    return paths


def _metrics(paths: ContainerPaths) -> dict[str, Any]:
    return json.loads((paths.output_data_dir / "metrics.json").read_text())


def test_auto_builds_an_index_only_from_the_threshold_on() -> None:
    config = TrainConfig()
    assert (config.retrieval, config.index_min_items, config.min_index_recall) == ("auto", 200_000, 0.95)
    assert not config.wants_index(199_999) and config.wants_index(200_000)
    assert not resolve_train_config({"model": "mlp"}).wants_index(10**6)  # nothing to index
    assert resolve_train_config({"model": "neumf"}).wants_index(10**6)
    assert resolve_train_config({"retrieval": "index"}).wants_index(10)
    assert not resolve_train_config({"retrieval": "exact"}).wants_index(10**7)


def test_an_index_for_an_mlp_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model 'mlp' has no GMF item vectors"):
        resolve_train_config({"model": "mlp", "retrieval": "index"})
    with pytest.raises(ConfigError, match="min_index_recall"):
        resolve_train_config({"min_index_recall": "1.5"})


def test_a_small_catalogue_is_served_exactly_and_the_metrics_say_why(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    paths = _run(tmp_path, tiny_data, make_tree)
    assert _metrics(paths)["retrieval"] == {
        "kind": "exact",
        "reason": "60 items, under index_min_items (200,000)",
    }
    manifest = json.loads((paths.model_dir / MANIFEST).read_text())
    assert ITEM_INDEX not in manifest["files"]
    assert manifest["retrieval"]["index_file"] is None


def test_the_threshold_decides_under_auto(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    paths = _run(tmp_path, tiny_data, make_tree, index_min_items="60")
    assert (paths.model_dir / ITEM_INDEX).is_file()
    assert Recommender.load(paths.model_dir).index is not None


def test_a_refused_index_leaves_an_exact_artifact_and_a_warning(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal itself is ``tune_index``'s (tests/models/test_retrieval.py); here, the job's
    handling of it: no index file, a warning in metrics.json, the endpoint exact."""
    refused = IndexReport(
        items=60, connections=32, construction_breadth=64, search_breadth=None, recall_at_10=0.5,
        recall_by_breadth={"48": 0.5}, sample_users=10, min_recall=0.95, overfetch=4,
        build_seconds=0.1, index_bytes=1,
    )  # fmt: skip
    monkeypatch.setattr("recsys.training.item_index.tune_index", lambda *args, **kwargs: (None, refused))
    paths = _run(tmp_path, tiny_data, make_tree, retrieval="index")
    metrics = _metrics(paths)
    assert metrics["retrieval"]["refused"] is True and metrics["retrieval"]["recall@10"] == 0.5
    assert any(
        "item index was refused (recall@10 0.5000 < min_index_recall 0.95)" in w for w in metrics["warnings"]
    )
    assert not (paths.model_dir / ITEM_INDEX).exists()
    assert Recommender.load(paths.model_dir).index is None


def test_an_index_the_manifest_does_not_describe_refuses_to_load(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    paths = _run(tmp_path, tiny_data, make_tree, retrieval="index")
    manifest_file = paths.model_dir / MANIFEST
    manifest = json.loads(manifest_file.read_text())
    manifest["retrieval"]["search_breadth"] = "wide"
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="'retrieval' has no positive search_breadth"):
        load_artifact(paths.model_dir)
