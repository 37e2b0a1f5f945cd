"""Evaluation protocols on models whose scores are set by hand, so every metric is known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.data.device import DeviceInteractions, HeldOut, segment_positions
from recsys.data.interactions import IndexedInteractions
from recsys.evaluation.protocols import (
    KnownPairs,
    beyond_accuracy,
    compare_rankings,
    drop_repeats,
    full_ranking,
    popular_ranking,
    popular_top_k,
    rank_top_k,
    sample_negatives,
    sampled_ranking,
)
from recsys.models.ncf import NCF, ModelConfig

CPU = torch.device("cpu")


def _indexed(per_user: list[list[int]], num_items: int) -> IndexedInteractions:
    counts = [len(items) for items in per_user]
    return IndexedInteractions(
        users=np.repeat(np.arange(len(per_user)), counts).astype(np.int32),
        items=np.array([i for items in per_user for i in items], dtype=np.int32),
        timestamps=np.arange(sum(counts), dtype=np.float64),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        num_users=len(per_user),
        num_items=num_items,
    )


def _train(per_user: list[list[int]], num_items: int) -> DeviceInteractions:
    return DeviceInteractions.from_indexed(_indexed(per_user, num_items), CPU)


def _held_out(per_user: list[list[int]]) -> HeldOut:
    counts = [len(items) for items in per_user]
    indptr = torch.tensor([0, *np.cumsum(counts).tolist()], dtype=torch.long)
    return HeldOut(indptr, torch.tensor([i for items in per_user for i in items], dtype=torch.long))


def _bias_model(biases: list[float], num_users: int) -> NCF:
    """A GMF whose user embeddings are zero: every user's logits are exactly the item biases."""
    model = NCF(
        ModelConfig(
            kind="gmf", num_users=num_users, num_items=len(biases), embedding_dim=2, use_history=False
        )
    )
    assert model.gmf_encoder is not None and model.gmf_encoder.user_ids is not None
    with torch.no_grad():
        model.gmf_encoder.user_ids.weight.zero_()
        model.item_bias.weight.copy_(torch.tensor(biases).unsqueeze(1))
    return model.eval()


def test_segment_positions_on_a_hand_made_csr() -> None:
    indptr = torch.tensor([0, 2, 2, 5, 6])  # segments: [0, 1], [], [2, 3, 4], [5]
    owner, flat = segment_positions(indptr, torch.tensor([2, 0, 1, 3]))
    assert owner.tolist() == [0, 0, 0, 1, 1, 3]
    assert flat.tolist() == [2, 3, 4, 0, 1, 5]
    owner, flat = segment_positions(indptr, torch.tensor([1]))
    assert owner.tolist() == [] and flat.tolist() == []


# Item i's logit is 6 - i: item 0 is everyone's favourite, item 5 the least liked.
BIASES = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
TRAIN = [[0, 1], [2], [0], [1]]
HELD = [[3], [0], [5], []]  # user 3 has nothing held out and is not evaluated


def test_rank_top_k_skips_training_items() -> None:
    model = _bias_model(BIASES, num_users=4)
    top = rank_top_k(model, _train(TRAIN, 6), torch.arange(4), 4, history_length=2, batch_size=3)
    assert top.tolist() == [[2, 3, 4, 5], [0, 1, 3, 4], [1, 2, 3, 4], [0, 2, 3, 4]]


def test_rank_top_k_never_returns_a_training_item_even_when_they_score_highest() -> None:
    generator = torch.Generator().manual_seed(0)
    num_users, num_items, per_user = 5, 12, 4
    train_items = [
        torch.randperm(num_items, generator=generator)[:per_user].tolist() for _ in range(num_users)
    ]
    torch.manual_seed(0)
    model = NCF(ModelConfig(kind="neumf", num_users=num_users, num_items=num_items, embedding_dim=4))
    with torch.no_grad():  # items someone trained on get a huge bias: unmasked, they would top every list
        model.item_bias.weight[sorted({i for items in train_items for i in items})] = 100.0
    model.eval()
    top = rank_top_k(
        model,
        _train(train_items, num_items),
        torch.arange(num_users),
        num_items - per_user,
        history_length=3,
        batch_size=2,
    )
    assert top.shape == (num_users, num_items - per_user)
    for user, row in enumerate(top.tolist()):
        assert len(set(row)) == len(row)
        assert not set(row) & set(train_items[user])


