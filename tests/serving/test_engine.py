"""The ranking engine in-process, on a model trained once for the session.

Expectations come from the data, not from the engine: a user's seen items, each item's attributes
and popularity are recomputed here from the synthetic tables. With ``k`` equal to the catalogue
size a query returns every item it allows, so the returned *set* must equal the allowed set exactly.

The last test trains its own small model on a constructed data set where every ``a_j`` is followed
by ``b_j``: a new user with the history ``[a_j]`` must get ``b_j`` first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.data.io import write_table
from recsys.data.synthetic import SyntheticData
from recsys.errors import UserError
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import train
from recsys.serving.engine import MAX_K, Query, Recommendation, Recommender
from tests.conftest import FAST_HYPERPARAMETERS, build_tree
from tests.serving.trained_model import trained_tree


@dataclass(frozen=True)
class Catalogue:
    """What the engine's answers are checked against, computed from the synthetic tables."""

    item_ids: list[str]
    seen: dict[str, set[str]]  # user -> items in their training history
    genres: dict[str, set[str]]
    price: dict[str, float]
    release_year: dict[str, float]
    popularity: dict[str, int]  # item -> distinct users

    def unseen(self, user: str) -> set[str]:
        return set(self.item_ids) - self.seen[user]


@pytest.fixture(scope="module", params=["exact", "index"])
def recommender(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData
) -> Recommender:
    """The trained model, ranking its catalogue exactly, and again through an item index: every
    test of exclusions, candidates and filters below holds for both."""
    extra = {"retrieval": "index"} if request.param == "index" else {}
    loaded = Recommender.load(trained_tree(tmp_path_factory, tiny_data, extra) / "model")
    assert (loaded.index is not None) == (request.param == "index")
    return loaded


@pytest.fixture(scope="module")
def catalogue(tiny_data: SyntheticData) -> Catalogue:
    items = tiny_data.items.astype({"item_id": str})
    pairs = tiny_data.interactions.drop_duplicates(["user_id", "item_id"])
    seen = {str(user): set(group["item_id"].astype(str)) for user, group in pairs.groupby("user_id")}
    popularity = pairs.groupby("item_id").size()
    return Catalogue(
        item_ids=items["item_id"].tolist(),
        seen=seen,
        genres={i: set(g.split("|")) for i, g in zip(items["item_id"], items["genres"], strict=True)},
        price=dict(zip(items["item_id"], items["price"].astype(float), strict=True)),
        release_year=dict(zip(items["item_id"], items["release_year"].astype(float), strict=True)),
        popularity={str(i): int(popularity.get(i, 0)) for i in items["item_id"]},
    )


@pytest.fixture(scope="module")
def users(catalogue: Catalogue) -> list[str]:
    return sorted(catalogue.seen)


def recommend_one(recommender: Recommender, query: Query) -> Recommendation:
    (result,) = recommender.recommend([query])
    assert len(result.item_ids) == len(result.scores)
    assert result.scores == sorted(result.scores, reverse=True), "scores must come best first"
    assert len(set(result.item_ids)) == len(result.item_ids), "an item came back twice"
    return result


# --- known users and exclude_seen --------------------------------------------------------------


def test_the_model_knows_every_user_and_item(recommender: Recommender, catalogue: Catalogue) -> None:
    assert recommender.num_items == len(catalogue.item_ids)
    assert recommender.num_users == len(catalogue.seen)


def test_seen_items_never_come_back_for_any_user(
    recommender: Recommender, catalogue: Catalogue, users: list[str]
) -> None:
    """k = the whole catalogue: every user gets exactly their unseen items, in one batch."""
    results = recommender.recommend([Query(user_id=u, k=len(catalogue.item_ids)) for u in users])

    assert len(results) == len(users)
    for user, result in zip(users, results, strict=True):
        assert result.kind == "user"
        assert not result.fallback and not result.unknown_user
        assert not set(result.item_ids) & catalogue.seen[user], user
        assert set(result.item_ids) == catalogue.unseen(user), user


