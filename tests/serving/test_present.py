"""The endpoint answers from the user's present: fresh events, context and attributes in a request.

Each model here is trained through the real training contract on a data set built so that the
right answer is known: on the pair data every ``a_j`` is followed by ``b_j``; on the shelf data a
user's items come from the group of their ``segment`` (a users-table attribute) and of the device
of the moment (a context column), with click and purchase events.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.io import write_table
from recsys.errors import UserError
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import train
from recsys.serving.engine import (
    Event,
    Query,
    Recommendation,
    Recommender,
    _by_row_then_key,
    _latest_of_each,
)
from tests.serving.test_engine import NUM_PAIRS, PAIR_HYPERPARAMETERS, _pair_interactions


def _trained(base: Path, hyperparameters: dict[str, str], channels: dict[str, pd.DataFrame]) -> Recommender:
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    for name, table in channels.items():
        directory = base / "input" / "data" / name
        directory.mkdir(parents=True)
        write_table(table, directory / f"{name}.csv")
    code = train(ContainerPaths(base))
    failure = base / "output" / "failure"
    assert code == 0, failure.read_text() if failure.exists() else code
    return Recommender.load(base / "model")


def one(recommender: Recommender, query: Query) -> Recommendation:
    (result,) = recommender.recommend([query])
    return result


# --- served state: every channel the job read ---------------------------------------------------


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    return _pair_interactions()


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory, pairs: pd.DataFrame) -> Recommender:
    """The pair model trained with each user's last pair (a_j, b_j) in the validation channel."""
    ordered = pairs.sort_values(["user_id", "timestamp"])
    last_two = ordered.groupby("user_id").cumcount(ascending=False) < 2
    return _trained(
        tmp_path_factory.mktemp("validated_opt_ml"),
        PAIR_HYPERPARAMETERS,
        {"train": ordered[~last_two], "validation": ordered[last_two]},
    )


def test_a_validation_channel_job_never_recommends_a_validation_item_as_unseen(
    validated: Recommender, pairs: pd.DataFrame
) -> None:
    users = sorted(pairs["user_id"].unique())[:60]
    everything = validated.num_items
    results = validated.recommend([Query(user_id=u, k=everything) for u in users])

    for user, result in zip(users, results, strict=True):
        had = set(pairs.loc[pairs["user_id"] == user, "item_id"])
        assert set(result.item_ids) == set(validated.artifact.items.ids) - had, user
        assert result.stored_events == 3  # history_length: the latest three, validation's among them


def test_served_histories_hold_both_channels_in_time_order_with_their_times(
    validated: Recommender, pairs: pd.DataFrame
) -> None:
    artifact = validated.artifact
    assert artifact.seen_timestamps is not None
    user = "p0003"
    row = artifact.users.get(user)
    start, end = artifact.seen_indptr[row], artifact.seen_indptr[row + 1]
    expected = pairs[pairs["user_id"] == user].sort_values("timestamp")
    assert [artifact.items.ids[i] for i in artifact.seen_items[start:end]] == expected["item_id"].tolist()
    assert artifact.seen_timestamps[start:end].tolist() == expected["timestamp"].astype(float).tolist()


# --- fresh events -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory, pairs: pd.DataFrame) -> Recommender:
    return _trained(tmp_path_factory.mktemp("fresh_opt_ml"), PAIR_HYPERPARAMETERS, {"train": pairs})


def _unseen_pair(pairs: pd.DataFrame, user: str) -> int:
    had = set(pairs.loc[pairs["user_id"] == user, "item_id"])
    return next(j for j in range(NUM_PAIRS) if f"a{j:02d}" not in had)


def test_a_fresh_event_of_a_known_user_makes_its_successor_first(
    paired: Recommender, pairs: pd.DataFrame
) -> None:
    hits = 0
    users = [f"p{u:04d}" for u in range(40)]
    for user in users:
        j = _unseen_pair(pairs, user)
        before = one(paired, Query(user_id=user, k=5))
        after = one(paired, Query(user_id=user, history=(f"a{j:02d}",), k=5))
        assert after.kind == "history" and after.fresh_events == 1 and after.stored_events == 2
        assert f"a{j:02d}" not in after.item_ids  # a fresh item counts as seen
        assert after.item_ids != before.item_ids
        hits += after.item_ids[0] == f"b{j:02d}"
    assert hits >= 0.8 * len(users), hits