def test_full_ranking_gives_hand_computed_metrics() -> None:
    model = _bias_model(BIASES, num_users=4)
    report = full_ranking(model, _train(TRAIN, 6), _held_out(HELD), (1, 2, 4), history_length=2)
    # Unseen items in score order -> rank of the held-out item (0-based):
    # user 0: 2 3 4 5 -> item 3 at rank 1; user 1: 0 1 3 4 5 -> item 0 at rank 0;
    # user 2: 1 2 3 4 5 -> item 5 at rank 4.
    values = {name: per_user.tolist() for name, per_user in report.values.items()}
    inv = 1.0 / math.log2(3.0)
    assert values["hr@1"] == [0.0, 1.0, 0.0]
    assert values["hr@2"] == [1.0, 1.0, 0.0]
    assert values["hr@4"] == [1.0, 1.0, 0.0]
    assert values["ndcg@2"] == pytest.approx([inv, 1.0, 0.0])
    assert values["mrr@4"] == pytest.approx([0.5, 1.0, 0.0])
    assert values["recall@2"] == [1.0, 1.0, 0.0]
    assert values["precision@2"] == [0.5, 0.5, 0.0]
    assert report.top_items.tolist() == [[2, 3, 4, 5], [0, 1, 3, 4], [1, 2, 3, 4]]
    summary = report.summary()
    assert summary["num_users"] == 3.0
    assert summary["hr@2"] == pytest.approx(2 / 3)
    assert summary["ndcg@2"] == pytest.approx((inv + 1.0) / 3)
    assert summary["hr@1_se"] == pytest.approx(float(torch.tensor([0.0, 1.0, 0.0]).std()) / math.sqrt(3))


def test_full_ranking_with_several_held_out_items() -> None:
    model = _bias_model(BIASES, num_users=2)
    report = full_ranking(model, _train([[0], [5]], 6), _held_out([[2, 4], [0]]), (2,), history_length=1)
    # user 0: 1 2 | 3 4 5 -> one of two relevant in the top 2; user 1: 0 1 -> a hit at rank 0.
    assert report.values["recall@2"].tolist() == [0.5, 1.0]
    assert report.values["ndcg@2"].tolist() == pytest.approx(
        [(1 / math.log2(3)) / (1 + 1 / math.log2(3)), 1.0]
    )


def test_popular_top_k_ranks_unseen_items_by_count_ties_to_the_lower_index() -> None:
    counts = torch.tensor([5, 9, 9, 1, 0, 7])
    top = popular_top_k(counts, _train(TRAIN, 6), torch.arange(4), 3, batch_size=3)
    # Order by count: 1 (9), 2 (9, tie -> after 1), 5 (7), 0 (5), 3 (1), 4 (0).
    assert top.tolist() == [[2, 5, 3], [1, 5, 0], [1, 2, 5], [2, 5, 0]]


def test_popular_ranking_gives_hand_computed_metrics_over_the_same_users_as_the_model() -> None:
    counts = torch.tensor([5, 9, 9, 1, 0, 7])
    train, held = _train(TRAIN, 6), _held_out(HELD)
    report = popular_ranking(counts, train, held, (1, 2))
    # user 0 (held 3): 2 5 3 -> miss at 2; user 1 (held 0): 1 5 0 -> rank 2; user 2 (held 5): 1 2 5.
    assert report.values["hr@2"].tolist() == [0.0, 0.0, 0.0]
    assert report.top_items.tolist() == [[2, 5], [1, 5], [1, 2]]
    model_report = full_ranking(_bias_model(BIASES, 4), train, held, (1, 2), history_length=2)
    assert report.values["ndcg@2"].shape == model_report.values["ndcg@2"].shape


