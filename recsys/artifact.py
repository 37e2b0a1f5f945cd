"""The model artifact: a directory that describes itself and loads without pickle.

Layout (all under ``model/``):
- ``model.safetensors``: the ``state_dict`` as safetensors, a JSON header plus raw tensor bytes,
  so loading runs no unpickler at all (``torch.load``, even with ``weights_only=True``, still
  parses a pickle stream). ``model_config.json`` rebuilds the module, so nothing about its shape
  is repeated by the loader.
- ``users.json`` / ``items.json``: id vocabularies (index = position).
- ``item_features.json`` / ``user_features.json`` + ``item_*.npy`` / ``user_*.npy``: attribute
  encodings and arrays (raw numeric values too, for serving-time filters).
- ``encodings.json``: ``Artifact.feature_encodings``, any JSON object (event-type and context
  vocabularies, say); ``{}`` when there are none.
- ``seen_indptr.npy`` / ``seen_items.npy``: each known user's items, oldest first (CSR), from every
  interaction channel the job read (train and validation): the exclusion list and the history of
  known users at serving time.
- ``seen_timestamps.npy`` (when the data has timestamps: epoch seconds, float64) and
  ``seen_events.npy`` (when it has event types: int16 codes of ``encodings.json``'s event types,
  0 unknown), aligned with ``seen_items.npy``: the time gaps and event types of a served history,
  and exclusion by event type. Optional, so an artifact without them still reads as format 2: its
  histories are served without times or types.
- ``seen_event_masks.npy`` (with ``seen_events.npy``, up to 63 event types): per stored pair, an
  unsigned bitmask of every event type the pair ever had, in any channel (bit c: code c), aligned
  with ``seen_items.npy``. ``seen_events`` keeps a merged pair's latest type only, and an item
  bought then clicked must still count as bought. Optional, and ignored by code that predates it,
  so it leaves the format at 2; without it exclusion by event type judges a pair by its latest
  event.
- ``item_popularity.npy``: interaction count per item (popular-items fallback, novelty).
- ``item_labels.parquet`` (when the items table has text the model does not use: titles,
  names): one row per item, for people reading recommendations.
- ``item_index.faiss`` (large catalogues, ``recsys.models.retrieval``): an HNSW graph over the
  GMF item vectors in faiss's own binary format. The manifest's ``retrieval`` object says how the
  job built it and the recall@10 it measured; without the file the endpoint ranks exactly.
- ``train_config.json``, ``metrics.json``, ``fingerprint.json``.
- ``manifest.json``: written last, lists every file with its SHA-256. A directory without it,
  or whose files do not match it, is incomplete and refuses to load.

Which artifacts load. The manifest's ``format`` (an integer) names the layout, and it alone
decides: this code reads format ``ARTIFACT_FORMAT`` (2) and refuses any other, older or newer,
before it opens a single other file. Format 1 was this layout with the weights in a pickled
``model.pt``; a manifest that lists ``model.pt`` is refused as that layout whatever its format
says. Any change to the layout bumps ``ARTIFACT_FORMAT``. The manifest also records
``recsys_version`` and ``torch_version`` of the code that wrote it; they are provenance, named in
every refusal beside this code's versions, but never refuse an artifact themselves: a recsys
release that keeps the layout reads its predecessors' artifacts, and safetensors does not depend
on the torch version.

Training checkpoints (``recsys.training.checkpoints``) are not artifacts: they stay
``torch.save`` files, loaded with ``weights_only=True``, read back only by the job that wrote them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import safetensors
import safetensors.torch
import torch

import recsys
from recsys.config import TrainConfig, config_to_json
from recsys.data.features import FeatureArrays, FeatureEncoding, load_encoding, save_encoding
from recsys.data.interactions import combine
from recsys.data.prepared import PreparedData
from recsys.data.vocab import Vocabulary
from recsys.errors import UserError
from recsys.files import DiskFullError, is_disk_full, sha256_file
from recsys.models.ncf import NCF, ModelConfig
from recsys.models.retrieval import ItemIndex

ARTIFACT_FORMAT = 2
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "model.pt"  # format 1: a torch.save pickle, never read
ENCODINGS = "encodings.json"
ITEM_LABELS = "item_labels.parquet"
SEEN_TIMESTAMPS = "seen_timestamps.npy"
SEEN_EVENTS = "seen_events.npy"
SEEN_EVENT_MASKS = "seen_event_masks.npy"
ITEM_INDEX = "item_index.faiss"

log = logging.getLogger(__name__)


class ArtifactError(UserError):
    """The model directory is missing, incomplete, corrupt, or of a format this code does not read."""


@functools.cache
def recsys_version() -> str:
    """The installed recsys distribution's version; the package's own where it is not installed
    (a source tree on ``PYTHONPATH``)."""
    try:
        return importlib.metadata.version("recsys")
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(recsys, "__version__", "unknown"))


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
    seen_timestamps: np.ndarray | None = None  # [S] float64 epoch seconds, aligned with seen_items
    seen_events: np.ndarray | None = None  # [S] int16 event-type codes, aligned with seen_items
    # [S] unsigned bitmask of every event-type code a stored pair had, aligned with seen_items
    seen_event_masks: np.ndarray | None = None
    # Vocabularies of inputs beyond ids and attributes (event types, contexts): any JSON object,
    # kept opaque here so that whoever encodes the inputs owns its shape.
    feature_encodings: dict[str, Any] = field(default_factory=dict)
    # The approximate top-k index of a large catalogue, and how it was built (or refused): the
    # manifest's ``retrieval``. A report without an index says why the endpoint ranks exactly.
    item_index: ItemIndex | None = None
    retrieval: dict[str, Any] | None = None

    def build_model(self, device: torch.device) -> NCF:
        # Built on the meta device, the module allocates nothing and draws no random initial
        # weights; assign=True then makes the loaded tensors its own without a copy. A 1M-item
        # model would otherwise draw, then overwrite, hundreds of MB (1.5 s, and twice the memory).
        with torch.device("meta"):
            model = NCF(self.model_config)
        model.load_state_dict(self.state_dict, assign=True)
        return model.to(device).eval()


# Every artifact has these; the feature arrays and item_labels.parquet depend on the data.
_REQUIRED_FILES = (
    WEIGHTS,
    "model_config.json",
    "users.json",
    "items.json",
    "item_features.json",
    "user_features.json",
    ENCODINGS,
    "seen_indptr.npy",
    "seen_items.npy",
    "item_popularity.npy",
    "train_config.json",
    "metrics.json",
    "fingerprint.json",
)


def build_artifact(model: NCF, data: PreparedData, config: TrainConfig, metrics: dict[str, Any]) -> Artifact:
    """The self-describing artifact of ``model``: weights, vocabularies, features, what each user saw."""
    # Served histories and exclusions hold everything the job saw, the validation channel too:
    # an endpoint must not recommend, as new, what the user did last week.
    seen = data.interactions if data.validation is None else combine(data.interactions, data.validation)
    return Artifact(
        model_config=model.config,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        users=data.users,
        items=data.items,
        item_encoding=data.item_encoding,
        item_arrays=data.item_arrays,
        user_encoding=data.user_encoding,
        user_arrays=data.user_arrays,
        seen_indptr=seen.indptr,
        seen_items=seen.items,
        item_popularity=np.bincount(seen.items, minlength=len(data.items)),
        train_config=config_to_json(config),
        metrics=metrics,
        fingerprint=data.fingerprint,
        item_labels=data.item_labels,
        seen_timestamps=seen.timestamps if data.has_timestamps else None,
        seen_events=seen.events,
        seen_event_masks=seen.event_masks,
        # Serving encodes a request's event types and context with the codes training used.
        feature_encodings={"rows": data.row_encoding.to_json()},
    )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True), encoding="utf-8")


def _check_json_value(value: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``value`` comes back from JSON equal to itself.

    ``json.dumps`` accepts more than it gives back: tuples return as lists, int keys as strings,
    NaN as a token other JSON readers reject. Caught here, at save, the mistake names its place.
    """
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}, which JSON cannot hold.")
        return
    if isinstance(value, list):
        for position, item in enumerate(value):
            _check_json_value(item, f"{where}[{position}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r}; JSON object keys are strings.")
            _check_json_value(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} is a {type(value).__name__}, which does not come back from JSON as itself.")