def test_seen_items_can_come_back_without_exclude_seen(
    recommender: Recommender, catalogue: Catalogue, users: list[str]
) -> None:
    everything = len(catalogue.item_ids)
    results = recommender.recommend([Query(user_id=u, k=everything, exclude_seen=False) for u in users])

    for user, result in zip(users, results, strict=True):
        assert set(result.item_ids) == set(catalogue.item_ids), user
    # And not only at the tail: somewhere a seen item outranks an unseen one in the top 10.
    assert any(set(r.item_ids[:10]) & catalogue.seen[u] for u, r in zip(users, results, strict=True))


def test_scores_do_not_depend_on_exclude_seen(recommender: Recommender, users: list[str]) -> None:
    user = users[3]
    kept = recommend_one(recommender, Query(user_id=user, k=MAX_K))
    everything = recommend_one(recommender, Query(user_id=user, k=MAX_K, exclude_seen=False))

    score_of = dict(zip(everything.item_ids, everything.scores, strict=True))
    assert kept.scores == [score_of[i] for i in kept.item_ids]


def test_k_caps_the_number_of_items(recommender: Recommender, users: list[str]) -> None:
    for k in (1, 3, 10):
        assert len(recommend_one(recommender, Query(user_id=users[0], k=k)).item_ids) == k


# --- exclude and candidates --------------------------------------------------------------------


def test_exclude_removes_items_keeps_the_rest_in_order(recommender: Recommender, users: list[str]) -> None:
    user = users[0]
    top = recommend_one(recommender, Query(user_id=user, k=8)).item_ids
    excluded = (top[0], top[2])

    result = recommend_one(recommender, Query(user_id=user, k=6, exclude=excluded))

    assert not set(result.item_ids) & set(excluded)
    assert result.item_ids == [i for i in top if i not in excluded]
    assert result.unknown_items == []


def test_exclude_reports_unknown_ids(recommender: Recommender, users: list[str]) -> None:
    result = recommend_one(recommender, Query(user_id=users[0], k=5, exclude=("no-such-item",)))

    assert result.unknown_items == ["no-such-item"]
    assert len(result.item_ids) == 5


def test_candidates_are_exactly_the_known_ones_ranked(
    recommender: Recommender, catalogue: Catalogue, users: list[str]
) -> None:
    user = users[1]
    unseen = sorted(catalogue.unseen(user))
    candidates = (unseen[5], "ghost-1", unseen[0], unseen[9], "ghost-2")

    result = recommend_one(recommender, Query(user_id=user, k=10, items=candidates))
    full = recommend_one(recommender, Query(user_id=user, k=MAX_K))

    assert sorted(result.item_ids) == sorted([unseen[0], unseen[5], unseen[9]])
    assert result.item_ids == [i for i in full.item_ids if i in result.item_ids], "not in model order"
    assert result.unknown_items == ["ghost-1", "ghost-2"]
    assert result.kind == "user"


def test_a_candidate_list_comes_back_whole_seen_items_included_unless_asked(
    recommender: Recommender, catalogue: Catalogue, users: list[str]
) -> None:
    user = users[2]
    seen = sorted(catalogue.seen[user])[:2]
    unseen = sorted(catalogue.unseen(user))[:3]
    shelf = (seen[0], unseen[0], "ghost", seen[1], unseen[1], unseen[2])

    whole = recommend_one(recommender, Query(user_id=user, items=shelf))
    unseen_only = recommend_one(recommender, Query(user_id=user, items=shelf, exclude_seen=True))
    top_two = recommend_one(recommender, Query(user_id=user, items=shelf, k=2))

    assert sorted(whole.item_ids) == sorted([*seen, *unseen])  # all five known ones, ranked
    assert whole.scores == sorted(whole.scores, reverse=True)
    assert whole.unknown_items == ["ghost"]
    assert sorted(unseen_only.item_ids) == sorted(unseen)
    assert top_two.item_ids == whole.item_ids[:2]
    # Elsewhere exclude_seen keeps its default of true.
    assert not set(recommend_one(recommender, Query(user_id=user, k=50)).item_ids) & catalogue.seen[user]


