"""Attribute tables (items or users) encoded as index and number arrays for the model's towers.

Three kinds of column: categorical (one value), multi-valued categorical (``Action|Comedy``) and
numeric (standardised). Kinds are declared by hyperparameters or detected. The encoding is
plain JSON plus ``.npy`` arrays, so serving reloads it without pickle.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.vocab import Vocabulary
from recsys.errors import DataError

logger = logging.getLogger(__name__)

# A string column with more distinct values than this share of its rows is an id or free text
# (a title, a description): as a categorical feature it would only duplicate the id embedding.
MAX_DISTINCT_SHARE = 0.5
MAX_MULTI_VALUES = 32


@dataclass(frozen=True)
class FeatureDeclaration:
    categorical: tuple[str, ...] = ()
    multi_valued: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    separator: str = "|"


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    values: tuple[str, ...]  # index 0 is "missing or unseen"; values[i-1] has index i
    multi_valued: bool
    max_values: int  # width of the padded index array (1 for a single-valued column)


@dataclass(frozen=True)
class NumericColumn:
    name: str
    mean: float
    std: float


@dataclass(frozen=True)
class FeatureEncoding:
    """How one attribute table was encoded; saved as JSON in the artifact."""

    id_column: str
    separator: str
    categorical: tuple[CategoricalColumn, ...]
    numeric: tuple[NumericColumn, ...]

    @property
    def is_empty(self) -> bool:
        return not self.categorical and not self.numeric

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FeatureEncoding:
        return cls(
            id_column=raw["id_column"],
            separator=raw["separator"],
            categorical=tuple(
                CategoricalColumn(c["name"], tuple(c["values"]), c["multi_valued"], c["max_values"])
                for c in raw["categorical"]
            ),
            numeric=tuple(NumericColumn(**n) for n in raw["numeric"]),
        )

    @classmethod
    def empty(cls, id_column: str) -> FeatureEncoding:
        return cls(id_column=id_column, separator="|", categorical=(), numeric=())


@dataclass(frozen=True)
class FeatureArrays:
    """Encoded attributes of every entity in a vocabulary, row i for index i.

    ``categorical[c]`` is [N, max_values_c] int64 with 0 as padding / missing;
    ``numeric`` is [N, F] float32, standardised, 0 where missing.
    """

    categorical: tuple[np.ndarray, ...]
    numeric: np.ndarray
    numeric_raw: np.ndarray  # [N, F] float64, the original values, NaN where missing (for filters)

    def save(self, directory: Path, prefix: str) -> None:
        for c, array in enumerate(self.categorical):
            np.save(directory / f"{prefix}_categorical_{c}.npy", array)
        np.save(directory / f"{prefix}_numeric.npy", self.numeric)
        np.save(directory / f"{prefix}_numeric_raw.npy", self.numeric_raw)

    @classmethod
    def load(cls, directory: Path, prefix: str, encoding: FeatureEncoding) -> FeatureArrays:
        categorical = tuple(
            np.load(directory / f"{prefix}_categorical_{c}.npy", allow_pickle=False)
            for c in range(len(encoding.categorical))
        )
        numeric = np.load(directory / f"{prefix}_numeric.npy", allow_pickle=False)
        numeric_raw = np.load(directory / f"{prefix}_numeric_raw.npy", allow_pickle=False)
        return cls(categorical, numeric, numeric_raw)


def _split_values(value: Any, separator: str) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v) for v in value if v is not None and str(v) != ""]
    return [v.strip() for v in str(value).split(separator) if v.strip()]


def _detect_kind(series: pd.Series, separator: str) -> str | None:
    if pd.api.types.is_bool_dtype(series):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    non_null = series.dropna()
    if non_null.empty:
        return None
    if non_null.map(lambda v: isinstance(v, list | tuple | np.ndarray)).any():
        return "multi_valued"
    as_text = non_null.astype(str)
    if as_text.str.contains(separator, regex=False).any():
        return "multi_valued"
    if as_text.nunique() > MAX_DISTINCT_SHARE * len(as_text) and len(as_text) > 20:
        return None
    return "categorical"


def _is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def _detect_text_kind(column: pa.Array, separator: str) -> str | None:
    """``_detect_kind`` for a text column, computed by Arrow."""
    present = column.drop_null()
    if len(present) == 0:
        return None
    if pc.any(pc.match_substring(present, separator)).as_py():
        return "multi_valued"
    if pc.count_distinct(present).as_py() > MAX_DISTINCT_SHARE * len(present) and len(present) > 20:
        return None
    return "categorical"


def _encode_text(
    column: pa.Array, rows: np.ndarray, n: int, *, multi: bool, separator: str
) -> tuple[tuple[str, ...], np.ndarray]:
    """(sorted values, [n, width] codes) of a text column; row ``rows[k]`` gets entry k's codes.

    The rules of ``_encode_objects`` (split, strip, drop empty parts, keep the first
    ``MAX_MULTI_VALUES``), by Arrow kernels over all rows at once.
    """
    if column.type != pa.string():
        column = pc.cast(column, pa.string())
    if multi:
        parts = pc.split_pattern(column, pattern=separator)
        lengths = pc.fill_null(pc.list_value_length(parts), 0).to_numpy(zero_copy_only=False)
        values = pc.utf8_trim_whitespace(parts.flatten())
        owner = np.repeat(np.arange(len(column)), lengths)
        nonempty = np.asarray(pc.not_equal(values, "").to_numpy(zero_copy_only=False), dtype=bool)
        values, owner = values.filter(pa.array(nonempty)), owner[nonempty]
    else:
        present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        values, owner = column.filter(pa.array(present)), np.flatnonzero(present)
    vocabulary = pc.unique(values)
    vocabulary = vocabulary.take(pc.sort_indices(vocabulary))  # UTF-8 byte order = sorted() on str
    codes = np.asarray(pc.index_in(values, value_set=vocabulary).to_numpy(zero_copy_only=False)) + 1
    # owner is non-decreasing: an entry's slot is its rank among its row's entries.
    counts = np.bincount(owner, minlength=len(column))
    slot = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    width = max(1, min(MAX_MULTI_VALUES, int(counts.max()) if len(counts) else 1))
    fits = slot < width
    array = np.zeros((n, width), dtype=np.int64)
    array[rows[owner[fits]], slot[fits]] = codes[fits]
    return tuple(vocabulary.to_pylist()), array


def _encode_objects(
    series: pd.Series, rows: np.ndarray, n: int, *, multi: bool, separator: str
) -> tuple[tuple[str, ...], np.ndarray]:
    """``_encode_text`` for a column of other values (numbers, booleans, lists), in Python."""
    lists = [
        _split_values(v, separator) if multi else ([] if pd.isna(v) else [str(v)]) for v in series.tolist()
    ]
    values_vocab = sorted({v for vs in lists for v in vs})
    index = {v: i + 1 for i, v in enumerate(values_vocab)}
    width = max(1, min(MAX_MULTI_VALUES, max((len(vs) for vs in lists), default=1)))
    array = np.zeros((n, width), dtype=np.int64)
    for row, vs in zip(rows, lists, strict=True):
        for j, v in enumerate(vs[:width]):
            array[row, j] = index[v]
    return tuple(values_vocab), array


def encode_attributes(
    table: pa.Table,
    *,
    id_column: str,
    vocabulary: Vocabulary,
    declaration: FeatureDeclaration,
    channel: str,
) -> tuple[FeatureEncoding, FeatureArrays]:
    """Encode the attribute table of one channel against the entity vocabulary."""
    names = table.column_names
    if id_column not in names:
        raise DataError(
            f"channel '{channel}': the id column '{id_column}' was not found; columns present: "
            f"{', '.join(names)}. Its id column is named by the same hyperparameter as in the "
            f"interactions (user_id_column or item_id_column)."
        )
    declared = (
        *declaration.categorical,
        *declaration.multi_valued,
        *declaration.numeric,
    )
    ids = table.column(id_column)
    if ids.type != pa.string():
        ids = pc.cast(ids, pa.string())
    if pc.count_distinct(ids, mode="all").as_py() != len(ids):
        as_text = ids.to_pandas().astype("string")
        dup = as_text[as_text.duplicated()].iloc[0]
        raise DataError(f"channel '{channel}': id {dup!r} appears in more than one row of '{id_column}'.")
    rows = vocabulary.lookup_array(pc.fill_null(ids, ""))
    known = rows >= 0
    if not known.any():
        raise DataError(
            f"channel '{channel}': none of its ids in column '{id_column}' appears in the interactions; "
            f"check that both tables use the same ids."
        )
    table, rows = table.filter(pa.array(known)), rows[known]
    categorical: list[CategoricalColumn] = []
    cat_arrays: list[np.ndarray] = []
    numeric: list[NumericColumn] = []
    num_arrays: list[np.ndarray] = []
    raw_arrays: list[np.ndarray] = []
    n = len(vocabulary)
    for name in names:
        if name == id_column or name in declaration.ignore:
            continue
        column = table.column(name).combine_chunks()
        # Text columns are encoded by Arrow (no Python object per row); others go through pandas.
        text = _is_text(column.type)
        if name in declaration.numeric:
            kind: str | None = "numeric"
        elif name in declaration.multi_valued:
            kind = "multi_valued"
        elif name in declaration.categorical:
            kind = "categorical"
        elif declared:
            # Once any column is declared, only declared columns are used: no surprises.
            kind = None
        elif text:
            kind = _detect_text_kind(column, declaration.separator)
        else:
            kind = _detect_kind(column.to_pandas(), declaration.separator)
        if kind is None:
            logger.info("channel '%s': column '%s' not used as a feature", channel, name)
            continue
        if kind == "numeric":
            series = column.to_pandas()
            values = pd.to_numeric(series, errors="coerce")
            bad = series[values.isna() & series.notna()]
            if len(bad):
                raise DataError(
                    f"channel '{channel}': numeric column '{name}' has a non-numeric value {bad.iloc[0]!r}."
                )
            mean = float(values.mean()) if values.notna().any() else 0.0
            std = float(values.std(ddof=0)) if values.notna().sum() > 1 else 1.0
            std = std if std > 0 else 1.0
            standardised = np.zeros(n, dtype=np.float32)
            standardised[rows] = ((values - mean) / std).fillna(0.0).to_numpy(dtype=np.float32)
            raw = np.full(n, np.nan, dtype=np.float64)
            raw[rows] = values.to_numpy(dtype=np.float64)
            raw_arrays.append(raw)
            numeric.append(NumericColumn(str(name), mean, std))
            num_arrays.append(standardised)
            continue
        multi = kind == "multi_valued"
        if text:
            values_vocab, array = _encode_text(column, rows, n, multi=multi, separator=declaration.separator)
        else:
            values_vocab, array = _encode_objects(
                column.to_pandas(), rows, n, multi=multi, separator=declaration.separator
            )
        categorical.append(CategoricalColumn(str(name), values_vocab, multi, array.shape[1]))
        cat_arrays.append(array)
    for name in declared:
        if name not in names:
            raise DataError(
                f"channel '{channel}': declared feature column '{name}' was not found; columns present: "
                f"{', '.join(map(str, names))}."
            )
    numeric_array = np.stack(num_arrays, axis=1) if num_arrays else np.zeros((n, 0), dtype=np.float32)
    raw_array = np.stack(raw_arrays, axis=1) if raw_arrays else np.zeros((n, 0), dtype=np.float64)
    encoding = FeatureEncoding(id_column, declaration.separator, tuple(categorical), tuple(numeric))
    return encoding, FeatureArrays(tuple(cat_arrays), numeric_array, raw_array)


# Labels are for a person reading recommendations: a title, a name, not a whole description.
MAX_LABEL_COLUMNS = 4
MAX_LABEL_CHARS = 120


def label_columns(
    table: pa.Table, *, id_column: str, vocabulary: Vocabulary, used: Collection[str]
) -> pa.Table:
    """The text columns the model does not use (titles, names: id-like, or ignored), one row per
    vocabulary entry (null where the table has no row), each value cut to ``MAX_LABEL_CHARS``.

    They are what a person needs to judge a recommendation by, and what the model never sees."""
    ids = pc.cast(table.column(id_column), pa.string())
    rows = vocabulary.lookup_array(pc.fill_null(ids, ""))
    source = np.full(len(vocabulary), -1, dtype=np.int64)
    known = np.nonzero(rows >= 0)[0]
    source[rows[known]] = known
    take = pa.array(source, mask=source < 0)
    names = [
        name
        for name in table.column_names
        if name != id_column and name not in used and _is_text(table.schema.field(name).type)
    ][:MAX_LABEL_COLUMNS]
    columns = [pc.utf8_slice_codeunits(table.column(name).take(take), 0, MAX_LABEL_CHARS) for name in names]
    return pa.table(columns, names=names)


def empty_arrays(num_rows: int) -> FeatureArrays:
    return FeatureArrays((), np.zeros((num_rows, 0), dtype=np.float32), np.zeros((num_rows, 0)))


def multi_hot(encoding: FeatureEncoding, arrays: FeatureArrays) -> np.ndarray | None:
    """[N, total values] 0/1 matrix of every categorical value: the space for intra-list diversity."""
    blocks = []
    for column, array in zip(encoding.categorical, arrays.categorical, strict=True):
        block = np.zeros((array.shape[0], len(column.values) + 1), dtype=np.float32)
        np.put_along_axis(block, array, 1.0, axis=1)
        blocks.append(block[:, 1:])
    return np.concatenate(blocks, axis=1) if blocks else None


def save_encoding(encoding: FeatureEncoding, path: Path) -> None:
    path.write_text(json.dumps(encoding.to_json(), indent=1), encoding="utf-8")


def load_encoding(path: Path) -> FeatureEncoding:
    return FeatureEncoding.from_json(json.loads(path.read_text(encoding="utf-8")))


def feature_cardinalities(encoding: FeatureEncoding) -> tuple[tuple[int, int], ...]:
    """(number of values + 1 for missing, padded width) per categorical column."""
    return tuple((len(c.values) + 1, c.max_values) for c in encoding.categorical)


def column_names(encoding: FeatureEncoding) -> Sequence[str]:
    return [c.name for c in encoding.categorical] + [n.name for n in encoding.numeric]


@dataclass(frozen=True)
class EncodedValues:
    """Attribute values given for entities outside the table (a request's new user), encoded as the
    table was: ``categorical[c]`` [B, max_values_c] codes, ``numeric`` [B, F] standardised."""

    categorical: tuple[np.ndarray, ...]
    numeric: np.ndarray
    unknown: tuple[tuple[str, str], ...]  # (column, value) pairs no training row had: code 0


def encode_values(encoding: FeatureEncoding, records: Sequence[Mapping[str, Any]]) -> EncodedValues:
    """Encode one mapping of column -> value per entity with the table's ``encoding``.

    A column left out, or a null, is missing (code 0, numeric 0: the learnt "unknown" embedding);
    a categorical value no training row had is missing too, and is listed in ``unknown``. Raises
    ``ValueError`` naming a column the table never had (with the ones it has), or a numeric column
    given a value that is not a finite number (text such as "30", and booleans, included).
    """
    known = set(column_names(encoding))
    for record in records:
        extra = sorted(set(record) - known)
        if extra:
            raise ValueError(
                f"unknown attribute column(s): {', '.join(map(repr, extra))}; the model's attribute "
                f"columns: {', '.join(column_names(encoding)) or '(none)'}"
            )
    unknown: list[tuple[str, str]] = []
    categorical = []
    for column in encoding.categorical:
        index = {value: i + 1 for i, value in enumerate(column.values)}
        codes = np.zeros((len(records), column.max_values), dtype=np.int64)
        for row, record in enumerate(records):
            raw = record.get(column.name)
            # As in training: a multi-valued column splits on the separator (or takes a list); a
            # single value is matched as written.
            if column.multi_valued:
                values = _split_values(raw, encoding.separator)
            else:
                values = [] if raw is None or raw == "" else [str(raw)]
            for slot, value in enumerate(values):
                if slot >= column.max_values:
                    break
                code = index.get(value, 0)
                if code == 0:
                    unknown.append((column.name, value))
                codes[row, slot] = code
        categorical.append(codes)
    numeric = np.zeros((len(records), len(encoding.numeric)), dtype=np.float32)
    for f, spec in enumerate(encoding.numeric):
        for row, record in enumerate(records):
            raw = record.get(spec.name)
            if raw is None:
                continue
            # A number only, as for a numeric context value: float() would also take True and
            # "30", which the request schema (a number) does not promise to take.
            is_number = isinstance(raw, int | float | np.integer | np.floating) and not isinstance(raw, bool)
            try:
                number = float(raw) if is_number else math.nan
            except OverflowError:  # an int past float's range
                number = math.inf
            if not math.isfinite(number):
                raise ValueError(f"attribute column {spec.name!r} is numeric; got {raw!r}")
            numeric[row, f] = (number - spec.mean) / spec.std
    return EncodedValues(tuple(categorical), numeric, tuple(unknown))
