"""Tests for recsys.data.synthetic: determinism, shapes, referential integrity and structure.

The statistical tests check each effect of the generative model in the default data set (seed
0) against a baseline that lacks it, with margins wide enough for any seed.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.io import read_table
from recsys.data.synthetic import (
    AGE_GROUPS,
    COUNTRIES,
    DEVICES,
    EVENT_TYPES,
    GENRE_NAMES,
    MIN_INTERACTIONS_PER_USER,
    NIGHT_HOURS,
    SUCCESSOR_PROBABILITIES,
    WEEKEND_DAYS,
    WRITTEN_CHANNELS,
    ScaledSpec,
    ScaledSummary,
    SyntheticData,
    SyntheticSpec,
    generate,
    write_channels,
    write_scaled_channels,
)

SMALL = SyntheticSpec(num_users=200, num_items=150, mean_interactions_per_user=20, seed=3)


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(SyntheticSpec())


def test_same_seed_gives_identical_frames() -> None:
    first, second = generate(SMALL), generate(SMALL)

    pd.testing.assert_frame_equal(first.interactions, second.interactions)
    pd.testing.assert_frame_equal(first.items, second.items)
    pd.testing.assert_frame_equal(first.users, second.users)
    np.testing.assert_array_equal(first.successor, second.successor)
    np.testing.assert_array_equal(first.affinity, second.affinity)
    assert first.hour_genres == second.hour_genres
    assert first.weekday_genres == second.weekday_genres
    assert dict(first.device_genres) == dict(second.device_genres)


def test_different_seed_gives_different_frames() -> None:
    first = generate(SMALL)
    second = generate(SyntheticSpec(num_users=200, num_items=150, mean_interactions_per_user=20, seed=4))

    assert not first.interactions.equals(second.interactions)
    assert not first.items.equals(second.items)
    assert not first.users.equals(second.users)


def test_columns_and_shapes(data: SyntheticData) -> None:
    spec = SyntheticSpec()

    assert list(data.interactions.columns) == [
        "user_id",
        "item_id",
        "rating",
        "timestamp",
        "event_type",
        "device",
    ]
    assert list(data.items.columns) == ["item_id", "genres", "release_year", "price"]
    assert list(data.users.columns) == ["user_id", "age_group", "country"]
    assert len(data.items) == spec.num_items
    assert len(data.users) == spec.num_users
    per_user = data.interactions.groupby("user_id").size()
    assert per_user.min() >= MIN_INTERACTIONS_PER_USER
    assert len(per_user) == spec.num_users
    assert 0.8 * spec.mean_interactions_per_user < per_user.mean() < 1.3 * spec.mean_interactions_per_user


def test_id_format(data: SyntheticData) -> None:
    assert data.users["user_id"].iloc[0] == "u0001"
    assert data.items["item_id"].iloc[0] == "i0001"
    assert data.users["user_id"].str.fullmatch(r"u\d{4}").all()
    assert data.items["item_id"].str.fullmatch(r"i\d{4}").all()


def test_ids_unique(data: SyntheticData) -> None:
    assert data.items["item_id"].is_unique
    assert data.users["user_id"].is_unique


def test_interactions_reference_known_ids(data: SyntheticData) -> None:
    assert data.interactions["user_id"].isin(data.users["user_id"]).all()
    assert data.interactions["item_id"].isin(data.items["item_id"]).all()


def test_no_duplicate_user_item_pairs(data: SyntheticData) -> None:
    assert not data.interactions.duplicated(["user_id", "item_id"]).any()


def test_genres(data: SyntheticData) -> None:
    genre_lists = data.items["genres"].str.split("|")
    known = set(GENRE_NAMES[: SyntheticSpec().num_genres])

    assert (data.items["genres"].str.len() > 0).all()
    assert genre_lists.map(len).between(1, 3).all()
    assert genre_lists.map(lambda names: set(names) <= known and len(set(names)) == len(names)).all()
    assert genre_lists.map(len).max() > 1  # some items really are multi-genre


def test_item_and_user_attributes(data: SyntheticData) -> None:
    assert data.items["release_year"].between(1950, 2025).all()
    assert (data.items["price"] > 0).all()
    assert set(data.users["age_group"]) <= set(AGE_GROUPS)
    assert set(data.users["country"]) <= set(COUNTRIES)
    assert data.users["country"].nunique() > 1


def test_ratings_are_integers_one_to_five(data: SyntheticData) -> None:
    ratings = data.interactions["rating"]

    assert pd.api.types.is_integer_dtype(ratings)
    assert set(ratings.unique()) == {1, 2, 3, 4, 5}


def test_timestamps_strictly_increasing_per_user(data: SyntheticData) -> None:
    frame = data.interactions
    steps = frame.groupby("user_id")["timestamp"].diff().dropna()

    assert (steps > 0).all()
    assert (frame["timestamp"] >= SyntheticSpec().start_timestamp).all()


def test_timestamps_are_integer_epoch_seconds(data: SyntheticData) -> None:
    assert data.interactions["timestamp"].dtype == np.int64


def test_popularity_is_skewed(data: SyntheticData) -> None:
    counts = data.interactions["item_id"].value_counts()
    top_share = counts.iloc[: len(data.items) // 10].sum() / len(data.interactions)

    assert top_share > 0.25


def test_default_spec_is_fast() -> None:
    start = time.perf_counter()
    generate(SyntheticSpec())

    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "bad",
    [
        {"num_users": 0},
        {"num_items": MIN_INTERACTIONS_PER_USER - 1},
        {"num_factors": 0},
        {"mean_interactions_per_user": 0},
        {"num_genres": len(GENRE_NAMES) + 1},
    ],
)
def test_spec_rejects_bad_values(bad: dict[str, int]) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        SyntheticSpec(**bad)


def test_tiny_catalogue_still_works() -> None:
    tiny = generate(SyntheticSpec(num_users=10, num_items=5, num_genres=2, mean_interactions_per_user=50))

    assert (tiny.interactions.groupby("user_id").size() == 5).all()
    assert not tiny.interactions.duplicated(["user_id", "item_id"]).any()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl.gz"])
def test_write_channels_round_trip(tmp_path: Path, fmt: str) -> None:
    data = generate(SMALL)
    write_channels(data, tmp_path, fmt=fmt)

    assert (tmp_path / "train" / f"interactions.{fmt}").is_file()
    assert (tmp_path / "items" / f"items.{fmt}").is_file()
    assert (tmp_path / "users" / f"users.{fmt}").is_file()
    interactions = read_table(tmp_path / "train", channel="train", string_columns=["user_id", "item_id"])
    items = read_table(tmp_path / "items", channel="items", string_columns=["item_id"])
    assert interactions.num_rows == len(data.interactions)
    assert interactions.column("user_id").to_pylist() == data.interactions["user_id"].tolist()
    assert interactions.column("rating").to_pylist() == data.interactions["rating"].tolist()
    assert items.column("genres").to_pylist() == data.items["genres"].tolist()
    assert interactions.column("event_type").to_pylist() == data.interactions["event_type"].tolist()
    # A missing device is written as a null (Parquet, JSON) or an empty field (CSV, read back as "").
    devices = pd.Series(interactions.column("device").to_pylist(), dtype=object)
    missing = data.interactions["device"].isna().to_numpy()
    assert missing.any()
    assert devices[missing].map(lambda value: value in (None, "")).all()
    assert devices[~missing].tolist() == data.interactions["device"][~missing].tolist()


def test_the_channels_written_are_named_as_the_contract_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from recsys.cli import main
    from recsys.sagemaker.contract import CHANNEL_ITEMS, CHANNEL_TRAIN, CHANNEL_USERS, KNOWN_CHANNELS

    assert WRITTEN_CHANNELS == (CHANNEL_TRAIN, CHANNEL_ITEMS, CHANNEL_USERS)
    assert set(WRITTEN_CHANNELS) <= set(KNOWN_CHANNELS)
    write_channels(generate(SMALL), tmp_path / "bundled")
    write_scaled_channels(ScaledSpec(num_users=3, num_items=10, num_interactions=15), tmp_path / "scaled")
    for data_dir in (tmp_path / "bundled", tmp_path / "scaled"):
        assert sorted(path.name for path in data_dir.iterdir()) == sorted(WRITTEN_CHANNELS)

    assert main(["generate-data", "--output", str(tmp_path / "cli"), "--users", "50", "--items", "40"]) == 0
    assert sorted(path.name for path in (tmp_path / "cli").iterdir()) == sorted(WRITTEN_CHANNELS)
    assert capsys.readouterr().out.rstrip().endswith(f"to {tmp_path / 'cli'}/{{train,items,users}}")


def test_write_channels_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="xlsx"):
        write_channels(generate(SMALL), tmp_path, fmt="xlsx")


# The generative model's effects, each measured in the default data set.


def _item_index(data: SyntheticData) -> npt.NDArray[np.int64]:
    """Each interaction's item as its row in ``data.items`` (the index of the ground truth)."""
    index: npt.NDArray[np.int64] = pd.Index(data.items["item_id"]).get_indexer(data.interactions["item_id"])
    return index