# --- filters -----------------------------------------------------------------------------------


FILTER_CASES = [
    pytest.param({"genres": ["Comedy", "Drama"]}, id="categorical-list"),
    pytest.param({"genres": "Comedy"}, id="categorical-scalar"),
    pytest.param({"price": {"min": 5, "max": 12}}, id="numeric-min-max"),
    pytest.param({"release_year": {"min": 2005}}, id="numeric-min"),
    pytest.param({"price": {"max": 9.5}}, id="numeric-max"),
    pytest.param({"genres": ["Drama", "Action"], "release_year": {"max": 2010}}, id="and-across"),
]


def _allowed(catalogue: Catalogue, spec: dict[str, object], item: str) -> bool:
    for name, condition in spec.items():
        if name == "genres":
            wanted = condition if isinstance(condition, list) else [condition]
            if not catalogue.genres[item] & set(wanted):
                return False
            continue
        value = catalogue.price[item] if name == "price" else catalogue.release_year[item]
        if isinstance(condition, dict):
            if "min" in condition and value < condition["min"]:
                return False
            if "max" in condition and value > condition["max"]:
                return False
        elif value != condition:
            return False
    return True


@pytest.mark.parametrize("spec", FILTER_CASES)
def test_filters_return_exactly_the_matching_unseen_items(
    recommender: Recommender, catalogue: Catalogue, users: list[str], spec: dict[str, object]
) -> None:
    for user in users[:10]:
        result = recommend_one(recommender, Query(user_id=user, k=MAX_K, filter=spec))

        expected = {i for i in catalogue.unseen(user) if _allowed(catalogue, spec, i)}
        assert set(result.item_ids) == expected, (user, spec)
    # The case is not vacuous: something matches, and something does not.
    matching = [i for i in catalogue.item_ids if _allowed(catalogue, spec, i)]
    assert 0 < len(matching) < len(catalogue.item_ids)


def test_numeric_filter_with_a_number_means_equal(recommender: Recommender, catalogue: Catalogue) -> None:
    year = catalogue.release_year[catalogue.item_ids[0]]
    result = recommend_one(recommender, Query(k=MAX_K, filter={"release_year": year}))

    assert set(result.item_ids) == {i for i, y in catalogue.release_year.items() if y == year}


@pytest.mark.parametrize(
    ("value", "hint"),
    [("comedy", "did you mean 'Comedy'?"), ("Comdy", "did you mean 'Comedy'"), ("NoSuchGenre", "it has")],
)
def test_a_filter_value_no_item_has_names_it_and_the_closest_values(
    recommender: Recommender, users: list[str], value: str, hint: str
) -> None:
    with pytest.raises(UserError) as caught:
        recommender.recommend([Query(user_id=users[0], filter={"genres": ["Drama", value]})])

    message = str(caught.value)
    assert f"filter 'genres': no item has the value {value!r}" in message
    assert hint in message


def test_unknown_filter_attribute_names_it_and_the_filterable_ones(
    recommender: Recommender, users: list[str]
) -> None:
    with pytest.raises(UserError) as caught:
        recommender.recommend([Query(user_id=users[0], filter={"colour": "red"})])

    message = str(caught.value)
    assert caught.value.status_code == 400
    assert "'colour'" in message
    for name in ("genres", "price", "release_year"):
        assert name in message


@pytest.mark.parametrize(
    "condition",
    [
        pytest.param({"min": "cheap"}, id="string-bound"),
        pytest.param({"low": 1}, id="unknown-key"),
        pytest.param({}, id="no-bound"),
        pytest.param({"min": float("nan")}, id="nan-bound"),
        pytest.param({"max": True}, id="boolean-bound"),
        pytest.param("cheap", id="string"),
        pytest.param([1, 2], id="list"),
        pytest.param(float("inf"), id="infinite"),
    ],
)
def test_bad_numeric_filter_is_a_user_error(
    recommender: Recommender, users: list[str], condition: object
) -> None:
    with pytest.raises(UserError) as caught:
        recommender.recommend([Query(user_id=users[0], filter={"price": condition})])

    assert caught.value.status_code == 400
    assert "'price'" in str(caught.value)
    assert "min" in str(caught.value)