def test_merge_and_replace_differ(paired: Recommender, pairs: pd.DataFrame) -> None:
    user = "p0001"
    j = _unseen_pair(pairs, user)
    merged = one(paired, Query(user_id=user, history=(f"a{j:02d}",), k=20))
    replaced = one(paired, Query(user_id=user, history=(f"a{j:02d}",), k=20, history_mode="replace"))

    assert (merged.stored_events, merged.fresh_events) == (2, 1)
    assert (replaced.stored_events, replaced.fresh_events) == (0, 1)
    assert merged.scores != replaced.scores
    # Replace is the request's history alone: as if a new user had sent it, but with this user's id.
    seen = set(pairs.loc[pairs["user_id"] == user, "item_id"])
    assert not seen & set(replaced.item_ids)  # the stored items still count as seen


def test_a_repeated_item_counts_once_at_its_latest_time(paired: Recommender, pairs: pd.DataFrame) -> None:
    user = "p0002"
    mine = pairs[pairs["user_id"] == user].sort_values("timestamp")
    stored = [Event(i, float(t)) for i, t in zip(mine["item_id"], mine["timestamp"], strict=True)]
    now = stored[-1].timestamp + 60  # type: ignore[operator]
    again = Event(stored[0].item_id, now)  # the oldest, sent again now
    moment = {"timestamp": now}
    merged = one(paired, Query(user_id=user, history=(again,), context=moment, k=20))
    twice = one(paired, Query(user_id=user, history=(again, again), context=moment, k=20))
    # What the merge must have built: the stored events without the item, then the item, now.
    by_hand = (*[e for e in stored if e.item_id != again.item_id], again)
    replaced = one(paired, Query(user_id=user, history=by_hand, context=moment, k=20, history_mode="replace"))

    assert merged.item_ids == replaced.item_ids
    assert merged.scores == pytest.approx(replaced.scores, abs=1e-5)
    assert twice.item_ids == merged.item_ids and twice.scores == merged.scores
    assert (merged.stored_events, merged.fresh_events) == (2, 1)


def test_fresh_events_are_merged_by_their_time(paired: Recommender, pairs: pd.DataFrame) -> None:
    user = "p0004"
    j = _unseen_pair(pairs, user)
    oldest = float(pairs.loc[pairs["user_id"] == user, "timestamp"].min())
    long_ago = Event(f"a{j:02d}", timestamp=oldest - 86_400)

    plain = one(paired, Query(user_id=user, k=20))
    stale = one(paired, Query(user_id=user, history=(long_ago,), k=10))

    # Older than every stored event, it falls out of the latest three: only exclusion sees it.
    assert (stale.stored_events, stale.fresh_events) == (3, 0)
    assert stale.item_ids == [i for i in plain.item_ids if i != long_ago.item_id][: len(stale.item_ids)]


# --- context, attributes and event types --------------------------------------------------------

SEGMENTS = ("x", "y")
DEVICES = ("tv", "phone")
ITEMS_PER_GROUP = 6
SHELF_HYPERPARAMETERS = {
    "epochs": "6",
    "embedding_dim": "16",
    "history_length": "5",
    "batch_size": "256",
    "learning_rate": "0.01",
    "context_columns": "device",
    "sampled_eval_negatives": "10",
}


def _group(device: str, segment: str) -> list[str]:
    return [f"{device}-{segment}-{i}" for i in range(ITEMS_PER_GROUP)]


def _shelf_data(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's events: a random device each time, an item of the (device, segment) group."""
    rng = np.random.default_rng(seed)
    rows, users = [], []
    for user in range(300):
        segment = SEGMENTS[user % 2]
        users.append((f"u{user:03d}", segment))
        stamp = 1_750_000_000 + 7 * user
        for _ in range(12):
            device = DEVICES[rng.integers(2)]
            item = _group(device, segment)[rng.integers(ITEMS_PER_GROUP)]
            event = "purchase" if rng.random() < 0.3 else "click"
            rows.append((f"u{user:03d}", item, stamp, device, event))
            stamp += 600
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "device", "event_type"])
    return interactions, pd.DataFrame(users, columns=["user_id", "segment"])


@pytest.fixture(scope="module")
def shelf() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _shelf_data()


@pytest.fixture(scope="module")
def shelved(
    tmp_path_factory: pytest.TempPathFactory, shelf: tuple[pd.DataFrame, pd.DataFrame]
) -> Recommender:
    interactions, users = shelf
    return _trained(
        tmp_path_factory.mktemp("shelf_opt_ml"),
        SHELF_HYPERPARAMETERS,
        {"train": interactions, "users": users},
    )


def _share(result: Recommendation, group: list[str]) -> float:
    return sum(i in group for i in result.item_ids) / len(result.item_ids)


def test_context_in_a_request_moves_the_ranking_the_way_the_data_does(shelved: Recommender) -> None:
    queries = [
        Query(user_attributes={"segment": "x"}, context={"device": device}, k=ITEMS_PER_GROUP)
        for device in DEVICES
    ]
    on_tv, on_phone = shelved.recommend(queries)

    assert _share(on_tv, _group("tv", "x")) > 0.8, on_tv.item_ids
    assert _share(on_phone, _group("phone", "x")) > 0.8, on_phone.item_ids