def _has_genre(data: SyntheticData, genres: tuple[str, ...]) -> npt.NDArray[np.bool_]:
    """Whether each interaction's item has one of ``genres``."""
    wanted = set(genres)
    per_item = data.items["genres"].str.split("|").map(lambda names: bool(wanted & set(names)))
    return per_item.to_numpy(dtype=bool)[_item_index(data)]


def _hours_and_weekdays(data: SyntheticData) -> tuple[pd.Series, pd.Series]:
    when = pd.to_datetime(data.interactions["timestamp"], unit="s", utc=True)
    return when.dt.hour, when.dt.day_of_week


def _consecutive_pairs(data: SyntheticData, lag: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(earlier item, later item) of every two events ``lag`` apart in one user's history."""
    items = _item_index(data)
    users = data.interactions["user_id"].to_numpy()
    same_user = users[lag:] == users[:-lag]
    return items[:-lag][same_user], items[lag:][same_user]


def test_successors_are_other_items_of_a_shared_genre(data: SyntheticData) -> None:
    genre_sets = data.items["genres"].str.split("|").map(set).tolist()
    successor = data.successor

    assert successor.shape == (len(data.items),)
    assert successor.dtype == np.int64
    assert ((successor >= 0) & (successor < len(data.items))).all()
    assert (successor != np.arange(len(data.items))).all()
    assert all(genre_sets[item] & genre_sets[int(next_item)] for item, next_item in enumerate(successor))


def test_the_next_item_is_often_the_successor_of_the_last(data: SyntheticData) -> None:
    previous, following = _consecutive_pairs(data)
    is_successor = data.successor[previous] == following
    follows = np.mean(is_successor)
    # Chance level: the successor of some other event's item.
    shuffled = np.random.default_rng(0).permutation(previous)
    by_chance = np.mean(data.successor[shuffled] == following)
    # Order matters: the successor of the item two events back is rarely next.
    two_back, after_next = _consecutive_pairs(data, lag=2)
    skipped = np.mean(data.successor[two_back] == after_next)

    assert follows > 20 * by_chance
    assert follows > 5 * skipped
    # After a purchase the successor (its accessory) is likely; after a click much less so. A
    # successor already taken is not taken again, so each share sits a little under its probability.
    users = data.interactions["user_id"].to_numpy()
    previous_type = data.interactions["event_type"].to_numpy()[:-1][users[1:] == users[:-1]]
    for name, probability in SUCCESSOR_PROBABILITIES.items():
        share = is_successor[previous_type == name].mean()
        assert 0.75 * probability < share <= probability + 0.05, (name, share)


def test_timestamps_follow_a_daily_and_weekly_rhythm(data: SyntheticData) -> None:
    hours, weekdays = _hours_and_weekdays(data)
    per_hour = hours.value_counts(normalize=True).reindex(range(24), fill_value=0.0)
    per_day = weekdays.value_counts(normalize=True).reindex(range(7), fill_value=0.0)

    assert per_hour.loc[[19, 20, 21]].mean() > 4 * per_hour.loc[[3, 4, 5]].mean()  # evenings, not 4 a.m.
    assert per_day.loc[sorted(WEEKEND_DAYS)].mean() > 1.2 * per_day.drop(sorted(WEEKEND_DAYS)).mean()
    # Sessions: many gaps of minutes, many of days.
    gaps = data.interactions.groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps < 3600).mean() > 0.4
    assert (gaps > 86_400).mean() > 0.2


