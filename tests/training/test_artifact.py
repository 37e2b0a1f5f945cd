"""The model artifact: save, load, verify, and refuse anything incomplete or modified."""

from __future__ import annotations

import importlib.metadata
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import safetensors.torch
import torch

import recsys
from recsys.artifact import (
    ARTIFACT_FORMAT,
    MANIFEST,
    Artifact,
    ArtifactError,
    load_artifact,
    recsys_version,
    save_artifact,
    verify_artifact,
)
from recsys.data.features import (
    FeatureDeclaration,
    FeatureEncoding,
    empty_arrays,
    encode_attributes,
    feature_cardinalities,
)
from recsys.data.vocab import Vocabulary
from recsys.files import sha256_file
from recsys.models.ncf import NCF, FeatureSpec, ModelConfig

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
    model.load_attributes(item_arrays, None)
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
    assert {
        "model.safetensors",
        "model_config.json",
        "users.json",
        "items.json",
        "encodings.json",
        "item_categorical_0.npy",
    } <= on_disk
    assert "model.pt" not in on_disk
    assert all(len(digest) == 64 for digest in manifest["files"].values())


def test_no_staging_directory_is_left(saved: tuple[Artifact, Path]) -> None:
    artifact, model_dir = saved
    save_artifact(artifact, model_dir)  # saving again over an existing artifact
    assert not [p.name for p in model_dir.iterdir() if p.name.startswith(".staging")]
    load_artifact(model_dir)


def test_model_weights_are_safetensors(saved: tuple[Artifact, Path]) -> None:
    artifact, model_dir = saved
    raw = (model_dir / "model.safetensors").read_bytes()
    # safetensors: an 8-byte little-endian header length, then a JSON header; torch.save writes a zip.
    (header_length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_length])
    assert set(header) - {"__metadata__"} == set(artifact.state_dict)
    state = safetensors.torch.load_file(model_dir / "model.safetensors")
    assert all(torch.equal(state[k], artifact.state_dict[k]) for k in artifact.state_dict)
    assert all(state[k].dtype == artifact.state_dict[k].dtype for k in artifact.state_dict)
    config = json.loads((model_dir / "model_config.json").read_text(encoding="utf-8"))
    assert ModelConfig.from_json(config) == artifact.model_config


def _refuse_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpickling during load_artifact")

    monkeypatch.setattr(torch, "load", refused)
    monkeypatch.setattr(torch.serialization, "load", refused)
    monkeypatch.setattr(pickle, "load", refused)
    monkeypatch.setattr(pickle, "loads", refused)
    monkeypatch.setattr(pickle, "Unpickler", refused)


