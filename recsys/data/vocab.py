"""Id vocabularies: opaque string ids <-> dense indices, stored as plain JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Vocabulary:
    """A sorted, duplicate-free list of ids; an id's index is its position."""

    ids: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {v: i for i, v in enumerate(self.ids)})
        if len(self._index) != len(self.ids):
            raise ValueError("vocabulary ids must be unique")

    @classmethod
    def build(cls, ids: Iterable[str]) -> Vocabulary:
        # Sorted so that the same data always gives the same indices, whatever the file order.
        return cls(tuple(sorted(set(ids))))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def index(self, item_id: str) -> int:
        return self._index[item_id]

    def get(self, item_id: str, default: int = -1) -> int:
        return self._index.get(item_id, default)

    def lookup(self, ids: Sequence[str], default: int = -1) -> np.ndarray:
        """Indices of ``ids`` as int64; ``default`` where an id is unknown."""
        get = self._index.get
        return np.fromiter((get(i, default) for i in ids), dtype=np.int64, count=len(ids))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(list(self.ids)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        ids = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{path} is not a JSON list of string ids")
        return cls(tuple(ids))