@pytest.mark.parametrize("condition", [[], {"Comedy": 1}, [["Comedy"]]], ids=["empty", "object", "nested"])
def test_bad_categorical_filter_is_a_user_error(
    recommender: Recommender, users: list[str], condition: object
) -> None:
    with pytest.raises(UserError, match="'genres'"):
        recommender.recommend([Query(user_id=users[0], filter={"genres": condition})])


# --- fallback to the most popular items --------------------------------------------------------


def _assert_most_popular(result: Recommendation, catalogue: Catalogue, pool: list[str], k: int) -> None:
    """The k most popular items of ``pool`` (ties in any order), with their counts as scores."""
    counts = sorted((catalogue.popularity[i] for i in pool), reverse=True)
    assert result.scores == [float(c) for c in counts[:k]]
    assert all(catalogue.popularity[i] == s for i, s in zip(result.item_ids, result.scores, strict=True))
    assert set(result.item_ids) <= set(pool)


def test_no_user_and_no_history_gets_the_most_popular(recommender: Recommender, catalogue: Catalogue) -> None:
    result = recommend_one(recommender, Query(k=7))

    assert result.kind == "popular"
    assert result.fallback and not result.unknown_user
    _assert_most_popular(result, catalogue, catalogue.item_ids, 7)


def test_unknown_user_gets_the_most_popular_flagged(recommender: Recommender, catalogue: Catalogue) -> None:
    result = recommend_one(recommender, Query(user_id="nobody-at-all", k=5))

    assert result.kind == "popular"
    assert result.fallback and result.unknown_user
    _assert_most_popular(result, catalogue, catalogue.item_ids, 5)


def test_fallback_applies_filters_and_excludes(recommender: Recommender, catalogue: Catalogue) -> None:
    comedies = [i for i in catalogue.item_ids if "Comedy" in catalogue.genres[i]]
    most_popular = max(comedies, key=lambda i: catalogue.popularity[i])

    result = recommend_one(
        recommender,
        Query(user_id="nobody", k=MAX_K, filter={"genres": "Comedy"}, exclude=(most_popular,)),
    )

    assert result.fallback and result.unknown_user
    assert set(result.item_ids) == set(comedies) - {most_popular}
    _assert_most_popular(result, catalogue, [i for i in comedies if i != most_popular], len(comedies) - 1)


# --- history-only (new) users --------------------------------------------------------------------


def test_history_only_user_is_ranked_and_history_is_excluded(
    recommender: Recommender, catalogue: Catalogue
) -> None:
    history = tuple(catalogue.item_ids[:4])

    result = recommend_one(recommender, Query(history=history, k=MAX_K))
    again = recommend_one(recommender, Query(history=history, k=MAX_K, exclude_seen=False))

    assert result.kind == "history"
    assert not result.fallback and not result.unknown_user
    assert set(result.item_ids) == set(catalogue.item_ids) - set(history)
    assert set(again.item_ids) == set(catalogue.item_ids)


def test_history_changes_the_ranking(recommender: Recommender, catalogue: Catalogue) -> None:
    """Different histories give different rankings: the history is really read."""
    rankings = {
        tuple(recommend_one(recommender, Query(history=(item,), k=10, exclude_seen=False)).item_ids)
        for item in catalogue.item_ids[:10]
    }
    assert len(rankings) > 1


def test_history_reports_unknown_items(recommender: Recommender, catalogue: Catalogue) -> None:
    result = recommend_one(recommender, Query(history=(catalogue.item_ids[0], "ghost"), k=5))

    assert result.kind == "history"
    assert result.unknown_items == ["ghost"]
    assert catalogue.item_ids[0] not in result.item_ids


