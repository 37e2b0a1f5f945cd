"""From raw interaction rows to clean, indexed, time-ordered positives.

One set of rules, applied batch by batch so that a channel never has to fit in memory as a
table (``read_interactions`` streams it through ``open_channel``; ``encode_batches`` runs the
same code on batches already in memory):

- the user and item id columns must exist; ids are opaque text; a row with an empty or null id
  is skipped (and counted), and so is one whose id holds a NUL byte (corrupt data, not an id:
  the log names the first such row and its file);
- with ``min_rating``, every rating must be a number and only rows with ``rating >= min_rating``
  are positives;
- times are epoch seconds (numbers, numeric strings, ISO 8601 strings, Arrow timestamps or
  dates); each part of a channel may write them its own way (even value by value), and one
  moment is one float64 however it is written; without a time column the row order is time;
- a (user, item) pair seen several times is one positive, dated at its latest time, with its
  latest row's event type and context, and a bitmask of every event type its rows had (an item
  bought, then clicked, was still bought);
- positives are ordered by user, then time, then item.

Ids never become one Python object per row: each batch's id column is dictionary-encoded by
Arrow, the batches' dictionaries are unified once, and rows carry int32 codes from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recsys.data.context import NumericContext, RowEncoding, standardise, value_codes
from recsys.data.io import DEFAULT_BATCH_ROWS, open_channel, open_path
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError

logger = logging.getLogger(__name__)

# Ticks per second of each Arrow timestamp unit.
_TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_ID_TYPE = pa.dictionary(pa.int32(), pa.string())
# What Arrow can parse time text as: epoch seconds, ISO 8601 with a zone, ISO 8601 without one.
_TEXT_TYPES = (pa.float64(), pa.timestamp("ns", tz="UTC"), pa.timestamp("ns"))
_SNIFF_ROWS = 64


@dataclass(frozen=True)
class InteractionColumns:
    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    timestamp: str = "timestamp"
    event_type: str = "event_type"  # optional: used when present
    context: tuple[str, ...] = ()  # declared context columns: each must be present
    numeric_context: tuple[str, ...] = ()  # of ``context``, read as numbers even when stored as text


@dataclass(frozen=True)
class RowValues:
    """One channel's per-row event types and context values, rows as in ``EncodedInteractions``."""

    categorical: dict[str, tuple[np.ndarray, pa.StringArray]]  # column -> (codes, -1 missing; values)
    numeric: dict[str, np.ndarray]  # column -> float64 values, NaN missing

    @property
    def is_empty(self) -> bool:
        return not self.categorical and not self.numeric

    def take(self, rows: np.ndarray) -> RowValues:
        return RowValues(
            {name: (codes[rows], values) for name, (codes, values) in self.categorical.items()},
            {name: values[rows] for name, values in self.numeric.items()},
        )


@dataclass(frozen=True)
class EncodedInteractions:
    """Every kept row of a channel, ids as codes into the channel's distinct ids.

    Rows are in channel order, not yet merged (a pair may repeat) nor ordered. ``user_values`` /
    ``item_values`` may hold ids whose rows were all filtered out (``min_rating``): the
    vocabularies take only the ids that rows use.
    """

    channel: str
    user_codes: np.ndarray  # [R] int32 into user_values
    item_codes: np.ndarray  # [R] int32 into item_values
    timestamps: np.ndarray  # [R] float64 epoch seconds (or row order)
    user_values: pa.StringArray
    item_values: pa.StringArray
    has_timestamp: bool
    rows: RowValues = field(default_factory=lambda: RowValues({}, {}))

    @property
    def num_rows(self) -> int:
        return len(self.user_codes)

    @property
    def nbytes(self) -> int:
        return int(self.user_codes.nbytes + self.item_codes.nbytes + self.timestamps.nbytes)

    def user_ids(self) -> pa.StringArray:
        """The distinct user ids that rows use."""
        return _used(self.user_values, self.user_codes)

    def item_ids(self) -> pa.StringArray:
        """The distinct item ids that rows use."""
        return _used(self.item_values, self.item_codes)


def _used(values: pa.StringArray, codes: np.ndarray) -> pa.StringArray:
    used = np.bincount(codes, minlength=len(values)) > 0
    return values if used.all() else values.filter(pa.array(used))


def _parse_text(values: pd.Series) -> tuple[np.ndarray, Any, int]:
    """(epoch seconds, NaN where null; the first value that is no time; how many such values).

    Each value on its own: a number is epoch seconds, anything else must be ISO 8601 (with or
    without a zone; naive means UTC), so a column may mix both.
    """
    seconds = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, copy=True)
    rest = np.isnan(seconds) & values.notna().to_numpy()
    if not rest.any():
        return seconds, None, 0
    texts = values[rest]
    parsed = pd.to_datetime(texts, utc=True, errors="coerce", format="ISO8601")
    bad = texts[parsed.isna()]
    if len(bad):
        return np.zeros(0), bad.iloc[0], len(bad)
    # Every parsed value is a time (no NaT left): naive UTC datetimes, Arrow's timestamp.
    seconds[rest] = _timestamp_seconds(pa.array(parsed.dt.tz_convert(None).to_numpy()))
    return seconds, None, 0


