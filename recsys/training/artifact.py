"""The model artifact: a directory that describes itself and loads without pickle.

Layout (all under ``model/``):
- ``model.pt``: the ``state_dict`` (loaded with ``weights_only=True``); ``model_config.json``
  rebuilds the module, so nothing about its shape is repeated by the loader.
- ``users.json`` / ``items.json``: id vocabularies (index = position).
- ``item_features.json`` / ``user_features.json`` + ``item_*.npy`` / ``user_*.npy``: attribute
  encodings and arrays (raw numeric values too, for serving-time filters).
- ``seen_indptr.npy`` / ``seen_items.npy``: each known user's items, oldest first (CSR): the
  exclusion list and the history of known users at serving time.
- ``item_popularity.npy``: interaction count per item (popular-items fallback, novelty).
- ``item_labels.parquet`` (when the items table has text the model does not use: titles,
  names): one row per item, for people reading recommendations.
- ``train_config.json``, ``metrics.json``, ``fingerprint.json``.
- ``manifest.json``: written last, lists every file with its SHA-256. A directory without it,
  or whose files do not match it, is incomplete and refuses to load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recsys.data.features import FeatureArrays, FeatureEncoding, load_encoding, save_encoding
from recsys.data.vocab import Vocabulary
from recsys.errors import UserError
from recsys.models.ncf import NCF, ModelConfig

ARTIFACT_FORMAT = 1
MANIFEST = "manifest.json"
ITEM_LABELS = "item_labels.parquet"


class ArtifactError(UserError):
    """The model directory is missing, incomplete or corrupt."""


@dataclass
class Artifact:
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    users: Vocabulary
    items: Vocabulary
    item_encoding: FeatureEncoding
    item_arrays: FeatureArrays
    user_encoding: FeatureEncoding
    user_arrays: FeatureArrays
    seen_indptr: np.ndarray  # [U+1] int64
    seen_items: np.ndarray  # [S] int32, oldest first within a user
    item_popularity: np.ndarray  # [N] int64
    train_config: dict[str, Any]
    metrics: dict[str, Any]
    fingerprint: dict[str, Any]
    item_labels: pa.Table | None = None  # [N rows] text columns for display only

    def build_model(self, device: torch.device) -> NCF:
        # Built on the meta device, the module allocates nothing and draws no random initial
        # weights; assign=True then makes the loaded tensors its own without a copy. A 1M-item
        # model would otherwise draw, then overwrite, hundreds of MB (1.5 s, and twice the memory).
        with torch.device("meta"):
            model = NCF(self.model_config)
        model.load_state_dict(self.state_dict, assign=True)
        return model.to(device).eval()


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks (files can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True), encoding="utf-8")


def save_artifact(artifact: Artifact, model_dir: Path) -> None:
    """Write the artifact so that a crash never leaves a directory that looks complete.

    Files are written to a staging directory inside ``model_dir`` (same filesystem, so the moves
    are atomic renames), moved into place, and the manifest goes last.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MANIFEST).unlink(missing_ok=True)
    staging = model_dir / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        torch.save(artifact.state_dict, staging / "model.pt")
        (staging / "model_config.json").write_text(artifact.model_config.dumps(), encoding="utf-8")
        artifact.users.save(staging / "users.json")
        artifact.items.save(staging / "items.json")
        save_encoding(artifact.item_encoding, staging / "item_features.json")
        save_encoding(artifact.user_encoding, staging / "user_features.json")
        artifact.item_arrays.save(staging, "item")
        artifact.user_arrays.save(staging, "user")
        np.save(staging / "seen_indptr.npy", artifact.seen_indptr.astype(np.int64))
        np.save(staging / "seen_items.npy", artifact.seen_items.astype(np.int32))
        np.save(staging / "item_popularity.npy", artifact.item_popularity.astype(np.int64))
        _write_json(staging / "train_config.json", artifact.train_config)
        _write_json(staging / "metrics.json", artifact.metrics)
        _write_json(staging / "fingerprint.json", artifact.fingerprint)
        if artifact.item_labels is not None and artifact.item_labels.num_columns:
            pq.write_table(artifact.item_labels, staging / ITEM_LABELS)
        files = sorted(p.name for p in staging.iterdir())
        manifest = {
            "format": ARTIFACT_FORMAT,
            "kind": "recsys-ncf",
            "files": {name: sha256_file(staging / name) for name in files},
        }
        for name in files:
            os.replace(staging / name, model_dir / name)
        _write_json(staging / MANIFEST, manifest)
        os.replace(staging / MANIFEST, model_dir / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_json(model_dir: Path, name: str) -> Any:
    try:
        return json.loads((model_dir / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"model artifact {model_dir}: cannot read {name}: {exc}") from exc


def verify_artifact(model_dir: Path) -> dict[str, Any]:
    """Check the manifest and every file's checksum; return the manifest."""
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist.")
    if not (model_dir / MANIFEST).exists():
        raise ArtifactError(
            f"model artifact {model_dir} is incomplete: {MANIFEST} is missing (training did not finish, "
            f"or this is not a recsys model directory)."
        )
    manifest = _read_json(model_dir, MANIFEST)
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"model artifact {model_dir} has format {manifest.get('format')!r}; this recsys reads format "
            f"{ARTIFACT_FORMAT}."
        )
    for name, digest in manifest["files"].items():
        path = model_dir / name
        if not path.exists():
            raise ArtifactError(f"model artifact {model_dir} is incomplete: {name} is missing.")
        if sha256_file(path) != digest:
            raise ArtifactError(f"model artifact {model_dir} is corrupt: {name} does not match its checksum.")
    return dict(manifest)


def load_artifact(model_dir: Path) -> Artifact:
    manifest = verify_artifact(model_dir)
    model_config = ModelConfig.from_json(_read_json(model_dir, "model_config.json"))
    item_encoding = load_encoding(model_dir / "item_features.json")
    user_encoding = load_encoding(model_dir / "user_features.json")
    try:
        state_dict = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
        artifact = Artifact(
            model_config=model_config,
            state_dict=state_dict,
            users=Vocabulary.load(model_dir / "users.json"),
            items=Vocabulary.load(model_dir / "items.json"),
            item_encoding=item_encoding,
            item_arrays=FeatureArrays.load(model_dir, "item", item_encoding),
            user_encoding=user_encoding,
            user_arrays=FeatureArrays.load(model_dir, "user", user_encoding),
            seen_indptr=np.load(model_dir / "seen_indptr.npy", allow_pickle=False),
            seen_items=np.load(model_dir / "seen_items.npy", allow_pickle=False),
            item_popularity=np.load(model_dir / "item_popularity.npy", allow_pickle=False),
            train_config=_read_json(model_dir, "train_config.json"),
            metrics=_read_json(model_dir, "metrics.json"),
            fingerprint=_read_json(model_dir, "fingerprint.json"),
            # Optional: artifacts of items tables without unused text have none.
            item_labels=pq.read_table(model_dir / ITEM_LABELS) if ITEM_LABELS in manifest["files"] else None,
        )
    except (OSError, ValueError, RuntimeError, pa.ArrowException) as exc:
        raise ArtifactError(f"model artifact {model_dir} cannot be loaded: {exc}") from exc
    labels = artifact.item_labels
    if (
        len(artifact.users) != model_config.num_users
        or len(artifact.items) != model_config.num_items
        or (labels is not None and labels.num_rows != model_config.num_items)
    ):
        raise ArtifactError(
            f"model artifact {model_dir} is inconsistent: vocabularies hold {len(artifact.users)} users and "
            f"{len(artifact.items)} items, the model {model_config.num_users} and {model_config.num_items}."
        )
    return artifact
