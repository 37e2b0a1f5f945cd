"""The quality benchmark's baselines and full-ranking metrics against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.baselines import (
    choose_ease_l2,
    ease_fit,
    ease_scores,
    full_ranking_metrics,
    interaction_matrix,
    most_popular_scores,
    relevant_items,
)

# Items 0 and 1 always co-occur; items 2 and 3 are each other's partners less strongly.
CO_OCCURRENCE = np.array(
    [
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 0, 1, 0],
        [1, 1, 0, 0, 1],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 0, 1],
    ],
    dtype=np.float32,
)


def test_interaction_matrix_is_binary_and_follows_the_indexes() -> None:
    frame = pd.DataFrame({"user_id": ["b", "a", "a", "a"], "item_id": ["y", "x", "y", "y"]})
    matrix = interaction_matrix(frame, pd.Index(["a", "b"]), pd.Index(["x", "y", "z"]))
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0]])


def test_interaction_matrix_rejects_unknown_ids() -> None:
    frame = pd.DataFrame({"user_id": ["a"], "item_id": ["nope"]})
    with pytest.raises(ValueError, match="1 training interactions"):
        interaction_matrix(frame, pd.Index(["a"]), pd.Index(["x"]))


def test_relevant_items_groups_by_user_and_skips_unknown_ids() -> None:
    frame = pd.DataFrame({"user_id": ["b", "a", "zz", "b"], "item_id": ["x", "y", "x", "nope"]})
    relevant, skipped = relevant_items(frame, pd.Index(["a", "b", "c"]), pd.Index(["x", "y"]))
    assert relevant == [[1], [0], []]
    assert skipped == 2


def test_ease_diagonal_is_zero() -> None:
    weights = ease_fit(CO_OCCURRENCE, l2=1.0)
    assert weights.shape == (5, 5)
    np.testing.assert_array_equal(np.diag(weights), np.zeros(5))


def test_ease_ranks_the_co_occurring_item_first() -> None:
    # A user holding item 0 alone: item 1, which always comes with it, must come first.
    history = np.array([[1, 0, 0, 0, 0]], dtype=np.float32)
    scores = ease_scores(history, ease_fit(CO_OCCURRENCE, l2=1.0))
    unseen = np.where(history[0] > 0, -np.inf, scores[0])
    assert int(np.argmax(unseen)) == 1


def test_ease_rejects_a_non_positive_l2() -> None:
    with pytest.raises(ValueError, match="l2"):
        ease_fit(CO_OCCURRENCE, l2=0.0)


def test_most_popular_ranks_the_most_frequent_unseen_item_first() -> None:
    train = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    scores = most_popular_scores(train)
    np.testing.assert_array_equal(scores, np.tile([3, 1, 2, 1], (4, 1)))
    # User 0 already has item 0 (the most popular), so item 2 is their first recommendation;
    # a perfect hit for a user whose held-out item is exactly that.
    metrics = full_ranking_metrics(scores, train, [[2], [], [], []], k=1)
    assert metrics["hr@1"] == 1.0


def test_perfect_ranking_scores_one() -> None:
    train = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32)
    scores = np.array([[0.0, 0.9, 0.5, 0.1], [0.0, 0.0, 0.1, 0.9]], dtype=np.float32)
    metrics = full_ranking_metrics(scores, train, [[1, 2], [3]], k=2)
    assert metrics["num_users"] == 2.0
    for name in ("hr@2", "ndcg@2", "recall@2"):
        assert metrics[name] == pytest.approx(1.0)
        assert metrics[f"{name}_se"] == pytest.approx(0.0)


def test_a_miss_scores_zero() -> None:
    train = np.zeros((1, 4), dtype=np.float32)
    scores = np.array([[0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    metrics = full_ranking_metrics(scores, train, [[3]], k=2)
    assert metrics["hr@2"] == 0.0
    assert metrics["ndcg@2"] == 0.0
    assert metrics["recall@2"] == 0.0


def test_hand_computed_mixed_ranking() -> None:
    # User 0: relevant item at rank 2 -> hr 1, ndcg 1/log2(3). User 1: a miss. User 2: not evaluated.
    train = np.zeros((3, 3), dtype=np.float32)
    scores = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1], [0.9, 0.5, 0.1]], dtype=np.float32)
    metrics = full_ranking_metrics(scores, train, [[1], [2], []], k=2)
    assert metrics["num_users"] == 2.0
    assert metrics["hr@2"] == pytest.approx(0.5)
    assert metrics["ndcg@2"] == pytest.approx(0.5 / math.log2(3))
    # Sample standard deviation of (1, 0) is sqrt(0.5); its standard error divides by sqrt(2).
    assert metrics["hr@2_se"] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))


def test_training_items_are_never_ranked() -> None:
    # The user's training items score highest, yet the top-2 must be the two unseen items.
    train = np.array([[1, 1, 0, 0]], dtype=np.float32)
    scores = np.array([[10.0, 9.0, 0.2, 0.1]], dtype=np.float32)
    metrics = full_ranking_metrics(scores, train, [[2, 3]], k=2)
    assert metrics["recall@2"] == pytest.approx(1.0)
    assert metrics["ndcg@2"] == pytest.approx(1.0)
    # A held-out item the user also had in training can only be a miss.
    metrics = full_ranking_metrics(scores, train, [[0]], k=2)
    assert metrics["hr@2"] == 0.0


def test_choose_ease_l2_returns_the_grid_point_with_the_best_validation_ndcg() -> None:
    best, by_l2 = choose_ease_l2(CO_OCCURRENCE, [[], [], [], [], [4], []], grid=(0.5, 5.0, 50.0), k=1)
    assert set(by_l2) == {0.5, 5.0, 50.0}
    assert by_l2[best] == max(by_l2.values())