def test_unknown_user_with_history_is_ranked_from_the_history(
    recommender: Recommender, catalogue: Catalogue
) -> None:
    history = tuple(catalogue.item_ids[10:13])

    result = recommend_one(recommender, Query(user_id="newcomer", history=history, k=5))
    anonymous = recommend_one(recommender, Query(history=history, k=5))

    assert result.kind == "history"
    assert result.unknown_user and not result.fallback
    assert result.item_ids == anonymous.item_ids


# --- similar items -----------------------------------------------------------------------------


def test_similar_items_leave_out_the_item_itself(recommender: Recommender, catalogue: Catalogue) -> None:
    for item in catalogue.item_ids[:15]:
        result = recommend_one(recommender, Query(item_id=item, k=MAX_K))

        assert result.kind == "similar"
        assert not result.fallback
        assert item not in result.item_ids
        assert set(result.item_ids) == set(catalogue.item_ids) - {item}
        assert all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for s in result.scores), "cosine similarity"


def test_similar_items_apply_filters(recommender: Recommender, catalogue: Catalogue) -> None:
    item = catalogue.item_ids[0]
    result = recommend_one(recommender, Query(item_id=item, k=MAX_K, filter={"price": {"max": 10}}))

    assert set(result.item_ids) == {i for i in catalogue.item_ids if catalogue.price[i] <= 10} - {item}


def test_unknown_item_id_falls_back_to_popular(recommender: Recommender, catalogue: Catalogue) -> None:
    result = recommend_one(recommender, Query(item_id="no-such-item", k=4))

    assert result.kind == "popular"
    assert result.fallback and not result.unknown_user
    assert result.unknown_items == ["no-such-item"]
    _assert_most_popular(result, catalogue, catalogue.item_ids, 4)


# --- k and batches -----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1])
def test_k_out_of_range_is_a_user_error(recommender: Recommender, users: list[str], k: int) -> None:
    with pytest.raises(UserError) as caught:
        recommender.recommend([Query(user_id=users[0]), Query(user_id=users[1], k=k)])

    assert caught.value.status_code == 400
    assert f"got {k}" in str(caught.value)
    assert str(MAX_K) in str(caught.value)


def test_k_at_the_limits_is_accepted(recommender: Recommender, users: list[str]) -> None:
    assert len(recommend_one(recommender, Query(user_id=users[0], k=1)).item_ids) == 1
    assert recommend_one(recommender, Query(user_id=users[0], k=MAX_K)).item_ids


def test_a_mixed_batch_answers_in_query_order(
    recommender: Recommender, catalogue: Catalogue, users: list[str]
) -> None:
    """Personal queries are scored together and the others apart; each answer must stay in its row."""
    items = catalogue.item_ids
    queries = [
        Query(k=2),
        Query(user_id=users[0], k=3),
        Query(item_id=items[0], k=4),
        Query(history=(items[1], items[2]), k=5),
        Query(user_id="nobody", k=6),
        Query(user_id=users[1], k=7, filter={"genres": "Drama"}),
        Query(item_id="ghost", k=8),
        Query(user_id=users[0], k=3, exclude_seen=False),
        Query(history=(items[3],), k=9, items=tuple(items[:20])),
        Query(user_id=users[2], k=1),
    ]
    expected_kinds = [
        "popular",
        "user",
        "similar",
        "history",
        "popular",
        "user",
        "popular",
        "user",
        "history",
        "user",
    ]

    batch = recommender.recommend(queries)
    alone = [recommend_one(recommender, query) for query in queries]

    assert [r.kind for r in batch] == expected_kinds
    assert [r.item_ids for r in batch] == [r.item_ids for r in alone]
    for batched, single in zip(batch, alone, strict=True):
        assert batched.scores == pytest.approx(single.scores, abs=1e-5)
    assert [len(r.item_ids) for r in batch] == [q.k for q in queries]


