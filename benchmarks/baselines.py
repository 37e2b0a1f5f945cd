"""Reference recommenders and a full-ranking evaluation for the quality benchmark.

Shapes: U = users, N = catalogue items. ``X`` is a dense binary float32 user-item matrix [U, N]
(1.0 where the user interacted with the item in training). Relevant (held-out) items are given per
user as a list of item indices, one list per row of ``X``; an empty list means the user is not
evaluated.

The accuracy metrics are the package's own (``recsys.evaluation.metrics``), so a baseline's
HR@10 / NDCG@10 / Recall@10 mean exactly what ``recsys evaluate`` reports for the project's model:
every item is ranked, the user's training items are excluded, and means and standard errors are
taken over the users that have at least one held-out item.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from recsys.evaluation.metrics import hit_rate_at_k, hits_from_topk, ndcg_at_k, recall_at_k

__all__ = [
    "EASE_L2_GRID",
    "choose_ease_l2",
    "ease_fit",
    "ease_scores",
    "full_ranking_metrics",
    "interaction_matrix",
    "most_popular_scores",
    "ranked_list_metrics",
    "relevant_items",
]

# Steck (2019) reports the best l2 on MovieLens-20M in the hundreds; small catalogues favour less.
EASE_L2_GRID: tuple[float, ...] = (50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0)


def _indices(index: pd.Index, ids: pd.Series) -> np.ndarray:
    """Positions of ``ids`` in ``index`` (-1 for an id it does not hold)."""
    return np.asarray(index.get_indexer(pd.Index(ids.astype(str))), dtype=np.int64)


def interaction_matrix(train: pd.DataFrame, user_index: pd.Index, item_index: pd.Index) -> np.ndarray:
    """The binary user-item matrix [U, N] (float32) of ``train``'s ``user_id`` / ``item_id`` pairs.

    ``user_index`` and ``item_index`` hold the string ids in row / column order. Repeated pairs count
    once. Raises ``ValueError`` naming how many rows hold an id the indexes lack.
    """
    users = _indices(user_index, train["user_id"])
    items = _indices(item_index, train["item_id"])
    unknown = int(((users < 0) | (items < 0)).sum())
    if unknown:
        raise ValueError(f"{unknown} training interactions name a user or item missing from the indexes")
    matrix = np.zeros((len(user_index), len(item_index)), dtype=np.float32)
    matrix[users, items] = 1.0
    return matrix


def relevant_items(
    held_out: pd.DataFrame, user_index: pd.Index, item_index: pd.Index
) -> tuple[list[list[int]], int]:
    """Each indexed user's held-out item indices (deduplicated, in order), and how many rows were skipped.

    Rows naming a user or item absent from the indexes are skipped, as ``recsys evaluate`` skips them.
    """
    users = _indices(user_index, held_out["user_id"])
    items = _indices(item_index, held_out["item_id"])
    known = (users >= 0) & (items >= 0)
    relevant: list[list[int]] = [[] for _ in range(len(user_index))]
    for user, item in zip(users[known].tolist(), items[known].tolist(), strict=True):
        if item not in relevant[user]:
            relevant[user].append(item)
    return relevant, int((~known).sum())


def most_popular_scores(X: np.ndarray) -> np.ndarray:
    """Every user gets the same scores [U, N]: how many training users interacted with each item."""
    popularity = X.sum(axis=0, dtype=np.float64).astype(np.float32)
    return np.broadcast_to(popularity, X.shape).copy()


def ease_fit(X: np.ndarray, l2: float) -> np.ndarray:
    """EASE's item-item weights B [N, N] (float32), closed form (Steck 2019, "Embarrassingly Shallow
    Autoencoders for Sparse Data").

    G = X^T X + l2 I; P = G^-1; B = -P / diag(P) column-wise, with diag(B) = 0. The Gram matrix and
    its inverse are computed in float64; ``l2`` must be positive, which also keeps G invertible when
    an item has no interactions.
    """
    if not l2 > 0.0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    X64 = X.astype(np.float64, copy=False)
    gram = X64.T @ X64
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)[np.newaxis, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)


def ease_scores(X: np.ndarray, B: np.ndarray) -> np.ndarray:
    """EASE's scores [U, N]: X @ B."""
    return np.asarray(X @ B, dtype=np.float32)


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)), as ``recsys evaluate``."""
    n = values.shape[0]
    if n == 0:
        return 0.0, 0.0
    se = float(values.std().item()) / math.sqrt(n) if n > 1 else 0.0
    return float(values.mean().item()), se


def full_ranking_metrics(
    scores: np.ndarray, X_train: np.ndarray, relevant: Sequence[Sequence[int]], k: int = 10
) -> dict[str, float]:
    """HR@k, NDCG@k and Recall@k (each with ``_se``) ranking every item, training items excluded.

    ``scores`` and ``X_train`` are [U, N]; ``relevant`` has one list of held-out item indices per
    user. Only users with at least one relevant item count (``num_users``). Each metric lies in
    [0, 1]; with no such user every value is 0.0. A relevant item the user also had in training can
    never be ranked, so it counts as a miss.
    """
    if scores.shape != X_train.shape:
        raise ValueError(f"scores {scores.shape} and X_train {X_train.shape} must have the same shape")
    if len(relevant) != scores.shape[0]:
        raise ValueError(f"relevant has {len(relevant)} users, scores has {scores.shape[0]}")
    num_items = scores.shape[1]
    users = [u for u, items in enumerate(relevant) if len(items) > 0]
    out: dict[str, float] = {"num_users": float(len(users))}
    names = (f"hr@{k}", f"ndcg@{k}", f"recall@{k}")
    if not users:
        return out | {name: 0.0 for name in names} | {f"{name}_se": 0.0 for name in names}
    rows = torch.tensor(users, dtype=torch.long)
    user_scores = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[rows]
    seen = torch.from_numpy(np.ascontiguousarray(X_train))[rows] > 0
    # Training items can never be recommended: -inf sorts them below every unseen item.
    masked = user_scores.masked_fill(seen, float("-inf"))
    cutoff = min(k, num_items)
    top = torch.topk(masked, cutoff, dim=1).indices
    counts = torch.tensor([len(relevant[u]) for u in users], dtype=torch.long)
    indptr = torch.zeros(len(users) + 1, dtype=torch.long)
    indptr[1:] = torch.cumsum(counts, 0)
    flat = torch.tensor([i for u in users for i in relevant[u]], dtype=torch.long)
    hits = hits_from_topk(top, indptr, flat, num_items)
    # A training item that is also held out was masked above; make sure -inf ties never count as hits.
    hits &= torch.isfinite(torch.gather(masked, 1, top))
    for name, metric in zip(names, (hit_rate_at_k, ndcg_at_k, recall_at_k), strict=True):
        out[name], out[f"{name}_se"] = _mean_and_se(metric(hits, counts, cutoff))
    return out


def ranked_list_metrics(
    lists: Sequence[Sequence[int]], relevant: Sequence[Sequence[int]], k: int = 10
) -> dict[str, float]:
    """HR@k, NDCG@k and Recall@k (each with ``_se``) of ready-made ranked lists, one per user.

    For a model scored through its own serving path, which returns lists rather than scores.
    ``lists[u]`` holds user ``u``'s recommended item indices, best first (it may be shorter than
    ``k``: the missing ranks are misses); ``relevant`` as in ``full_ranking_metrics``, whose values
    these equal for the same lists.
    """
    if len(lists) != len(relevant):
        raise ValueError(f"lists has {len(lists)} users, relevant has {len(relevant)}")
    users = [u for u, items in enumerate(relevant) if len(items) > 0]
    out: dict[str, float] = {"num_users": float(len(users))}
    names = (f"hr@{k}", f"ndcg@{k}", f"recall@{k}")
    if not users:
        return out | {name: 0.0 for name in names} | {f"{name}_se": 0.0 for name in names}
    hits = torch.zeros(len(users), k, dtype=torch.bool)
    for row, user in enumerate(users):
        wanted = set(relevant[user])
        for rank, item in enumerate(list(lists[user])[:k]):
            hits[row, rank] = item in wanted
    counts = torch.tensor([len(set(relevant[u])) for u in users], dtype=torch.long)
    for name, metric in zip(names, (hit_rate_at_k, ndcg_at_k, recall_at_k), strict=True):
        out[name], out[f"{name}_se"] = _mean_and_se(metric(hits, counts, k))
    return out


def choose_ease_l2(
    X_fit: np.ndarray,
    validation: Sequence[Sequence[int]],
    grid: Iterable[float] = EASE_L2_GRID,
    k: int = 10,
) -> tuple[float, dict[float, float]]:
    """The l2 of ``grid`` with the best validation NDCG@k, and every l2's validation NDCG@k.

    EASE is fitted on ``X_fit`` (training without the validation interactions) and ranks items for
    the users in ``validation``. Ties go to the smaller l2 (the first in ``grid`` order).
    """
    by_l2: dict[float, float] = {}
    for l2 in grid:
        scores = ease_scores(X_fit, ease_fit(X_fit, l2))
        by_l2[l2] = full_ranking_metrics(scores, X_fit, validation, k)[f"ndcg@{k}"]
    if not by_l2:
        raise ValueError("grid must hold at least one l2")
    best = max(by_l2, key=lambda l2: by_l2[l2])
    return best, by_l2
