"""The model artifact: save, load, verify, and refuse anything incomplete or modified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from recsys.data.features import (
    FeatureDeclaration,
    FeatureEncoding,
    empty_arrays,
    encode_attributes,
    feature_cardinalities,
)
from recsys.data.vocab import Vocabulary
from recsys.models.ncf import NCF, FeatureSpec, ModelConfig
from recsys.training.artifact import (
    MANIFEST,
    Artifact,
    ArtifactError,
    load_artifact,
    save_artifact,
    verify_artifact,
)

CPU = torch.device("cpu")


def _artifact() -> Artifact:
    users = Vocabulary.build(["ann", "bob", "cid"])
    items = Vocabulary.build(["i1", "i2", "i3", "i4"])
    item_encoding, item_arrays = encode_attributes(
        pa.table({"item_id": ["i1", "i2", "i3"], "genre": ["A", "B", "A"], "price": [1.0, 2.0, 4.0]}),
        id_column="item_id",
        vocabulary=items,
        declaration=FeatureDeclaration(),
        channel="items",
    )
    config = ModelConfig(
        kind="neumf",
        num_users=len(users),
        num_items=len(items),
        embedding_dim=4,
        mlp_layers=(8, 4),
        history_length=3,
        item_features=FeatureSpec(
            len(items), feature_cardinalities(item_encoding), len(item_encoding.numeric)
        ),
    )
    torch.manual_seed(0)
    model = NCF(config)
    for encoder in (model.gmf_encoder, model.mlp_encoder):
        assert encoder is not None and encoder.item_attributes is not None
        encoder.item_attributes.load_arrays(
            [torch.from_numpy(a) for a in item_arrays.categorical], torch.from_numpy(item_arrays.numeric)
        )
    torch.nn.init.normal_(model.item_bias.weight)
    return Artifact(
        model_config=config,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        users=users,
        items=items,
        item_encoding=item_encoding,
        item_arrays=item_arrays,
        user_encoding=FeatureEncoding.empty("user_id"),
        user_arrays=empty_arrays(len(users)),
        seen_indptr=np.array([0, 2, 3, 3]),
        seen_items=np.array([0, 2, 1]),
        item_popularity=np.array([1, 1, 1, 0]),
        train_config={"model": "neumf", "epochs": 1},
        metrics={"validation": {"ndcg@10": 0.5}},
        fingerprint={"train": "abc123"},
    )


def _predict(artifact: Artifact) -> torch.Tensor:
    model = artifact.build_model(CPU)
    users = torch.tensor([0, 1, 2, 3])  # 3 is the unknown user
    history = torch.tensor([[2, 0, 0], [1, 0, 0], [0, 0, 0], [3, 1, 0]])
    mask = history > 0
    with torch.no_grad():
        logits: torch.Tensor = model(users, history, mask, torch.arange(4).repeat(4, 1))
    return logits


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Artifact, Path]:
    artifact = _artifact()
    model_dir = tmp_path / "model"
    save_artifact(artifact, model_dir)
    return artifact, model_dir


def test_save_then_load_gives_the_same_artifact_and_predictions(saved: tuple[Artifact, Path]) -> None:
    artifact, model_dir = saved
    loaded = load_artifact(model_dir)
    assert loaded.model_config == artifact.model_config
    assert loaded.users == artifact.users and loaded.items == artifact.items
    assert loaded.item_encoding == artifact.item_encoding
    assert loaded.user_encoding == artifact.user_encoding
    np.testing.assert_array_equal(loaded.item_arrays.categorical[0], artifact.item_arrays.categorical[0])
    np.testing.assert_array_equal(loaded.item_arrays.numeric_raw, artifact.item_arrays.numeric_raw)
    assert loaded.user_arrays.numeric.shape == (3, 0)
    assert loaded.seen_indptr.tolist() == [0, 2, 3, 3]
    assert loaded.seen_items.tolist() == [0, 2, 1]
    assert loaded.seen_items.dtype == np.int32
    assert loaded.item_popularity.tolist() == [1, 1, 1, 0]
    assert (loaded.train_config, loaded.metrics, loaded.fingerprint) == (
        artifact.train_config,
        artifact.metrics,
        artifact.fingerprint,
    )
    before, after = _predict(artifact), _predict(loaded)
    assert torch.equal(before, after)
    assert torch.isfinite(after).all()


def test_the_manifest_lists_every_file_with_its_checksum(saved: tuple[Artifact, Path]) -> None:
    _, model_dir = saved
    manifest = verify_artifact(model_dir)
    on_disk = {p.name for p in model_dir.iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert {"model.pt", "model_config.json", "users.json", "items.json", "item_categorical_0.npy"} <= on_disk
    assert all(len(digest) == 64 for digest in manifest["files"].values())


def test_no_staging_directory_is_left(saved: tuple[Artifact, Path]) -> None:
    artifact, model_dir = saved
    save_artifact(artifact, model_dir)  # saving again over an existing artifact
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".staging")]
    load_artifact(model_dir)


def test_model_weights_load_without_pickle(saved: tuple[Artifact, Path]) -> None:
    artifact, model_dir = saved
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    assert set(state) == set(artifact.state_dict)
    assert all(torch.equal(state[k], artifact.state_dict[k]) for k in state)
    config = json.loads((model_dir / "model_config.json").read_text(encoding="utf-8"))
    assert ModelConfig.from_json(config) == artifact.model_config


def test_a_missing_manifest_means_incomplete(saved: tuple[Artifact, Path]) -> None:
    _, model_dir = saved
    (model_dir / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_artifact(model_dir)


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["metrics.json", "model.pt", "item_numeric.npy"])
def test_a_file_modified_after_saving_is_corrupt(saved: tuple[Artifact, Path], name: str) -> None:
    _, model_dir = saved
    with (model_dir / name).open("ab") as handle:
        handle.write(b" ")
    with pytest.raises(ArtifactError, match=rf"corrupt: {name} does not match its checksum"):
        load_artifact(model_dir)


def test_a_deleted_file_is_named(saved: tuple[Artifact, Path]) -> None:
    _, model_dir = saved
    (model_dir / "users.json").unlink()
    with pytest.raises(ArtifactError, match=r"incomplete: users\.json is missing"):
        load_artifact(model_dir)


def test_an_unknown_format_is_refused(saved: tuple[Artifact, Path]) -> None:
    _, model_dir = saved
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    manifest["format"] = 99
    (model_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ArtifactError, match="format 99"):
        load_artifact(model_dir)


def test_vocabularies_that_disagree_with_the_model_are_refused(tmp_path: Path) -> None:
    artifact = _artifact()
    artifact.users = Vocabulary.build(["ann", "bob"])
    save_artifact(artifact, tmp_path)
    with pytest.raises(ArtifactError, match="inconsistent"):
        load_artifact(tmp_path)


def test_item_labels_round_trip_and_are_optional(tmp_path: Path) -> None:
    artifact = _artifact()
    titles = pa.table({"title": ["One", None, "Three", "Four"]})
    artifact.item_labels = titles
    save_artifact(artifact, tmp_path / "labelled")
    loaded = load_artifact(tmp_path / "labelled")
    assert loaded.item_labels is not None and loaded.item_labels.equals(titles)
    assert "item_labels.parquet" in verify_artifact(tmp_path / "labelled")["files"]

    save_artifact(_artifact(), tmp_path / "plain")  # no text beside the features: no file
    assert load_artifact(tmp_path / "plain").item_labels is None
    assert not (tmp_path / "plain" / "item_labels.parquet").exists()

    artifact.item_labels = pa.table({"title": ["too", "few"]})
    save_artifact(artifact, tmp_path / "short")
    with pytest.raises(ArtifactError, match="inconsistent"):
        load_artifact(tmp_path / "short")
