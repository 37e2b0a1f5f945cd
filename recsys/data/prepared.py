"""A training job's data, read and indexed once: the interaction channels streamed into int32 codes,
the id vocabularies, the attribute encodings, the row encoding (event types, context, time) and a
fingerprint of every input file; plus what the job's settings make of them (event weights and
target event types, checked against the data).

Everything arrives as explicit arguments (channel directories, a ``TrainConfig``): only
``recsys.sagemaker`` knows where those come from.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.config import TrainConfig
from recsys.data.context import RowEncoding
from recsys.data.device import RowArrays, row_arrays
from recsys.data.features import (
    FeatureArrays,
    FeatureDeclaration,
    FeatureEncoding,
    column_names,
    empty_arrays,
    encode_attributes,
    label_columns,
)
from recsys.data.interactions import (
    IndexedInteractions,
    InteractionColumns,
    fit_row_encoding,
    index_encoded,
    read_interactions,
    subset,
)
from recsys.data.io import list_data_files, read_table
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError
from recsys.files import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Channels:
    """Directories of the job's input channels; only ``train`` is required."""

    train: Path
    validation: Path | None = None
    items: Path | None = None
    users: Path | None = None


@dataclass(frozen=True)
class PreparedData:
    users: Vocabulary
    items: Vocabulary
    interactions: IndexedInteractions  # every training interaction
    validation: IndexedInteractions | None  # from the validation channel
    item_encoding: FeatureEncoding
    item_arrays: FeatureArrays
    user_encoding: FeatureEncoding
    user_arrays: FeatureArrays
    fingerprint: dict[str, Any]
    item_labels: pa.Table | None = None  # text the model does not use (titles), for display
    row_encoding: RowEncoding = field(default_factory=RowEncoding.empty)  # event types, context columns
    has_timestamps: bool = False  # the interactions' times are real ones, not their order in the files


