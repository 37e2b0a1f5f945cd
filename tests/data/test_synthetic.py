"""Tests for recsys.data.synthetic: determinism, shapes, referential integrity and structure."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.io import read_table
from recsys.data.synthetic import (
    AGE_GROUPS,
    COUNTRIES,
    GENRE_NAMES,
    MIN_INTERACTIONS_PER_USER,
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


def test_different_seed_gives_different_frames() -> None:
    first = generate(SMALL)
    second = generate(SyntheticSpec(num_users=200, num_items=150, mean_interactions_per_user=20, seed=4))

    assert not first.interactions.equals(second.interactions)
    assert not first.items.equals(second.items)
    assert not first.users.equals(second.users)


def test_columns_and_shapes(data: SyntheticData) -> None:
    spec = SyntheticSpec()

    assert list(data.interactions.columns) == ["user_id", "item_id", "rating", "timestamp"]
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


def test_write_channels_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="xlsx"):
        write_channels(generate(SMALL), tmp_path, fmt="xlsx")


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