def test_compare_rankings_is_a_paired_difference_with_its_standard_error() -> None:
    train, held = _train(TRAIN, 6), _held_out(HELD)
    model = full_ranking(_bias_model(BIASES, 4), train, held, (2,), history_length=2)  # hr@2: 1 1 0
    popular = popular_ranking(torch.tensor([5, 9, 9, 1, 0, 7]), train, held, (2,))  # hr@2: 0 0 0
    comparison = compare_rankings(model, popular, "hr@2")
    assert comparison.model == pytest.approx(2 / 3)
    assert comparison.baseline == 0.0
    assert comparison.difference == pytest.approx(2 / 3)
    assert comparison.difference_se == pytest.approx(
        float(torch.tensor([1.0, 1.0, 0.0]).std()) / math.sqrt(3)
    )
    assert comparison.clearly_better is False  # 0.667 < 2 x 0.333: three users prove nothing
    same = compare_rankings(model, model, "hr@2")
    assert same.difference == 0.0 and same.difference_se == 0.0 and same.clearly_better is False
    assert compare_rankings(popular, model, "hr@2").clearly_better is False
    assert comparison.to_json()["clearly_better"] is False


def test_a_clear_win_over_the_baseline_is_called_clearly_better() -> None:
    per_user = [[0]] * 30
    train = _train(per_user, 6)
    held = _held_out([[1] if u % 10 else [5] for u in range(30)])  # 27 users want item 1, 3 want 5
    model = full_ranking(_bias_model(BIASES, 30), train, held, (1,), history_length=1)  # top: 1
    popular = popular_ranking(torch.tensor([0, 0, 0, 0, 0, 9]), train, held, (1,))  # top: 5
    comparison = compare_rankings(model, popular, "hr@1")
    assert comparison.model == pytest.approx(0.9) and comparison.baseline == pytest.approx(0.1)
    assert comparison.clearly_better is True


def test_drop_repeats_removes_pairs_already_seen_and_counts_them() -> None:
    seen = _indexed([[0, 1], [2], [], [4]], 6)
    held = _indexed([[1, 3], [2], [5], [0, 4]], 6)
    kept, repeats = drop_repeats(held, seen)
    assert repeats == 3  # (0, 1), (1, 2), (3, 4)
    assert kept.indptr.tolist() == [0, 1, 1, 2, 3]
    assert kept.items.tolist() == [3, 5, 0]
    assert kept.users.tolist() == [0, 2, 3]
    assert kept.timestamps.tolist() == [1.0, 3.0, 4.0]
    untouched, none = drop_repeats(_indexed([[3], [0]], 6), seen)
    assert none == 0 and untouched.items.tolist() == [3, 0]


def _known_sets(train: list[list[int]], held: list[list[int]]) -> list[set[int]]:
    return [set(t) | set(h) for t, h in zip(train, held, strict=True)]