def _weights_to_save(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as safetensors takes it: dense, contiguous, on the CPU, one name per storage.

    safetensors refuses two names on one storage (a tied weight), since it could not give them
    back tied. The second name gets a copy of its own instead: the file holds every name's values,
    and a model that ties weights must tie them again after loading. The common case (no ties, all
    contiguous) copies nothing.
    """
    tensors: dict[str, torch.Tensor] = {}
    owners: dict[tuple[torch.device, int], str] = {}
    copied: list[str] = []
    for name, tensor in state_dict.items():
        if tensor.layout != torch.strided:
            raise ValueError(
                f"state_dict[{name!r}] is a {tensor.layout} tensor; the artifact holds dense ones."
            )
        storage = tensor.untyped_storage()
        key = (tensor.device, storage.data_ptr())
        if storage.nbytes() and key in owners:
            copied.append(f"{name} (shares {owners[key]})")
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        elif storage.nbytes():
            owners[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    if copied:
        log.info("artifact weights: %d tensors share storage; saved as copies: %s", len(copied), copied)
    return tensors


def save_artifact(artifact: Artifact, model_dir: Path) -> None:
    """Write the artifact so that a crash never leaves a directory that looks complete.

    Files are written to a staging directory inside ``model_dir`` (same filesystem, so the moves
    are atomic renames), moved into place, and the manifest goes last. Every byte is written in
    staging, the manifest too, so that once the moves begin nothing more needs space. On any error
    the staging directory is removed; a full disk raises ``DiskFullError`` naming ``model_dir``.
    Weights and ``feature_encodings`` that cannot be stored raise ``ValueError`` before anything
    is touched.
    """
    _check_json_value(artifact.feature_encodings, "feature_encodings")
    weights = _weights_to_save(artifact.state_dict)
    staging = model_dir / f".staging-{os.getpid()}"
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        safetensors.torch.save_file(weights, staging / WEIGHTS)
        del weights  # the copies, if any, can go before the rest is written
        (staging / "model_config.json").write_text(artifact.model_config.dumps(), encoding="utf-8")
        artifact.users.save(staging / "users.json")
        artifact.items.save(staging / "items.json")
        save_encoding(artifact.item_encoding, staging / "item_features.json")
        save_encoding(artifact.user_encoding, staging / "user_features.json")
        artifact.item_arrays.save(staging, "item")
        artifact.user_arrays.save(staging, "user")
        np.save(staging / "seen_indptr.npy", artifact.seen_indptr.astype(np.int64))
        np.save(staging / "seen_items.npy", artifact.seen_items.astype(np.int32))
        if artifact.seen_timestamps is not None:
            np.save(staging / SEEN_TIMESTAMPS, artifact.seen_timestamps.astype(np.float64))
        if artifact.seen_events is not None:
            np.save(staging / SEEN_EVENTS, artifact.seen_events.astype(np.int16))
        if artifact.seen_event_masks is not None:
            # Its own unsigned type: the narrowest that has a bit per event code.
            np.save(staging / SEEN_EVENT_MASKS, artifact.seen_event_masks)
        np.save(staging / "item_popularity.npy", artifact.item_popularity.astype(np.int64))
        _write_json(staging / ENCODINGS, artifact.feature_encodings)
        _write_json(staging / "train_config.json", artifact.train_config)
        _write_json(staging / "metrics.json", artifact.metrics)
        _write_json(staging / "fingerprint.json", artifact.fingerprint)
        if artifact.item_labels is not None and artifact.item_labels.num_columns:
            pq.write_table(artifact.item_labels, staging / ITEM_LABELS)
        if artifact.item_index is not None:
            artifact.item_index.save(staging / ITEM_INDEX)
        files = sorted(p.name for p in staging.iterdir())
        manifest: dict[str, Any] = {
            "format": ARTIFACT_FORMAT,
            "kind": "recsys-ncf",
            "recsys_version": recsys_version(),
            "torch_version": str(torch.__version__),
            "files": {name: sha256_file(staging / name) for name in files},
        }
        if artifact.retrieval is not None:
            manifest["retrieval"] = {
                **artifact.retrieval,
                "index_file": ITEM_INDEX if artifact.item_index else None,
            }
        _write_json(staging / MANIFEST, manifest)
        for name in files:
            os.replace(staging / name, model_dir / name)
        os.replace(staging / MANIFEST, model_dir / MANIFEST)
    except Exception as exc:
        # Judged before the staging directory goes: the space it holds is part of the evidence.
        if not is_disk_full(exc, staging):
            raise
        raise DiskFullError(model_dir, "the model artifact") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_json(model_dir: Path, name: str) -> Any:
    try:
        return json.loads((model_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, and UnicodeDecodeError
        raise ArtifactError(
            f"model artifact {model_dir} is corrupt: cannot read {name}: {_one_line(exc)}"
        ) from exc


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line: the CLI prints an artifact error as a single line."""
    return " ".join(str(exc).split()) or type(exc).__name__


_T = TypeVar("_T")
# What a reader of a file raises on content it cannot make sense of: numpy, json and the
# vocabulary ValueError, safetensors its own error, pyarrow its own, a from_json KeyError or
# TypeError on a JSON value of the wrong shape.
_READ_ERRORS = (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    RuntimeError,
    pa.ArrowException,
    safetensors.SafetensorError,
)


def _reading(model_dir: Path, name: str, read: Callable[[], _T]) -> _T:
    """``read()``, a failure of it an ``ArtifactError`` naming ``name``. A file can match its
    checksum and still be broken: rewritten after training, its manifest entry updated to match."""
    try:
        return read()
    except ArtifactError:
        raise
    except _READ_ERRORS as exc:
        raise ArtifactError(
            f"model artifact {model_dir} is corrupt: cannot read {name}: {_one_line(exc)}"
        ) from exc


def _array(model_dir: Path, name: str) -> np.ndarray:
    return _reading(model_dir, name, lambda: np.load(model_dir / name, allow_pickle=False))


def _feature_arrays(model_dir: Path, prefix: str, encoding: FeatureEncoding) -> FeatureArrays:
    try:
        return FeatureArrays.load(model_dir, prefix, encoding)
    except _READ_ERRORS as exc:
        # It reads several files and its errors name none: find the one that fails on its own.
        for path in sorted(model_dir.glob(f"{prefix}_*.npy")):
            _array(model_dir, path.name)
        raise ArtifactError(
            f"model artifact {model_dir} is corrupt: cannot read {prefix}_*.npy: {_one_line(exc)}"
        ) from exc


def _check_format(model_dir: Path, manifest: dict[str, Any]) -> None:
    """Refuse a manifest of another format, or one whose weights are the old pickled ``model.pt``,
    naming the versions that wrote it and this code's."""
    artifact_format = manifest.get("format")
    files = manifest.get("files")
    legacy = isinstance(files, dict) and LEGACY_WEIGHTS in files
    if artifact_format == ARTIFACT_FORMAT and not legacy:
        return
    written = (
        f"written by recsys {manifest.get('recsys_version') or '(unrecorded)'} "
        f"with torch {manifest.get('torch_version') or '(unrecorded)'}"
    )
    this = f"this code (recsys {recsys_version()}, torch {torch.__version__}) reads format {ARTIFACT_FORMAT}"
    retrain = "Train the model again with this recsys, or serve it with the release that wrote it."
    if legacy:
        raise ArtifactError(
            f"model artifact {model_dir} has format {artifact_format!r} with its weights in "
            f"{LEGACY_WEIGHTS}, a pickle ({written}); {this} only, weights in {WEIGHTS}, which "
            f"loads without pickle. {retrain}"
        )
    newer = isinstance(artifact_format, int) and artifact_format > ARTIFACT_FORMAT
    hint = "Serve it with the recsys release that wrote it, or a later one." if newer else retrain
    raise ArtifactError(
        f"model artifact {model_dir} has format {artifact_format!r} ({written}); {this} only. {hint}"
    )


def verify_artifact(model_dir: Path) -> dict[str, Any]:
    """Check the manifest's format, then every file's checksum; return the manifest."""
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist.")
    if not (model_dir / MANIFEST).exists():
        raise ArtifactError(
            f"model artifact {model_dir} is incomplete: {MANIFEST} is missing (training did not finish, "
            f"or this is not a recsys model directory)."
        )
    if not (model_dir / MANIFEST).is_file():
        raise ArtifactError(f"model artifact {model_dir} is corrupt: {MANIFEST} is not a file.")
    manifest = _read_json(model_dir, MANIFEST)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"model artifact {model_dir} is corrupt: {MANIFEST} is not a JSON object.")
    # Before the checksums: another format's manifest need not even list its files the same way.
    _check_format(model_dir, manifest)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"model artifact {model_dir} is corrupt: {MANIFEST} lists no files.")
    unlisted = [name for name in _REQUIRED_FILES if name not in files]
    if unlisted:
        raise ArtifactError(f"model artifact {model_dir} is incomplete: {MANIFEST} does not list {unlisted}.")
    for name, digest in files.items():
        path = model_dir / name
        if not path.exists():
            raise ArtifactError(f"model artifact {model_dir} is incomplete: {name} is missing.")
        if not path.is_file():  # a directory in its place: reading it would be an IsADirectoryError
            raise ArtifactError(f"model artifact {model_dir} is corrupt: {name} is not a file.")
        if _reading(model_dir, name, functools.partial(sha256_file, path)) != digest:
            raise ArtifactError(f"model artifact {model_dir} is corrupt: {name} does not match its checksum.")
    return dict(manifest)


