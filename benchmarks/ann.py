"""Which approximate nearest-neighbour library for a large catalogue: faiss-cpu or usearch.

The question serving asks: the top-k items by inner product (GMF's logit, bias folded in as one
more dimension) of a user vector, over 1,000,000 items of dimension 64, on this machine's cores.
For each library: the time to build an HNSW graph, its size, the time to answer a batch of 32
users fetching ``k x overfetch`` candidates, and recall@10 of those candidates re-ranked exactly,
against exact search (a matrix product, the baseline, timed in the same run). ``faiss-l2`` is faiss
again, on the usual reduction of inner product to Euclidean distance (one more dimension that
equalises the items' norms), to show which of the two metrics the index should search.

The vectors are random (an untrained model's), with no cluster structure: the hardest case for a
graph index, so recall here is a floor for trained embeddings.

    pip install usearch               # faiss-cpu is a dependency of recsys (its item index)
    python -m benchmarks.ann [--items 1000000] [--dim 64] [--queries 1000] [--overfetch 4]

hnswlib, the third candidate, ships as a source distribution only on this machine's index (a C++
build in every image build); it is left out for that reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

K = 10


def vectors(items: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items [N, dim+1] (the last column the bias) and users [Q, dim+1] (last column 1)."""
    rng = np.random.default_rng(seed)
    item = rng.normal(0, 0.1, size=(items, dim + 1)).astype(np.float32)
    user = rng.normal(0, 1.0, size=(queries, dim + 1)).astype(np.float32)
    user[:, -1] = 1.0
    return item, user


def exact_top(items: np.ndarray, users: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(users), k), dtype=np.int64)
    for start in range(0, len(users), 256):
        scores = users[start : start + 256] @ items.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        out[start : start + 256] = np.take_along_axis(top, order, 1)
    return out


def rerank(items: np.ndarray, users: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    scores = np.einsum("qd,qcd->qc", users, items[np.clip(candidates, 0, None)])
    scores[candidates < 0] = -np.inf
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(candidates, order, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def faiss_index(
    items: np.ndarray, threads: int, ef: int
) -> tuple[Callable[[np.ndarray, int], np.ndarray], int]:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(items.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    index.add(items)
    index.hnsw.efSearch = ef
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, str(Path(tmp) / "i"))
        size = (Path(tmp) / "i").stat().st_size

    def search(users: np.ndarray, n: int) -> np.ndarray:
        return np.asarray(index.search(users, n)[1])

    return search, size


def faiss_euclidean_index(
    items: np.ndarray, threads: int, ef: int
) -> tuple[Callable[[np.ndarray, int], np.ndarray], int]:
    """The textbook reduction of inner product to Euclidean search: one more item dimension,
    sqrt(max_norm^2 - |x|^2), so that every item has the same norm (queries get a 0 there)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    norms = np.linalg.norm(items, axis=1)
    extra = np.sqrt(np.maximum(norms.max() ** 2 - norms**2, 0.0))[:, None]
    index = faiss.IndexHNSWFlat(items.shape[1] + 1, 32, faiss.METRIC_L2)
    index.hnsw.efConstruction = 64
    index.add(np.hstack([items, extra]).astype(np.float32))
    index.hnsw.efSearch = ef
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index, str(Path(tmp) / "i"))
        size = (Path(tmp) / "i").stat().st_size

    def search(users: np.ndarray, n: int) -> np.ndarray:
        padded = np.hstack([users, np.zeros((len(users), 1), dtype=np.float32)])
        return np.asarray(index.search(padded, n)[1])

    return search, size


def usearch_index(
    items: np.ndarray, threads: int, ef: int
) -> tuple[Callable[[np.ndarray, int], np.ndarray], int]:
    from usearch.index import Index

    index = Index(
        ndim=items.shape[1], metric="ip", dtype="f32", connectivity=32, expansion_add=64, expansion_search=ef
    )
    index.add(np.arange(len(items)), items, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(str(Path(tmp) / "i"))
        size = (Path(tmp) / "i").stat().st_size

    def search(users: np.ndarray, n: int) -> np.ndarray:
        return np.asarray(index.search(users, n, threads=threads).keys).astype(np.int64)

    return search, size


LIBRARIES = {
    "faiss-cpu": ("faiss", faiss_index),
    "faiss-l2": ("faiss", faiss_euclidean_index),
    "usearch": ("usearch", usearch_index),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--overfetch", type=int, default=4, help="candidates fetched per wanted item")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ef", type=int, default=128, help="the graph's search breadth (efSearch)")
    args = parser.parse_args()
    items, users = vectors(args.items, args.dim, args.queries)
    started = time.perf_counter()
    truth = exact_top(items, users, K)
    exact_seconds = time.perf_counter() - started
    per_batch_exact = exact_seconds / (args.queries / 32)
    print(
        f"{args.items:,} items x {args.dim}+1 dims, {args.queries:,} queries, {args.threads} thread(s); "
        f"exact search: {per_batch_exact * 1000:.1f} ms per batch of 32 (the baseline)"
    )
    print(f"{'library':10} {'build s':>8} {'index MiB':>10} {'ms / 32':>8} {'vs exact':>9} {'recall@10':>10}")
    results = []
    for name, (module, build) in LIBRARIES.items():
        if importlib.util.find_spec(module) is None:
            print(f"{name:10} not installed: pip install {name}")
            continue
        started = time.perf_counter()
        search, size = build(items, args.threads, args.ef)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        candidates = np.concatenate(
            [search(users[s : s + 32], K * args.overfetch) for s in range(0, args.queries, 32)]
        )
        per_batch = (time.perf_counter() - started) / (args.queries / 32)
        found = rerank(items, users, candidates, K)
        value = recall(found, truth)
        print(
            f"{name:10} {build_seconds:8.1f} {size / 2**20:10.1f} {per_batch * 1000:8.2f} "
            f"{per_batch_exact / per_batch:8.1f}x {value:10.4f}"
        )
        results.append(
            {"library": name, "build_seconds": build_seconds, "index_bytes": size,
             "ms_per_32": per_batch * 1000, "speedup_vs_exact": per_batch_exact / per_batch,
             "recall@10": value}
        )  # fmt: skip
    print(json.dumps({"exact_ms_per_32": per_batch_exact * 1000, "results": results}))


if __name__ == "__main__":
    main()
