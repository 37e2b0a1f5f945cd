"""Tests for recsys.data.synthetic: determinism, shapes, referential integrity and structure."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from recsys.data.io import read_table
from recsys.data.synthetic import (
    AGE_GROUPS,
    COUNTRIES,
    GENRE_NAMES,
    MIN_INTERACTIONS_PER_USER,
    SyntheticData,
    SyntheticSpec,
    generate,
    write_channels,
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
