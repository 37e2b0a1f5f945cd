"""Metrics against hand-computed answers on tiny rankings and recommendation lists."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from recsys.evaluation.metrics import (
    catalog_coverage,
    gini_index,
    hit_rate_at_k,
    hits_from_topk,
    intra_list_diversity,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
)

AccuracyMetric = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

ACCURACY_METRICS: list[AccuracyMetric] = [
    hit_rate_at_k,
    ndcg_at_k,
    recall_at_k,
    precision_at_k,
    map_at_k,
    mrr_at_k,
]


def _hits(*rows: str) -> torch.Tensor:
    """Build a bool [U, K] tensor from strings such as "x.x" (x = hit)."""
    return torch.tensor([[c == "x" for c in row] for row in rows], dtype=torch.bool)


def _relevant(*counts: int) -> torch.Tensor:
    return torch.tensor(counts, dtype=torch.int64)


def _score(metric: AccuracyMetric, hits: torch.Tensor, num_relevant: torch.Tensor, k: int) -> list[float]:
    result = metric(hits, num_relevant, k)
    assert result.dtype == torch.float32
    assert result.shape == (hits.shape[0],)
    return [float(v) for v in result.tolist()]


# --- accuracy metrics -------------------------------------------------------------------------------


def test_perfect_ranking_scores_one() -> None:
    # Two relevant items at ranks 0 and 1 of a 2-long list: every metric is at its maximum.
    hits, num_relevant = _hits("xx"), _relevant(2)
    for metric in ACCURACY_METRICS:
        assert _score(metric, hits, num_relevant, 2) == pytest.approx([1.0]), metric.__name__


def test_perfect_ranking_with_fewer_relevant_than_k() -> None:
    # 2 relevant, both at the top of a 3-long list: precision can only reach 2/3.
    hits, num_relevant = _hits("xx."), _relevant(2)
    assert _score(hit_rate_at_k, hits, num_relevant, 3) == pytest.approx([1.0])
    assert _score(ndcg_at_k, hits, num_relevant, 3) == pytest.approx([1.0])
    assert _score(map_at_k, hits, num_relevant, 3) == pytest.approx([1.0])
    assert _score(mrr_at_k, hits, num_relevant, 3) == pytest.approx([1.0])
    assert _score(recall_at_k, hits, num_relevant, 3) == pytest.approx([1.0])
    assert _score(precision_at_k, hits, num_relevant, 3) == pytest.approx([2 / 3])


def test_perfect_ranking_with_more_relevant_than_k() -> None:
    # 5 relevant, top 2 both hits: the ideal list also has only 2 hits, so NDCG and MAP are 1;
    # recall is 2/5.
    hits, num_relevant = _hits("xx"), _relevant(5)
    assert _score(ndcg_at_k, hits, num_relevant, 2) == pytest.approx([1.0])
    assert _score(map_at_k, hits, num_relevant, 2) == pytest.approx([1.0])
    assert _score(precision_at_k, hits, num_relevant, 2) == pytest.approx([1.0])
    assert _score(recall_at_k, hits, num_relevant, 2) == pytest.approx([0.4])


def test_miss_scores_zero() -> None:
    hits, num_relevant = _hits("..."), _relevant(2)
    for metric in ACCURACY_METRICS:
        assert _score(metric, hits, num_relevant, 3) == [0.0], metric.__name__


def test_single_hit_at_rank_two() -> None:
    # One relevant item at 0-based rank 2: DCG = 1/log2(4) = 0.5 and IDCG = 1, so NDCG = 0.5;
    # MRR = 1/3; AP = precision@3 / 1 = 1/3.
    hits, num_relevant = _hits("..x"), _relevant(1)
    assert _score(hit_rate_at_k, hits, num_relevant, 3) == pytest.approx([1.0])
    assert _score(ndcg_at_k, hits, num_relevant, 3) == pytest.approx([0.5])
    assert _score(mrr_at_k, hits, num_relevant, 3) == pytest.approx([1 / 3])
    assert _score(map_at_k, hits, num_relevant, 3) == pytest.approx([1 / 3])
    assert _score(recall_at_k, hits, num_relevant, 3) == pytest.approx([1.0])
    assert _score(precision_at_k, hits, num_relevant, 3) == pytest.approx([1 / 3])


def test_multiple_relevant_items() -> None:
    # Hits at 0-based ranks 1 and 3 of 5, 3 relevant items:
    #   DCG  = 1/log2(3) + 1/log2(5)           = 0.630930 + 0.430677 = 1.061606
    #   IDCG = 1 + 1/log2(3) + 1/log2(4)       = 1 + 0.630930 + 0.5  = 2.130930
    #   NDCG = 1.061606 / 2.130930             = 0.498189
    #   AP   = (1/2 + 2/4) / min(3, 5)         = 1/3
    #   MRR  = 1/2, recall = 2/3, precision = 2/5
    hits, num_relevant = _hits(".x.x."), _relevant(3)
    expected_ndcg = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5)
    assert expected_ndcg == pytest.approx(0.498189, abs=1e-6)
    assert _score(ndcg_at_k, hits, num_relevant, 5) == pytest.approx([expected_ndcg])
    assert _score(map_at_k, hits, num_relevant, 5) == pytest.approx([1 / 3])
    assert _score(mrr_at_k, hits, num_relevant, 5) == pytest.approx([0.5])
    assert _score(recall_at_k, hits, num_relevant, 5) == pytest.approx([2 / 3])
    assert _score(precision_at_k, hits, num_relevant, 5) == pytest.approx([0.4])


def test_only_first_k_columns_count() -> None:
    # Same list cut at k = 2 (only the hit at rank 1 survives), 3 relevant so the ideal list has 2 hits:
    #   NDCG = (1/log2(3)) / (1 + 1/log2(3)) = 0.630930 / 1.630930 = 0.386853
    #   AP   = (1/2) / min(3, 2)             = 0.25
    #   recall = 1/3, precision = 1/2, MRR = 1/2
    hits, num_relevant = _hits(".x.x."), _relevant(3)
    assert _score(ndcg_at_k, hits, num_relevant, 2) == pytest.approx([0.386853], abs=1e-6)
    assert _score(map_at_k, hits, num_relevant, 2) == pytest.approx([0.25])
    assert _score(recall_at_k, hits, num_relevant, 2) == pytest.approx([1 / 3])
    assert _score(precision_at_k, hits, num_relevant, 2) == pytest.approx([0.5])
    assert _score(mrr_at_k, hits, num_relevant, 2) == pytest.approx([0.5])
    # A hit beyond k is invisible.
    assert _score(hit_rate_at_k, _hits("..x"), _relevant(1), 2) == [0.0]


def test_many_relevant_beyond_k() -> None:
    # Hits at ranks 0 and 2 of 3, 10 relevant items, so the ideal list is 3 hits:
    #   NDCG = (1 + 1/log2(4)) / (1 + 1/log2(3) + 1/log2(4)) = 1.5 / 2.130930 = 0.703918
    #   AP   = (1/1 + 2/3) / min(10, 3) = 5/9, recall = 2/10
    hits, num_relevant = _hits("x.x"), _relevant(10)
    assert _score(ndcg_at_k, hits, num_relevant, 3) == pytest.approx([0.703918], abs=1e-6)
    assert _score(map_at_k, hits, num_relevant, 3) == pytest.approx([5 / 9])
    assert _score(recall_at_k, hits, num_relevant, 3) == pytest.approx([0.2])


def test_users_are_scored_independently_in_one_batch() -> None:
    hits = _hits("x..", "..x", "...", "x..")
    num_relevant = _relevant(1, 1, 1, 0)
    assert _score(mrr_at_k, hits, num_relevant, 3) == pytest.approx([1.0, 1 / 3, 0.0, 0.0])
    assert _score(ndcg_at_k, hits, num_relevant, 3) == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert _score(hit_rate_at_k, hits, num_relevant, 3) == pytest.approx([1.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("metric", ACCURACY_METRICS, ids=lambda m: m.__name__)
def test_user_without_relevant_items_scores_zero(metric: AccuracyMetric) -> None:
    # The hit is inconsistent with num_relevant == 0 on purpose: the rule must win over the hits.
    assert _score(metric, _hits("x.x"), _relevant(0), 3) == [0.0]


@pytest.mark.parametrize("metric", ACCURACY_METRICS, ids=lambda m: m.__name__)
def test_no_users_gives_empty_result(metric: AccuracyMetric) -> None:
    result = metric(torch.zeros((0, 3), dtype=torch.bool), torch.zeros(0, dtype=torch.int64), 3)
    assert result.shape == (0,)


@pytest.mark.parametrize("metric", ACCURACY_METRICS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    ("hits", "num_relevant", "k", "message"),
    [
        (_hits("x.."), _relevant(1), 0, "k=0"),
        (_hits("x.."), _relevant(1), 4, "k=4"),
        (_hits("x..", "..."), _relevant(1), 2, r"num_relevant must have shape \(2,\)"),
        (torch.tensor([True, False]), _relevant(1), 1, "hits must be 2-D"),
        (torch.tensor([[1, 0]]), _relevant(1), 1, "hits must be a bool tensor"),
        (_hits("x."), torch.tensor([1.0]), 1, "num_relevant must be an integer tensor"),
    ],
    ids=["k-zero", "k-too-large", "shape-mismatch", "hits-1d", "hits-not-bool", "relevant-float"],
)
def test_bad_arguments_raise(
    metric: AccuracyMetric, hits: torch.Tensor, num_relevant: torch.Tensor, k: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        metric(hits, num_relevant, k)


# --- hits_from_topk ----------------------------------------------------------------------------------


def test_hits_from_topk_matches_per_user_relevant_sets() -> None:
    # user 0 relevant {2, 1}; user 1 relevant {} ; user 2 relevant {4, 0}.
    # User 1 is recommended item 0, which only user 2 finds relevant: it must not count.
    top_items = torch.tensor([[0, 1, 2], [3, 0, 1], [2, 0, 4]])
    indptr = torch.tensor([0, 2, 2, 4])
    indices = torch.tensor([2, 1, 4, 0])
    expected = _hits(".xx", "...", ".xx")
    assert torch.equal(hits_from_topk(top_items, indptr, indices, num_items=5), expected)


def test_hits_from_topk_with_leading_and_trailing_empty_users() -> None:
    top_items = torch.tensor([[1, 0], [1, 0], [1, 0]])
    indptr = torch.tensor([0, 0, 1, 1])
    indices = torch.tensor([0])
    expected = _hits("..", ".x", "..")
    assert torch.equal(hits_from_topk(top_items, indptr, indices, num_items=2), expected)


def test_hits_from_topk_feeds_the_accuracy_metrics() -> None:
    top_items = torch.tensor([[3, 1, 2]])
    hits = hits_from_topk(top_items, torch.tensor([0, 1]), torch.tensor([2]), num_items=4)
    assert _score(ndcg_at_k, hits, _relevant(1), 3) == pytest.approx([0.5])


def test_hits_from_topk_rejects_wrong_indptr_length() -> None:
    with pytest.raises(ValueError, match=r"relevant_indptr must have shape \(3,\)"):
        hits_from_topk(torch.tensor([[0], [1]]), torch.tensor([0, 1]), torch.tensor([0]), num_items=2)


# --- beyond-accuracy metrics -------------------------------------------------------------------------

EMPTY_LISTS = torch.zeros((0, 3), dtype=torch.int64)


def test_catalog_coverage() -> None:
    # Items {0, 1, 2} of 5 appear: 3/5.
    assert catalog_coverage(torch.tensor([[0, 1], [1, 2]]), num_items=5) == pytest.approx(0.6)
    assert catalog_coverage(torch.tensor([[0, 1], [2, 3]]), num_items=4) == pytest.approx(1.0)
    assert catalog_coverage(EMPTY_LISTS, num_items=5) == 0.0


def test_catalog_coverage_rejects_out_of_range_items() -> None:
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        catalog_coverage(torch.tensor([[0, 4]]), num_items=4)


def test_gini_index_of_even_recommendations_is_zero() -> None:
    assert gini_index(torch.tensor([[0, 1], [2, 3]]), num_items=4) == pytest.approx(0.0)


def test_gini_index_of_one_item_for_everyone() -> None:
    # Counts sorted ascending [0, 0, 0, 3], n = 4: only i = 4 contributes,
    # G = (2*4 - 4 - 1) * 3 / (4 * 3) = 9/12 = 0.75 = (n - 1) / n.
    assert gini_index(torch.tensor([[2], [2], [2]]), num_items=4) == pytest.approx(0.75)


def test_gini_index_of_uneven_recommendations() -> None:
    # Counts [2, 1, 1] sorted [1, 1, 2], n = 3: coefficients (2i - 4) = -2, 0, 2,
    # G = (-2*1 + 0*1 + 2*2) / (3 * 4) = 2/12 = 1/6.
    assert gini_index(torch.tensor([[0, 1], [0, 2]]), num_items=3) == pytest.approx(1 / 6)


def test_gini_index_of_no_recommendations_is_zero() -> None:
    assert gini_index(EMPTY_LISTS, num_items=4) == 0.0


def test_novelty() -> None:
    # -log2 of [0.5, 0.25, 0.0 -> floor 0.125, 1.0] = [1, 2, 3, 0]; mean = 1.5.
    popularity = torch.tensor([0.5, 0.25, 0.0, 1.0])
    top_items = torch.tensor([[0, 1], [2, 3]])
    assert novelty(top_items, popularity, min_probability=0.125) == pytest.approx(1.5)
    assert novelty(EMPTY_LISTS, popularity, min_probability=0.125) == 0.0


def test_novelty_rejects_non_positive_floor() -> None:
    with pytest.raises(ValueError, match="min_probability"):
        novelty(torch.tensor([[0]]), torch.tensor([0.5]), min_probability=0.0)


# Items: 0 = [1, 0], 1 = [0, 1], 2 = [1, 1], 3 = [0, 0] (no features).
FEATURES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
HALF_ROOT_TWO_DISTANCE = 1 - 1 / math.sqrt(2)  # distance between [1, 0] and [1, 1]: 0.292893


def test_intra_list_diversity_averages_over_users() -> None:
    # User 0: orthogonal items, distance 1. User 1: distance 0.292893. Mean 0.646447.
    result = intra_list_diversity(torch.tensor([[0, 1], [0, 2]]), FEATURES)
    assert result == pytest.approx((1 + HALF_ROOT_TWO_DISTANCE) / 2)


def test_intra_list_diversity_averages_over_pairs() -> None:
    # Pairs (0,1) = 1, (0,2) = 0.292893, (1,2) = 0.292893: mean 0.528595.
    result = intra_list_diversity(torch.tensor([[0, 1, 2]]), FEATURES)
    assert result == pytest.approx((1 + 2 * HALF_ROOT_TWO_DISTANCE) / 3)


def test_intra_list_diversity_edge_cases() -> None:
    # A featureless item is dissimilar to everything; a repeated item is not diverse at all.
    assert intra_list_diversity(torch.tensor([[0, 3]]), FEATURES) == pytest.approx(1.0)
    assert intra_list_diversity(torch.tensor([[2, 2]]), FEATURES) == pytest.approx(0.0)
    assert intra_list_diversity(torch.tensor([[0], [1]]), FEATURES) == 0.0
    assert intra_list_diversity(EMPTY_LISTS, FEATURES) == 0.0