def _optional_array(model_dir: Path, name: str, manifest: dict[str, Any]) -> np.ndarray | None:
    return _array(model_dir, name) if name in manifest["files"] else None


def _load_index(model_dir: Path, manifest: dict[str, Any], config: ModelConfig) -> ItemIndex | None:
    if ITEM_INDEX not in manifest["files"]:
        return None
    retrieval = manifest.get("retrieval")
    breadth = retrieval.get("search_breadth") if isinstance(retrieval, dict) else None
    if not isinstance(breadth, int) or isinstance(breadth, bool) or breadth < 1:
        raise ArtifactError(
            f"model artifact {model_dir} is corrupt: {MANIFEST} lists {ITEM_INDEX} but its 'retrieval' "
            f"has no positive search_breadth (got {breadth!r})."
        )
    try:
        index = ItemIndex.load(model_dir / ITEM_INDEX, breadth)
    except (RuntimeError, ValueError) as exc:  # faiss raises RuntimeError on a file it cannot read
        raise ArtifactError(
            f"model artifact {model_dir} is corrupt: cannot read {ITEM_INDEX}: {_one_line(exc)}"
        ) from exc
    if index.num_items != config.num_items or index.dim != config.embedding_dim + 1:
        raise ArtifactError(
            f"model artifact {model_dir} is inconsistent: {ITEM_INDEX} holds {index.num_items} vectors of "
            f"{index.dim} dimensions, the model {config.num_items} items of {config.embedding_dim} + 1."
        )
    return index