def test_boosted_genres_are_exposed_per_hour_weekday_and_device(data: SyntheticData) -> None:
    known = set(GENRE_NAMES[: SyntheticSpec().num_genres])

    assert len(data.hour_genres) == 24 and len(data.weekday_genres) == 7
    assert {hour for hour, genres in enumerate(data.hour_genres) if genres} == NIGHT_HOURS
    assert {day for day, genres in enumerate(data.weekday_genres) if genres} == WEEKEND_DAYS
    assert len(set(data.hour_genres) - {()}) == len(set(data.weekday_genres) - {()}) == 1
    assert tuple(data.device_genres) == DEVICES
    boosted = [data.hour_genres[0], data.weekday_genres[6], *data.device_genres.values()]
    assert all(genres and set(genres) <= known for genres in boosted)
    # Twelve genres are enough for every context to boost its own.
    assert len({name for genres in boosted for name in genres}) == sum(len(genres) for genres in boosted)


def test_night_and_weekend_boost_their_genres(data: SyntheticData) -> None:
    hours, weekdays = _hours_and_weekdays(data)
    night = hours.isin(NIGHT_HOURS).to_numpy()
    weekend = weekdays.isin(WEEKEND_DAYS).to_numpy()
    night_genres = _has_genre(data, data.hour_genres[0])
    weekend_genres = _has_genre(data, data.weekday_genres[6])

    assert night_genres[night].mean() > 1.2 * night_genres[~night].mean()
    assert weekend_genres[weekend].mean() > 1.2 * weekend_genres[~weekend].mean()
    # The night's genres do not follow the weekend, nor the weekend's the night, as much.
    assert night_genres[weekend].mean() < 1.1 * night_genres[~weekend].mean()
    assert weekend_genres[night].mean() < 1.1 * weekend_genres[~night].mean()


