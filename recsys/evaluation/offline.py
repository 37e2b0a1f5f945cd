"""``recsys evaluate``: a saved model against a held-out interaction table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.config import resolve_train_config
from recsys.data.features import multi_hot
from recsys.data.interactions import (
    IndexedInteractions,
    InteractionColumns,
    clean_interactions,
    index_interactions,
)
from recsys.data.io import read_path
from recsys.errors import DataError
from recsys.training.artifact import load_artifact
from recsys.training.batches import DeviceInteractions
from recsys.training.job import evaluate_model, held_out_tensors, resolve_device

logger = logging.getLogger(__name__)


def evaluate_saved_model(model_dir: Path, test_path: Path, *, k: int | None = None) -> dict[str, Any]:
    artifact = load_artifact(model_dir)
    raw = dict(artifact.train_config)
    if k is not None:
        raw["eval_k"] = k
    config = resolve_train_config(raw)
    device = resolve_device(config.device)
    columns = InteractionColumns(
        config.user_id_column, config.item_id_column, config.rating_column, config.timestamp_column
    )
    table = read_path(test_path, channel="test", string_columns=(columns.user, columns.item))
    frame = clean_interactions(table, columns, channel="test", min_rating=config.min_rating).frame
    held, dropped = index_interactions(frame, artifact.users, artifact.items)
    if dropped:
        logger.warning(
            "%d of %d test interactions name an unknown user or item and are skipped", dropped, len(frame)
        )
    if held.num_interactions == 0:
        raise DataError(f"{test_path}: no test interaction names a user and an item the model knows.")
    num_users = len(artifact.users)
    users = np.repeat(np.arange(num_users), np.diff(artifact.seen_indptr))
    seen = IndexedInteractions(
        users,
        artifact.seen_items.astype(np.int64),
        np.zeros(len(users)),
        artifact.seen_indptr,
        num_users,
        len(artifact.items),
    )
    model = artifact.build_model(device)
    features = multi_hot(artifact.item_encoding, artifact.item_arrays)
    metrics = evaluate_model(
        model,
        DeviceInteractions.from_indexed(seen, device),
        held_out_tensors(held, device),
        config,
        item_popularity=torch.from_numpy(artifact.item_popularity / max(num_users, 1)).float().to(device),
        item_features=torch.from_numpy(features).to(device) if features is not None else None,
        device=device,
    )
    metrics["skipped_interactions"] = dropped
    return metrics