def test_a_large_batch_of_users_keeps_order(recommender: Recommender, users: list[str]) -> None:
    rng = np.random.default_rng(0)
    order = [users[i] for i in rng.permutation(len(users))] + ["ghost-a", "ghost-b"]
    queries = [Query(user_id=u, k=1 + i % 5) for i, u in enumerate(order)]

    batch = recommender.recommend(queries)

    assert len(batch) == len(queries)
    for query, result in zip(queries, batch, strict=True):
        assert result.item_ids == recommend_one(recommender, query).item_ids
        assert result.unknown_user == str(query.user_id).startswith("ghost")


# --- a constructed data set: what follows a_j is b_j -------------------------------------------

NUM_PAIRS = 20
NUM_PAIR_USERS = 400
PAIRS_PER_USER = 4
PAIR_HYPERPARAMETERS = {
    "epochs": "4",
    "embedding_dim": "16",
    "history_length": "3",
    "batch_size": "128",
    "learning_rate": "0.01",
    "sampled_eval_negatives": "10",
}


def _pair_interactions(seed: int = 0) -> pd.DataFrame:
    """Each user takes 4 of the 20 pairs in random order, always a_j then straight after b_j.

    Users start at random moments of a week, so that the hour of day says nothing about where
    in a pair the next event falls: served answers, whose moment is the server's clock, must not
    depend on when the test runs.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(NUM_PAIR_USERS):
        timestamp = 1_700_000_000 + int(rng.integers(0, 7 * 86_400))
        for pair in rng.choice(NUM_PAIRS, PAIRS_PER_USER, replace=False):
            for item in (f"a{pair:02d}", f"b{pair:02d}"):
                rows.append((f"p{user:04d}", item, timestamp))
                timestamp += 3600
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def _trained_on_pairs(base: Path, hyperparameters: dict[str, str]) -> Recommender:
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    train_dir = base / "input" / "data" / "train"
    train_dir.mkdir(parents=True)
    write_table(_pair_interactions(), train_dir / "interactions.csv")

    code = train(ContainerPaths(base))

    failure = base / "output" / "failure"
    assert code == 0, failure.read_text() if failure.exists() else code
    return Recommender.load(base / "model")


@pytest.fixture(scope="module")
def pair_recommender(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    return _trained_on_pairs(tmp_path_factory.mktemp("pairs_opt_ml"), PAIR_HYPERPARAMETERS)


def test_history_of_a_ranks_its_b_first(pair_recommender: Recommender) -> None:
    queries = [Query(history=(f"a{j:02d}",), k=3) for j in range(NUM_PAIRS)]

    results = pair_recommender.recommend(queries)

    firsts = [r.item_ids[0] for r in results]
    hits = [j for j, first in enumerate(firsts) if first == f"b{j:02d}"]
    assert all(r.kind == "history" and not r.fallback for r in results)
    assert firsts[0] == "b00", firsts
    assert len(hits) >= 0.8 * NUM_PAIRS, firsts
    # b_j is at least near the top for every pair: the model learnt the pairs, not a popularity order.
    assert all(f"b{j:02d}" in r.item_ids for j, r in enumerate(results)), [r.item_ids for r in results]
    # Not one popular item for everyone: the pairs are about equally popular.
    assert len(set(firsts)) >= 0.8 * NUM_PAIRS


def test_a_new_user_id_with_history_of_a_also_gets_b(pair_recommender: Recommender) -> None:
    result = recommend_one(pair_recommender, Query(user_id="new-user", history=("a07",), k=1))

    assert result.unknown_user and result.kind == "history"
    assert result.item_ids == ["b07"]


@pytest.mark.parametrize("history", [(), ("no-such-item",)])
def test_a_history_with_no_known_item_falls_back_to_popular(
    recommender: Recommender, history: tuple[str, ...]
) -> None:
    result = recommend_one(recommender, Query(history=history, k=5))
    assert result.fallback and result.kind == "popular"
    assert result.unknown_items == list(history)
    popular = recommend_one(recommender, Query(k=5))
    assert result.item_ids == popular.item_ids


def test_similar_items_never_include_the_item_itself(recommender: Recommender) -> None:
    item = recommender.artifact.items.ids[0]
    for exclude_seen in (True, False):
        result = recommend_one(
            recommender, Query(item_id=item, k=recommender.num_items, exclude_seen=exclude_seen)
        )
        assert item not in result.item_ids
        assert len(result.item_ids) == recommender.num_items - 1


def test_precomputed_user_vectors_equal_the_encoded_ones(recommender: Recommender) -> None:
    assert recommender.user_cache is not None
    index = np.arange(recommender.num_users)
    encoded = recommender._encode_stored(index, np.ones(len(index), dtype=bool))
    cached = recommender._cached_state(torch.from_numpy(index))
    for fresh, stored in zip(encoded, cached, strict=True):
        if fresh is None:
            assert stored is None
        else:
            torch.testing.assert_close(fresh, stored)


def test_known_users_rank_the_same_with_or_without_a_history_row_in_the_batch(
    recommender: Recommender, users: list[str]
) -> None:
    alone = recommender.recommend([Query(user_id=u, k=5) for u in users[:10]])
    known_item = recommender.artifact.items.ids[0]
    mixed = recommender.recommend(
        [*(Query(user_id=u, k=5) for u in users[:10]), Query(history=(known_item,), k=5)]
    )
    assert mixed[-1].kind == "history"
    assert [r.item_ids for r in alone] == [r.item_ids for r in mixed[:10]]


# --- the newer model parts, served -------------------------------------------------------------


@pytest.fixture(scope="module")
def attention_pair_recommender(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    hyperparameters = {**PAIR_HYPERPARAMETERS, "history_encoder": "attention", "epochs": "12"}
    return _trained_on_pairs(tmp_path_factory.mktemp("attention_pairs_opt_ml"), hyperparameters)


def test_a_served_attention_model_ranks_b_first_after_a(attention_pair_recommender: Recommender) -> None:
    assert attention_pair_recommender.artifact.model_config.history_encoder == "attention"
    results = attention_pair_recommender.recommend(
        [Query(history=(f"a{j:02d}",), k=3) for j in range(NUM_PAIRS)]
    )

    firsts = [r.item_ids[0] for r in results]
    assert sum(first == f"b{j:02d}" for j, first in enumerate(firsts)) >= 0.8 * NUM_PAIRS, firsts
    # Known users: their stored history ends with some b_j, and what they have seen never returns.
    known = attention_pair_recommender.recommend([Query(user_id="p0000", k=5)])[0]
    assert known.kind == "user" and not known.fallback
    seen = set(_pair_interactions().query("user_id == 'p0000'")["item_id"])
    assert not seen & set(known.item_ids)


def test_a_model_with_device_context_and_event_types_serves_every_kind_of_query(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData
) -> None:
    base = build_tree(
        tmp_path_factory.mktemp("context_opt_ml"),
        tiny_data,
        hyperparameters={**FAST_HYPERPARAMETERS, "context_columns": "device"},
    )
    assert train(ContainerPaths(base)) == 0
    served = Recommender.load(base / "model")
    encodings = json.loads((base / "model" / "encodings.json").read_text())["rows"]
    assert encodings["event_types"] == ["cart", "click", "purchase"]
    assert [name for name, _ in encodings["categorical"]] == ["device"]
    user = str(tiny_data.interactions["user_id"].iloc[0])
    item = str(tiny_data.items["item_id"].iloc[0])

    results = served.recommend(
        [Query(user_id=user, k=5), Query(history=(item,), k=5), Query(item_id=item, k=5)]
    )

    assert [r.kind for r in results] == ["user", "history", "similar"]
    assert all(len(r.item_ids) == 5 and not r.fallback for r in results)
    seen = set(tiny_data.interactions.loc[tiny_data.interactions["user_id"] == user, "item_id"])
    assert not seen & set(results[0].item_ids)