def test_each_device_boosts_its_genres(data: SyntheticData) -> None:
    device = data.interactions["device"]
    known = device.notna().to_numpy()

    for name, genres in data.device_genres.items():
        on_device = (device == name).to_numpy()
        boosted = _has_genre(data, genres)
        assert boosted[on_device].mean() > 1.2 * boosted[known & ~on_device].mean(), name


def test_devices_cover_all_with_two_percent_missing(data: SyntheticData) -> None:
    device = data.interactions["device"]
    shares = device.value_counts(normalize=True, dropna=False)

    assert set(device.dropna()) == set(DEVICES)
    assert 0.01 < device.isna().mean() < 0.03
    assert shares["mobile"] > shares["desktop"] > shares["tv"] > 0.1
    # A user's devices vary, and a session keeps its device: consecutive events a minute apart
    # share it far more often than events a week apart.
    frame = data.interactions.dropna(subset=["device"])
    same_user = frame["user_id"].eq(frame["user_id"].shift())
    gap = frame["timestamp"].diff()
    same_device = frame["device"].eq(frame["device"].shift())
    assert same_device[same_user & (gap < 600)].mean() > 0.95
    assert same_device[same_user & (gap > 7 * 86_400)].mean() < 0.8


def test_event_types_follow_affinity(data: SyntheticData) -> None:
    event_type = data.interactions["event_type"]
    shares = event_type.value_counts(normalize=True)
    affinity = pd.Series(data.affinity).groupby(event_type.to_numpy()).mean()

    assert set(event_type) == set(EVENT_TYPES)
    assert shares["click"] == pytest.approx(0.7, abs=0.01)
    assert shares["cart"] == pytest.approx(0.2, abs=0.01)
    assert shares["purchase"] == pytest.approx(0.1, abs=0.01)
    assert affinity["purchase"] > affinity["cart"] + 0.5 > affinity["click"] + 1.0
    # Among the items a user takes, purchases are of the ones they like most.
    top_quarter = data.affinity > np.quantile(data.affinity, 0.75)
    purchase = (event_type == "purchase").to_numpy()
    assert purchase[top_quarter].mean() > 5 * purchase[~top_quarter].mean()