def test_user_attributes_score_a_new_user_and_override_a_known_ones(shelved: Recommender) -> None:
    as_x, as_y = shelved.recommend(
        [Query(user_attributes={"segment": s}, context={"device": "tv"}, k=ITEMS_PER_GROUP) for s in SEGMENTS]
    )
    assert as_x.kind == "user" and not as_x.fallback
    assert _share(as_x, _group("tv", "x")) > 0.8, as_x.item_ids
    assert _share(as_y, _group("tv", "y")) > 0.8, as_y.item_ids

    # u001 is a y user; told they are x now, x items gain on the tv shelf.
    stored = one(shelved, Query(user_id="u001", context={"device": "tv"}, k=12, exclude_seen=False))
    moved = one(
        shelved,
        Query(
            user_id="u001",
            context={"device": "tv"},
            user_attributes={"segment": "x"},
            k=12,
            exclude_seen=False,
        ),
    )
    assert _share(moved, _group("tv", "x")) > _share(stored, _group("tv", "x"))


def test_an_unknown_context_value_uses_the_unknown_row_and_is_listed(shelved: Recommender) -> None:
    result = one(shelved, Query(user_id="u000", context={"device": "fridge"}, k=5))
    unknown_attribute = one(shelved, Query(user_attributes={"segment": "z"}, k=5))

    assert result.unknown_context == {"device": "fridge"}
    assert len(result.item_ids) == 5
    assert unknown_attribute.unknown_attributes == {"segment": "z"}


def test_the_moment_comes_from_the_request_timestamp_or_the_clock(shelved: Recommender) -> None:
    at = [
        one(shelved, Query(user_id="u000", context={"timestamp": stamp}, k=10, exclude_seen=False))
        for stamp in (1_750_000_000, "2025-06-15T15:06:40Z", 1_750_000_000 + 6 * 3600)
    ]
    assert at[0].scores == at[1].scores  # the same moment, as epoch seconds and as ISO 8601
    assert at[0].scores != at[2].scores  # another hour of the day


