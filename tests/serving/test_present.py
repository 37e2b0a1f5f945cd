"""The endpoint answers from the user's present: fresh events, context and attributes in a request.

Each model here is trained through the real training contract on a data set built so that the
right answer is known: on the pair data every ``a_j`` is followed by ``b_j``; on the shelf data a
user's items come from the group of their ``segment`` (a users-table attribute) and of the device
of the moment (a context column), with click and purchase events.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.artifact import MANIFEST, SEEN_EVENT_MASKS
from recsys.data.io import write_table
from recsys.data.synthetic import SyntheticData
from recsys.errors import UserError
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import train
from recsys.serving import engine
from recsys.serving.engine import (
    Event,
    Query,
    Recommendation,
    Recommender,
    _by_row_then_key,
    _latest_of_each,
)
from tests.conftest import FAST_HYPERPARAMETERS
from tests.serving.test_engine import NUM_PAIRS, PAIR_HYPERPARAMETERS, _pair_interactions


def _trained(base: Path, hyperparameters: dict[str, str], channels: dict[str, pd.DataFrame]) -> Recommender:
    return Recommender.load(_trained_dir(base, hyperparameters, channels))


def _trained_dir(
    base: Path, hyperparameters: dict[str, str], channels: dict[str, pd.DataFrame], suffix: str = "csv"
) -> Path:
    """The model directory of a job run through the real training contract on ``channels``, each
    written as one file of the format ``suffix`` names."""
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    for name, table in channels.items():
        directory = base / "input" / "data" / name
        directory.mkdir(parents=True)
        write_table(table, directory / f"{name}.{suffix}")
    code = train(ContainerPaths(base))
    failure = base / "output" / "failure"
    assert code == 0, failure.read_text() if failure.exists() else code
    return base / "model"


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
def shelf_model(tmp_path_factory: pytest.TempPathFactory, shelf: tuple[pd.DataFrame, pd.DataFrame]) -> Path:
    interactions, users = shelf
    return _trained_dir(
        tmp_path_factory.mktemp("shelf_opt_ml"),
        SHELF_HYPERPARAMETERS,
        {"train": interactions, "users": users},
    )


@pytest.fixture(scope="module")
def shelved(shelf_model: Path) -> Recommender:
    return Recommender.load(shelf_model)


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


@pytest.fixture
def clock_off_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    """The engine's clock pinned to a moment, on a server whose local zone is UTC+05:30: the time
    features must come from the moment in UTC, never from the server's wall clock."""
    moment = 1_750_000_000.0 + 6 * 3600 + 17  # Sunday 2025-06-15 21:46:57 UTC
    monkeypatch.setattr(engine, "time", SimpleNamespace(time=lambda: moment))
    monkeypatch.setenv("TZ", "IST-5:30")  # POSIX form: no zone database needed
    time.tzset()
    assert time.timezone == -(5 * 3600 + 30 * 60)
    yield moment
    monkeypatch.undo()
    time.tzset()


def test_a_request_without_a_timestamp_is_scored_at_the_servers_clock_in_utc(
    shelved: Recommender, clock_off_utc: float
) -> None:
    def queries(context: dict[str, Any]) -> list[Query]:
        # A stored history, a fresh event sent without a time (it happened "now"), a new user.
        return [
            Query(user_id="u000", context={"device": "tv", **context}, k=10, exclude_seen=False),
            Query(user_id="u001", history=(Event("tv-y-0"),), context=context or None, k=10),
            Query(user_attributes={"segment": "x"}, context={"device": "phone", **context}, k=10),
        ]

    utc = dt.datetime.fromtimestamp(clock_off_utc, dt.UTC).isoformat()
    # The server's local wall clock, read as if it were UTC: what a local-time bug would score.
    local = dt.datetime.fromtimestamp(clock_off_utc).replace(tzinfo=dt.UTC).isoformat()

    clock = shelved.recommend(queries({}))
    stamped = shelved.recommend(queries({"timestamp": utc}))
    wall = shelved.recommend(queries({"timestamp": local}))

    for by_clock, by_stamp in zip(clock, stamped, strict=True):
        assert by_clock.item_ids == by_stamp.item_ids
        assert by_clock.scores == pytest.approx(by_stamp.scores, abs=1e-6)
    assert local != utc and clock[0].scores != pytest.approx(wall[0].scores, abs=1e-6)


def _bought_and_clicked(interactions: pd.DataFrame, user: str) -> tuple[set[str], set[str], set[str]]:
    """A user's items: (ever bought, bought and clicked after the last purchase, only clicked)."""
    mine = interactions[interactions["user_id"] == user].sort_values("timestamp")
    types = {str(item): list(seen) for item, seen in mine.groupby("item_id")["event_type"].agg(list).items()}
    bought = {item for item, seen in types.items() if "purchase" in seen}
    clicked_since = {item for item, seen in types.items() if "purchase" in seen and seen[-1] == "click"}
    return bought, clicked_since, set(types) - bought