def test_affinity_is_the_taste_of_the_moment(data: SyntheticData) -> None:
    users = pd.Index(data.users["user_id"]).get_indexer(data.interactions["user_id"])
    mean_taste = np.einsum("nd,nd->n", data.user_factors[users], data.item_factors[_item_index(data)])

    assert data.affinity.shape == (len(data.interactions),)
    assert np.corrcoef(mean_taste, data.affinity)[0, 1] > 0.7  # the same, up to the drift


def _genre_shares(frame: pd.DataFrame, items: pd.DataFrame, by: str) -> pd.DataFrame:
    """Share of each genre among each group's interactions (an item counts once per genre)."""
    genres = items.set_index("item_id")["genres"].str.split("|").rename("genre")
    exploded = frame[[by, "item_id"]].join(genres, on="item_id").explode("genre")
    return pd.crosstab(exploded[by], exploded["genre"], normalize="index")


def _spread(shares: pd.DataFrame) -> float:
    """Largest total-variation distance between one group's genre shares and the mean's."""
    return float((shares - shares.mean()).abs().sum(axis=1).max() / 2)


@pytest.mark.parametrize("attribute", ["age_group", "country"])
def test_user_attributes_shift_the_genres(data: SyntheticData, attribute: str) -> None:
    frame = data.interactions.join(data.users.set_index("user_id"), on="user_id")
    shuffled = data.users.assign(**{attribute: np.random.default_rng(0).permutation(data.users[attribute])})
    baseline = data.interactions.join(shuffled.set_index("user_id"), on="user_id")

    spread = _spread(_genre_shares(frame, data.items, attribute))
    shuffled_spread = _spread(_genre_shares(baseline, data.items, attribute))
    assert spread > 0.05
    assert spread > 2 * shuffled_spread


def test_attributes_alone_beat_popularity_for_new_users(data: SyntheticData) -> None:
    """The most popular items of a user's age group and country, from other users, against the
    most popular overall: recall@20 of held-out users' items."""
    frame = data.interactions.join(data.users.set_index("user_id"), on="user_id")
    held_out = set(np.random.default_rng(0).choice(data.users["user_id"], size=300, replace=False))
    test = frame["user_id"].isin(held_out)
    train = frame[~test]
    overall = set(train["item_id"].value_counts().index[:20])
    by_group = {
        group: set(rows["item_id"].value_counts().index[:20])
        for group, rows in train.groupby(["age_group", "country"])
    }
    recall_group, recall_popular = [], []
    for (age_group, country), rows in frame[test].groupby(["age_group", "country"]):
        top = by_group.get((age_group, country), overall)
        for items in rows.groupby("user_id")["item_id"]:
            taken, size = set(items[1]), min(20, len(items[1]))
            recall_group.append(len(taken & top) / size)
            recall_popular.append(len(taken & overall) / size)

    assert np.mean(recall_group) > 1.05 * np.mean(recall_popular)


def test_default_size_stays_small(data: SyntheticData) -> None:
    # `make run` trains on the default data set in well under two minutes: keep it so.
    assert len(data.interactions) < 1.1 * 30_270  # the default's size before events had context
    assert len(data.interactions) > 0.9 * 30_270


# The scaled generator: O(interactions) work, written as time-sliced parts.

SCALED = ScaledSpec(num_users=2000, num_items=5000, num_interactions=20_000, seed=3)


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[ScaledSummary, pd.DataFrame]:
    summary = write_scaled_channels(SCALED, tmp_path_factory.mktemp("scaled"), parts=4)
    table = pa.concat_tables(pq.read_table(path) for path in summary.train_files)
    return summary, table.to_pandas()


def test_scaled_writes_exactly_the_interactions_asked_for(scaled: tuple[ScaledSummary, pd.DataFrame]) -> None:
    summary, frame = scaled

    assert summary.num_interactions == len(frame) == SCALED.num_interactions
    assert [path.name for path in summary.train_files] == [f"part-{n:05d}.parquet" for n in range(4)]
    assert not frame.duplicated(["user_id", "item_id"]).any()
    per_user = frame.groupby("user_id").size()
    assert len(per_user) == SCALED.num_users
    assert per_user.min() >= 2
    assert per_user.max() > 4 * per_user.median()  # activity varies