def fingerprint(channels: Channels, counts: dict[str, int]) -> dict[str, Any]:
    """SHA-256 and size of every input file, so a model can be traced to the exact data."""
    out: dict[str, Any] = {"channels": {}, "rows": counts}
    for name in ("train", "validation", "items", "users"):
        directory = getattr(channels, name)
        if directory is None:
            continue
        files = []
        for path in list_data_files(directory):
            files.append(
                {
                    "file": str(path.relative_to(directory)),
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            )
        out["channels"][name] = files
    combined = hashlib.sha256(repr(sorted(out["channels"].items())).encode()).hexdigest()
    out["sha256"] = combined
    return out


def _encode(
    table: pa.Table | None,
    id_column: str,
    vocabulary: Vocabulary,
    declaration: FeatureDeclaration,
    channel: str,
) -> tuple[FeatureEncoding, FeatureArrays]:
    """An attribute channel's encoding, or an empty one when the channel is absent."""
    if table is None:
        return FeatureEncoding.empty(id_column), empty_arrays(len(vocabulary))
    return encode_attributes(
        table, id_column=id_column, vocabulary=vocabulary, declaration=declaration, channel=channel
    )


def interaction_columns(config: TrainConfig) -> InteractionColumns:
    """The interaction tables' column names a job's hyperparameters give."""
    return InteractionColumns(
        config.user_id_column,
        config.item_id_column,
        config.rating_column,
        config.timestamp_column,
        config.event_type_column,
        config.context_columns,
        config.numeric_context_columns,
    )


def prepare_data(channels: Channels, config: TrainConfig) -> PreparedData:
    """Read, clean and index every channel.

    The interaction channels are streamed in record batches and held as int32 codes, so memory
    grows with the interactions' arrays (16 bytes a row), not with their text.
    """
    columns = interaction_columns(config)
    train = read_interactions(channels.train, columns, channel="train", min_rating=config.min_rating)
    has_timestamps = train.has_timestamp
    row_encoding = fit_row_encoding(
        train, columns, time_features=config.time_features and train.has_timestamp
    )
    check_event_settings(config, row_encoding)
    declaration = FeatureDeclaration(
        config.categorical_columns,
        config.multi_valued_columns,
        config.numeric_columns,
        config.ignore_columns,
        config.multi_value_separator,
    )
    item_table = (
        read_table(channels.items, channel="items", string_columns=(config.item_id_column,))
        if channels.items
        else None
    )
    item_ids = train.item_ids()
    if item_table is not None and config.item_id_column in item_table.column_names:
        # Items with attributes but no interactions stay in the catalogue: their attributes
        # alone give them a score, so they can be recommended from day one.
        item_ids = pa.chunked_array([item_ids, *item_table.column(config.item_id_column).chunks])
    users = Vocabulary.from_arrow(train.user_ids())
    items = Vocabulary.from_arrow(item_ids)
    interactions, _ = index_encoded(train, users, items, row_encoding)
    del train
    user_table = (
        read_table(channels.users, channel="users", string_columns=(config.user_id_column,))
        if channels.users is not None
        else None
    )
    item_encoding, item_arrays = _encode(item_table, config.item_id_column, items, declaration, "items")
    user_encoding, user_arrays = _encode(user_table, config.user_id_column, users, declaration, "users")
    validation = None
    if channels.validation is not None:
        held = read_interactions(
            channels.validation, columns, channel="validation", min_rating=config.min_rating
        )
        validation, dropped = index_encoded(held, users, items, row_encoding)
        if dropped:
            logger.warning(
                "channel 'validation': %d of %d interactions name a user or item absent from 'train' "
                "and are not evaluated",
                dropped,
                validation.num_interactions + dropped,
            )
        if validation.num_interactions == 0:
            raise DataError(
                "channel 'validation': none of its interactions has both a user and an item seen in "
                "'train', so nothing can be evaluated. Check that both channels use the same ids."
            )
        if not (has_timestamps and held.has_timestamp) and validation.num_interactions:
            # Without times in both, the validation channel comes after training, as it should
            # (its "times" are row numbers, which would otherwise interleave with train's).
            has_timestamps = False
            offset = (
                float(interactions.timestamps.max(initial=0.0)) + 1.0 - float(validation.timestamps.min())
            )
            validation = replace(validation, timestamps=validation.timestamps + offset)
    counts = {"train": interactions.num_interactions, "users": len(users), "items": len(items)}
    labels = (
        label_columns(
            item_table, id_column=config.item_id_column, vocabulary=items, used=column_names(item_encoding)
        )
        if item_table is not None
        else None
    )
    return PreparedData(
        users,
        items,
        interactions,
        validation,
        item_encoding,
        item_arrays,
        user_encoding,
        user_arrays,
        fingerprint(channels, counts),
        labels,
        row_encoding,
        has_timestamps,
    )


def check_event_settings(config: TrainConfig, encoding: RowEncoding) -> None:
    """event_weights and target_event_types must name event types the data has."""
    named = {"event_weights": tuple(config.event_weights), "target_event_types": config.target_event_types}
    for setting, types in named.items():
        if not types:
            continue
        if encoding.event_column is None:
            raise DataError(
                f"hyperparameter {setting} names event types ({', '.join(types)}), but channel 'train' "
                f"has no event type column '{config.event_type_column}'. Add the column or set "
                f"event_type_column to the column that holds the event types."
            )
        unknown = [t for t in types if t not in encoding.event_types]
        if unknown:
            raise DataError(
                f"hyperparameter {setting} names the event type(s) {', '.join(map(repr, unknown))}, which "
                f"column '{encoding.event_column}' of channel 'train' never has; its event types are: "
                f"{', '.join(encoding.event_types)}."
            )


def event_code_arrays(
    config: TrainConfig, encoding: RowEncoding
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(loss weight, is a target) per event code, or None where every event is alike."""
    if encoding.event_column is None:
        return None, None
    weights = None
    if config.event_weights:
        weights = np.ones(encoding.num_event_codes, dtype=np.float32)
        for name, weight in config.event_weights.items():
            weights[encoding.event_code(name)] = weight
    targets = None
    if config.target_event_types:
        targets = np.zeros(encoding.num_event_codes, dtype=bool)
        for name in config.target_event_types:
            targets[encoding.event_code(name)] = True
    return weights, targets


def training_rows(config: TrainConfig, data: PreparedData, interactions: IndexedInteractions) -> RowArrays:
    weights, targets = event_code_arrays(config, data.row_encoding)
    return row_arrays(
        interactions,
        data.row_encoding,
        use_gaps=data.row_encoding.time_features,
        event_weights=weights,
        target_codes=targets,
    )


def only_targets(config: TrainConfig, data: PreparedData, held: IndexedInteractions) -> IndexedInteractions:
    """Held-out interactions of the target event types only (all of them without any)."""
    _, targets = event_code_arrays(config, data.row_encoding)
    if targets is None or held.events is None:
        return held
    return subset(held, targets[held.events])