def _timestamp_seconds(array: pa.Array) -> np.ndarray:
    """Epoch seconds of an Arrow timestamp array as float64, NaN for nulls; naive means UTC.

    Whole seconds (exact in float64) plus the fraction: the double nearest the true time, the
    same one that parsing "1700000000.123" gives. ``ticks / 1e9`` would round twice (ns ticks
    exceed 2**53) and differ in the last bit, so one moment written as a number in one part and
    as a time in another would be two times.
    """
    # An aware timestamp stores UTC ticks; a naive one is read as UTC.
    ticks = pc.cast(array, pa.int64())
    values = np.asarray(pc.fill_null(ticks, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    per_second = _TICKS_PER_SECOND[array.type.unit]
    whole, fraction = np.divmod(values, per_second)
    seconds = whole.astype(np.float64)
    if per_second > 1:
        seconds += fraction / per_second
    if ticks.null_count:
        seconds[np.asarray(ticks.is_null().to_numpy(zero_copy_only=False), dtype=bool)] = np.nan
    return seconds


def _bad_timestamp(bad: Any, count: int, source: Path | None, *, column: str, channel: str) -> DataError:
    where = f", the first in {source}" if source is not None else ""
    return DataError(
        f"channel '{channel}': column '{column}' has a value that is neither epoch seconds nor an "
        f"ISO 8601 time: {bad!r} ({count} such rows){where}. Fix the data or set the "
        f"hyperparameter timestamp_column to another column."
    )


def _decoded(array: pa.Array) -> pa.Array:
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _to_numpy(array: pa.Array) -> np.ndarray:
    """float64 values with NaN for nulls."""
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float64)


def _is_number(kind: pa.DataType) -> bool:
    """Whether Arrow casts ``kind`` to float64 as it is (a null column gives NaN)."""
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _numbers(array: pa.Array) -> np.ndarray:
    # Unsafe: an int64 beyond 2**53 becomes the nearest double instead of an error.
    return _to_numpy(pc.cast(array, pa.float64(), safe=False))


def _where(source: Path | None) -> str:
    return f" in {source}" if source is not None else ""


def _batch_timestamps(
    array: pa.Array, *, column: str, channel: str, source: Path | None
) -> tuple[np.ndarray, Any, int]:
    """A batch's times as epoch seconds, whatever Arrow type its file gave the column.

    Numbers (and numeric text) are epoch seconds; Arrow timestamps of any unit, naive (UTC) or
    aware, and dates give their instant; other text must be ISO 8601. Returns (seconds; the
    first value that is no time and how many, for the caller to report once).
    """
    array = _decoded(array)
    kind = array.type
    if pa.types.is_date(kind):
        array, kind = pc.cast(array, pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(kind):
        return _timestamp_seconds(array), None, 0
    if _is_number(kind):
        return _numbers(array), None, 0
    if not _is_text(kind):
        raise DataError(
            f"channel '{channel}': column '{column}'{_where(source)} has type {kind}, which is "
            f"neither epoch seconds nor a time. Fix the data or set the hyperparameter "
            f"timestamp_column to another column."
        )
    # Numeric text, or ISO 8601 text whose values all have a zone (or all have none): Arrow parses
    # a million in ~20 ms where pandas takes ~1 s. A failing cast of a whole batch costs about as
    # much as pandas, so the batch's head picks the casts worth trying. Anything else (numbers
    # and times mixed, " 12", a year past 2262) goes to pandas' rules.
    head = array.slice(0, _SNIFF_ROWS)
    for target in _TEXT_TYPES:
        try:
            pc.cast(head, target)
            converted = pc.cast(array, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if pa.types.is_timestamp(target):
            return _timestamp_seconds(converted), None, 0
        return _to_numpy(converted), None, 0
    return _parse_text(array.to_pandas())


def _batch_ratings(array: pa.Array, *, column: str, channel: str, source: Path | None) -> np.ndarray:
    """A batch's ratings as float64, from numbers or numeric text in whatever type its file gave
    the column; any value that is not a number is an error naming it."""
    array = _decoded(array)
    kind = array.type
    values: np.ndarray | None = None
    if _is_number(kind):
        values = _numbers(array)
    elif _is_text(kind):
        try:
            values = _to_numpy(pc.cast(array, pa.float64()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # Numbers Arrow does not parse (" 4"): pandas' rules decide, NaN for the rest.
            values = pd.to_numeric(array.to_pandas(), errors="coerce").to_numpy(np.float64)
    else:
        raise DataError(
            f"channel '{channel}': rating column '{column}'{_where(source)} has type {kind}, which "
            f"is not a number; min_rating needs a number in every row."
        )
    bad = np.isnan(values)
    if bad.any():
        value = array.slice(int(np.argmax(bad)), 1).to_pandas().iloc[0]
        raise DataError(
            f"channel '{channel}': rating column '{column}' has a non-numeric or empty value "
            f"{value!r}{_where(source)}; min_rating needs a number in every row."
        )
    return values


def _id_codes(
    array: pa.Array, *, column: str, channel: str, source: Path | None
) -> tuple[np.ndarray, np.ndarray, pa.StringArray]:
    """(codes int32, missing bool, dictionary) of an id column; null and "" are missing."""
    if not pa.types.is_dictionary(array.type):
        if not pa.types.is_string(array.type):
            try:
                array = pc.cast(array, pa.string())
            except (pa.ArrowException, ValueError, TypeError) as error:
                raise DataError(
                    f"channel '{channel}': id column '{column}'{_where(source)} has type {array.type}, "
                    f"which cannot be read as text."
                ) from error
        array = pc.dictionary_encode(array)
    dictionary = array.dictionary
    if dictionary.type != pa.string():
        dictionary = pc.cast(dictionary, pa.string())
    indices = array.indices
    missing = np.asarray(indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    codes = np.asarray(pc.fill_null(indices, 0).to_numpy(zero_copy_only=False), dtype=np.int32)
    empty = np.asarray(pc.equal(dictionary, "").to_numpy(zero_copy_only=False), dtype=bool)
    if len(dictionary) and empty.any():
        missing |= empty[codes]
    return codes, missing, dictionary


def _nul_ids(codes: np.ndarray, missing: np.ndarray, dictionary: pa.StringArray) -> np.ndarray:
    """Rows whose (present) id holds a NUL byte; looked for in the distinct ids, not per row."""
    if not len(dictionary):
        return np.zeros(len(codes), dtype=bool)
    nul = np.asarray(
        pc.fill_null(pc.match_substring(dictionary, "\x00"), False).to_numpy(zero_copy_only=False), dtype=bool
    )
    if not nul.any():
        return np.zeros(len(codes), dtype=bool)
    rows: np.ndarray = nul[codes] & ~missing
    return rows


class _Encoder:
    """Applies the rules batch by batch; ``finish`` checks what needs every batch and unifies ids."""

    def __init__(
        self,
        column_names: Sequence[str],
        columns: InteractionColumns,
        *,
        channel: str,
        min_rating: float | None,
    ) -> None:
        names = list(column_names)
        for role, name, setting in (
            ("user id", columns.user, "user_id_column"),
            ("item id", columns.item, "item_id_column"),
        ):
            if name not in names:
                raise DataError(
                    f"channel '{channel}': the {role} column '{name}' was not found; columns present: "
                    f"{', '.join(names)}. Set the hyperparameter {setting} to the right column."
                )
        if min_rating is not None and columns.rating not in names:
            raise DataError(
                f"channel '{channel}': min_rating is set but the rating column '{columns.rating}' was not "
                f"found; columns present: {', '.join(names)}. Set rating_column or unset min_rating."
            )
        missing_context = [name for name in columns.context if name not in names]
        if missing_context:
            raise DataError(
                f"channel '{channel}': the context column(s) {', '.join(map(repr, missing_context))} "
                f"named by the hyperparameter context_columns were not found; columns present: "
                f"{', '.join(names)}."
            )
        self.columns, self.channel, self.min_rating = columns, channel, min_rating
        self.has_timestamp = columns.timestamp in names
        self.needed = [columns.user, columns.item]
        if min_rating is not None:
            self.needed.append(columns.rating)
        if self.has_timestamp:
            self.needed.append(columns.timestamp)
        # The event type is optional: a table without the column simply has no event types.
        self.row_columns = ([columns.event_type] if columns.event_type in names else []) + [
            name for name in columns.context if name not in self.needed
        ]
        self.needed += [name for name in self.row_columns if name not in self.needed]
        self._row_kinds: dict[str, str] = {}  # column -> "categorical" | "numeric", from its first batch
        self._row_codes: dict[str, list[pa.DictionaryArray]] = {}
        self._row_missing: dict[str, list[np.ndarray]] = {}
        self._row_numbers: dict[str, list[np.ndarray]] = {}
        self._users: list[pa.DictionaryArray] = []
        self._items: list[pa.DictionaryArray] = []
        self._stamps: list[np.ndarray] = []
        self._passed = 0  # rows that pass min_rating (all rows without it)
        self._missing = 0  # of those, rows with an empty user or item id
        self._nul = 0  # of those, rows with a user or item id that holds a NUL byte (and no empty one)
        self._first_nul: tuple[int, Path | None] | None = None  # (its row, 1-based in its file; the file)
        self._rows_read: dict[Path | None, int] = {}  # rows of each file before the next batch
        # (first value that is no time, how many such values, the file of the first)
        self._bad_stamp: tuple[Any, int, Path | None] | None = None
        self._empty_stamp: tuple[Path | None] | None = None  # (the file of the first empty time)

    def add(self, batch: pa.RecordBatch, source: Path | None = None) -> None:
        """Apply the rules to one batch; ``source``, its file, is named in errors about its values."""
        columns = self.columns
        first_row = self._rows_read.get(source, 0)
        self._rows_read[source] = first_row + batch.num_rows
        keep: np.ndarray | None = None
        if self.min_rating is not None:
            ratings = _batch_ratings(
                batch.column(columns.rating), column=columns.rating, channel=self.channel, source=source
            )
            keep = ratings >= self.min_rating
        passed = batch.num_rows if keep is None else int(keep.sum())
        offset, self._passed = self._passed, self._passed + passed
        if self.has_timestamp:
            stamps, bad, count = _batch_timestamps(
                batch.column(columns.timestamp), column=columns.timestamp, channel=self.channel, source=source
            )
            if count or self._bad_stamp is not None:
                # Keep reading only to count: the error names the first bad value and how many.
                first, total, first_source = self._bad_stamp or (bad, 0, source)
                self._bad_stamp = (first, total + count, first_source)
                return
            if keep is not None:
                stamps = stamps[keep]
            if self._empty_stamp is None and np.isnan(stamps).any():
                self._empty_stamp = (source,)
        else:
            # Without timestamps the file order is the only notion of time we have.
            stamps = np.arange(offset, offset + passed, dtype=np.float64)
        user_codes, user_missing, user_values = _id_codes(
            batch.column(columns.user), column=columns.user, channel=self.channel, source=source
        )
        item_codes, item_missing, item_values = _id_codes(
            batch.column(columns.item), column=columns.item, channel=self.channel, source=source
        )
        empty = user_missing | item_missing
        nul = (
            _nul_ids(user_codes, user_missing, user_values) | _nul_ids(item_codes, item_missing, item_values)
        ) & ~empty
        if keep is not None:
            empty &= keep
            nul &= keep
        self._missing += int(empty.sum())
        if nul.any():
            self._nul += int(nul.sum())
            if self._first_nul is None:
                self._first_nul = (first_row + int(np.argmax(nul)) + 1, source)
        valid = ~(user_missing | item_missing) & ~nul
        if keep is not None:
            valid &= keep
            stamps = stamps[valid[keep]]
        else:
            stamps = stamps[valid]
        self._users.append(pa.DictionaryArray.from_arrays(pa.array(user_codes[valid]), user_values))
        self._items.append(pa.DictionaryArray.from_arrays(pa.array(item_codes[valid]), item_values))
        self._stamps.append(stamps)
        for name in self.row_columns:
            self._add_row_column(name, batch.column(name).filter(pa.array(valid)), source)

    def _add_row_column(self, name: str, array: pa.Array, source: Path | None) -> None:
        """One batch of an event-type or context column: text as codes, numbers as float64."""
        array = _decoded(array)
        kind = self._row_kinds.get(name)
        if kind is None:
            # The event type is a label whatever its type; a context column is numeric when it is
            # declared so (CSV holds only text) or when its first batch holds numbers.
            numeric = name != self.columns.event_type and (
                name in self.columns.numeric_context
                or (_is_number(array.type) and not pa.types.is_null(array.type))
            )
            kind = self._row_kinds[name] = "numeric" if numeric else "categorical"
        if kind == "numeric":
            if _is_number(array.type):
                values = _numbers(array)
            else:
                values = pd.to_numeric(
                    pd.Series(array.to_pandas()).replace("", None), errors="coerce"
                ).to_numpy(np.float64)
                bad = np.isnan(values) & ~np.asarray(
                    pc.fill_null(pc.equal(pc.cast(array, pa.string()), ""), True).to_numpy(
                        zero_copy_only=False
                    ),
                    dtype=bool,
                )
                if bad.any():
                    value = array.slice(int(np.argmax(bad)), 1).to_pylist()[0]
                    why = (
                        "is declared numeric (numeric_context_columns)"
                        if name in self.columns.numeric_context
                        else "is numeric in its first rows"
                    )
                    raise DataError(
                        f"channel '{self.channel}': context column '{name}'{_where(source)} {why} but has "
                        f"the value {value!r}. Make every value a number (or empty), or write the column "
                        f"as text (and leave it out of numeric_context_columns) to treat it as categorical."
                    )
            self._row_numbers.setdefault(name, []).append(values)
            return
        codes, missing, dictionary = _id_codes(array, column=name, channel=self.channel, source=source)
        self._row_codes.setdefault(name, []).append(
            pa.DictionaryArray.from_arrays(pa.array(codes), dictionary)
        )
        self._row_missing.setdefault(name, []).append(missing)

    def finish(self) -> EncodedInteractions:
        channel, columns = self.channel, self.columns
        if self.min_rating is not None and self._passed == 0:
            raise DataError(
                f"channel '{channel}': no interaction has {columns.rating} >= "
                f"min_rating={self.min_rating:g}; lower min_rating."
            )
        if self._bad_stamp is not None:
            raise _bad_timestamp(*self._bad_stamp, column=columns.timestamp, channel=channel)
        if self._empty_stamp is not None:
            (source,) = self._empty_stamp
            where = f" (the first in {source})" if source is not None else ""
            raise DataError(
                f"channel '{channel}': column '{columns.timestamp}' has empty values{where}; every "
                f"interaction needs a time, or drop the column."
            )
        nul_where = ""
        if self._first_nul is not None:
            row, source = self._first_nul
            nul_where = f"row {row} of {source}" if source is not None else f"row {row}"
        if self._missing + self._nul == self._passed:
            either = f", or one that holds a NUL byte (the first: {nul_where})" if self._nul else ""
            raise DataError(f"channel '{channel}': every row has an empty user or item id{either}.")
        if self._missing:
            logger.warning(
                "channel '%s': skipped %d rows with an empty user or item id", channel, self._missing
            )
        if self._nul:
            logger.warning(
                "channel '%s': skipped %d rows whose user or item id holds a NUL byte, the first at %s "
                "(data rows counted from 1); such bytes mean a corrupt or mis-encoded file",
                channel,
                self._nul,
                nul_where,
            )
        user_codes, user_values = _unify(self._users)
        item_codes, item_values = _unify(self._items)
        stamps = np.concatenate(self._stamps)
        self._users, self._items, self._stamps = [], [], []
        categorical: dict[str, tuple[np.ndarray, pa.StringArray]] = {}
        for name, chunks in self._row_codes.items():
            codes, values = _unify(chunks)
            codes[np.concatenate(self._row_missing[name])] = -1
            categorical[name] = (codes, values)
        numeric = {name: np.concatenate(parts) for name, parts in self._row_numbers.items()}
        return EncodedInteractions(
            channel,
            user_codes,
            item_codes,
            stamps,
            user_values,
            item_values,
            self.has_timestamp,
            RowValues(categorical, numeric),
        )


def _unify(chunks: list[pa.DictionaryArray]) -> tuple[np.ndarray, pa.StringArray]:
    """One dictionary for every batch (Arrow's memo table), the rows' codes into it as int32."""
    unified = pa.chunked_array(chunks, type=_ID_TYPE).unify_dictionaries()
    chunks.clear()  # the per-batch codes go as soon as the unified ones exist
    codes = np.empty(len(unified), dtype=np.int32)
    start = 0
    for chunk in unified.chunks:
        codes[start : start + len(chunk)] = chunk.indices.to_numpy()
        start += len(chunk)
    values = unified.chunk(0).dictionary if unified.num_chunks else pa.array([], pa.string())
    return codes, values


def encode_batches(
    column_names: Sequence[str],
    batches: Iterable[pa.RecordBatch],
    columns: InteractionColumns,
    *,
    channel: str,
    min_rating: float | None,
) -> EncodedInteractions:
    """Apply the rules to record batches holding (at least) the columns they need."""
    encoder = _Encoder(column_names, columns, channel=channel, min_rating=min_rating)
    for batch in batches:
        encoder.add(batch.select(encoder.needed))
    return encoder.finish()


def read_interactions(
    directory: Path,
    columns: InteractionColumns,
    *,
    channel: str,
    min_rating: float | None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    allow_file: bool = False,
) -> EncodedInteractions:
    """Stream a channel's files through the rules: memory holds codes, not the table.

    With ``allow_file`` (command-line use), ``directory`` may also be a single data file; a
    channel of a job must be a directory, and a file there is refused by name."""
    open_scan = open_path if allow_file else open_channel
    scan = open_scan(directory, channel=channel, string_columns=(columns.user, columns.item))
    encoder = _Encoder(scan.column_names, columns, channel=channel, min_rating=min_rating)
    # Each part keeps its own types (a Parquet timestamp, JSON Lines text): the batch converters
    # take whatever arrives, so a channel may mix formats and encodings part by part.
    for path, batch in scan.batches_with_paths(encoder.needed, batch_rows=batch_rows):
        encoder.add(batch, path)
    encoded = encoder.finish()
    # The batches' buffers are free now; mimalloc keeps such pages mapped unless asked.
    pa.default_memory_pool().release_unused()
    # A job's log names each channel's rows; a single file is a command line's, whose command
    # prints its own summary first (``recsys evaluate``), so it is said only with -v.
    logger.log(
        logging.DEBUG if directory.is_file() else logging.INFO,
        "channel '%s': %d rows kept from %d file(s) in %s",
        channel,
        encoded.num_rows,
        len(scan.files),
        directory,
    )
    return encoded


def index_dtype(size: int) -> type[np.signedinteger[Any]]:
    """int32 for indices below ``size`` where it fits (it always does for real vocabularies)."""
    return np.int32 if size <= np.iinfo(np.int32).max else np.int64


@dataclass(frozen=True)
class IndexedInteractions:
    """Positives as indices, sorted by user then time: a CSR layout over users.

    ``items[indptr[u]:indptr[u+1]]`` are user u's items, oldest first. Indices are int32 (4 bytes
    a row instead of 8: 50M interactions take 200 MB per column).
    """

    users: np.ndarray  # [P] int32
    items: np.ndarray  # [P] int32
    timestamps: np.ndarray  # [P] float64
    indptr: np.ndarray  # [U+1] int64
    num_users: int
    num_items: int
    events: np.ndarray | None = None  # [P] int16 event-type codes (RowEncoding), 0 unknown
    context: np.ndarray | None = None  # [P, C] int32 codes of the categorical context columns
    context_numeric: np.ndarray | None = None  # [P, Cn] float32 standardised, NaN missing
    # [P] unsigned bitmask (event_mask_dtype): bit c set when any row of the pair had event code
    # c. ``events`` keeps only the latest row's type; exclusion by event type needs them all.
    event_masks: np.ndarray | None = None

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays: what the interactions cost in memory."""
        return int(self.users.nbytes + self.items.nbytes + self.timestamps.nbytes + self.indptr.nbytes)

    @classmethod
    def from_pairs(
        cls, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int
    ) -> IndexedInteractions:
        """Unique (user, item) index pairs, time taken as their sorted order (benchmarks and tests)."""
        pairs = np.unique(np.stack([users, items], 1).astype(np.int64), axis=0)
        stamps = np.arange(len(pairs), dtype=np.float64)
        return cls(
            pairs[:, 0].astype(index_dtype(num_users)),
            pairs[:, 1].astype(index_dtype(num_items)),
            stamps,
            _indptr(pairs[:, 0], num_users),
            num_users,
            num_items,
        )


def _indptr(users: np.ndarray, num_users: int) -> np.ndarray:
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return indptr


def _stable_sort(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys, the order that sorts them), ties in their original order."""
    # torch's CPU sort of integer keys is a parallel radix sort: 50M int64 keys in ~2 s on two
    # cores, where numpy's argsort takes ~25 s and np.lexsort of three keys a minute.
    result = torch.sort(torch.from_numpy(keys), stable=True)
    return result.values.numpy(), result.indices.numpy()


def _time_keys(stamps: np.ndarray) -> np.ndarray:
    """int64 keys that sort like the float64 times (IEEE 754 bits, negatives flipped)."""
    bits = (stamps + 0.0).view(np.int64)  # + 0.0 turns -0.0 into 0.0
    return bits ^ ((bits >> 63) & np.int64(0x7FFF_FFFF_FFFF_FFFF))


def _order_rows(
    users: np.ndarray,
    items: np.ndarray,
    stamps: np.ndarray,
    num_items: int,
    *,
    rows: bool,
    masks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, int]:
    """Rows ordered by (user, time, item), one per pair at its latest time.

    Three stable sorts: by pair (which also puts a pair's repeats side by side), by time, by
    user. A stable sort keeps the previous order among ties, so equal times stay in item order.
    Returns (users, items, times, with ``rows`` each kept row's index in the input, with
    ``masks`` (one event-type bitmask per input row) each pair's masks OR-ed together, rows
    merged away). With ``rows``, the rows are put in time order first, so that the row a merged
    pair keeps is its latest one (whose event type and context then describe the positive)."""
    pre: np.ndarray | None = None
    if rows:
        pre = _stable_sort(_time_keys(stamps))[1]
        users, items, stamps = users[pre], items[pre], stamps[pre]
        if masks is not None:
            masks = masks[pre]
    # Arrays are deleted as soon as they are used: at 50M rows each one is 200-400 MB.
    pairs, by_pair = _stable_sort(users.astype(np.int64) * max(num_items, 1) + items)
    stamps = stamps[by_pair]
    if masks is not None:
        masks = masks[by_pair]
    merged = 0
    if len(pairs) > 1:
        last = np.empty(len(pairs), dtype=bool)
        np.not_equal(pairs[1:], pairs[:-1], out=last[:-1])
        last[-1] = True
        merged = len(pairs) - int(last.sum())
        if merged:
            first = np.flatnonzero(np.concatenate(([True], last[:-1])))
            stamps = np.maximum.reduceat(stamps, first)
            if masks is not None:
                masks = np.bitwise_or.reduceat(masks, first)
            by_pair = by_pair[last]
    del pairs
    users, items = users[by_pair], items[by_pair]
    if not rows:
        del by_pair
    by_time = _stable_sort(_time_keys(stamps))[1]
    order = by_time[_stable_sort(users[by_time])[1]]
    del by_time
    kept: np.ndarray | None = None
    if rows:
        kept = by_pair[order]
        if pre is not None:
            kept = pre[kept]
    return users[order], items[order], stamps[order], kept, None if masks is None else masks[order], merged


def _positions(values: pa.StringArray, vocabulary: Vocabulary) -> np.ndarray:
    """Each value's index in ``vocabulary``; the unknown ones get len(vocabulary), +1, +2, ...

    Unknown ids keep distinct indices so that their repeated pairs merge like any other, and
    sort after every known one, where they are cut off.
    """
    found = vocabulary.lookup_array(values)
    unknown = found < 0
    found[unknown] = len(vocabulary) + np.arange(int(unknown.sum()), dtype=np.int32)
    return found


def index_encoded(
    encoded: EncodedInteractions,
    users: Vocabulary,
    items: Vocabulary,
    row_encoding: RowEncoding | None = None,
) -> tuple[IndexedInteractions, int]:
    """Merge repeats, index, order. Pairs with an id outside the vocabularies are dropped and counted.

    With ``row_encoding`` (learnt from the training channel by ``fit_row_encoding``), each positive
    carries the event type and context codes of its latest row, and the bitmask of every event
    type its rows had."""
    dtype = index_dtype(max(len(users), len(items)) + max(len(encoded.user_values), len(encoded.item_values)))
    user_index = _positions(encoded.user_values, users).astype(dtype, copy=False)[encoded.user_codes]
    item_index = _positions(encoded.item_values, items).astype(dtype, copy=False)[encoded.item_codes]
    num_item_positions = len(items) + len(encoded.item_values)
    with_rows = row_encoding is not None and not encoded.rows.is_empty
    row_masks = _row_event_masks(encoded.rows, row_encoding) if row_encoding is not None else None
    user_index, item_index, stamps, rows, masks, merged = _order_rows(
        user_index, item_index, encoded.timestamps, num_item_positions, rows=with_rows, masks=row_masks
    )
    del row_masks
    if merged:
        logger.info("channel '%s': merged %d duplicate user-item pairs", encoded.channel, merged)
    keep = (user_index < len(users)) & (item_index < len(items))
    dropped = len(keep) - int(keep.sum())
    if dropped:
        user_index, item_index, stamps = user_index[keep], item_index[keep], stamps[keep]
        if rows is not None:
            rows = rows[keep]
        if masks is not None:
            masks = masks[keep]
    indexed = _indexed(user_index, item_index, stamps, len(users), len(items))
    if rows is not None and row_encoding is not None:
        indexed = _with_row_codes(indexed, encoded.rows.take(rows), row_encoding)
    if masks is not None:
        indexed = replace(indexed, event_masks=masks)
    return indexed, dropped


def event_mask_dtype(num_event_codes: int) -> type[np.unsignedinteger[Any]] | None:
    """The narrowest unsigned type with a bit per event code (code 0, "unknown", included); None
    past 64 codes, where a pair keeps its latest event type only (``IndexedInteractions.events``)."""
    for kind in (np.uint8, np.uint16, np.uint32, np.uint64):
        if num_event_codes <= np.iinfo(kind).bits:
            return kind
    return None


def _row_event_masks(rows: RowValues, encoding: RowEncoding) -> np.ndarray | None:
    """One bitmask per row, its event code's bit set; None without event types or past 64 codes."""
    if encoding.event_column is None or encoding.event_column not in rows.categorical:
        return None
    kind = event_mask_dtype(encoding.num_event_codes)
    if kind is None:
        logger.warning(
            "%d event types: too many to record every type of a user-item pair; exclude_event_types "
            "will judge a pair by its latest event",
            len(encoding.event_types),
        )
        return None
    codes, values = rows.categorical[encoding.event_column]
    shifts = value_codes(codes, values, Vocabulary(encoding.event_types)).astype(kind)
    masks: np.ndarray = np.left_shift(kind(1), shifts)
    return masks


def fit_row_encoding(
    encoded: EncodedInteractions, columns: InteractionColumns, *, time_features: bool
) -> RowEncoding:
    """The event-type and context codes of the training channel's values (sorted, so stable)."""
    rows = encoded.rows
    event_types: tuple[str, ...] = ()
    event_column = None
    if columns.event_type in rows.categorical:
        codes, values = rows.categorical[columns.event_type]
        event_column = columns.event_type
        event_types = tuple(sorted(str(v) for v in _used(values, codes[codes >= 0]).to_pylist()))
    categorical = []
    numeric = []
    for name in columns.context:
        if name in rows.categorical:
            codes, values = rows.categorical[name]
            categorical.append(
                (name, tuple(sorted(str(v) for v in _used(values, codes[codes >= 0]).to_pylist())))
            )
        else:
            values = rows.numeric.get(name, np.zeros(0))
            finite = values[np.isfinite(values)]
            mean = float(finite.mean()) if len(finite) else 0.0
            std = float(finite.std()) if len(finite) > 1 else 0.0
            numeric.append(NumericContext(name, mean, std if std > 0 else 1.0))
    return RowEncoding(event_column, event_types, tuple(categorical), tuple(numeric), time_features)


def _with_row_codes(data: IndexedInteractions, rows: RowValues, encoding: RowEncoding) -> IndexedInteractions:
    events = None
    if encoding.event_column is not None and encoding.event_column in rows.categorical:
        codes, values = rows.categorical[encoding.event_column]
        events = value_codes(codes, values, Vocabulary(encoding.event_types)).astype(np.int16)
    context = None
    if encoding.categorical:
        columns = []
        for name, known in encoding.categorical:
            if name in rows.categorical:
                codes, values = rows.categorical[name]
                columns.append(value_codes(codes, values, Vocabulary(known)))
            else:  # a channel that wrote the column as numbers: looked up as text
                numbers = rows.numeric[name]
                text = pa.array([None if np.isnan(v) else f"{v:g}" for v in numbers], pa.string())
                columns.append(value_codes(np.arange(len(text), dtype=np.int32), text, Vocabulary(known)))
                columns[-1][np.isnan(numbers)] = 0
        context = np.stack(columns, axis=1).astype(np.int32)
    context_numeric = None
    if encoding.numeric:
        columns_numeric = []
        for column in encoding.numeric:
            if column.name in rows.numeric:
                values = rows.numeric[column.name]
            else:
                codes, texts = rows.categorical[column.name]
                parsed = pd.to_numeric(pd.Series(texts.to_pylist(), dtype=object), errors="coerce").to_numpy(
                    np.float64
                )
                values = np.where(codes >= 0, parsed[np.maximum(codes, 0)] if len(parsed) else np.nan, np.nan)
            columns_numeric.append(standardise(values, column))
        context_numeric = np.stack(columns_numeric, axis=1).astype(np.float32)
    return replace(data, events=events, context=context, context_numeric=context_numeric)


def _indexed(
    users: np.ndarray, items: np.ndarray, stamps: np.ndarray, num_users: int, num_items: int
) -> IndexedInteractions:
    return IndexedInteractions(
        users.astype(index_dtype(num_users), copy=False),
        items.astype(index_dtype(num_items), copy=False),
        stamps,
        _indptr(users, num_users),
        num_users,
        num_items,
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
    return IndexedInteractions(
        users,
        data.items[mask],
        data.timestamps[mask],
        _indptr(users, data.num_users),
        data.num_users,
        data.num_items,
        None if data.events is None else data.events[mask],
        None if data.context is None else data.context[mask],
        None if data.context_numeric is None else data.context_numeric[mask],
        None if data.event_masks is None else data.event_masks[mask],
    )


def combine(first: IndexedInteractions, second: IndexedInteractions) -> IndexedInteractions:
    """Both tables' rows over the same vocabularies, ordered by user then time, a pair that is in
    both once, at its latest time and with that row's event type and context, and every event
    type it had in either (the served state of a job trained with a validation channel)."""
    users = np.concatenate([first.users, second.users]).astype(np.int64)
    items = np.concatenate([first.items, second.items]).astype(np.int64)
    stamps = np.concatenate([first.timestamps, second.timestamps])
    masks = None
    if first.event_masks is not None and second.event_masks is not None:
        # Both come from one RowEncoding, so one dtype; promoted anyway, never truncated.
        masks = np.concatenate([first.event_masks, second.event_masks])
    users, items, stamps, rows, masks, _ = _order_rows(
        users, items, stamps, first.num_items, rows=True, masks=masks
    )
    assert rows is not None  # asked for with rows=True

    def taken(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        return None if a is None or b is None else np.concatenate([a, b])[rows]

    return replace(
        _indexed(users, items, stamps, first.num_users, first.num_items),
        events=taken(first.events, second.events),
        context=taken(first.context, second.context),
        context_numeric=taken(first.context_numeric, second.context_numeric),
        event_masks=masks,
    )


def subset(data: IndexedInteractions, mask: np.ndarray) -> IndexedInteractions:
    """The rows of ``data`` where ``mask`` holds, over the same vocabularies and in the same order."""
    return _subset(data, mask)