def test_scaled_popularity_follows_a_power_law(scaled: tuple[ScaledSummary, pd.DataFrame]) -> None:
    _, frame = scaled
    counts = frame["item_id"].value_counts()  # descending

    top_share = counts.iloc[: SCALED.num_items // 100].sum() / len(frame)
    assert top_share > 0.3  # the top 1% of items takes a large share
    assert counts.iloc[9] / counts.iloc[99] > 4  # rank 10 vs rank 100: ~10x under Zipf(1)


def test_scaled_parts_are_consecutive_time_slices(scaled: tuple[ScaledSummary, pd.DataFrame]) -> None:
    summary, frame = scaled
    parts = [pq.read_table(path, columns=["timestamp"]).column(0).to_numpy() for path in summary.train_files]

    assert all(np.all(np.diff(part) >= 0) for part in parts)
    assert all(earlier.max() <= later.min() for earlier, later in itertools.pairwise(parts))
    steps = frame.sort_values(["user_id", "timestamp"]).groupby("user_id")["timestamp"].diff().dropna()
    assert (steps > 0).all()
    assert set(frame["rating"]) == {1, 2, 3, 4, 5}


def test_scaled_attributes_cover_every_item_and_user(scaled: tuple[ScaledSummary, pd.DataFrame]) -> None:
    summary, frame = scaled
    items = pq.read_table(summary.items_file).to_pandas()
    users = pq.read_table(summary.users_file).to_pandas()

    assert list(items.columns) == ["item_id", "genres", "release_year", "price"]
    assert list(users.columns) == ["user_id", "age_group", "country"]
    assert len(items) == SCALED.num_items and len(users) == SCALED.num_users
    assert set(frame["item_id"]) <= set(items["item_id"])
    assert items["genres"].str.split("|").map(len).between(1, 3).all()
    assert set(users["country"]) <= set(COUNTRIES)


def test_scaled_is_deterministic_with_the_seed(
    tmp_path: Path, scaled: tuple[ScaledSummary, pd.DataFrame]
) -> None:
    _, frame = scaled
    again = write_scaled_channels(SCALED, tmp_path / "again", parts=1)
    other = write_scaled_channels(
        ScaledSpec(num_users=2000, num_items=5000, num_interactions=20_000, seed=4), tmp_path / "other"
    )

    same = pq.read_table(again.train_files[0]).to_pandas()
    pd.testing.assert_frame_equal(same, frame.reset_index(drop=True))
    assert not pq.read_table(other.train_files[0]).to_pandas().equals(same)


def test_scaled_heavy_users_of_a_tiny_catalogue_still_get_distinct_items(tmp_path: Path) -> None:
    summary = write_scaled_channels(ScaledSpec(num_users=3, num_items=10, num_interactions=15), tmp_path)
    frame = pq.read_table(summary.train_files[0]).to_pandas()

    assert len(frame) == 15
    assert not frame.duplicated(["user_id", "item_id"]).any()


@pytest.mark.parametrize(
    ("bad", "name"),
    [
        ({"num_users": 0}, "num_users"),
        ({"num_items": 3}, "num_items"),
        ({"num_interactions": 10}, "num_interactions"),  # fewer than two per user
        ({"num_interactions": 100 * 5 + 1}, "num_interactions"),  # more than half the catalogue each
        ({"num_genres": 0}, "num_genres"),
    ],
)
def test_scaled_spec_rejects_bad_values(bad: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ScaledSpec(**{"num_users": 100, "num_items": 10, "num_interactions": 200, **bad})


def test_scaled_rejects_json_and_zero_parts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fmt"):
        write_scaled_channels(SCALED, tmp_path, fmt="jsonl")
    with pytest.raises(ValueError, match="parts"):
        write_scaled_channels(SCALED, tmp_path, parts=0)


def test_generate_data_command_has_a_scaled_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys.cli import main

    argv = ["generate-data", "--output", str(tmp_path), "--users", "50", "--items", "40"]
    assert main([*argv, "--interactions", "500", "--parts", "2"]) == 0
    assert "wrote 500 interactions of 50 users and 40 items in 2 part(s)" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "train").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert main([*argv, "--interactions", "5000"]) == 1  # more than half the catalogue per user
    assert "generate-data: num_interactions must be at most" in capsys.readouterr().err