def test_sampled_negatives_never_include_a_known_item(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(3)
    num_users, num_items = 6, 10
    picks = [torch.randperm(num_items, generator=generator)[:4].tolist() for _ in range(num_users)]
    train, held = [p[:3] for p in picks], [p[3:] for p in picks]
    model = _bias_model([0.0] * num_items, num_users=num_users)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def reveal(
        users: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
        candidates: torch.Tensor,
        extras: object = None,
    ) -> torch.Tensor:
        seen.append((users.clone(), candidates.clone()))
        return (
            (torch.arange(candidates.shape[1]) == 0).float().expand(candidates.shape[0], -1)
        )  # positive wins

    monkeypatch.setattr(model, "forward", reveal)
    result = sampled_ranking(
        model,
        _train(train, num_items),
        _held_out(held),
        1,
        num_negatives=30,  # 30 asked for among 10 items, 4 of them known: all 6 unseen ones are used
        history_length=2,
        generator=torch.Generator().manual_seed(0),
        batch_size=4,
    )
    known = _known_sets(train, held)
    rows = 0
    for users, candidates in seen:
        for user, row in zip(users.tolist(), candidates.tolist(), strict=True):
            assert row[0] == held[user][0]
            assert not set(row[1:]) & known[user], f"user {user} got a known item as a negative"
            rows += 1
    assert rows == num_users
    assert result["sampled_hr@1"] == 1.0
    assert result["sampled_ndcg@1"] == 1.0
    assert result["sampled_hr@1_se"] == 0.0


def test_sampled_ranking_with_real_scores() -> None:
    num_items, num_negatives = 8, 5
    train, held = [[1, 2], [3]], [[7], [0]]
    # Bias decreasing with the index except item 7, the favourite: user 0's held-out item beats any
    # negative; user 1's held-out item 0 is the worst (-10) and every negative beats it.
    biases = [-10.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 20.0]
    model = _bias_model(biases, num_users=2)
    args = {
        "num_negatives": num_negatives,
        "history_length": 2,
        "generator": torch.Generator().manual_seed(1),
    }
    result = sampled_ranking(model, _train(train, num_items), _held_out(held), 1, **args)  # type: ignore[arg-type]
    assert result["sampled_hr@1"] == 0.5
    assert result["sampled_ndcg@1"] == 0.5
    args["generator"] = torch.Generator().manual_seed(1)
    deep = sampled_ranking(model, _train(train, num_items), _held_out(held), num_negatives + 1, **args)  # type: ignore[arg-type]
    # User 1's item ranks last of num_negatives + 1: rank 5, inside the top 6.
    assert deep[f"sampled_hr@{num_negatives + 1}"] == 1.0
    assert deep[f"sampled_ndcg@{num_negatives + 1}"] == pytest.approx(
        (1.0 + 1.0 / math.log2(num_negatives + 2)) / 2
    )


def _sampled(
    per_user_train: list[list[int]],
    per_user_held: list[list[int]],
    num_items: int,
    rows: list[int],
    count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    known = KnownPairs.of(_train(per_user_train, num_items), _held_out(per_user_held), num_items)
    generator = torch.Generator().manual_seed(7)
    return sample_negatives(known, torch.tensor(rows), count, generator=generator)


def test_sampled_negatives_are_distinct_unseen_items_and_all_of_them_when_too_few() -> None:
    num_items, count = 50, 20
    train = [
        list(range(0, 50, 10)),  # 45 unseen: many more than asked for
        list(range(35)),  # 15 unseen: fewer than asked for, every one is used
        list(range(10, 38)),  # 22 unseen: a few more than asked for
        list(range(50)),  # nothing unseen: no negative at all
        [],  # 49 unseen (its held-out item aside)
    ]
    held = [[1], [], [40], [], [3]]
    rows = [0, 1, 2, 3, 4, 0, 1, 2, 4, 2]

    items, valid = _sampled(train, held, num_items, rows, count)

    assert items.shape == valid.shape == (len(rows), count)
    for row, user in enumerate(rows):
        unseen = set(range(num_items)) - set(train[user]) - set(held[user])
        drawn = items[row][valid[row]].tolist()
        assert len(drawn) == len(set(drawn)) == min(count, len(unseen)), f"row {row} (user {user})"
        assert set(drawn) <= unseen
        if len(unseen) < count:
            assert set(drawn) == unseen
            assert set(items[row].tolist()) <= unseen or not unseen  # the padding repeats one of them
    assert not valid[3].any()


@pytest.mark.parametrize("unseen_items", [25, 60], ids=["random-order", "redraw-repeats"])
def test_sampled_negatives_are_uniform_over_the_unseen_items(unseen_items: int) -> None:
    num_items, count, rows = unseen_items + 6, 10, 3000
    train = [[0, 2, 4, 6, 8]]  # 5 seen and 1 held out: the rest are unseen

    items, valid = _sampled(train, [[1]], num_items, [0] * rows, count)

    assert bool(valid.all())
    frequency = torch.bincount(items.flatten(), minlength=num_items).double()
    assert frequency[[0, 1, 2, 4, 6, 8]].sum() == 0
    expected = rows * count / unseen_items
    others = frequency[frequency > 0]
    assert others.shape[0] == unseen_items
    # Binomial counts: six standard deviations either way (deterministic with the seed anyway).
    assert float((others - expected).abs().max()) < 6 * (expected * (1 - count / unseen_items)) ** 0.5


def test_sampled_ranking_draws_distinct_negatives_per_held_out_item(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(5)
    num_users, num_items, num_negatives = 8, 40, 30  # 36 unseen per user: few to spare
    picks = [torch.randperm(num_items, generator=generator)[:4].tolist() for _ in range(num_users)]
    train, held = [p[:2] for p in picks], [p[2:] for p in picks]  # two held-out rows per user
    model = _bias_model([0.0] * num_items, num_users=num_users)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def reveal(
        users: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
        candidates: torch.Tensor,
        extras: object = None,
    ) -> torch.Tensor:
        seen.append((users.clone(), candidates.clone()))
        return torch.zeros(candidates.shape)

    monkeypatch.setattr(model, "forward", reveal)
    sampled_ranking(
        model,
        _train(train, num_items),
        _held_out(held),
        10,
        num_negatives=num_negatives,
        history_length=2,
        generator=torch.Generator().manual_seed(0),
        batch_size=5,
    )
    known = _known_sets(train, held)
    rows = 0
    for users, candidates in seen:
        for user, row in zip(users.tolist(), candidates.tolist(), strict=True):
            negatives = row[1:]
            assert len(set(negatives)) == num_negatives, f"user {user} got a negative twice"
            assert not set(negatives) & known[user]
            rows += 1
    assert rows == 2 * num_users


def _ranked_at(rank: int, seen: list[int], num_items: int) -> int:
    """The item at 0-based ``rank`` among the unseen items when item i's logit is num_items - i."""
    return [i for i in range(num_items) if i not in seen][rank]


def test_sampled_hit_rate_is_at_least_full_ranking_on_a_small_catalogue() -> None:
    # With distinct negatives, the items outscoring a held-out one among its negatives are a subset
    # of those outscoring it in full ranking: a full-ranking hit is a sampled hit. Drawn with
    # replacement, an item above it could count twice and push it out of the top 10.
    num_users, num_items, k = 40, 30, 10
    generator = torch.Generator().manual_seed(11)
    train = [sorted(torch.randperm(num_items, generator=generator)[:8].tolist()) for _ in range(num_users)]
    held = [[_ranked_at(5 + u % 5, items, num_items)] for u, items in enumerate(train)]  # ranks 5 to 9
    model = _bias_model([float(num_items - i) for i in range(num_items)], num_users=num_users)
    train_tensors, held_tensors = _train(train, num_items), _held_out(held)

    full = full_ranking(model, train_tensors, held_tensors, (k,), history_length=2).summary()
    sampled = sampled_ranking(
        model,
        train_tensors,
        held_tensors,
        k,
        num_negatives=20,  # of the 21 unseen items besides the held-out one
        history_length=2,
        generator=torch.Generator().manual_seed(0),
    )

    assert full["hr@10"] == 1.0
    assert sampled["sampled_hr@10"] >= full["hr@10"]


def test_sampled_hit_rate_is_at_least_full_ranking_for_a_model_with_histories() -> None:
    num_users, num_items, k = 60, 30, 10
    generator = torch.Generator().manual_seed(12)
    picks = [torch.randperm(num_items, generator=generator)[:9].tolist() for _ in range(num_users)]
    train, held = [p[:8] for p in picks], [p[8:] for p in picks]
    torch.manual_seed(0)
    model = NCF(ModelConfig(kind="neumf", num_users=num_users, num_items=num_items, embedding_dim=8)).eval()
    train_tensors, held_tensors = _train(train, num_items), _held_out(held)

    full = full_ranking(model, train_tensors, held_tensors, (k,), history_length=4).summary()
    sampled = sampled_ranking(
        model,
        train_tensors,
        held_tensors,
        k,
        num_negatives=20,
        history_length=4,
        generator=torch.Generator().manual_seed(0),
    )

    assert 0.0 < full["hr@10"] < 1.0
    assert sampled["sampled_hr@10"] >= full["hr@10"]


def test_beyond_accuracy_keys_and_values() -> None:
    top = torch.tensor([[0, 1], [1, 2]])
    popularity = torch.tensor([0.5, 0.25, 0.125, 0.125])  # share of users who touched each item

    def measure(k: int, features: torch.Tensor | None) -> dict[str, float]:
        return beyond_accuracy(
            top, num_items=4, item_popularity=popularity, num_users=8, item_features=features, k=k
        )

    plain = measure(2, None)
    assert set(plain) == {"coverage@2", "gini@2", "novelty@2"}
    assert plain["coverage@2"] == 0.75
    assert plain["novelty@2"] == pytest.approx((1 + 2 + 2 + 3) / 4)  # mean of -log2(p)
    assert measure(1, None)["coverage@1"] == 0.5  # only the first column: items 0 and 1
    assert measure(2, torch.eye(4))["diversity@2"] > 0