def test_exclude_event_types_leaves_out_what_was_bought_but_not_what_was_clicked(
    shelved: Recommender, shelf: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    interactions, _ = shelf
    user = "u010"
    mine = interactions[interactions["user_id"] == user].sort_values("timestamp")
    latest = mine.groupby("item_id")["event_type"].last()
    bought, clicked = set(latest[latest == "purchase"].index), set(latest[latest == "click"].index)
    assert bought and clicked
    everything = shelved.num_items

    result = one(shelved, Query(user_id=user, exclude_event_types=("purchase",), k=everything))
    fresh = one(
        shelved,
        Query(
            user_id=user,
            history=(Event("tv-x-0", event_type="purchase"),),
            exclude_event_types=("purchase",),
            k=everything,
        ),
    )

    assert set(result.item_ids) == set(shelved.artifact.items.ids) - bought
    assert clicked <= set(result.item_ids)
    assert "tv-x-0" not in fresh.item_ids


@pytest.mark.parametrize(
    ("query", "named"),
    [
        (
            Query(user_id="u000", context={"colour": "red"}),
            ["context: unknown key 'colour'", "device", "timestamp"],
        ),
        (Query(user_id="u000", context={"timestamp": "yesterday"}), ["context.timestamp", "'yesterday'"]),
        (Query(user_attributes={"age": 30}), ["user_attributes", "'age'", "segment"]),
        (Query(user_id="u000", exclude_event_types=("refund",)), ["'refund'", "click, purchase"]),
        (
            Query(user_id="u000", exclude_event_types=("purchase",), exclude_seen=True),
            ["exclude_event_types", "exclude_seen"],
        ),
        (Query(history=(Event("tv-x-0", event_type="wishlist"),)), ["history[0].event_type", "'wishlist'"]),
        (Query(user_id="u000", items=tuple(f"i{n}" for n in range(1001))), ["items: at most 1000"]),
        # The same faults where the answer would be the popular fallback (nobody and nothing known).
        (
            Query(user_id="nobody", context={"colour": "red"}),
            ["context: unknown key 'colour'", "device", "timestamp"],
        ),
        (Query(user_id="nobody", context={"timestamp": "inf"}), ["context.timestamp", "finite", "'inf'"]),
        (
            Query(history=(Event("not-an-item", event_type="wishlist"),)),
            ["history[0].event_type", "'wishlist'"],
        ),
    ],
    ids=[
        "context-key",
        "timestamp",
        "attribute-column",
        "event-type",
        "both-exclusions",
        "fresh-type",
        "too-many",
        "fallback-context-key",
        "fallback-timestamp",
        "fallback-fresh-type",
    ],
)
def test_every_bad_field_is_a_400_that_names_it(shelved: Recommender, query: Query, named: list[str]) -> None:
    with pytest.raises(UserError) as caught:
        shelved.recommend([query])

    assert caught.value.status_code == 400
    for part in named:
        assert part in str(caught.value)


def _random_queries(recommender: Recommender, rng: np.random.Generator, count: int) -> list[Query]:
    """Queries of every shape that builds a user side: known and new users, fresh events with
    repeats, with and without times and event types, unknown items, both history modes,
    excluded event types and attributes where the model has them."""
    users = list(recommender.artifact.users.ids)
    items = list(recommender.artifact.items.ids)
    types = list(recommender.rows.event_types)
    stored = recommender.seen_times
    assert stored is not None
    moments = [float(stored.min()), float(np.median(stored)), float(stored.max()), float(stored.max()) + 60]
    queries = []
    for _ in range(count):
        user = users[rng.integers(len(users))] if rng.random() < 0.75 else None
        history: list[str | Event] = []
        for _ in range(int(rng.choice([0, 1, 3, 12, 60]))):
            # Repeats are common: half the events come from a few items.
            item = items[rng.integers(4)] if rng.random() < 0.5 else items[rng.integers(len(items))]
            item = item if rng.random() < 0.95 else "no-such-item"
            if rng.random() < 0.3:
                history.append(item)
                continue
            stamp = (
                None if rng.random() < 0.3 else moments[rng.integers(len(moments))] + float(rng.integers(3))
            )
            kind = types[rng.integers(len(types))] if types and rng.random() < 0.5 else None
            history.append(Event(item, stamp, kind))
        attributes = None
        if not recommender.model.config.user_features.is_empty and rng.random() < 0.3:
            attributes = {"segment": str(rng.choice(SEGMENTS))}
        queries.append(
            Query(
                user_id=user,
                history=tuple(history) if history or user is None or rng.random() < 0.5 else None,
                history_mode="replace" if rng.random() < 0.3 else "merge",
                exclude_event_types=(types[rng.integers(len(types))],)
                if types and rng.random() < 0.2
                else (),
                user_attributes=attributes,
                k=8,
            )
        )
    return queries


@pytest.mark.parametrize("model", ["paired", "shelved"])
def test_a_batch_of_fresh_requests_is_answered_as_each_alone(
    model: str, request: pytest.FixtureRequest
) -> None:
    # From a few rows on, a pass builds its user sides together (one array operation over every
    # event of the batch); alone, each is built by itself. Both must give the same answer.
    recommender: Recommender = request.getfixturevalue(model)
    rng = np.random.default_rng(7)
    for _ in range(6):
        queries = _random_queries(recommender, rng, 24)
        together = recommender.recommend(queries)
        alone = [one(recommender, query) for query in queries]
        for merged, single, query in zip(together, alone, queries, strict=True):
            assert merged.item_ids == single.item_ids, query
            assert merged.scores == pytest.approx(single.scores, abs=1e-5), query
            assert (merged.stored_events, merged.fresh_events, merged.unknown_items) == (
                single.stored_events,
                single.fresh_events,
                single.unknown_items,
            ), query


def test_the_batched_order_by_row_then_time_is_lexsorts() -> None:
    rng = np.random.default_rng(3)
    for count in (1, 5, 40):
        rows = rng.integers(count, size=500)
        # Ties, the unknown-time key (-inf), a row's "keep as sent" key (0.0) and -0.0 among them.
        keys = rng.choice([-np.inf, -0.0, 0.0, 1.5e9, 1.5e9 + 1, 1.7e9, 1.7e9 + 0.5], size=500)

        assert _by_row_then_key(rows, keys, count).tolist() == np.lexsort((keys, rows)).tolist()


def test_a_repeated_item_keeps_its_latest_event_as_a_dict_of_the_last_positions_would() -> None:
    rng = np.random.default_rng(5)
    for count, num_items in ((1, 3), (6, 4), (30, 50)):
        rows = np.sort(rng.integers(count, size=400))  # by row, then time: the caller's order
        items = rng.integers(num_items, size=400)
        merged = rng.random(count) < 0.7
        # What the merge must keep: the last position of each (row, item) of a merged row, every
        # event of other rows; in order.
        last: dict[tuple[int, int], int] = {}
        for position, (row, item) in enumerate(zip(rows.tolist(), items.tolist(), strict=True)):
            last[(row, item) if merged[row] else (-1, position)] = position

        kept = _latest_of_each(rows, items, merged, count, num_items)

        assert np.flatnonzero(kept).tolist() == sorted(last.values())
