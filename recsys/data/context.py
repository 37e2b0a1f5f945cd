"""What is known about each event besides its user and item: its type, its time and its context.

Each interaction row may carry an event type (``click``, ``purchase``...) and declared context
columns (``device``, ``country``, a numeric ``price_seen``...). Their encodings are learnt from the
training channel and kept in the artifact (``RowEncoding.to_json``) so that serving encodes a
request's context with the same codes. Code 0 is always "missing or unseen": the model learns
one row for it, so a missing value, and a value training never saw, both have an embedding.

The time features are derived from the event's timestamp, in UTC:

- hour of day and day of week, as codes for embeddings rather than sine/cosine pairs: their
  effects are step-like (a lunch break, the weekend), a table of 24 + 7 rows is cheap, and a
  cyclic encoding would force neighbouring hours to behave alike;
- the gap between an event and the user's previous one, bucketised by log2 seconds: "the next
  minute" and "after a month" differ by orders of magnitude, and a bucket per doubling keeps
  the table at ``NUM_GAP_CODES`` rows.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from recsys.data.vocab import Vocabulary

HOUR_CODES = 25  # 0 unknown, 1 + hour (UTC)
WEEKDAY_CODES = 8  # 0 unknown, 1 + weekday (Monday = 0)
MAX_GAP_BUCKET = 30  # 2**30 s is 34 years
NUM_GAP_CODES = MAX_GAP_BUCKET + 2  # 0 unknown, 1 + floor(log2(1 + seconds)) clamped
TIME_CONTEXT_NAMES = ("hour", "weekday", "since_last_event")
TIME_CONTEXT_CARDINALITIES = (HOUR_CODES, WEEKDAY_CODES, NUM_GAP_CODES)


def hour_codes(seconds: np.ndarray) -> np.ndarray:
    """1 + UTC hour of epoch ``seconds``; 0 where unknown (NaN)."""
    known = np.isfinite(seconds)
    hours = np.floor(np.where(known, seconds, 0.0) / 3600.0) % 24
    return np.where(known, hours + 1, 0).astype(np.int32)


def weekday_codes(seconds: np.ndarray) -> np.ndarray:
    """1 + weekday (Monday = 0) of epoch ``seconds`` in UTC; 0 where unknown."""
    known = np.isfinite(seconds)
    # 1970-01-01 was a Thursday (weekday 3).
    days = (np.floor(np.where(known, seconds, 0.0) / 86400.0) + 3) % 7
    return np.where(known, days + 1, 0).astype(np.int32)


def gap_codes(gaps: np.ndarray) -> np.ndarray:
    """1 + floor(log2(1 + seconds)) of time gaps, clamped; 0 where unknown (NaN)."""
    known = np.isfinite(gaps)
    safe = np.maximum(np.where(known, gaps, 0.0), 0.0)
    buckets = np.minimum(np.floor(np.log2(1.0 + safe)), MAX_GAP_BUCKET)
    return np.where(known, buckets + 1, 0).astype(np.int32)


def previous_gaps(timestamps: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Seconds since the same user's previous event, per CSR row; NaN for each user's first."""
    gaps = np.full(len(timestamps), np.nan)
    if len(timestamps) > 1:
        gaps[1:] = timestamps[1:] - timestamps[:-1]
    firsts = indptr[:-1][np.diff(indptr) > 0]
    gaps[firsts] = np.nan
    return gaps


def time_context(timestamps: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """[P, 3] int32 codes (hour, weekday, since-last-event) of events at ``timestamps``."""
    return np.stack([hour_codes(timestamps), weekday_codes(timestamps), gap_codes(gaps)], axis=1)


def epoch_seconds(value: Any) -> float:
    """A moment as epoch seconds: a number of seconds, or ISO 8601 text (UTC unless it says).

    Raises ``ValueError`` naming what it got."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int past float's range: JSON allows any number of digits
            seconds = math.inf
        if not math.isfinite(seconds):
            shown = (
                repr(value)
                if len(repr(value)) <= 40
                else f"{repr(value)[:20]}... ({len(repr(value))} digits)"
            )
            raise ValueError(f"a timestamp must be a finite number of seconds; got {shown}")
        return seconds
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:  # float() also reads "inf" and "nan", which are no moment
            if not math.isfinite(seconds):
                raise ValueError(f"a timestamp must be a finite number of seconds; got {value!r}")
            return seconds
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"a timestamp is epoch seconds or ISO 8601 (2026-12-02T18:30:00Z); got {value!r}"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    raise ValueError(f"a timestamp is epoch seconds or ISO 8601 text; got {value!r}")


@dataclass(frozen=True)
class NumericContext:
    name: str
    mean: float
    std: float


@dataclass(frozen=True)
class RowEncoding:
    """The codes of event types and context columns, learnt from the training channel."""

    event_column: str | None  # None: the data has no event types
    event_types: tuple[str, ...]  # code i + 1 is event_types[i]
    categorical: tuple[tuple[str, tuple[str, ...]], ...]  # (column, values): code i + 1 is values[i]
    numeric: tuple[NumericContext, ...]
    time_features: bool  # hour, weekday and since-last-event codes come first in the context

    @property
    def num_event_codes(self) -> int:
        return len(self.event_types) + 1 if self.event_column is not None else 0

    @property
    def context_names(self) -> tuple[str, ...]:
        time = TIME_CONTEXT_NAMES if self.time_features else ()
        return time + tuple(name for name, _ in self.categorical)

    @property
    def context_cardinalities(self) -> tuple[int, ...]:
        time = TIME_CONTEXT_CARDINALITIES if self.time_features else ()
        return time + tuple(len(values) + 1 for _, values in self.categorical)

    @property
    def context_columns(self) -> tuple[str, ...]:
        """The declared context columns, as a request names them."""
        return tuple(name for name, _ in self.categorical) + tuple(c.name for c in self.numeric)

    def event_code(self, value: str) -> int:
        try:
            return self.event_types.index(value) + 1
        except ValueError:
            return 0

    def to_json(self) -> dict[str, Any]:
        return {
            "event_column": self.event_column,
            "event_types": list(self.event_types),
            "categorical": [[name, list(values)] for name, values in self.categorical],
            "numeric": [[c.name, c.mean, c.std] for c in self.numeric],
            "time_features": self.time_features,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RowEncoding:
        return cls(
            raw["event_column"],
            tuple(raw["event_types"]),
            tuple((name, tuple(values)) for name, values in raw["categorical"]),
            tuple(NumericContext(name, float(mean), float(std)) for name, mean, std in raw["numeric"]),
            bool(raw["time_features"]),
        )

    @classmethod
    def empty(cls) -> RowEncoding:
        return cls(None, (), (), (), False)


def value_codes(codes: np.ndarray, values: pa.StringArray, vocabulary: Vocabulary) -> np.ndarray:
    """A channel's value codes (-1 missing) as codes of ``vocabulary`` + 1; 0 missing or unseen."""
    positions = vocabulary.lookup_array(values).astype(np.int64) + 1  # -1 (unseen) becomes 0
    out = np.zeros(len(codes), dtype=np.int32)
    present = codes >= 0
    out[present] = positions[codes[present]]
    return out


def standardise(values: np.ndarray, column: NumericContext) -> np.ndarray:
    """Standardised values as float32, NaN kept where missing."""
    return ((values - column.mean) / column.std).astype(np.float32)
