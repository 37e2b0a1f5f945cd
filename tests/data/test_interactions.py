"""Cleaning, indexing and splitting interaction tables, with hand-checked answers."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys.data.interactions import (
    IndexedInteractions,
    InteractionColumns,
    combine,
    encode_batches,
    event_mask_dtype,
    fit_row_encoding,
    index_encoded,
    read_interactions,
    split_last_out,
)
from recsys.data.io import read_table, write_table
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError

COLUMNS = InteractionColumns()


def _positives(
    table: pa.Table,
    columns: InteractionColumns = COLUMNS,
    *,
    channel: str = "train",
    min_rating: float | None = None,
) -> tuple[pd.DataFrame, bool]:
    """The rules on a table in memory, as every reader applies them: (positives, had times).

    The positives are one row per (user, item) pair: user_id, item_id and timestamp (float64).
    """
    encoded = encode_batches(
        table.column_names, table.to_batches(), columns, channel=channel, min_rating=min_rating
    )
    users, items = Vocabulary.from_arrow(encoded.user_ids()), Vocabulary.from_arrow(encoded.item_ids())
    indexed, _ = index_encoded(encoded, users, items)
    frame = pd.DataFrame(
        {
            "user_id": users.values.take(pa.array(indexed.users)).to_pandas(),
            "item_id": items.values.take(pa.array(indexed.items)).to_pandas(),
            "timestamp": indexed.timestamps,
        }
    )
    return frame, encoded.has_timestamp


def _clean(columns: dict[str, Any], *, min_rating: float | None = None, **names: str) -> pd.DataFrame:
    frame, _ = _positives(pa.table(columns), InteractionColumns(**names), min_rating=min_rating)
    return frame


def _rows(frame: pd.DataFrame) -> list[tuple[str, str, float]]:
    return [
        (str(u), str(i), float(t)) for u, i, t in frame[["user_id", "item_id", "timestamp"]].itertuples(False)
    ]


@pytest.mark.parametrize(
    ("missing", "setting"), [("user_id", "user_id_column"), ("item_id", "item_id_column")]
)
def test_missing_id_column_names_it_the_columns_present_and_the_setting(missing: str, setting: str) -> None:
    columns = {"user_id": ["u"], "item_id": ["i"], "stars": [5]}
    del columns[missing]
    with pytest.raises(DataError) as info:
        _clean(columns)
    message = str(info.value)
    assert f"'{missing}'" in message
    present = [c for c in ("user_id", "item_id", "stars") if c != missing]
    assert ", ".join(present) in message
    assert setting in message
    assert "'train'" in message


def test_missing_context_columns_are_all_named_with_the_columns_present() -> None:
    columns = InteractionColumns(context=("device", "country", "page"))
    table = pa.table({"user_id": ["u"], "item_id": ["i"], "country": ["fr"]})

    with pytest.raises(DataError) as info:
        _positives(table, columns)

    assert str(info.value) == (
        "channel 'train': the context column(s) 'device', 'page' named by the hyperparameter "
        "context_columns were not found; columns present: user_id, item_id, country."
    )


def test_custom_column_names_are_used() -> None:
    frame = _clean({"who": ["u1"], "what": ["i1"], "when": [5]}, user="who", item="what", timestamp="when")
    assert _rows(frame) == [("u1", "i1", 5.0)]


def test_min_rating_keeps_ratings_at_or_above_the_threshold() -> None:
    frame = _clean(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "item_id": ["a", "b", "c", "a"],
            "rating": [3.0, 4.0, 5.0, 3.5],
            "timestamp": [1, 2, 3, 4],
        },
        min_rating=4.0,
    )
    assert _rows(frame) == [("u1", "b", 2.0), ("u1", "c", 3.0)]


def test_min_rating_without_a_rating_column_is_an_error() -> None:
    with pytest.raises(DataError, match="rating column 'rating' was not found") as info:
        _clean({"user_id": ["u"], "item_id": ["i"]}, min_rating=3)
    assert "min_rating" in str(info.value)


def test_min_rating_that_nothing_passes_is_an_error() -> None:
    with pytest.raises(DataError, match="no interaction has rating >= min_rating=5"):
        _clean({"user_id": ["u", "v"], "item_id": ["i", "j"], "rating": [1, 4]}, min_rating=5)


def test_min_rating_with_a_non_numeric_rating_is_an_error() -> None:
    with pytest.raises(DataError, match="'great'"):
        _clean({"user_id": ["u", "v"], "item_id": ["i", "j"], "rating": ["5", "great"]}, min_rating=3)


def test_min_rating_keeps_each_row_with_its_own_timestamp() -> None:
    # Filtering drops rows: timestamps must still be taken from the surviving rows, not shifted.
    frame = _clean(
        {
            "user_id": ["u", "u", "u"],
            "item_id": ["a", "b", "c"],
            "rating": [1, 5, 5],
            "timestamp": [10, 20, 30],
        },
        min_rating=2,
    )
    assert _rows(frame) == [("u", "b", 20.0), ("u", "c", 30.0)]


EPOCHS = [1577836800.0, 1577836801.5]  # 2020-01-01T00:00:00Z and 1.5 s later


@pytest.mark.parametrize(
    "stamps",
    [
        pa.array([1577836800, 1577836801.5]),
        pa.array(["1577836800", "1577836801.5"]),
        pa.array(["2020-01-01T00:00:00Z", "2020-01-01T01:00:01.5+01:00"]),
        pa.array(["2020-01-01T00:00:00", "2020-01-01T00:00:01.500"]),  # naive means UTC
        pa.array([1577836800000, 1577836801500], pa.timestamp("ms", tz="UTC")),
        pa.array([1577836800, 1577836801], pa.timestamp("s")),
    ],
    ids=["numbers", "numeric-strings", "iso-offsets", "iso-naive", "arrow-ms", "arrow-s"],
)
def test_timestamps_in_every_form_give_epoch_seconds(stamps: pa.Array) -> None:
    frame = _clean({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": stamps})
    expected = [EPOCHS[0], EPOCHS[1] if stamps.type != pa.timestamp("s") else 1577836801.0]
    assert frame["timestamp"].dtype == np.float64
    assert frame["timestamp"].tolist() == pytest.approx(expected, abs=1e-6)


def test_a_bad_timestamp_is_named() -> None:
    with pytest.raises(DataError, match=r"'yesterday' \(1 such rows\)") as info:
        _clean({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": ["2020-01-01", "yesterday"]})
    assert "timestamp_column" in str(info.value)


@pytest.mark.parametrize("stamps", [[1.0, None], ["2020-01-01T00:00:00Z", None]], ids=["number", "iso"])
def test_an_empty_timestamp_is_an_error(stamps: list[Any]) -> None:
    with pytest.raises(DataError, match="empty values"):
        _clean({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": stamps})


def test_without_a_timestamp_column_row_order_is_time() -> None:
    table = pa.table({"user_id": ["u2", "u1", "u1", "u2"], "item_id": ["z", "b", "a", "y"]})
    frame, has_timestamp = _positives(table)
    assert not has_timestamp
    # Sorted by user then time: u1's "b" came before "a" in the file, so it stays first.
    assert _rows(frame) == [("u1", "b", 1.0), ("u1", "a", 2.0), ("u2", "z", 0.0), ("u2", "y", 3.0)]


def test_duplicates_are_merged_keeping_the_latest_time() -> None:
    table = pa.table(
        {
            "user_id": ["u", "u", "u", "v"],
            "item_id": ["a", "b", "a", "a"],
            "timestamp": [50, 20, 10, 5],
        }
    )
    frame, has_timestamp = _positives(table)
    assert has_timestamp
    assert _rows(frame) == [("u", "b", 20.0), ("u", "a", 50.0), ("v", "a", 5.0)]


def test_ties_in_time_are_ordered_by_item() -> None:
    frame = _clean({"user_id": ["u", "u", "u"], "item_id": ["c", "a", "b"], "timestamp": [1, 1, 0]})
    assert _rows(frame) == [("u", "b", 0.0), ("u", "a", 1.0), ("u", "c", 1.0)]


def test_empty_and_null_ids_are_skipped() -> None:
    frame = _clean(
        {
            "user_id": ["u", None, "", "u", "v"],
            "item_id": ["a", "b", "c", "", None],
            "timestamp": [1, 2, 3, 4, 5],
        }
    )
    assert _rows(frame) == [("u", "a", 1.0)]


def test_only_empty_ids_is_an_error() -> None:
    with pytest.raises(DataError, match="empty user or item id"):
        _clean({"user_id": ["", None], "item_id": ["a", "b"]})


def test_numeric_ids_become_strings() -> None:
    frame = _clean({"user_id": [7, 7], "item_id": [100, 20]})
    assert _rows(frame) == [("7", "100", 0.0), ("7", "20", 1.0)]


def _index(
    columns: dict[str, list[Any]], users: Vocabulary, items: Vocabulary
) -> tuple[IndexedInteractions, int]:
    table = pa.table(columns)
    encoded = encode_batches(table.column_names, table.to_batches(), COLUMNS, channel="test", min_rating=None)
    return index_encoded(encoded, users, items)


def _indexed() -> tuple[IndexedInteractions, int]:
    columns: dict[str, list[Any]] = {
        "user_id": ["bob", "ann", "bob", "ann", "ann", "zed", "bob"],
        "item_id": ["x", "y", "y", "x", "q", "x", "z"],
        "timestamp": [30.0, 5.0, 10.0, 7.0, 1.0, 2.0, 20.0],
    }
    # "zed" and item "q" are outside the vocabularies: their rows are dropped and counted.
    return _index(columns, Vocabulary.build(["ann", "bob", "cid"]), Vocabulary.build("xyz"))


def test_index_encoded_builds_a_time_ordered_csr() -> None:
    data, dropped = _indexed()
    assert dropped == 2  # (ann, q) and (zed, x)
    assert (data.num_users, data.num_items, data.num_interactions) == (3, 3, 5)
    # ann (0): y@5, x@7; bob (1): y@10, z@20, x@30; cid (2): nothing.
    assert data.indptr.tolist() == [0, 2, 5, 5]
    assert data.users.tolist() == [0, 0, 1, 1, 1]
    assert data.items.tolist() == [1, 0, 1, 2, 0]
    assert data.timestamps.tolist() == [5.0, 7.0, 10.0, 20.0, 30.0]
    for u in range(data.num_users):
        stamps = data.timestamps[data.indptr[u] : data.indptr[u + 1]]
        assert np.all(np.diff(stamps) >= 0)


def test_split_last_out_holds_out_each_users_latest_item() -> None:
    columns: dict[str, list[Any]] = {
        "user_id": ["a", "a", "a", "b", "c", "c"],
        "item_id": ["1", "2", "3", "1", "3", "2"],
        "timestamp": [3.0, 1.0, 2.0, 9.0, 4.0, 8.0],
    }
    data, dropped = _index(columns, Vocabulary.build("abc"), Vocabulary.build("123"))
    assert dropped == 0
    train, held = split_last_out(data)
    # a: 2@1, 3@2, 1@3 -> holds out 1; b has one interaction -> all in train; c: 3@4, 2@8 -> holds out 2.
    assert held.indptr.tolist() == [0, 1, 1, 2]
    assert held.items.tolist() == [0, 1]
    assert held.timestamps.tolist() == [3.0, 8.0]
    assert train.indptr.tolist() == [0, 2, 3, 4]
    assert train.items.tolist() == [1, 2, 0, 2]
    assert train.users.tolist() == [0, 0, 1, 2]
    assert train.num_interactions + held.num_interactions == data.num_interactions
    for part in (train, held):
        assert (part.num_users, part.num_items) == (3, 3)


def test_split_last_out_respects_min_history() -> None:
    data, _ = _indexed()
    train, held = split_last_out(data, min_history=3)
    # Only bob has three interactions; his latest (x@30) is held out.
    assert held.indptr.tolist() == [0, 0, 1, 1]
    assert held.items.tolist() == [0]
    assert train.indptr.tolist() == [0, 2, 4, 4]


# Streaming: read_interactions applies the same rules batch by batch over a channel's parts.


def _old_rules(frame: pd.DataFrame, min_rating: float | None) -> pd.DataFrame:
    """The rules as the pandas implementation before streaming applied them: the oracle."""
    if min_rating is not None:
        frame = frame[frame["rating"] >= min_rating]
    frame = frame[frame["user_id"].notna() & frame["item_id"].notna()]
    frame = frame[(frame["user_id"] != "") & (frame["item_id"] != "")]
    frame = frame.groupby(["user_id", "item_id"], as_index=False, sort=False).agg(
        timestamp=("timestamp", "max")
    )
    return frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)


def _messy_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = np.array([f"u{n:03d}" for n in rng.integers(0, 60, rows)], dtype=object)
    items = np.array([f"i{n}" for n in rng.integers(0, 40, rows)], dtype=object)  # "i10" < "i9"
    users[rng.random(rows) < 0.02] = ""
    items[rng.random(rows) < 0.02] = None
    return pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "rating": rng.integers(1, 6, rows),
            "timestamp": rng.integers(1_600_000_000, 1_600_000_050, rows),  # many ties and repeats
        }
    )


def _write_parts(frame: pd.DataFrame, channel: Path) -> None:
    cut = np.linspace(0, len(frame), 4).astype(int)
    for part, (start, stop) in enumerate(itertools.pairwise(cut)):
        extension = ("parquet", "csv", "csv.gz")[part]
        write_table(frame.iloc[start:stop], channel / f"part-{part}.{extension}")


@pytest.mark.parametrize("min_rating", [None, 3.0])
def test_read_interactions_matches_the_old_rules_over_mixed_parts(
    tmp_path: Path, min_rating: float | None
) -> None:
    frame = _messy_frame(3000, seed=5)
    _write_parts(frame, tmp_path / "train")

    encoded = read_interactions(
        tmp_path / "train", COLUMNS, channel="train", min_rating=min_rating, batch_rows=256
    )
    users, items = Vocabulary.from_arrow(encoded.user_ids()), Vocabulary.from_arrow(encoded.item_ids())
    data, dropped = index_encoded(encoded, users, items)

    expected = _old_rules(frame, min_rating)
    assert dropped == 0
    assert users == Vocabulary.build(expected["user_id"])
    assert items == Vocabulary.build(expected["item_id"])
    assert [users.ids[u] for u in data.users] == expected["user_id"].tolist()
    assert [items.ids[i] for i in data.items] == expected["item_id"].tolist()
    assert data.timestamps.tolist() == expected["timestamp"].astype(float).tolist()
    assert data.indptr.tolist() == [0, *np.cumsum(expected.groupby("user_id", sort=True).size()).tolist()]


def test_encode_batches_matches_the_old_rules() -> None:
    frame = _messy_frame(2000, seed=6)

    cleaned, _ = _positives(pa.Table.from_pandas(frame))

    expected = _old_rules(frame, None)
    assert cleaned["user_id"].tolist() == expected["user_id"].tolist()
    assert cleaned["item_id"].tolist() == expected["item_id"].tolist()
    assert cleaned["timestamp"].tolist() == expected["timestamp"].astype(float).tolist()


def test_indexed_interactions_are_int32_and_16_bytes_a_row(tmp_path: Path) -> None:
    _write_parts(_messy_frame(1000, seed=7), tmp_path / "train")
    encoded = read_interactions(tmp_path / "train", COLUMNS, channel="train", min_rating=None)
    users, items = Vocabulary.from_arrow(encoded.user_ids()), Vocabulary.from_arrow(encoded.item_ids())

    data, _ = index_encoded(encoded, users, items)

    assert encoded.user_codes.dtype == encoded.item_codes.dtype == np.int32
    assert encoded.nbytes == 16 * encoded.num_rows
    assert data.users.dtype == data.items.dtype == np.int32
    assert data.timestamps.dtype == np.float64
    assert data.nbytes == 16 * data.num_interactions + 8 * (len(users) + 1)


def test_repeats_in_different_parts_merge_at_the_latest_time(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(
        pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": [50, 20]}),
        channel / "1.parquet",
    )
    write_table(
        pd.DataFrame({"user_id": ["u", "v"], "item_id": ["a", "a"], "timestamp": [70, 5]}), channel / "2.csv"
    )

    encoded = read_interactions(channel, COLUMNS, channel="train", min_rating=None)
    users, items = Vocabulary.from_arrow(encoded.user_ids()), Vocabulary.from_arrow(encoded.item_ids())
    data, _ = index_encoded(encoded, users, items)

    assert [
        (users.ids[u], items.ids[i], t)
        for u, i, t in zip(data.users, data.items, data.timestamps, strict=True)
    ] == [
        ("u", "b", 20.0),
        ("u", "a", 70.0),
        ("v", "a", 5.0),
    ]


def test_without_timestamps_the_order_of_rows_across_parts_is_time(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(pd.DataFrame({"user_id": ["u", "v"], "item_id": ["z", "y"]}), channel / "a.csv")
    write_table(pd.DataFrame({"user_id": ["u", "u"], "item_id": ["b", "z"]}), channel / "b.parquet")

    encoded = read_interactions(channel, COLUMNS, channel="train", min_rating=None)

    assert not encoded.has_timestamp
    assert encoded.timestamps.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_bad_timestamp_counts_every_batch(tmp_path: Path) -> None:
    stamps = ["2020-01-01", "soon", "2020-01-02", "later", "2020-01-03", "never"]
    frame = pd.DataFrame({"user_id": ["u"] * 6, "item_id": list("abcdef"), "timestamp": stamps})
    write_table(frame, tmp_path / "train" / "a.parquet")

    with pytest.raises(DataError, match=r"'soon' \(3 such rows\)"):
        read_interactions(tmp_path / "train", COLUMNS, channel="train", min_rating=None, batch_rows=2)


def test_a_bad_rating_in_a_later_batch_is_named(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "a.csv").write_text("user_id,item_id,rating\nu,a,4\nu,b,5\nu,c,great\n")

    with pytest.raises(DataError, match="rating column 'rating' has a non-numeric or empty value 'great'"):
        read_interactions(channel, COLUMNS, channel="train", min_rating=3, batch_rows=1)


def test_missing_id_column_is_named_before_reading_rows(tmp_path: Path) -> None:
    write_table(pd.DataFrame({"user": ["u"], "item_id": ["i"]}), tmp_path / "train" / "a.parquet")

    with pytest.raises(
        DataError, match=r"user id column 'user_id' was not found; columns present: user, item_id"
    ):
        read_interactions(tmp_path / "train", COLUMNS, channel="train", min_rating=None)


def test_read_interactions_reads_one_file_only_when_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "test.csv"
    path.write_text("user_id,item_id,timestamp\nu,a,2\nu,b,yesterday\n")

    with pytest.raises(DataError, match=re.escape(f"'yesterday' (1 such rows), the first in {path}")):
        read_interactions(path, COLUMNS, channel="test", min_rating=None, allow_file=True)
    path.write_text("user_id,item_id,timestamp\nu,a,2\nv,b,1\nu,a,3\n")
    with caplog.at_level(logging.INFO, logger="recsys.data.interactions"):
        encoded = read_interactions(path, COLUMNS, channel="test", min_rating=None, allow_file=True)
    with pytest.raises(DataError, match=re.escape(f"{path} is a file, but a channel must be a directory")):
        read_interactions(path, COLUMNS, channel="train", min_rating=None)

    assert encoded.timestamps.tolist() == [2.0, 1.0, 3.0]
    assert encoded.user_ids().to_pylist() == ["u", "v"]
    assert "rows kept" not in caplog.text  # the command that read it prints its own first line


def test_index_encoded_drops_and_counts_pairs_with_unknown_ids_once() -> None:
    table = pa.table(
        {
            "user_id": ["ann", "ann", "zed", "zed", "bob"],
            "item_id": ["x", "x", "x", "x", "q"],
            "timestamp": [1, 2, 3, 4, 5],
        }
    )
    encoded = encode_batches(
        table.column_names, table.to_batches(), COLUMNS, channel="validation", min_rating=None
    )

    data, dropped = index_encoded(encoded, Vocabulary.build(["ann", "bob"]), Vocabulary.build(["x", "y"]))

    # (ann, x) twice is one positive; (zed, x) twice is one dropped pair; (bob, q) has an unknown item.
    assert dropped == 2
    assert data.users.tolist() == [0] and data.items.tolist() == [0] and data.timestamps.tolist() == [2.0]
    assert data.indptr.tolist() == [0, 1, 1]


# Mixed formats: every part of a channel in its own format and encoding gives the same interactions.

DAY = 86_400
# One part per format, each writing times, ids and ratings its own way (see _mixed_part).
MIXED_PARTS = (
    "part-0.csv",
    "part-1.tsv",
    "part-2.parquet",
    "part-3.jsonl",
    "part-4.jsonl.gz",
    "part-5.pq.gz",
    "part-6.parquet",
)


def _mixed_frame(rows: int, seed: int) -> pd.DataFrame:
    """Interactions with integer ids, a part per row, and times each part can encode exactly."""
    rng = np.random.default_rng(seed)
    part = rng.integers(0, len(MIXED_PARTS), rows)
    seconds = rng.integers(1_600_000_000, 1_600_000_300, rows).astype(np.float64)  # ties and repeats
    # Fractions only where the encoding keeps them; the date32 part is at midnight.
    fractional = np.isin(part, [1, 2, 4])
    seconds[fractional] += rng.choice([0.0, 0.25, 0.5, 0.75], int(fractional.sum()))
    midnight = part == 6
    seconds[midnight] = (1_600_000_000 // DAY + rng.integers(-3, 3, int(midnight.sum()))) * DAY
    return pd.DataFrame(
        {
            "user_id": rng.integers(1, 16, rows),
            "item_id": rng.integers(100, 130, rows),
            "rating": rng.integers(1, 6, rows),
            "timestamp": seconds,
            "part": part,
        }
    )


def _iso(seconds: pd.Series, *, offset_hours: int = 0) -> list[str]:
    millis = (seconds * 1000).round().astype("int64")
    local = pd.to_datetime(millis, unit="ms", utc=True) + pd.Timedelta(hours=offset_hours)
    suffix = "Z" if offset_hours == 0 else f"+{offset_hours:02d}:00"
    text = local.dt.strftime("%Y-%m-%dT%H:%M:%S")
    return [
        f"{t}.{m % 1000:03d}{suffix}" if m % 1000 else f"{t}{suffix}"
        for t, m in zip(text, millis, strict=True)
    ]


def _ticks(seconds: pd.Series, per_second: int) -> pa.Array:
    # Whole seconds and the fraction apart: seconds * 1e9 in float64 is not exact.
    whole = np.floor(seconds.to_numpy())
    fraction = np.round((seconds.to_numpy() - whole) * per_second)
    return pa.array(whole.astype(np.int64) * per_second + fraction.astype(np.int64))


def _mixed_part(rows: pd.DataFrame, part: int) -> pa.Table:
    users, items, ratings, stamps = rows["user_id"], rows["item_id"], rows["rating"], rows["timestamp"]
    text_users, text_items = pa.array(users.astype(str)), pa.array(items.astype(str))
    columns: list[dict[str, Any]] = [
        # CSV: int epoch seconds; ids and ratings as CSV text.
        {"user_id": users, "item_id": items, "rating": ratings, "timestamp": stamps.astype("int64")},
        # TSV: ISO 8601 at +02:00, with milliseconds.
        {"user_id": users, "item_id": items, "rating": ratings, "timestamp": _iso(stamps, offset_hours=2)},
        # Parquet: naive timestamp[ns] (what pandas writes for datetimes); int users, dictionary items.
        {
            "user_id": users,
            "item_id": text_items.dictionary_encode(),
            "rating": ratings.astype("float64"),
            "timestamp": _ticks(stamps, 10**9).cast(pa.timestamp("ns")),
        },
        # JSON Lines: ISO 8601 with Z (pyarrow infers timestamp[s]); int users, ratings as text.
        {"user_id": users, "item_id": text_items, "rating": ratings.astype(str), "timestamp": _iso(stamps)},
        # gzip JSON Lines: float epoch seconds; text users, int items, float ratings.
        {"user_id": text_users, "item_id": items, "rating": ratings.astype("float64"), "timestamp": stamps},
        # gzip Parquet: zone-aware timestamp[s] (Parquet stores it as [ms]); dictionary users, int items.
        {
            "user_id": text_users.dictionary_encode(),
            "item_id": items,
            "rating": ratings,
            "timestamp": _ticks(stamps, 1).cast(pa.timestamp("s", tz="Europe/Paris")),
        },
        # Parquet: date32.
        {
            "user_id": users,
            "item_id": items,
            "rating": ratings,
            "timestamp": pa.array((stamps // DAY).astype("int32")).cast(pa.date32()),
        },
    ]
    return pa.table(columns[part])


def _indexed_rows(channel: Path, min_rating: float | None) -> tuple[list[tuple[str, str, float]], list[int]]:
    encoded = read_interactions(channel, COLUMNS, channel="train", min_rating=min_rating, batch_rows=64)
    users, items = Vocabulary.from_arrow(encoded.user_ids()), Vocabulary.from_arrow(encoded.item_ids())
    data, dropped = index_encoded(encoded, users, items)
    assert dropped == 0
    rows = [
        (users.ids[u], items.ids[i], float(t))
        for u, i, t in zip(data.users, data.items, data.timestamps, strict=True)
    ]
    return rows, data.indptr.tolist()


@pytest.mark.parametrize("min_rating", [None, 3.0])
def test_a_part_in_each_format_and_encoding_reads_like_one_csv(
    tmp_path: Path, min_rating: float | None
) -> None:
    frame = _mixed_frame(700, seed=11)
    for part, name in enumerate(MIXED_PARTS):
        write_table(_mixed_part(frame[frame["part"] == part], part), tmp_path / "mixed" / name)
    write_table(frame.drop(columns="part"), tmp_path / "single" / "all.csv")

    mixed = _indexed_rows(tmp_path / "mixed", min_rating)
    single = _indexed_rows(tmp_path / "single", min_rating)

    assert mixed == single
    rows, _ = mixed
    # In memory too (a directory read whole): the timestamps and ratings are text in every part
    # there, and convert to the same values.
    table = read_table(tmp_path / "mixed", channel="test", string_columns=["user_id", "item_id"])
    frame_rows = _rows(_positives(table, channel="test", min_rating=min_rating)[0])
    assert frame_rows == rows
    kept = frame if min_rating is None else frame[frame["rating"] >= min_rating]
    latest = kept.groupby(["user_id", "item_id"])["timestamp"].max()
    assert len(rows) == len(latest) < len(kept)  # repeats across parts were merged
    assert {(int(u), int(i)): t for u, i, t in rows} == latest.to_dict()
    assert rows == sorted(rows, key=lambda row: (row[0], row[2], row[1]))  # user, time, item


def test_one_moment_in_every_encoding_is_one_time(tmp_path: Path) -> None:
    # 2023-11-14T22:13:20.123Z: the same double whether written as a number or as a time.
    channel = tmp_path / "train"
    moment = 1_700_000_000.123
    channel.mkdir()
    (channel / "a.csv").write_text("user_id,item_id,timestamp\nu,a,1700000000.123\n")
    (channel / "b.jsonl").write_text(
        '{"user_id": "u", "item_id": "b", "timestamp": "2023-11-14T22:13:20.123Z"}\n'
    )
    (channel / "c.tsv").write_text("user_id\titem_id\ttimestamp\nu\tc\t2023-11-15T00:13:20.123+02:00\n")
    ns = pa.array([1_700_000_000_123_000_000], pa.timestamp("ns"))
    ms = pa.array([1_700_000_000_123], pa.timestamp("ms", tz="UTC"))
    write_table(pa.table({"user_id": ["u"], "item_id": ["d"], "timestamp": ns}), channel / "d.parquet")
    write_table(pa.table({"user_id": ["u"], "item_id": ["e"], "timestamp": ms}), channel / "e.parquet")
    write_table(pa.table({"user_id": ["u"], "item_id": ["f"], "timestamp": [moment]}), channel / "f.parquet")

    encoded = read_interactions(channel, COLUMNS, channel="train", min_rating=None)

    assert encoded.timestamps.tolist() == [moment] * 6


@pytest.mark.parametrize(
    "stamps",
    [
        pa.array([1_577_836_800_000_000_000, 1_577_836_801_500_000_000], pa.timestamp("ns")),
        pa.array([1_577_836_800_000_000_000, 1_577_836_801_500_000_000], pa.timestamp("ns", tz="Asia/Tokyo")),
        pa.array(["1577836800", "2020-01-01T00:00:01.5Z"]),  # a number and a time in one column
    ],
    ids=["arrow-ns", "arrow-ns-aware", "number-and-iso"],
)
def test_timestamps_are_exact_epoch_seconds(stamps: pa.Array) -> None:
    frame = _clean({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": stamps})
    assert frame["timestamp"].tolist() == EPOCHS


def test_a_bad_timestamp_in_a_mixed_channel_names_its_file(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(
        pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": [1_700_000_000]}), channel / "a.parquet"
    )
    bad = channel / "b.jsonl"
    bad.write_text(
        '{"user_id": "u", "item_id": "i", "timestamp": "2023-11-14T22:13:20Z"}\n'
        '{"user_id": "u", "item_id": "j", "timestamp": "yesterday"}\n'
    )

    with pytest.raises(DataError) as raised:
        read_interactions(channel, COLUMNS, channel="train", min_rating=None)

    message = str(raised.value)
    assert message.startswith("channel 'train': column 'timestamp' has a value that is neither")
    assert f"'yesterday' (1 such rows), the first in {bad}" in message


def test_a_bad_rating_in_a_mixed_channel_names_its_file(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "rating": [4.5]}), channel / "a.parquet")
    bad = channel / "b.jsonl"
    bad.write_text('{"user_id": "u", "item_id": "j", "rating": "great"}\n')

    with pytest.raises(
        DataError,
        match=re.escape(
            f"channel 'train': rating column 'rating' has a non-numeric or empty value 'great' in {bad};"
        ),
    ):
        read_interactions(channel, COLUMNS, channel="train", min_rating=3)


def test_a_timestamp_that_holds_lists_is_named_with_its_type_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "train" / "a.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"user_id": "u", "item_id": "j", "timestamp": [1, 2]}\n')

    with pytest.raises(DataError, match=re.escape(f"column 'timestamp' in {bad} has type list<item: int64>")):
        read_interactions(bad.parent, COLUMNS, channel="train", min_rating=None)


def test_a_timestamp_that_holds_lists_in_one_part_only_names_both_parts(tmp_path: Path) -> None:
    # The conflict that remains: a list is no time, and cannot be read as text either.
    channel = tmp_path / "train"
    write_table(pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": [5]}), channel / "a.csv")
    bad = channel / "b.jsonl"
    bad.write_text('{"user_id": "u", "item_id": "j", "timestamp": [1, 2]}\n')

    with pytest.raises(
        DataError,
        match=re.escape(f"files {channel / 'a.csv'} and {bad} disagree on column 'timestamp' (int64 vs list"),
    ):
        read_interactions(channel, COLUMNS, channel="train", min_rating=None)


def test_combine_orders_both_tables_by_user_and_time_and_keeps_a_pairs_latest_row() -> None:
    def table(rows: list[tuple[int, int, float, int]]) -> IndexedInteractions:
        users, items, stamps, events = (np.asarray(c) for c in zip(*rows, strict=True))
        indptr = np.searchsorted(users, np.arange(3))
        return IndexedInteractions(
            users.astype(np.int32),
            items.astype(np.int32),
            stamps.astype(float),
            indptr,
            2,
            5,
            events=events.astype(np.int16),
        )

    train = table([(0, 1, 10.0, 1), (0, 2, 30.0, 1), (1, 3, 5.0, 1)])
    validation = table([(0, 4, 20.0, 2), (0, 1, 40.0, 3), (1, 0, 50.0, 2)])

    both = combine(train, validation)

    assert both.indptr.tolist() == [0, 3, 5]
    assert both.items.tolist() == [4, 2, 1, 3, 0]  # user 0 by time; item 1 once, at its later time
    assert both.timestamps.tolist() == [20.0, 30.0, 40.0, 5.0, 50.0]
    assert both.events is not None and both.events.tolist() == [2, 1, 3, 1, 2]  # item 1: the later row's


def _typed(
    rows: list[tuple[str, str, float, str | None]], users: Vocabulary, items: Vocabulary
) -> IndexedInteractions:
    """Rows of (user, item, time, event type) indexed with the event codes of their own types."""
    table = pa.table(
        dict(zip(["user_id", "item_id", "timestamp", "event_type"], zip(*rows, strict=True), strict=True))
    )
    encoded = encode_batches(table.column_names, table.to_batches(), COLUMNS, channel="test", min_rating=None)
    encoding = fit_row_encoding(encoded, COLUMNS, time_features=False)
    assert encoding.event_types == ("click", "purchase")  # codes 1 and 2; 0 is none or unknown
    indexed, _ = index_encoded(encoded, users, items, encoding)
    return indexed


def test_a_merged_pair_keeps_its_latest_event_type_and_the_mask_of_all_of_them() -> None:
    users, items = Vocabulary.build(["u", "v"]), Vocabulary.build("abcd")
    data = _typed(
        [
            ("u", "a", 1.0, "purchase"),
            ("u", "b", 2.0, "click"),
            ("v", "c", 3.0, "purchase"),
            ("u", "a", 4.0, "click"),  # bought, then clicked: still bought
            ("u", "b", 5.0, "click"),
            ("u", "d", 6.0, None),
            ("w", "a", 7.0, "purchase"),  # an unknown user: dropped, the masks stay aligned
        ],
        users,
        items,
    )

    # u in time order (a@4, b@5, d@6), then v (c@3).
    assert data.items.tolist() == [0, 1, 3, 2]
    assert data.events is not None and data.events.tolist() == [1, 1, 0, 2]
    assert data.event_masks is not None and data.event_masks.dtype == np.uint8
    assert data.event_masks.tolist() == [0b110, 0b010, 0b001, 0b100]


def test_combine_ors_the_event_masks_of_a_pair_in_both_channels() -> None:
    users, items = Vocabulary.build(["u"]), Vocabulary.build("ab")
    train = _typed([("u", "a", 1.0, "purchase"), ("u", "b", 2.0, "click")], users, items)
    validation = _typed([("u", "a", 3.0, "click"), ("u", "b", 4.0, "purchase")], users, items)

    both = combine(train, validation)

    assert both.items.tolist() == [0, 1]
    assert both.events is not None and both.events.tolist() == [1, 2]  # the latest rows': click, purchase
    assert both.event_masks is not None and both.event_masks.tolist() == [0b110, 0b110]


@pytest.mark.parametrize(
    ("codes", "kind"),
    [(1, np.uint8), (8, np.uint8), (9, np.uint16), (33, np.uint64), (64, np.uint64), (65, None)],
)
def test_event_masks_take_the_narrowest_type_with_a_bit_per_code(codes: int, kind: type | None) -> None:
    assert event_mask_dtype(codes) is kind


def test_ids_with_nul_bytes_are_skipped_like_empty_ones(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="recsys.data.interactions"):
        frame = _clean(
            {
                "user_id": ["u", "u\x00v", "", "v"],
                "item_id": ["a", "b", "\x00", "\x00c"],
                "timestamp": [1, 2, 3, 4],
            }
        )
    assert _rows(frame) == [("u", "a", 1.0)]
    # The row with an empty user id (and a NUL item) counts once, as empty.
    assert "skipped 1 rows with an empty user or item id" in caplog.text
    assert "skipped 2 rows whose user or item id holds a NUL byte, the first at row 2" in caplog.text


def test_only_ids_with_nul_bytes_is_an_error_naming_the_first() -> None:
    with pytest.raises(
        DataError, match=r"empty user or item id, or one that holds a NUL byte \(the first: row 1\)"
    ):
        _clean({"user_id": ["\x00", "u"], "item_id": ["a", "b\x00"]})


def test_a_nul_id_is_located_by_file_and_row_across_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "a.csv").write_text("user_id,item_id\nu,a\nv,b\n", encoding="utf-8")
    rows = ["user_id,item_id", *(f"u{n},i{n}" for n in range(6)), "w\x00,i9", "x,i\x00"]
    (channel / "b.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="recsys.data.interactions"):
        encoded = read_interactions(channel, COLUMNS, channel="train", min_rating=None, batch_rows=3)

    assert encoded.num_rows == 8
    assert (
        f"skipped 2 rows whose user or item id holds a NUL byte, the first at row 7 of {channel / 'b.csv'}"
        in (caplog.text)
    )


def _context_csv(tmp_path: Path, values: list[str]) -> Path:
    channel = tmp_path / "train"
    channel.mkdir()
    lines = ["user_id,item_id,basket_value"] + [f"u{i % 3},i{i},{v}" for i, v in enumerate(values)]
    (channel / "part.csv").write_text("\n".join(lines) + "\n")
    return channel


def test_a_csv_context_column_is_numeric_when_declared_and_categorical_otherwise(tmp_path: Path) -> None:
    channel = _context_csv(tmp_path, ["12.5", "3", "", "40"])
    declared = InteractionColumns(context=("basket_value",), numeric_context=("basket_value",))
    numbers = read_interactions(channel, declared, channel="train", min_rating=None).rows
    assert set(numbers.numeric) == {"basket_value"} and not numbers.categorical
    np.testing.assert_array_equal(numbers.numeric["basket_value"], [12.5, 3.0, np.nan, 40.0])
    # CSV holds only text: undeclared, the same column is a label.
    labels = read_interactions(
        channel, InteractionColumns(context=("basket_value",)), channel="train", min_rating=None
    ).rows
    assert set(labels.categorical) == {"basket_value"} and not labels.numeric


def test_a_declared_numeric_context_column_with_text_names_the_value_and_the_setting(tmp_path: Path) -> None:
    channel = _context_csv(tmp_path, ["12.5", "large"])
    declared = InteractionColumns(context=("basket_value",), numeric_context=("basket_value",))
    with pytest.raises(DataError, match=r"'basket_value'.*numeric_context_columns.*'large'"):
        read_interactions(channel, declared, channel="train", min_rating=None)
