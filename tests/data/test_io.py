"""Tests for recsys.data.io: every format, channel layouts, and each error message."""

from __future__ import annotations

import datetime
import gzip
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from recsys.data import io as io_module
from recsys.data.io import (
    SUPPORTED_EXTENSIONS,
    list_data_files,
    open_channel,
    open_path,
    read_path,
    read_table,
    write_table,
)
from recsys.errors import DataError, UserError

FRAME = pd.DataFrame(
    {
        "user_id": ["007", "042", "100"],
        "item_id": ["i01", "i02", "i03"],
        "rating": [4.5, 3.0, 1.0],
        "count": [1, 2, 3],
    }
)


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("extension", SUPPORTED_EXTENSIONS)
def test_round_trip_every_format(tmp_path: Path, extension: str) -> None:
    write_table(FRAME, tmp_path / "train" / f"part{extension}")

    table = read_table(tmp_path / "train", channel="train", string_columns=["user_id", "item_id"])

    assert table.column_names == ["user_id", "item_id", "rating", "count"]
    assert table.schema.field("user_id").type == pa.string()
    assert table.column("user_id").to_pylist() == ["007", "042", "100"]
    assert table.column("item_id").to_pylist() == ["i01", "i02", "i03"]
    assert table.column("rating").to_pylist() == [4.5, 3.0, 1.0]
    assert table.column("count").to_pylist() == [1, 2, 3]


@pytest.mark.parametrize("extension", [ext for ext in SUPPORTED_EXTENSIONS if ext.endswith(".gz")])
def test_gz_files_are_gzip_compressed(tmp_path: Path, extension: str) -> None:
    path = tmp_path / f"part{extension}"
    write_table(pa.Table.from_pandas(FRAME, preserve_index=False), path)

    assert path.read_bytes()[:2] == b"\x1f\x8b"
    with gzip.open(path) as stream:
        assert len(stream.read()) > 0


def test_ids_with_leading_zeros_stay_strings_in_csv(tmp_path: Path) -> None:
    _write_text(tmp_path / "train" / "a.csv", "user_id,rating\n007,5\n010,3\n")

    inferred = read_table(tmp_path / "train", channel="train")
    forced = read_table(tmp_path / "train", channel="train", string_columns=["user_id"])

    assert inferred.column("user_id").to_pylist() == [7, 10]  # what string_columns prevents
    assert forced.column("user_id").to_pylist() == ["007", "010"]
    assert forced.schema.field("rating").type == pa.int64()


def test_tsv_uses_tabs(tmp_path: Path) -> None:
    _write_text(tmp_path / "train" / "a.tsv", "user_id\titem_id\n007\tx,y\n")

    table = read_table(tmp_path / "train", channel="train", string_columns=["user_id"])

    assert table.to_pylist() == [{"user_id": "007", "item_id": "x,y"}]


@pytest.mark.parametrize("extension", [".parquet", ".jsonl"])
def test_numeric_ids_cast_to_string_after_reading(tmp_path: Path, extension: str) -> None:
    write_table(pd.DataFrame({"user_id": [7, 10], "rating": [1, 2]}), tmp_path / "train" / f"a{extension}")

    table = read_table(tmp_path / "train", channel="train", string_columns=["user_id", "absent"])

    assert table.schema.field("user_id").type == pa.string()
    assert table.column("user_id").to_pylist() == ["7", "10"]
    assert table.schema.field("rating").type == pa.int64()