def test_loading_unpickles_nothing(saved: tuple[Artifact, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    artifact, model_dir = saved
    expected = _predict(artifact)
    _refuse_pickle(monkeypatch)
    loaded = load_artifact(model_dir)
    assert torch.equal(_predict(loaded), expected)


def test_the_manifest_records_the_versions_that_wrote_it(saved: tuple[Artifact, Path]) -> None:
    _, model_dir = saved
    manifest = verify_artifact(model_dir)
    assert manifest["format"] == ARTIFACT_FORMAT == 2
    assert manifest["recsys_version"] == importlib.metadata.version("recsys") == recsys_version()
    assert manifest["torch_version"] == torch.__version__


def test_the_recsys_version_falls_back_to_the_package_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(recsys, "__version__", "7.8.9")
    recsys_version.cache_clear()
    try:
        assert recsys_version() == "7.8.9"
    finally:
        monkeypatch.undo()
        recsys_version.cache_clear()
    assert recsys_version() == importlib.metadata.version("recsys")


def _rewrite_manifest(model_dir: Path, **changes: Any) -> None:
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    manifest.update(changes)
    (model_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def _this_code() -> str:
    return f"this code (recsys {recsys_version()}, torch {torch.__version__}) reads format 2"


@pytest.mark.parametrize("artifact_format", [1, 3, 99, "2", None])
def test_another_format_is_refused_naming_both_versions(
    saved: tuple[Artifact, Path], artifact_format: Any
) -> None:
    _, model_dir = saved
    _rewrite_manifest(model_dir, format=artifact_format, recsys_version="9.1.0", torch_version="9.2.0")
    with pytest.raises(ArtifactError) as refused:
        load_artifact(model_dir)
    message = str(refused.value)
    assert f"has format {artifact_format!r} (written by recsys 9.1.0 with torch 9.2.0)" in message
    assert _this_code() in message


def _write_old_layout(model_dir: Path, artifact: Artifact, artifact_format: int) -> None:
    """The artifact as the previous release wrote it: weights in a torch.save pickle, no versions."""
    (model_dir / "model.safetensors").unlink()
    torch.save(artifact.state_dict, model_dir / "model.pt")
    files = {p.name: sha256_file(p) for p in model_dir.iterdir() if p.name != MANIFEST}
    manifest = {"format": artifact_format, "kind": "recsys-ncf", "files": files}
    (model_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize("artifact_format", [1, 2])  # 2: the current number on the old layout
def test_an_old_layout_with_pickled_weights_is_refused_without_unpickling(
    saved: tuple[Artifact, Path], monkeypatch: pytest.MonkeyPatch, artifact_format: int
) -> None:
    artifact, model_dir = saved
    _write_old_layout(model_dir, artifact, artifact_format)
    _refuse_pickle(monkeypatch)
    with pytest.raises(ArtifactError) as refused:
        load_artifact(model_dir)
    message = str(refused.value)
    assert f"has format {artifact_format} with its weights in model.pt, a pickle" in message
    assert "written by recsys (unrecorded) with torch (unrecorded)" in message
    assert _this_code() in message
    assert "model.safetensors" in message


def test_a_manifest_without_the_weights_is_incomplete(saved: tuple[Artifact, Path]) -> None:
    _, model_dir = saved
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    del manifest["files"]["model.safetensors"], manifest["files"]["encodings.json"]
    (model_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(
        ArtifactError, match=r"incomplete: manifest\.json does not list \['model\.safetensors', "
    ):
        load_artifact(model_dir)


def test_a_missing_manifest_means_incomplete(saved: tuple[Artifact, Path]) -> None:
    _, model_dir = saved
    (model_dir / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_artifact(model_dir)


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["metrics.json", "model.safetensors", "encodings.json", "item_numeric.npy"])
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


ENCODINGS = {
    "event_type": {"values": ["view", "cart", "purchase"], "weights": [1.0, 2.5, 4.0]},
    "context": {"device": {"mobile": 1, "desktop": 2}, "ünïcode": "ok", "missing": None, "flag": True},
    "nested": [[1, 2], {"deep": [{"deeper": -3}]}],
}


def test_feature_encodings_round_trip(tmp_path: Path) -> None:
    artifact = _artifact()
    artifact.feature_encodings = json.loads(json.dumps(ENCODINGS))
    save_artifact(artifact, tmp_path)
    assert load_artifact(tmp_path).feature_encodings == ENCODINGS
    assert json.loads((tmp_path / "encodings.json").read_text(encoding="utf-8")) == ENCODINGS
    assert verify_artifact(tmp_path)["files"]["encodings.json"] == sha256_file(tmp_path / "encodings.json")


def test_feature_encodings_default_to_empty(saved: tuple[Artifact, Path]) -> None:
    artifact, model_dir = saved
    assert artifact.feature_encodings == {}
    assert (model_dir / "encodings.json").read_text(encoding="utf-8") == "{}"
    assert load_artifact(model_dir).feature_encodings == {}


def test_tampered_feature_encodings_are_corrupt(tmp_path: Path) -> None:
    artifact = _artifact()
    artifact.feature_encodings = json.loads(json.dumps(ENCODINGS))
    save_artifact(artifact, tmp_path)
    tampered = dict(ENCODINGS, event_type={"values": ["view"], "weights": [1.0]})
    (tmp_path / "encodings.json").write_text(json.dumps(tampered), encoding="utf-8")  # still valid JSON
    with pytest.raises(ArtifactError, match=r"corrupt: encodings\.json does not match its checksum"):
        load_artifact(tmp_path)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"ids": (1, 2)}, r"feature_encodings\['ids'\] is a tuple"),
        ({"codes": {1: "a"}}, r"feature_encodings\['codes'\] has the key 1"),
        ({"weights": [1.0, float("nan")]}, r"feature_encodings\['weights'\]\[1\] is nan"),
        ({"count": np.int64(3)}, r"feature_encodings\['count'\] is a int64"),
    ],
)
def test_feature_encodings_that_json_would_change_are_refused_before_writing(
    saved: tuple[Artifact, Path], value: dict[str, Any], problem: str
) -> None:
    artifact, model_dir = saved
    artifact.feature_encodings = value
    with pytest.raises(ValueError, match=problem):
        save_artifact(artifact, model_dir)
    load_artifact(model_dir)  # the artifact already there is untouched


def test_tied_and_non_contiguous_weights_are_saved_by_value(tmp_path: Path) -> None:
    artifact = _artifact()
    expected = _predict(artifact)
    state = artifact.state_dict
    gmf_codes, mlp_codes = "gmf_encoder.item_attributes.codes_0", "mlp_encoder.item_attributes.codes_0"
    assert torch.equal(state[gmf_codes], state[mlp_codes])
    state[mlp_codes] = state[gmf_codes]  # two names, one storage: safetensors alone refuses this
    matrices = [k for k, v in state.items() if v.dim() == 2 and min(v.shape) > 1 and v.is_floating_point()]
    transposed = matrices[0]
    state[transposed] = state[transposed].t().contiguous().t()
    assert not state[transposed].is_contiguous()
    save_artifact(artifact, tmp_path)
    loaded = load_artifact(tmp_path)
    assert set(loaded.state_dict) == set(state)
    assert all(torch.equal(loaded.state_dict[k], state[k]) for k in state)
    assert torch.equal(_predict(loaded), expected)


def test_event_times_and_types_round_trip_and_must_align_with_the_seen_items(tmp_path: Path) -> None:
    artifact = _artifact()
    artifact.seen_timestamps = np.array([10.0, 20.0, 5.0])
    artifact.seen_events = np.array([1, 2, 1], dtype=np.int16)
    save_artifact(artifact, tmp_path / "model")

    loaded = load_artifact(tmp_path / "model")

    assert loaded.seen_timestamps is not None and loaded.seen_timestamps.tolist() == [10.0, 20.0, 5.0]
    assert loaded.seen_events is not None and loaded.seen_events.tolist() == [1, 2, 1]
    assert load_artifact(_saved_plain(tmp_path)).seen_timestamps is None  # optional: absent, none

    artifact.seen_events = np.array([1, 2], dtype=np.int16)
    save_artifact(artifact, tmp_path / "short")
    with pytest.raises(ArtifactError, match=r"seen_events\.npy holds 2 rows, seen_items\.npy 3"):
        load_artifact(tmp_path / "short")


def _saved_plain(tmp_path: Path) -> Path:
    save_artifact(_artifact(), tmp_path / "plain")
    return tmp_path / "plain"
