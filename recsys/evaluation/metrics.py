"""Ranking metrics: accuracy at a cut-off ``k`` and beyond-accuracy properties of recommendation lists.

Shapes: U = users, K = length of each ranked list, N = catalogue items, F = item feature width.

Accuracy metrics share one signature, ``<name>_at_k(hits, num_relevant, k)``, and return a float32
tensor [U] of per-user scores; the caller decides how to average (and over which users). ``hits`` is a
bool tensor [U, K] (K >= k) whose entry ``[u, j]`` is True when the item user ``u`` got at 0-based
rank ``j`` is relevant; ``num_relevant`` is an integer tensor [U] counting each user's relevant
(held-out) items, which may exceed ``k``. A user with ``num_relevant <= 0`` scores 0.0 on every metric.
These functions only inspect shapes and dtypes, never values, so they make no host sync and run
unchanged on any device.

Beyond-accuracy metrics summarise the lists themselves (``top_items``: integer tensor [U, k] of item
indices) and return a Python float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "catalog_coverage",
    "gini_index",
    "hit_rate_at_k",
    "hits_from_topk",
    "intra_list_diversity",
    "map_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "novelty",
    "precision_at_k",
    "recall_at_k",
]

_INTEGER_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})


def _top_k_hits(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Validate the shared accuracy arguments and return the first ``k`` columns of ``hits`` as float32."""
    if hits.dim() != 2:
        raise ValueError(f"hits must be 2-D [U, K], got shape {tuple(hits.shape)}")
    if hits.dtype != torch.bool:
        raise ValueError(f"hits must be a bool tensor, got dtype {hits.dtype}")
    if num_relevant.shape != (hits.shape[0],):
        raise ValueError(
            f"num_relevant must have shape ({hits.shape[0]},) to match hits {tuple(hits.shape)}, "
            f"got {tuple(num_relevant.shape)}"
        )
    if num_relevant.dtype not in _INTEGER_DTYPES:
        raise ValueError(f"num_relevant must be an integer tensor, got dtype {num_relevant.dtype}")
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k must be in [1, {hits.shape[1]}] (the number of ranked columns), got k={k}")
    return hits[:, :k].to(torch.float32)


def _rank_positions(k: int, device: torch.device) -> torch.Tensor:
    """1-based ranks [k] as float32."""
    return torch.arange(1, k + 1, device=device, dtype=torch.float32)