def test_exclude_event_types_leaves_out_what_was_bought_but_not_what_was_clicked(
    shelved: Recommender, shelf: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    interactions, _ = shelf
    user = "u010"
    bought, _, clicked = _bought_and_clicked(interactions, user)
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


def _users_who_clicked_what_they_bought(interactions: pd.DataFrame, count: int) -> list[str]:
    """The first ``count`` users with an item bought, then clicked, and an item only clicked."""
    users = []
    for user in sorted(interactions["user_id"].unique()):
        _, clicked_since, clicked = _bought_and_clicked(interactions, user)
        if clicked_since and clicked:
            users.append(user)
    assert len(users) >= count, users
    return users[:count]


def test_an_item_bought_then_clicked_stays_excluded_and_one_only_clicked_does_not(
    shelved: Recommender, shelf: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    # The stored pair's latest event is the click: the purchase before it must still count. Six
    # users, so that the batch builds its user sides together (BATCHED_SIDES_FROM) and alone.
    interactions, _ = shelf
    users = _users_who_clicked_what_they_bought(interactions, 6)
    queries = [Query(user_id=u, exclude_event_types=("purchase",), k=shelved.num_items) for u in users]

    together = shelved.recommend(queries)
    alone = [one(shelved, query) for query in queries]

    for user, batched, single in zip(users, together, alone, strict=True):
        bought, clicked_since, clicked = _bought_and_clicked(interactions, user)
        for result in (batched, single):
            assert not clicked_since & set(result.item_ids), (user, clicked_since)
            assert set(result.item_ids) == set(shelved.artifact.items.ids) - bought, user
            assert clicked <= set(result.item_ids)


def test_fresh_events_count_for_exclusion_by_type_beside_the_stored_ones(
    shelved: Recommender, shelf: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    interactions, _ = shelf
    (user,) = _users_who_clicked_what_they_bought(interactions, 1)
    bought, clicked_since, clicked = _bought_and_clicked(interactions, user)
    again, newly_bought = sorted(clicked_since)[0], sorted(clicked)[0]
    never = sorted(set(shelved.artifact.items.ids) - bought - clicked)[0]
    fresh = (
        Event(again, event_type="click"),  # a stored purchase, clicked once more: still bought
        Event(newly_bought, event_type="purchase"),  # only clicked before, bought now
        Event(never, event_type="click"),  # a first click: may come back
    )

    result = one(
        shelved,
        Query(user_id=user, history=fresh, exclude_event_types=("purchase",), k=shelved.num_items),
    )

    assert result.fresh_events == 3
    assert set(result.item_ids) == set(shelved.artifact.items.ids) - bought - {newly_bought}
    assert never in result.item_ids


def test_an_artifact_without_event_masks_judges_a_pair_by_its_latest_event(
    shelf_model: Path, shelf: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    # What an artifact written before the masks serves: bought then clicked counts as clicked.
    older = tmp_path / "model"
    shutil.copytree(shelf_model, older)
    (older / SEEN_EVENT_MASKS).unlink()
    manifest = json.loads((older / MANIFEST).read_text())
    del manifest["files"][SEEN_EVENT_MASKS]
    (older / MANIFEST).write_text(json.dumps(manifest))
    interactions, _ = shelf
    (user,) = _users_who_clicked_what_they_bought(interactions, 1)
    bought, clicked_since, _ = _bought_and_clicked(interactions, user)
    recommender = Recommender.load(older)

    result = one(recommender, Query(user_id=user, exclude_event_types=("purchase",), k=recommender.num_items))

    assert recommender.seen_event_masks is None
    assert set(result.item_ids) == set(recommender.artifact.items.ids) - (bought - clicked_since)


@pytest.fixture(scope="module")
def shelved_with_validation(
    tmp_path_factory: pytest.TempPathFactory, shelf: tuple[pd.DataFrame, pd.DataFrame]
) -> Recommender:
    """The shelf data with each user's last four events in the validation channel; one epoch, as
    only the served state matters here."""
    interactions, users = shelf
    ordered = interactions.sort_values(["user_id", "timestamp"])
    last = ordered.groupby("user_id").cumcount(ascending=False) < 4
    return _trained(
        tmp_path_factory.mktemp("shelf_validation_opt_ml"),
        {**SHELF_HYPERPARAMETERS, "epochs": "1"},
        {"train": ordered[~last], "validation": ordered[last], "users": users},
    )


def test_a_purchase_in_train_and_a_click_in_validation_stays_excluded(
    shelved_with_validation: Recommender, shelf: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    interactions, _ = shelf
    ordered = interactions.sort_values(["user_id", "timestamp"])
    last = ordered.groupby("user_id").cumcount(ascending=False) < 4
    train_buys = set(
        ordered[~last & (ordered["event_type"] == "purchase")][["user_id", "item_id"]].itertuples(False)
    )
    latest = ordered.groupby(["user_id", "item_id"]).tail(1)
    # Pairs bought in train whose latest event, in validation, is a click.
    across = [
        (user, item)
        for user, item, event in latest[last.loc[latest.index]][
            ["user_id", "item_id", "event_type"]
        ].itertuples(False)
        if event == "click" and (user, item) in train_buys
    ]
    assert len(across) >= 5, across
    recommender = shelved_with_validation

    results = recommender.recommend(
        [
            Query(user_id=user, exclude_event_types=("purchase",), k=recommender.num_items)
            for user, _ in across
        ]
    )

    for (user, item), result in zip(across, results, strict=True):
        bought, _, _ = _bought_and_clicked(interactions, user)
        assert item not in result.item_ids, (user, item)
        assert set(result.item_ids) == set(recommender.artifact.items.ids) - bought, user


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


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Recommender:
    """The tiny data with a numeric context column (the basket's value when the event happened)
    and a numeric user attribute (age); one epoch, as only what the model accepts matters here.

    Parquet, whose columns keep their types: from CSV every context column arrives as text, and a
    context column is numeric only when its first batch holds numbers."""
    rng = np.random.default_rng(0)
    interactions = tiny_data.interactions.assign(
        basket_value=rng.uniform(5, 50, len(tiny_data.interactions)).round(2)
    )
    users = tiny_data.users.assign(age=rng.integers(18, 70, len(tiny_data.users)))
    return Recommender.load(
        _trained_dir(
            tmp_path_factory.mktemp("measured_opt_ml"),
            {
                **FAST_HYPERPARAMETERS,
                "epochs": "1",
                "context_columns": "basket_value",
                "sampled_eval_negatives": "20",
            },
            {"train": interactions, "users": users},
            suffix="parquet",
        )
    )


@pytest.mark.parametrize(
    ("query", "named"),
    [
        (
            Query(user_id="u0001", context={"basket_value": "lots"}),
            ["context: 'basket_value' is numeric", "'lots'"],
        ),
        (
            Query(user_id="u0001", context={"basket_value": True}),
            ["context: 'basket_value' is numeric", "True"],
        ),
        # The popular fallback checks the context too.
        (
            Query(user_id="nobody", context={"basket_value": "12"}),
            ["context: 'basket_value' is numeric", "'12'"],
        ),
        (Query(user_attributes={"age": "old"}), ["user_attributes", "'age' is numeric", "'old'"]),
        (Query(user_attributes={"age": "30"}), ["user_attributes", "'age' is numeric", "'30'"]),
        (
            Query(user_id="u0001", user_attributes={"age": True}),
            ["user_attributes", "'age' is numeric", "True"],
        ),
    ],
    ids=[
        "context-text",
        "context-bool",
        "fallback-context-text",
        "attribute-text",
        "attribute-numeric-text",
        "attribute-bool",
    ],
)
def test_a_numeric_field_given_a_non_number_is_a_400_that_names_it(
    measured: Recommender, query: Query, named: list[str]
) -> None:
    with pytest.raises(UserError) as caught:
        measured.recommend([query])

    assert caught.value.status_code == 400
    for part in named:
        assert part in str(caught.value)


def test_numbers_for_the_numeric_fields_are_served(measured: Recommender) -> None:
    # The faults above are the values, not the fields: both are numeric, and numbers are scored.
    assert [c.name for c in measured.rows.numeric] == ["basket_value"]
    assert [c.name for c in measured.artifact.user_encoding.numeric] == ["age"]
    result = one(
        measured, Query(user_id="u0001", context={"basket_value": 12.5}, user_attributes={"age": 30}, k=3)
    )

    assert len(result.item_ids) == 3 and not result.fallback


def test_exclude_event_types_on_a_model_without_event_types_is_a_400_that_names_it(
    paired: Recommender,
) -> None:
    assert paired.rows.event_column is None  # the pair data has no event_type column

    with pytest.raises(UserError) as caught:
        paired.recommend([Query(user_id="p0000", exclude_event_types=("purchase",))])

    assert caught.value.status_code == 400
    assert "exclude_event_types" in str(caught.value)
    assert "trained without event types" in str(caught.value)


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