def load_artifact(model_dir: Path) -> Artifact:
    """Verify, then read every file of the artifact; any fault is an ``ArtifactError`` naming the
    file and what is wrong with it, so that no broken artifact gets as far as serving."""
    manifest = verify_artifact(model_dir)
    model_config = _reading(
        model_dir,
        "model_config.json",
        lambda: ModelConfig.from_json(_read_json(model_dir, "model_config.json")),
    )
    item_encoding = _reading(
        model_dir, "item_features.json", lambda: load_encoding(model_dir / "item_features.json")
    )
    user_encoding = _reading(
        model_dir, "user_features.json", lambda: load_encoding(model_dir / "user_features.json")
    )
    feature_encodings = _read_json(model_dir, ENCODINGS)
    if not isinstance(feature_encodings, dict):
        raise ArtifactError(f"model artifact {model_dir} is corrupt: {ENCODINGS} is not a JSON object.")
    state_dict = _reading(
        model_dir, WEIGHTS, lambda: safetensors.torch.load_file(model_dir / WEIGHTS, device="cpu")
    )
    _check_weights(model_dir, model_config, state_dict)
    artifact = Artifact(
        model_config=model_config,
        state_dict=state_dict,
        users=_reading(model_dir, "users.json", lambda: Vocabulary.load(model_dir / "users.json")),
        items=_reading(model_dir, "items.json", lambda: Vocabulary.load(model_dir / "items.json")),
        item_encoding=item_encoding,
        item_arrays=_feature_arrays(model_dir, "item", item_encoding),
        user_encoding=user_encoding,
        user_arrays=_feature_arrays(model_dir, "user", user_encoding),
        seen_indptr=_array(model_dir, "seen_indptr.npy"),
        seen_items=_array(model_dir, "seen_items.npy"),
        item_popularity=_array(model_dir, "item_popularity.npy"),
        train_config=_read_json(model_dir, "train_config.json"),
        metrics=_read_json(model_dir, "metrics.json"),
        fingerprint=_read_json(model_dir, "fingerprint.json"),
        # Optional: artifacts of items tables without unused text have none.
        item_labels=(
            _reading(model_dir, ITEM_LABELS, lambda: pq.read_table(model_dir / ITEM_LABELS))
            if ITEM_LABELS in manifest["files"]
            else None
        ),
        feature_encodings=feature_encodings,
        seen_timestamps=_optional_array(model_dir, SEEN_TIMESTAMPS, manifest),
        seen_events=_optional_array(model_dir, SEEN_EVENTS, manifest),
        seen_event_masks=_optional_array(model_dir, SEEN_EVENT_MASKS, manifest),
        retrieval=manifest.get("retrieval") if isinstance(manifest.get("retrieval"), dict) else None,
    )
    artifact.item_index = _load_index(model_dir, manifest, model_config)
    for name, aligned in (
        (SEEN_TIMESTAMPS, artifact.seen_timestamps),
        (SEEN_EVENTS, artifact.seen_events),
        (SEEN_EVENT_MASKS, artifact.seen_event_masks),
    ):
        if aligned is None:
            continue
        if aligned.ndim != 1:
            raise ArtifactError(
                f"model artifact {model_dir} is inconsistent: {name} is an array of shape "
                f"{aligned.shape}, not one value per row of seen_items.npy."
            )
        if len(aligned) != len(artifact.seen_items):
            raise ArtifactError(
                f"model artifact {model_dir} is inconsistent: {name} holds {len(aligned)} rows, "
                f"seen_items.npy {len(artifact.seen_items)}."
            )
    _check_event_masks(model_dir, artifact)
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
    _check_seen(model_dir, artifact)
    return artifact


