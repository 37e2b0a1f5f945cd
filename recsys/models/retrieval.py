"""Approximate top-k retrieval for large catalogues: an HNSW graph over the GMF item vectors.

What it retrieves. A model's logit is ``bias_i + u . v_i`` from its GMF tower (``u`` already
multiplied by the output weights), plus the MLP tower's share for NeuMF. The index holds
``[v_i, bias_i]`` and is searched with ``[u, 1]``, so a maximum inner-product search over it is the
GMF share of the logit, exactly. Serving fetches more candidates than it returns (``OVERFETCH``
per wanted item, plus as many as the request rules out) and ranks them with the whole model: for
NeuMF that re-rank adds the MLP tower, which the graph does not see. An MLP-only model has no
vectors to search and is always served exactly.

Why faiss (``IndexHNSWFlat``, inner product). ``benchmarks/ann.py`` timed faiss-cpu against
usearch on this machine: faiss built its graph 2.5x and answered 2x faster at the same recall.
Searching by inner product beat the usual reduction of inner product to Euclidean distance (one
more dimension that equalises the norms) by far on these vectors: at 200,000 items the reduction
reached recall 0.43 where the inner-product graph reached 0.97.

How wide it searches. A graph's recall depends on the vectors it holds, which only the job sees, so
the job measures it: on a sample of users it ranks the catalogue exactly and through the index,
and keeps the narrowest search breadth (``efSearch``) of ``SEARCH_BREADTHS`` whose recall@10
reaches ``min_recall``; an index that reaches it at no breadth is refused (``tune_index`` returns
no index), and the artifact is served exactly.

The index file is faiss's own binary format (``write_index``), no pickle. faiss is imported
when an index is built or read, not when this module is: most models never need it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys.models.ncf import NCF, ItemState, UserState

# The graph's degree and construction breadth: faiss's HNSW defaults are 32 and 40; 64 builds a
# better graph (recall at the same search breadth) for under twice the build time.
CONNECTIONS = 32
CONSTRUCTION_BREADTH = 64
SEARCH_BREADTHS = (48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
OVERFETCH = 4  # candidates fetched per wanted item, before what the request rules out
MAX_FETCH = 1024  # beyond this many candidates a request is ranked exactly
RECALL_K = 10


def _faiss() -> Any:
    import faiss  # deferred: an import of ~0.3 s that only large catalogues need

    return faiss


@dataclass(frozen=True)
class IndexReport:
    """What the job measured while building the index: the manifest and metrics.json hold it."""

    items: int
    connections: int
    construction_breadth: int
    search_breadth: int | None  # None: no breadth reached min_recall (refused)
    recall_at_10: float  # at search_breadth, or the best one tried when refused
    recall_by_breadth: dict[str, float]
    sample_users: int
    min_recall: float
    overfetch: int
    build_seconds: float
    index_bytes: int

    @property
    def refused(self) -> bool:
        return self.search_breadth is None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "faiss-hnsw-inner-product",
            "items": self.items,
            "connections": self.connections,
            "construction_breadth": self.construction_breadth,
            "search_breadth": self.search_breadth,
            "recall@10": round(self.recall_at_10, 6),
            "recall@10_by_search_breadth": {k: round(v, 6) for k, v in self.recall_by_breadth.items()},
            "recall_sample_users": self.sample_users,
            "min_recall": self.min_recall,
            "overfetch": self.overfetch,
            "refused": self.refused,
            "build_seconds": round(self.build_seconds, 2),
            "index_bytes": self.index_bytes,
        }


class ItemIndex:
    """An HNSW graph over ``[v_i, bias_i]``; ``search`` returns item indices, best first."""

    def __init__(self, index: Any, search_breadth: int) -> None:
        self._index = index
        self.search_breadth = search_breadth
        self._index.hnsw.efSearch = search_breadth

    @classmethod
    def build(cls, vectors: np.ndarray, *, threads: int | None = None) -> ItemIndex:
        faiss = _faiss()
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(vectors.shape[1], CONNECTIONS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = CONSTRUCTION_BREADTH
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index, SEARCH_BREADTHS[0])

    @property
    def num_items(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def nbytes(self) -> int:
        """Memory held, about: the vectors plus the graph's links (the file's size, near enough)."""
        links = self._index.hnsw.neighbors.size()
        return self.num_items * self.dim * 4 + int(links) * 4

    def with_breadth(self, search_breadth: int) -> ItemIndex:
        self._index.hnsw.efSearch = search_breadth
        self.search_breadth = search_breadth
        return self

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        """[B, dim] float32 queries -> [B, n] int64 item indices, best first; -1 pads a short row.

        faiss searches at least ``n`` wide (``efSearch`` is raised to ``n`` when smaller), and
        releases the GIL while it does."""
        _, found = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), n)
        return np.asarray(found, dtype=np.int64)

    def save(self, path: Path) -> None:
        _faiss().write_index(self._index, str(path))

    @classmethod
    def load(cls, path: Path, search_breadth: int) -> ItemIndex:
        faiss = _faiss()
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexHNSWFlat):
            raise ValueError(f"{path.name} holds a {type(index).__name__}, not an HNSW graph")
        return cls(index, search_breadth)

    def set_threads(self, threads: int) -> None:
        _faiss().omp_set_num_threads(max(1, threads))


def catalogue_vectors(items: ItemState) -> np.ndarray:
    """[N, D+1] float32: each item's GMF vector and its bias, what the index holds."""
    if items.gmf is None:
        raise ValueError("the model has no GMF tower, whose vectors an index searches")
    return torch.cat([items.gmf.float(), items.bias.float().unsqueeze(1)], dim=1).cpu().numpy()


