"""From a raw interaction table to clean, indexed, time-ordered positives."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.data.vocab import Vocabulary
from recsys.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InteractionColumns:
    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    timestamp: str = "timestamp"


@dataclass(frozen=True)
class InteractionFrame:
    """Positives as string ids with a float timestamp (epoch seconds, or row order when absent).

    One row per (user, item) pair, sorted by user, then time, then item.
    """

    frame: pd.DataFrame  # columns: user_id (str), item_id (str), timestamp (float64)
    has_timestamp: bool


def parse_timestamps(values: pd.Series, *, column: str, channel: str) -> pd.Series:
    """Epoch seconds as float64 from numbers, numeric strings or ISO 8601 strings."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return _epoch_seconds(pd.to_datetime(values, utc=True))
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    as_number = pd.to_numeric(values, errors="coerce")
    if as_number.notna().sum() == values.notna().sum():
        return as_number.astype("float64")
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    bad = values[parsed.isna() & values.notna()]
    if len(bad):
        raise DataError(
            f"channel '{channel}': column '{column}' has a value that is neither epoch seconds nor an "
            f"ISO 8601 time: {bad.iloc[0]!r} ({len(bad)} such rows). Fix the data or set the "
            f"hyperparameter timestamp_column to another column."
        )
    return _epoch_seconds(parsed)


def _epoch_seconds(times: pd.Series) -> pd.Series:
    # Dividing by a Timedelta is independent of the resolution (pandas 3 parses strings to
    # microseconds, Arrow timestamps keep their unit), and turns NaT into NaN, not int64 min.
    return (times - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def clean_interactions(
    table: pa.Table, columns: InteractionColumns, *, channel: str, min_rating: float | None
) -> InteractionFrame:
    """Select, validate, threshold and de-duplicate an interaction table."""
    names = table.column_names
    for role, name, setting in (
        ("user id", columns.user, "user_id_column"),
        ("item id", columns.item, "item_id_column"),
    ):
        if name not in names:
            raise DataError(
                f"channel '{channel}': the {role} column '{name}' was not found; columns present: "
                f"{', '.join(names)}. Set the hyperparameter {setting} to the right column."
            )
    frame = pd.DataFrame(
        {
            "user_id": table.column(columns.user).to_pandas().astype("string"),
            "item_id": table.column(columns.item).to_pandas().astype("string"),
        }
    )
    if min_rating is not None:
        if columns.rating not in names:
            raise DataError(
                f"channel '{channel}': min_rating is set but the rating column '{columns.rating}' was not "
                f"found; columns present: {', '.join(names)}. Set rating_column or unset min_rating."
            )
        ratings = pd.to_numeric(table.column(columns.rating).to_pandas(), errors="coerce")
        if ratings.isna().any():
            bad = table.column(columns.rating).to_pandas()[ratings.isna()].iloc[0]
            raise DataError(
                f"channel '{channel}': rating column '{columns.rating}' has a non-numeric or empty value "
                f"{bad!r}; min_rating needs a number in every row."
            )
        frame = frame[(ratings >= min_rating).to_numpy()]
        if frame.empty:
            raise DataError(
                f"channel '{channel}': no interaction has {columns.rating} >= min_rating={min_rating:g}; "
                f"lower min_rating."
            )
    has_timestamp = columns.timestamp in names
    if has_timestamp:
        stamps = parse_timestamps(
            table.column(columns.timestamp).to_pandas(), column=columns.timestamp, channel=channel
        )
        frame["timestamp"] = stamps.to_numpy()[frame.index.to_numpy()]
        if frame["timestamp"].isna().any():
            raise DataError(
                f"channel '{channel}': column '{columns.timestamp}' has empty values; every interaction "
                f"needs a time, or drop the column."
            )
    else:
        # Without timestamps the file order is the only notion of time we have.
        frame["timestamp"] = np.arange(len(frame), dtype="float64")
    missing = frame["user_id"].isna() | frame["item_id"].isna() | (frame["user_id"] == "")
    missing |= frame["item_id"] == ""
    if missing.all():
        raise DataError(f"channel '{channel}': every row has an empty user or item id.")
    if missing.any():
        logger.warning("channel '%s': skipped %d rows with an empty user or item id", channel, missing.sum())
        frame = frame[~missing.to_numpy()]
    frame = frame.astype({"user_id": str, "item_id": str})
    before = len(frame)
    # A pair seen several times is one positive, dated at its latest interaction.
    frame = frame.groupby(["user_id", "item_id"], as_index=False, sort=False).agg(
        timestamp=("timestamp", "max")
    )
    if len(frame) < before:
        logger.info("channel '%s': merged %d duplicate user-item pairs", channel, before - len(frame))
    frame = frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    return InteractionFrame(frame=frame, has_timestamp=has_timestamp)


@dataclass(frozen=True)
class IndexedInteractions:
    """Positives as indices, sorted by user then time: a CSR layout over users.

    ``items[indptr[u]:indptr[u+1]]`` are user u's items, oldest first.
    """

    users: np.ndarray  # [P] int64
    items: np.ndarray  # [P] int64
    timestamps: np.ndarray  # [P] float64
    indptr: np.ndarray  # [U+1] int64
    num_users: int
    num_items: int

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @classmethod
    def from_pairs(
        cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int
    ) -> IndexedInteractions:
        """Unique (user, item) index pairs, time taken as their sorted order (benchmarks and tests)."""
        pairs = np.unique(np.stack([users, items], 1).astype(np.int64), axis=0)
        indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(pairs[:, 0], minlength=num_users), out=indptr[1:])
        stamps = np.arange(len(pairs), dtype=np.float64)
        return cls(pairs[:, 0].copy(), pairs[:, 1].copy(), stamps, indptr, num_users, num_items)


def index_interactions(
    frame: pd.DataFrame, users: Vocabulary, items: Vocabulary
) -> tuple[IndexedInteractions, int]:
    """Index a clean frame; rows with an id outside the vocabularies are dropped and counted."""
    user_idx = users.lookup(frame["user_id"].tolist())
    item_idx = items.lookup(frame["item_id"].tolist())
    keep = (user_idx >= 0) & (item_idx >= 0)
    stamps = frame["timestamp"].to_numpy(dtype=np.float64)[keep]
    user_idx, item_idx = user_idx[keep], item_idx[keep]
    order = np.lexsort((item_idx, stamps, user_idx))
    user_idx, item_idx, stamps = user_idx[order], item_idx[order], stamps[order]
    counts = np.bincount(user_idx, minlength=len(users))
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return (
        IndexedInteractions(user_idx, item_idx, stamps, indptr, len(users), len(items)),
        int((~keep).sum()),
    )


def split_last_out(
    data: IndexedInteractions, *, min_history: int = 2
) -> tuple[IndexedInteractions, IndexedInteractions]:
    """Hold out each user's latest interaction; users with fewer than ``min_history`` keep all.

    Returns (train, held_out): both over the same vocabularies.
    """
    counts = np.diff(data.indptr)
    last = data.indptr[1:] - 1
    held = last[counts >= min_history]
    mask = np.ones(data.num_interactions, dtype=bool)
    mask[held] = False
    return _subset(data, mask), _subset(data, ~mask)


def _subset(data: IndexedInteractions, mask: np.ndarray) -> IndexedInteractions:
    users = data.users[mask]
    counts = np.bincount(users, minlength=data.num_users)
    indptr = np.zeros(data.num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return IndexedInteractions(
        users, data.items[mask], data.timestamps[mask], indptr, data.num_users, data.num_items
    )
