"""Id vocabularies: opaque string ids <-> dense indices, stored as plain JSON."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class Vocabulary:
    """A duplicate-free list of ids; an id's index is its position.

    Built from data, the ids are sorted (``build``, ``from_arrow``), so the same data always gives
    the same indices whatever the file order. A vocabulary holds its ids as an Arrow array, a
    tuple of ``str`` or both, and makes the other, and the id -> index dict, only when asked:
    training on a million users needs neither the dict nor a million Python strings.
    """

    __slots__ = ("_array", "_ids", "_index")

    def __init__(self, ids: Sequence[str]) -> None:
        self._ids: tuple[str, ...] | None = tuple(ids)
        self._array: pa.StringArray | None = None
        self._index: dict[str, int] | None = {v: i for i, v in enumerate(self._ids)}
        if len(self._index) != len(self._ids):
            raise ValueError("vocabulary ids must be unique")

    @classmethod
    def _trusted(cls, ids: tuple[str, ...] | None, array: pa.StringArray | None) -> Vocabulary:
        """A vocabulary of ids already known to be unique (no check, nothing built)."""
        vocabulary = cls.__new__(cls)
        vocabulary._ids, vocabulary._array, vocabulary._index = ids, array, None
        return vocabulary

    @classmethod
    def build(cls, ids: Iterable[str]) -> Vocabulary:
        return cls._trusted(tuple(sorted(set(ids))), None)

    @classmethod
    def from_arrow(cls, values: pa.Array | pa.ChunkedArray) -> Vocabulary:
        """The sorted distinct non-null values of a string array; ``build`` without Python strings.

        Arrow orders strings by their UTF-8 bytes, which is code point order: ``sorted`` on ``str``.
        """
        distinct = pc.unique(pc.drop_null(values))
        if isinstance(distinct, pa.ChunkedArray):
            distinct = distinct.combine_chunks()
        if distinct.type != pa.string():
            distinct = distinct.cast(pa.string())
        return cls._trusted(None, distinct.take(pc.sort_indices(distinct)))

    @property
    def ids(self) -> tuple[str, ...]:
        if self._ids is None:
            assert self._array is not None  # one of the two is always set
            self._ids = tuple(self._array.to_pylist())
        return self._ids

    @property
    def values(self) -> pa.StringArray:
        """The ids as an Arrow string array (index = position)."""
        if self._array is None:
            self._array = pa.array(self.ids, type=pa.string())
        return self._array

    def _lookup_table(self) -> dict[str, int]:
        if self._index is None:
            self._index = {v: i for i, v in enumerate(self.ids)}
        return self._index

    def __len__(self) -> int:
        return len(self._ids) if self._ids is not None else len(self.values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        if self._ids is not None and other._ids is not None:
            return self._ids == other._ids
        return len(self) == len(other) and self.values.equals(other.values)

    def __hash__(self) -> int:
        return hash(self.ids)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} ids)"

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._lookup_table()

    def index(self, item_id: str) -> int:
        return self._lookup_table()[item_id]

    def get(self, item_id: str, default: int = -1) -> int:
        return self._lookup_table().get(item_id, default)

    def lookup(self, ids: Sequence[str], default: int = -1) -> np.ndarray:
        """Indices of ``ids`` as int64; ``default`` where an id is unknown."""
        table = self._lookup_table()
        return np.fromiter(
            map(table.get, ids, itertools.repeat(default, len(ids))), dtype=np.int64, count=len(ids)
        )

    def lookup_array(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Indices of a string array's values as int32, -1 where unknown or null; vectorised."""
        found = pc.index_in(values, value_set=self.values)
        if isinstance(found, pa.ChunkedArray):
            found = found.combine_chunks() if found.num_chunks else pa.array([], pa.int32())
        return np.array(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int32)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(list(self.ids)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        ids = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{path} is not a JSON list of string ids")
        return cls(tuple(ids))