def test_several_files_are_concatenated_in_path_order(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(FRAME.iloc[2:], channel / "part-2.parquet")
    write_table(FRAME.iloc[:1], channel / "part-0.csv")
    write_table(FRAME.iloc[1:2], channel / "part-1.jsonl.gz")

    table = read_table(channel, channel="train", string_columns=["user_id"])

    assert table.column("user_id").to_pylist() == ["007", "042", "100"]
    assert table.num_rows == 3


def test_nested_directories_are_read(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(FRAME.iloc[:1], channel / "year=2023" / "month=01" / "a.csv")
    write_table(FRAME.iloc[1:], channel / "year=2024" / "b.csv")

    files = list_data_files(channel)
    table = read_table(channel, channel="train", string_columns=["user_id"])

    assert [path.relative_to(channel).as_posix() for path in files] == [
        "year=2023/month=01/a.csv",
        "year=2024/b.csv",
    ]
    assert table.column("user_id").to_pylist() == ["007", "042", "100"]


def test_hidden_and_bookkeeping_files_are_ignored(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(FRAME, channel / "data.csv")
    _write_text(channel / "_SUCCESS", "")
    _write_text(channel / ".DS_Store", "\x00\x01binary")
    _write_text(channel / "_temporary" / "junk.csv", "not,the,same\n1,2,3\n")
    _write_text(channel / ".ipynb_checkpoints" / "data-checkpoint.csv", "x\n1\n")

    assert list_data_files(channel) == [channel / "data.csv"]
    assert read_table(channel, channel="train").num_rows == 3


def test_list_data_files_is_sorted(tmp_path: Path) -> None:
    for name in ["b.csv", "a.csv", "c/z.csv", "c/a.csv", "B.csv"]:
        _write_text(tmp_path / name, "x\n1\n")

    names = [path.relative_to(tmp_path).as_posix() for path in list_data_files(tmp_path)]

    assert names == ["B.csv", "a.csv", "b.csv", "c/a.csv", "c/z.csv"]


def test_compatible_schemas_are_promoted(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    _write_text(channel / "a.csv", "user_id,rating\n1,4\n")
    _write_text(channel / "b.csv", "user_id,rating,extra\n2,3.5,x\n")

    table = read_table(channel, channel="train", string_columns=["user_id"])

    assert table.schema.field("rating").type == pa.float64()
    assert table.column("rating").to_pylist() == [4.0, 3.5]
    assert table.column("extra").to_pylist() == [None, "x"]


def test_write_table_accepts_arrow_and_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "t.parquet"
    write_table(pa.table({"a": [1, 2]}), path)

    assert read_table(path.parent, channel="c").to_pylist() == [{"a": 1}, {"a": 2}]


def test_write_table_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"t\.txt.*unsupported extension"):
        write_table(FRAME, tmp_path / "t.txt")


# Errors: each is a DataError (a UserError) naming the channel, the path and the problem.


def test_data_error_is_a_user_error() -> None:
    assert issubclass(DataError, UserError)


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as raised:
        read_table(missing, channel="train")

    message = str(raised.value)
    assert "channel 'train'" in message
    assert str(missing) in message
    assert "does not exist" in message


def test_file_instead_of_directory(tmp_path: Path) -> None:
    path = _write_text(tmp_path / "train.csv", "a\n1\n")
    with pytest.raises(DataError, match=r"channel 'train': .*train\.csv is a file"):
        read_table(path, channel="train")


def test_no_data_file_lists_supported_extensions(tmp_path: Path) -> None:
    channel = tmp_path / "items"
    _write_text(channel / "_SUCCESS", "")
    with pytest.raises(DataError) as raised:
        read_table(channel, channel="items")

    message = str(raised.value)
    assert "channel 'items'" in message
    assert str(channel) in message
    assert "no data file" in message
    for extension in [".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".json", ".gz"]:
        assert extension in message


def test_unsupported_extension_names_the_file(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(FRAME, channel / "a.csv")
    bad = _write_text(channel / "notes.txt", "hello")
    with pytest.raises(DataError) as raised:
        read_table(channel, channel="train")

    message = str(raised.value)
    assert "channel 'train'" in message
    assert str(bad) in message
    assert "unsupported extension" in message
    assert ".parquet" in message


@pytest.mark.parametrize(
    ("name", "content", "label"),
    [
        ("bad.parquet", b"this is not parquet", "Parquet"),
        ("bad.csv.gz", b"a,b\n1,2\n", "CSV (gzip)"),
        ("bad.csv", b"a,b\n1,2\n3,4,5\n", "CSV"),
        ("bad.json", b'[{"a": 1},\n{"a": 2}]\n', "JSON Lines"),
    ],
)
def test_unparsable_file_names_it_and_gives_the_reason(
    tmp_path: Path, name: str, content: bytes, label: str
) -> None:
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / name).write_bytes(content)
    with pytest.raises(DataError) as raised:
        read_table(channel, channel="train")

    message = str(raised.value)
    assert message.startswith("channel 'train': cannot read ")
    assert str(channel / name) in message
    assert f"as {label}: " in message
    reason = message.split(f"as {label}: ", 1)[1]
    assert reason.strip(". ")  # pyarrow's reason is included
    assert "\n" not in message  # only its first line


def test_json_parse_error_explains_json_lines(tmp_path: Path) -> None:
    _write_text(tmp_path / "train" / "a.json", '[{"a": 1}, {"a": 2}]\n')
    with pytest.raises(DataError, match="one object per line"):
        read_table(tmp_path / "train", channel="train")


def test_a_column_whose_types_do_not_promote_is_text_in_every_file(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    _write_text(channel / "a.csv", "user_id,rating\n1,4\n")
    _write_text(channel / "b.csv", "user_id,rating\n2,5\n")
    _write_text(channel / "c.csv", "user_id,rating\n3,good\n")

    table = read_table(channel, channel="train")

    assert table.schema.field("rating").type == pa.string()
    assert table.column("rating").to_pylist() == ["4", "5", "good"]
    assert table.schema.field("user_id").type == pa.int64()  # the same type everywhere: kept


def test_mixed_formats_promote_numbers_and_read_the_rest_as_text(tmp_path: Path) -> None:
    channel = tmp_path / "items"
    categories = pd.Categorical(["drama", "comedy"])  # Parquet stores a dictionary column
    write_table(
        pd.DataFrame({"item_id": [1, 2], "code": [10, 20], "price": [1.5, 2.5], "genre": categories}),
        channel / "a.parquet",
    )
    _write_text(channel / "b.csv", "item_id,code,price,genre\nx3,A7,3,drama\n")
    write_table(
        pd.DataFrame({"item_id": ["x4"], "code": [True], "price": [4], "genre": ["noir"]}),
        channel / "c.jsonl",
    )

    table = read_table(channel, channel="items", string_columns=["item_id"])

    assert table.column("item_id").to_pylist() == ["1", "2", "x3", "x4"]
    assert table.schema.field("price").type == pa.float64()  # int64 and double promote
    assert table.column("price").to_pylist() == [1.5, 2.5, 3.0, 4.0]
    assert table.schema.field("code").type == pa.string()  # int64, string and bool do not
    assert table.column("code").to_pylist() == ["10", "20", "A7", "true"]
    assert table.schema.field("genre").type == pa.string()
    assert table.column("genre").to_pylist() == ["drama", "comedy", "drama", "noir"]


def test_nested_values_against_other_values_name_both_files(tmp_path: Path) -> None:
    # The conflict that remains an error: a list cannot be read as text (nor text as a list).
    channel = tmp_path / "items"
    text = _write_text(channel / "a.csv", "item_id,genres\ni1,Drama|Comedy\n")
    lists = _write_text(channel / "b.jsonl", '{"item_id": "i2", "genres": ["Drama"]}\n')
    _write_text(channel / "c.csv", "item_id,genres\ni3,Noir\n")
    with pytest.raises(DataError) as raised:
        read_table(channel, channel="items", string_columns=["item_id"])

    message = str(raised.value)
    assert message.startswith("channel 'items': ")
    assert f"files {text} and {lists} disagree on column 'genres' (string vs list<item: string>)" in message
    assert "nested values" in message


def test_uncastable_string_column(tmp_path: Path) -> None:
    path = tmp_path / "train" / "a.parquet"
    write_table(pa.table({"user_id": [[1, 2], [3]]}), path)
    with pytest.raises(DataError) as raised:
        read_table(path.parent, channel="train", string_columns=["user_id"])

    message = str(raised.value)
    assert "channel 'train'" in message
    assert str(path) in message
    assert "column 'user_id'" in message


def test_zero_rows_is_an_error(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    _write_text(channel / "a.csv", "user_id,item_id\n")
    _write_text(channel / "b.csv", "user_id,item_id\n")
    with pytest.raises(DataError) as raised:
        read_table(channel, channel="train")

    message = str(raised.value)
    assert "channel 'train'" in message
    assert str(channel) in message
    assert "no rows" in message
    assert "2 files read" in message


# Streaming: open_channel checks a channel like read_table, then reads it batch by batch.


def _scan_rows(channel: Path, columns: list[str], **kwargs: Any) -> list[dict[str, Any]]:
    scan = open_channel(channel, channel="train", string_columns=["user_id", "item_id"])
    batches = list(scan.batches(columns, **kwargs))
    return [row for batch in batches for row in batch.to_pylist()]


def test_open_channel_streams_parquet_and_csv_parts_in_path_order(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(FRAME.iloc[:1], channel / "part-0.parquet")
    write_table(FRAME.iloc[1:2], channel / "part-1.csv.gz")
    write_table(FRAME.iloc[2:], channel / "part-2.tsv")

    scan = open_channel(channel, channel="train", string_columns=["user_id", "item_id"])
    rows = _scan_rows(channel, ["user_id", "rating"])

    assert scan.column_names == ["user_id", "item_id", "rating", "count"]
    assert [row["user_id"] for row in rows] == ["007", "042", "100"]
    # Parquet keeps its types; from CSV/TSV the non-id columns come as text for the caller to convert.
    assert [row["rating"] for row in rows] == [4.5, "3", "1"]


def test_parquet_ids_come_dictionary_encoded(tmp_path: Path) -> None:
    write_table(FRAME, tmp_path / "train" / "a.parquet")
    scan = open_channel(tmp_path / "train", channel="train", string_columns=["user_id"])

    (batch,) = list(scan.batches(["user_id"]))

    assert batch.schema.field("user_id").type == pa.dictionary(pa.int32(), pa.string())
    assert batch.column(0).to_pylist() == ["007", "042", "100"]


def test_numeric_parquet_ids_are_cast_to_text(tmp_path: Path) -> None:
    write_table(pd.DataFrame({"user_id": [7, 10], "item_id": ["a", "b"]}), tmp_path / "train" / "a.parquet")

    assert [row["user_id"] for row in _scan_rows(tmp_path / "train", ["user_id"])] == ["7", "10"]


def test_a_column_missing_from_a_part_is_null_there(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    _write_text(channel / "a.csv", "user_id,item_id\nu1,i1\n")
    _write_text(channel / "b.csv", "user_id,item_id,timestamp\nu2,i2,5\n")

    rows = _scan_rows(channel, ["user_id", "timestamp"])

    assert rows == [{"user_id": "u1", "timestamp": None}, {"user_id": "u2", "timestamp": "5"}]


def test_csv_null_spellings_are_null_in_value_columns_but_ids_stay_text(tmp_path: Path) -> None:
    _write_text(tmp_path / "train" / "a.csv", "user_id,item_id,rating\nNA,i1,NA\n,i2,\nu3,i3,4\n")

    rows = _scan_rows(tmp_path / "train", ["user_id", "rating"])

    assert rows == [
        {"user_id": "NA", "rating": None},
        {"user_id": "", "rating": None},
        {"user_id": "u3", "rating": "4"},
    ]


def test_a_value_after_the_first_csv_block_is_not_a_conversion_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pyarrow's streaming CSV reader fixes a column's type from the first block: "3.5" after a block
    # of integers would fail there. Value columns are read as text, so it cannot.
    monkeypatch.setattr(io_module, "_CSV_BLOCK_BYTES", 64)
    lines = ["user_id,item_id,rating", *(f"u{n},i{n},4" for n in range(40)), "u40,i40,3.5"]
    _write_text(tmp_path / "train" / "a.csv", "\n".join(lines) + "\n")

    rows = _scan_rows(tmp_path / "train", ["user_id", "rating"], batch_rows=16)

    assert len(rows) == 41
    assert rows[-1] == {"user_id": "u40", "rating": "3.5"}


def test_open_channel_gives_each_part_its_own_types(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    write_table(
        pd.DataFrame({"user_id": ["u"], "rating": [4.0], "timestamp": [1_700_000_000]}), channel / "a.parquet"
    )
    _write_text(channel / "b.csv", "user_id,rating,timestamp\nv,5,1700000001\n")
    _write_text(
        channel / "c.jsonl", '{"user_id": "w", "rating": "good", "timestamp": "2023-11-14T22:13:22Z"}\n'
    )

    scan = open_channel(channel, channel="train", string_columns=["user_id"])
    rows = _scan_rows(channel, ["user_id", "rating", "timestamp"])

    # The types read_table would give: double, text and a timestamp do not promote.
    assert scan.schema.field("rating").type == pa.string()
    assert scan.schema.field("timestamp").type == pa.string()
    assert [row["rating"] for row in rows] == [4.0, "5", "good"]
    assert [row["timestamp"] for row in rows] == [
        1_700_000_000,
        "1700000001",
        datetime.datetime(2023, 11, 14, 22, 13, 22),  # pyarrow's JSON reader infers timestamp[s]
    ]


def test_open_channel_raises_a_nested_conflict_only_for_a_column_it_reads(tmp_path: Path) -> None:
    channel = tmp_path / "train"
    first = _write_text(channel / "a.jsonl", '{"user_id": "u", "item_id": "i", "tags": ["x", "y"]}\n')
    second = _write_text(channel / "b.csv", "user_id,item_id,tags\nv,j,x|y\n")

    scan = open_channel(channel, channel="train", string_columns=["user_id", "item_id"])

    assert [row["user_id"] for row in _scan_rows(channel, ["user_id", "item_id"])] == ["u", "v"]
    with pytest.raises(DataError, match=re.escape(f"files {first} and {second} disagree on column 'tags'")):
        list(scan.batches(["user_id", "tags"]))


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({}, "does not exist"),
        ({"_SUCCESS": ""}, "no data file"),
        ({"a.csv": "user_id\n1\n", "notes.txt": "x"}, "unsupported extension"),
        (
            {"a.csv": "user_id,item_id\n", "b.csv": "user_id,item_id\n"},
            r"no rows \(2 files read, all empty\)",
        ),
        ({"a.csv": "user_id\nu\n", "b.parquet": "not parquet"}, r"cannot read .*b\.parquet as Parquet: "),
    ],
)
def test_open_channel_gives_read_tables_errors(tmp_path: Path, layout: dict[str, str], expected: str) -> None:
    channel = tmp_path / "train"
    if layout:
        for name, text in layout.items():
            _write_text(channel / name, text)
    with pytest.raises(DataError, match=expected):
        open_channel(channel, channel="train")
    if layout:
        with pytest.raises(DataError, match=expected):
            read_table(channel, channel="train")


def test_a_parse_error_deep_in_a_file_names_it_while_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io_module, "_CSV_BLOCK_BYTES", 64)
    lines = ["user_id,item_id", *(f"u{n},i{n}" for n in range(40)), "u40,i40,extra"]
    _write_text(tmp_path / "train" / "a.csv", "user_id,item_id\nu,i\n")
    bad = _write_text(tmp_path / "train" / "b.csv", "\n".join(lines) + "\n")
    scan = open_channel(tmp_path / "train", channel="train", string_columns=["user_id"])

    with pytest.raises(DataError, match=rf"channel 'train': cannot read {bad} as CSV: "):
        list(scan.batches(["user_id"]))


def test_batches_are_at_most_batch_rows(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": [f"u{n}" for n in range(100)], "item_id": ["i"] * 100})
    write_table(frame, tmp_path / "train" / "a.parquet")
    write_table(frame, tmp_path / "train" / "b.jsonl")
    scan = open_channel(tmp_path / "train", channel="train", string_columns=["user_id"])

    sizes = [batch.num_rows for batch in scan.batches(["user_id"], batch_rows=30)]

    assert sum(sizes) == 200 and max(sizes) <= 30


@pytest.mark.parametrize("reader", [open_channel, read_table], ids=["open_channel", "read_table"])
def test_a_channel_whose_only_file_is_a_header_names_that_file(tmp_path: Path, reader: Any) -> None:
    header_only = _write_text(tmp_path / "train" / "part-0000.csv", "user_id,item_id,timestamp\n")

    with pytest.raises(DataError, match=re.escape(f"file {header_only} holds no rows (only a header)")):
        reader(tmp_path / "train", channel="train")


@pytest.mark.parametrize("reader", [open_channel, read_table], ids=["open_channel", "read_table"])
def test_a_channel_of_empty_files_names_the_first_of_them(tmp_path: Path, reader: Any) -> None:
    paths = [_write_text(tmp_path / "train" / f"part-{n}.csv", "user_id,item_id\n") for n in range(5)]

    with pytest.raises(DataError) as info:
        reader(tmp_path / "train", channel="train")

    assert "(5 files read, all empty)" in info.value.message
    assert f"{paths[0]}, {paths[1]}, {paths[2]} and 2 more" in info.value.message


# open_path: one data file, or a directory (the command line's --test), streamed like a channel.


@pytest.mark.parametrize("name", ["test.parquet", "test.csv.gz", "test.jsonl"])
def test_open_path_streams_a_single_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_table(FRAME, path)

    scan = open_path(path, channel="test", string_columns=["user_id", "item_id"])
    rows = [row for batch in scan.batches(["user_id", "item_id"]) for row in batch.to_pylist()]

    assert [file.path for file in scan.files] == [path]
    assert rows == [
        {"user_id": u, "item_id": i} for u, i in zip(FRAME["user_id"], FRAME["item_id"], strict=True)
    ]


def test_open_path_opens_a_directory_as_a_channel(tmp_path: Path) -> None:
    write_table(FRAME.iloc[:1], tmp_path / "test" / "a.parquet")
    write_table(FRAME.iloc[1:], tmp_path / "test" / "b.csv")

    scan = open_path(tmp_path / "test", channel="test", string_columns=["user_id"])

    assert [file.path.name for file in scan.files] == ["a.parquet", "b.csv"]
    assert [row["user_id"] for batch in scan.batches(["user_id"]) for row in batch.to_pylist()] == [
        "007",
        "042",
        "100",
    ]


@pytest.mark.parametrize("reader", [open_path, read_path], ids=["open_path", "read_path"])
def test_a_single_file_that_is_empty_or_of_another_format_is_named(tmp_path: Path, reader: Any) -> None:
    header_only = _write_text(tmp_path / "test.csv", "user_id,item_id\n")
    other = _write_text(tmp_path / "test.xlsx", "not a table")

    with pytest.raises(DataError, match=re.escape(f"test: file {header_only} holds no rows.")):
        reader(header_only, channel="test")
    with pytest.raises(DataError, match=re.escape(f"test: file {other} has an unsupported extension")):
        reader(other, channel="test")
    with pytest.raises(
        DataError, match=re.escape(f"channel 'test': directory {tmp_path / 'nope'} does not exist")
    ):
        reader(tmp_path / "nope", channel="test")