def hit_rate_at_k(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Whether at least one relevant item appears in the top ``k``.

    Returns a float32 tensor [U] of 0.0 / 1.0. Users with ``num_relevant <= 0`` score 0.0.
    """
    top = _top_k_hits(hits, num_relevant, k)
    hit_any = top.amax(dim=1)
    return torch.where(num_relevant > 0, hit_any, torch.zeros_like(hit_any))


def ndcg_at_k(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Normalised discounted cumulative gain with binary relevance.

    DCG = sum over hit ranks j (0-based) of 1 / log2(j + 2); it is divided by the DCG of an ideal list
    holding ``min(num_relevant, k)`` hits at the top. Range [0, 1] when ``hits`` is consistent with
    ``num_relevant`` (at most that many hits). Users with ``num_relevant <= 0`` score 0.0.
    """
    top = _top_k_hits(hits, num_relevant, k)
    discounts = 1.0 / torch.log2(_rank_positions(k, hits.device) + 1.0)
    dcg = (top * discounts).sum(dim=1)
    # Prefix sums of the discounts give the ideal DCG for any number of ideal hits; the leading zero
    # covers users with no relevant items, so one gather serves every user.
    ideal_dcg_by_count = torch.cat([discounts.new_zeros(1), discounts.cumsum(dim=0)])
    ideal_count = num_relevant.clamp(min=0, max=k).long()
    idcg = ideal_dcg_by_count[ideal_count]
    return torch.where(ideal_count > 0, dcg / idcg.clamp(min=torch.finfo(torch.float32).tiny), 0.0)


def recall_at_k(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of a user's relevant items found in the top ``k``: hits / ``num_relevant``.

    Range [0, 1]; a user with more than ``k`` relevant items cannot reach 1.0. Users with
    ``num_relevant <= 0`` score 0.0.
    """
    top = _top_k_hits(hits, num_relevant, k)
    has_relevant = num_relevant > 0
    # clamp keeps the division finite for users that torch.where then discards.
    denominator = num_relevant.clamp(min=1).to(torch.float32)
    return torch.where(has_relevant, top.sum(dim=1) / denominator, 0.0)


def precision_at_k(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of the top ``k`` that is relevant: hits / ``k``.

    Range [0, 1]; a user with fewer than ``k`` relevant items cannot reach 1.0. Users with
    ``num_relevant <= 0`` score 0.0.
    """
    top = _top_k_hits(hits, num_relevant, k)
    return torch.where(num_relevant > 0, top.sum(dim=1) / k, 0.0)


def map_at_k(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Average precision at ``k`` (its mean over users is MAP@k).

    The sum, over the ranks holding a hit, of precision at that rank, divided by
    ``min(num_relevant, k)``. Range [0, 1]; 1.0 when the first ``min(num_relevant, k)`` ranks are all
    hits. Users with ``num_relevant <= 0`` score 0.0.
    """
    top = _top_k_hits(hits, num_relevant, k)
    precision_at_rank = top.cumsum(dim=1) / _rank_positions(k, hits.device)
    ideal_count = num_relevant.clamp(min=0, max=k)
    summed = (precision_at_rank * top).sum(dim=1)
    return torch.where(ideal_count > 0, summed / ideal_count.clamp(min=1).to(torch.float32), 0.0)


def mrr_at_k(hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> torch.Tensor:
    """Reciprocal rank of the first hit in the top ``k``: 1 / (j + 1) for 0-based rank j, else 0.0.

    Range [0, 1] (its mean over users is MRR@k). Users with ``num_relevant <= 0`` score 0.0.
    """
    top = _top_k_hits(hits, num_relevant, k)
    # Reciprocal ranks fall with rank, so the largest one among the hits is the first hit's.
    first_hit = (top / _rank_positions(k, hits.device)).amax(dim=1)
    return torch.where(num_relevant > 0, first_hit, 0.0)


def hits_from_topk(
    top_items: torch.Tensor,
    relevant_indptr: torch.Tensor,
    relevant_indices: torch.Tensor,
    num_items: int,
) -> torch.Tensor:
    """Mark which recommended items are relevant, given each user's relevant items in CSR form.

    ``top_items`` is an integer tensor [U, K] of item indices in ``[0, num_items)``. User ``u``'s
    relevant items are ``relevant_indices[relevant_indptr[u]:relevant_indptr[u + 1]]``, so
    ``relevant_indptr`` is [U + 1], non-decreasing, starts at 0 and ends at ``len(relevant_indices)``.
    Returns a bool tensor [U, K]; with U == 0 or K == 0 it is empty. Only shapes are checked: checking
    values would cost a host sync per batch, and the CSR arrays come from our own split code.
    """
    if top_items.dim() != 2:
        raise ValueError(f"top_items must be 2-D [U, K], got shape {tuple(top_items.shape)}")
    num_users = top_items.shape[0]
    if relevant_indptr.shape != (num_users + 1,):
        raise ValueError(
            f"relevant_indptr must have shape ({num_users + 1},) for {num_users} users, "
            f"got {tuple(relevant_indptr.shape)}"
        )
    if relevant_indices.dim() != 1:
        raise ValueError(f"relevant_indices must be 1-D, got shape {tuple(relevant_indices.shape)}")
    for name, tensor in (
        ("top_items", top_items),
        ("relevant_indptr", relevant_indptr),
        ("relevant_indices", relevant_indices),
    ):
        if tensor.dtype not in _INTEGER_DTYPES:
            raise ValueError(f"{name} must be an integer tensor, got dtype {tensor.dtype}")
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")

    device = top_items.device
    # Each relevant entry's owner is the last user whose row starts at or before it; searchsorted finds
    # it without repeat_interleave's data-dependent output size (which would sync with the host).
    positions = torch.arange(relevant_indices.numel(), device=device, dtype=torch.int64)
    owners = torch.searchsorted(relevant_indptr.long(), positions, right=True) - 1
    # One int64 key per (user, item) pair turns the per-user membership test into a single isin.
    relevant_keys = owners * num_items + relevant_indices.long()
    user_offsets = torch.arange(num_users, device=device, dtype=torch.int64).unsqueeze(1) * num_items
    return torch.isin(user_offsets + top_items.long(), relevant_keys)


def _check_top_items(top_items: torch.Tensor, num_items: int) -> None:
    """Reject lists that are not 2-D integer tensors of indices in ``[0, num_items)``."""
    if top_items.dim() != 2:
        raise ValueError(f"top_items must be 2-D [U, k], got shape {tuple(top_items.shape)}")
    if top_items.dtype not in _INTEGER_DTYPES:
        raise ValueError(f"top_items must be an integer tensor, got dtype {top_items.dtype}")
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    # These metrics return a Python float and sync anyway, so a range check costs nothing extra and turns
    # an opaque indexing error (a device-side assert on GPU) into a readable message.
    if top_items.numel() > 0:
        low, high = int(top_items.min()), int(top_items.max())
        if low < 0 or high >= num_items:
            raise ValueError(f"top_items must lie in [0, {num_items}), got values in [{low}, {high}]")


def _recommendation_counts(top_items: torch.Tensor, num_items: int) -> torch.Tensor:
    """How many times each catalogue item is recommended, as an int64 tensor [N]."""
    return torch.bincount(top_items.flatten().long(), minlength=num_items)


def catalog_coverage(top_items: torch.Tensor, num_items: int) -> float:
    """Fraction of the catalogue that appears in at least one recommendation list.

    Range [0, 1]. Returns 0.0 when there are no recommendations (U == 0 or k == 0).
    """
    _check_top_items(top_items, num_items)
    if top_items.numel() == 0:
        return 0.0
    counts = _recommendation_counts(top_items, num_items)
    return float((counts > 0).sum().item()) / num_items


def gini_index(top_items: torch.Tensor, num_items: int) -> float:
    """Gini coefficient of how often each catalogue item is recommended.

    Items never recommended count as 0. With the counts sorted ascending, x_(1) <= ... <= x_(n) and
    n = ``num_items``, G = sum_i (2i - n - 1) x_(i) / (n * sum_i x_(i)). 0.0 means every item is
    recommended equally often; all recommendations on one item gives the maximum (n - 1) / n, which
    tends to 1 as the catalogue grows. Range [0, 1). Returns 0.0 when there are no recommendations.
    """
    _check_top_items(top_items, num_items)
    if top_items.numel() == 0:
        return 0.0
    # float64: the numerator is a difference of large sums over the catalogue.
    counts = _recommendation_counts(top_items, num_items).to(torch.float64)
    sorted_counts, _ = torch.sort(counts)
    rank = torch.arange(1, num_items + 1, device=counts.device, dtype=torch.float64)
    numerator = ((2.0 * rank - num_items - 1.0) * sorted_counts).sum()
    return float((numerator / (num_items * sorted_counts.sum())).item())


def novelty(top_items: torch.Tensor, item_popularity: torch.Tensor, *, min_probability: float) -> float:
    """Mean self-information, -log2(p_i), of the recommended items (in bits).

    ``item_popularity`` is a float tensor [N] holding, for each item, the probability that a user
    interacted with it. Probabilities below ``min_probability`` (typically 1 / number of users, so an
    item nobody touched counts as if one user had) are raised to it, which keeps the value finite.
    Range [0, -log2(min_probability)] for probabilities in [0, 1]; higher means less popular items.
    Returns 0.0 when there are no recommendations.
    """
    if item_popularity.dim() != 1:
        raise ValueError(f"item_popularity must be 1-D [N], got shape {tuple(item_popularity.shape)}")
    if not item_popularity.is_floating_point():
        raise ValueError(f"item_popularity must be a float tensor, got dtype {item_popularity.dtype}")
    if not 0.0 < min_probability <= 1.0:
        raise ValueError(f"min_probability must be in (0, 1], got {min_probability}")
    _check_top_items(top_items, item_popularity.shape[0])
    if top_items.numel() == 0:
        return 0.0
    probability = item_popularity.to(torch.float64).clamp(min=min_probability)[top_items.long()]
    return float((-torch.log2(probability)).mean().item())


def intra_list_diversity(top_items: torch.Tensor, item_features: torch.Tensor) -> float:
    """Mean over users of the mean pairwise cosine distance (1 - cosine similarity) within each list.

    ``item_features`` is a float tensor [N, F] (for example multi-hot genres). An item whose feature
    vector is all zeros has similarity 0, hence distance 1, to every other item. Range [0, 1] for
    non-negative features ([0, 2] in general). Lists of fewer than 2 items contribute 0.0, and there
    being no lists (U == 0) gives 0.0. Memory grows as U * k * k, so very long lists should be fed in
    user batches.
    """
    if item_features.dim() != 2:
        raise ValueError(f"item_features must be 2-D [N, F], got shape {tuple(item_features.shape)}")
    if not item_features.is_floating_point():
        raise ValueError(f"item_features must be a float tensor, got dtype {item_features.dtype}")
    _check_top_items(top_items, item_features.shape[0])
    num_users, list_length = top_items.shape
    if num_users == 0 or list_length < 2:
        return 0.0
    # normalize maps an all-zero vector to all zeros, which is exactly "similarity 0 to everything".
    unit = F.normalize(item_features[top_items.long()].to(torch.float64), dim=-1)
    # Rounding can push a self-similarity a hair past 1; clamping keeps distances inside the range.
    similarity = torch.bmm(unit, unit.transpose(1, 2)).clamp(min=-1.0, max=1.0)
    off_diagonal = ~torch.eye(list_length, dtype=torch.bool, device=top_items.device)
    distance = (1.0 - similarity)[:, off_diagonal]
    return float(distance.mean(dim=1).mean().item())