def _check_event_masks(model_dir: Path, artifact: Artifact) -> None:
    """Event-type bitmasks must be unsigned, come with the latest event types, and hold each pair's
    latest type: a mask that is not the pair's would exclude, or keep, the wrong items."""
    masks, events = artifact.seen_event_masks, artifact.seen_events
    if masks is None:
        return
    problem = ""
    bits = 8 * masks.dtype.itemsize
    if not np.issubdtype(masks.dtype, np.unsignedinteger):
        problem = f"{SEEN_EVENT_MASKS} must hold unsigned bitmasks, it holds {masks.dtype}"
    elif events is None:
        problem = f"{SEEN_EVENT_MASKS} comes without {SEEN_EVENTS}"
    elif len(events) and (int(events.min()) < 0 or int(events.max()) >= bits):
        problem = f"{SEEN_EVENTS} holds event codes outside the {bits} bits of {SEEN_EVENT_MASKS}"
    elif not bool(((masks >> events.astype(masks.dtype)) & 1).all()):
        problem = f"{SEEN_EVENT_MASKS} lacks the latest event type ({SEEN_EVENTS}) of some pairs"
    if problem:
        raise ArtifactError(f"model artifact {model_dir} is inconsistent: {problem}.")


def _check_weights(model_dir: Path, config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """The weights must be the ones ``model_config.json`` builds: the same names and shapes."""
    # On the meta device the module allocates nothing: only the names and shapes are made.
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in NCF(config).state_dict().items()}
    got = {name: tuple(t.shape) for name, t in state_dict.items()}
    problems = [f"{name} is missing" for name in expected if name not in got]
    problems += [f"{name} is not in the model" for name in got if name not in expected]
    problems += [
        f"{name} is {list(got[name])}, the model's {list(shape)}"
        for name, shape in expected.items()
        if name in got and got[name] != shape
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ArtifactError(
            f"model artifact {model_dir} is inconsistent: {WEIGHTS} does not fit model_config.json: {shown}."
        )


def _check_seen(model_dir: Path, artifact: Artifact) -> None:
    """Each known user's items (CSR) must index the users and items the model has: out of range,
    they would fail requests, or the start-up, far from the file that is wrong."""
    indptr, seen, popularity = artifact.seen_indptr, artifact.seen_items, artifact.item_popularity
    num_users, num_items = artifact.model_config.num_users, artifact.model_config.num_items
    problem = ""
    if indptr.ndim != 1 or len(indptr) != num_users + 1 or not np.issubdtype(indptr.dtype, np.integer):
        problem = f"seen_indptr.npy must hold {num_users + 1} integers (users + 1), it holds {indptr.shape}"
    elif indptr[0] != 0 or indptr[-1] != len(seen) or bool((np.diff(indptr) < 0).any()):
        problem = f"seen_indptr.npy must rise from 0 to {len(seen)} (the rows of seen_items.npy)"
    elif seen.ndim != 1 or not np.issubdtype(seen.dtype, np.integer):
        problem = f"seen_items.npy must be a list of item indices, it is {seen.dtype} of shape {seen.shape}"
    elif len(seen) and (int(seen.min()) < 0 or int(seen.max()) >= num_items):
        problem = f"seen_items.npy holds item indices outside 0..{num_items - 1}"
    elif popularity.shape != (num_items,):
        problem = (
            f"item_popularity.npy must hold {num_items} counts (one per item), it holds {popularity.shape}"
        )
    if problem:
        raise ArtifactError(f"model artifact {model_dir} is inconsistent: {problem}.")
