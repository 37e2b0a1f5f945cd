"""Artifacts broken after training: every fault is an ``ArtifactError`` naming the file, never a crash.

A file can match its checksum and still be broken: rewritten after training with the manifest's
checksum updated to match. The manifest itself can be damaged in ways a checksum cannot catch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from recsys.artifact import MANIFEST, ArtifactError, load_artifact, save_artifact, verify_artifact
from recsys.files import sha256_file
from tests.training.test_artifact import _artifact


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    save_artifact(_artifact(), tmp_path / "model")
    return tmp_path / "model"


def _rewrite(model_dir: Path, name: str, content: bytes) -> None:
    """Replace a file and update its checksum, as a tool that edits artifacts in place would."""
    (model_dir / name).write_bytes(content)
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"][name] = sha256_file(model_dir / name)
    (model_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def _truncate(model_dir: Path, name: str) -> None:
    content = (model_dir / name).read_bytes()
    _rewrite(model_dir, name, content[: len(content) // 2])


def _error(model_dir: Path, load: Callable[[Path], object] = load_artifact) -> str:
    with pytest.raises(ArtifactError) as caught:
        load(model_dir)
    message = str(caught.value)
    assert str(model_dir) in message
    assert "\n" not in message  # one line: the CLI prints it as one "error:" line
    return message


# --- the manifest ------------------------------------------------------------------------------


def test_a_manifest_that_is_not_utf8_is_named(model_dir: Path) -> None:
    content = bytearray((model_dir / MANIFEST).read_bytes())
    content[5] = 0xFF
    (model_dir / MANIFEST).write_bytes(bytes(content))

    message = _error(model_dir, verify_artifact)

    assert "cannot read manifest.json" in message
    assert "utf-8" in message.lower()


def test_a_manifest_that_is_a_list_is_named(model_dir: Path) -> None:
    (model_dir / MANIFEST).write_text("[]", encoding="utf-8")

    assert "manifest.json is not a JSON object" in _error(model_dir, verify_artifact)


def test_a_manifest_without_files_is_named(model_dir: Path) -> None:
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    del manifest["files"]
    (model_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")

    assert "manifest.json lists no files" in _error(model_dir, verify_artifact)


def test_a_manifest_that_is_a_directory_is_named(model_dir: Path) -> None:
    (model_dir / MANIFEST).unlink()
    (model_dir / MANIFEST).mkdir()

    assert "manifest.json is not a file" in _error(model_dir, verify_artifact)


@pytest.mark.parametrize("name", ["items.json", "model.safetensors", "seen_indptr.npy"])
def test_a_listed_file_replaced_by_a_directory_is_named(model_dir: Path, name: str) -> None:
    (model_dir / name).unlink()
    (model_dir / name).mkdir()

    assert f"{name} is not a file" in _error(model_dir, verify_artifact)


# --- files whose checksum matches but whose content is broken ------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "model.safetensors",
        "items.json",
        "users.json",
        "model_config.json",
        "item_features.json",
        "seen_indptr.npy",
        "seen_items.npy",
        "item_popularity.npy",
        "item_numeric_raw.npy",
        "item_categorical_0.npy",
        "metrics.json",
    ],
)
def test_a_truncated_file_is_named(model_dir: Path, name: str) -> None:
    _truncate(model_dir, name)

    message = _error(model_dir)

    assert f"cannot read {name}" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("items.json", b'{"i1": 0}'),  # valid JSON, but not a list of ids
        ("model_config.json", b'{"kind": "neumf"}'),
        ("item_features.json", b"[1, 2]"),
    ],
)
def test_a_file_of_the_wrong_shape_is_named(model_dir: Path, name: str, content: bytes) -> None:
    _rewrite(model_dir, name, content)

    assert f"cannot read {name}" in _error(model_dir)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "array", "problem"),
    [
        ("seen_indptr.npy", np.array([0, 2, 3]), "seen_indptr.npy"),  # one user short
        ("seen_indptr.npy", np.array([0, 3, 2, 3]), "seen_indptr.npy"),  # goes backwards
        ("seen_indptr.npy", np.array([0, 2, 3, 9]), "seen_indptr.npy"),  # past the end of seen_items
        ("seen_items.npy", np.array([0, 2, 7]), "seen_items.npy"),  # item 7 of 4
        ("item_popularity.npy", np.array([1, 1]), "item_popularity.npy"),
    ],
)
def test_arrays_that_disagree_with_the_model_are_named(
    model_dir: Path, name: str, array: np.ndarray, problem: str
) -> None:
    _rewrite(model_dir, name, _npy(array))

    message = _error(model_dir)

    assert problem in message
    assert "inconsistent" in message


def test_weights_that_do_not_fit_the_model_config_are_named(model_dir: Path) -> None:
    weights = safetensors.torch.load_file(model_dir / "model.safetensors")
    name = next(iter(weights))
    weights[name] = torch.zeros(1)
    safetensors.torch.save_file(weights, model_dir / "model.safetensors")
    _rewrite(model_dir, "model.safetensors", (model_dir / "model.safetensors").read_bytes())

    message = _error(model_dir)

    assert "model.safetensors" in message
    assert "model_config.json" in message
    assert name in message