def query_vectors(users: UserState) -> np.ndarray:
    """[B, D+1] float32: each user's GMF vector and a 1 that meets the items' bias."""
    assert users.gmf is not None  # an index exists only for models with a GMF tower
    ones = torch.ones(users.gmf.shape[0], 1, dtype=torch.float32, device=users.gmf.device)
    return torch.cat([users.gmf.float(), ones], dim=1).cpu().numpy()


def score_fetched(
    model: NCF, users: UserState, items: ItemState, fetched: np.ndarray
) -> tuple[Tensor, Tensor]:
    """The whole model's logits of fetched candidates [B, n] (padding -1 scores -inf), and the
    candidates as a tensor on the items' device."""
    device = items.bias.device
    candidates = torch.from_numpy(fetched).to(device)
    safe = candidates.clamp(min=0)
    gathered = ItemState(
        items.gmf[safe] if items.gmf is not None else None,
        items.mlp[safe] if items.mlp is not None else None,
        items.bias[safe],
    )
    scores = model.score_candidates(users, gathered).float()
    return scores.masked_fill(candidates < 0, float("-inf")), candidates


def index_top(
    model: NCF, index: ItemIndex, users: UserState, items: ItemState, k: int, *, overfetch: int = OVERFETCH
) -> Tensor:
    """[B, k] item indices: ``k * overfetch`` candidates from the index, ranked by the model."""
    fetched = index.search(query_vectors(users), min(k * overfetch, index.num_items))
    scores, candidates = score_fetched(model, users, items, fetched)
    order = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices
    return torch.gather(candidates, 1, order)


def exact_top(model: NCF, users: UserState, items: ItemState, k: int, *, chunk: int = 256) -> Tensor:
    """[B, k] item indices: the whole catalogue ranked by the model (the baseline of recall)."""
    parts = []
    for start in range(0, users_count(users), chunk):
        rows = UserState(*(t[start : start + chunk] if t is not None else None for t in users))
        parts.append(torch.topk(model.score_all(rows, items).float(), k, dim=1).indices)
    return torch.cat(parts)


def users_count(users: UserState) -> int:
    present = users.gmf if users.gmf is not None else users.mlp
    assert present is not None  # every model has at least one user side
    return int(present.shape[0])


def recall(found: Tensor, truth: Tensor) -> float:
    """Mean over rows of |found ∩ truth| / |truth|."""
    hits = (found.unsqueeze(2) == truth.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float((hits.float() / truth.shape[1]).mean())


def tune_index(
    model: NCF, items: ItemState, users: UserState, *, min_recall: float, threads: int | None = None
) -> tuple[ItemIndex | None, IndexReport]:
    """Build the index, then keep the narrowest search breadth whose recall@10 on ``users``
    reaches ``min_recall``; ``(None, report)`` when none does (the index is refused)."""
    started = time.perf_counter()
    index = ItemIndex.build(catalogue_vectors(items), threads=threads)
    build_seconds = time.perf_counter() - started
    k = min(RECALL_K, index.num_items)
    truth = exact_top(model, users, items, k)
    by_breadth: dict[str, float] = {}
    chosen: int | None = None
    for breadth in SEARCH_BREADTHS:
        found = index_top(model, index.with_breadth(breadth), users, items, k)
        by_breadth[str(breadth)] = recall(found, truth)
        if by_breadth[str(breadth)] >= min_recall:
            chosen = breadth
            break
    best = max(by_breadth.values()) if by_breadth else math.nan
    report = IndexReport(
        items=index.num_items,
        connections=CONNECTIONS,
        construction_breadth=CONSTRUCTION_BREADTH,
        search_breadth=chosen,
        recall_at_10=by_breadth[str(chosen)] if chosen is not None else best,
        recall_by_breadth=by_breadth,
        sample_users=users_count(users),
        min_recall=min_recall,
        overfetch=OVERFETCH,
        build_seconds=build_seconds,
        index_bytes=index.nbytes,
    )
    return (index.with_breadth(chosen) if chosen is not None else None), report
