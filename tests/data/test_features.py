"""Attribute encoding: kind detection and declaration, missing values, standardisation, storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys.data.features import (
    FeatureArrays,
    FeatureDeclaration,
    FeatureEncoding,
    encode_attributes,
    feature_cardinalities,
    label_columns,
    load_encoding,
    multi_hot,
    save_encoding,
)
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError

ITEMS = Vocabulary.build(["i1", "i2", "i3", "i4"])


def _encode(
    columns: dict[str, Any], declaration: FeatureDeclaration | None = None, vocabulary: Vocabulary = ITEMS
) -> tuple[FeatureEncoding, FeatureArrays]:
    return encode_attributes(
        pa.table(columns),
        id_column="item_id",
        vocabulary=vocabulary,
        declaration=declaration or FeatureDeclaration(),
        channel="items",
    )


# Rows out of vocabulary order, one unknown id ("zz") and one known id absent (i4).
TABLE: dict[str, Any] = {
    "item_id": ["i3", "i1", "i2", "zz"],
    "genre": ["A", "B", None, "A"],
    "tags": ["x|y", "y", None, "z"],
    "price": [1.0, 3.0, None, 100.0],
}


def test_detects_categorical_multi_valued_and_numeric() -> None:
    encoding, arrays = _encode(TABLE)
    assert [(c.name, c.values, c.multi_valued, c.max_values) for c in encoding.categorical] == [
        ("genre", ("A", "B"), False, 1),
        ("tags", ("x", "y"), True, 2),  # "z" belongs only to the unknown id
    ]
    assert [n.name for n in encoding.numeric] == ["price"]
    # Row i is vocabulary index i: i1, i2, i3, i4. Index 0 means missing; values[k-1] has index k.
    genre, tags = arrays.categorical
    assert genre.tolist() == [[2], [0], [1], [0]]
    assert tags.tolist() == [[2, 0], [0, 0], [1, 2], [0, 0]]
    assert genre.dtype == np.int64


def test_numeric_columns_are_standardised_over_known_rows_with_raw_values_kept() -> None:
    encoding, arrays = _encode(TABLE)
    (price,) = encoding.numeric
    # Known rows: i3 = 1.0, i1 = 3.0 (i2 missing, zz unknown): mean 2, population std 1.
    assert (price.mean, price.std) == (2.0, 1.0)
    assert arrays.numeric.dtype == np.float32
    assert arrays.numeric[:, 0].tolist() == [1.0, 0.0, -1.0, 0.0]
    assert arrays.numeric_raw.dtype == np.float64
    raw = arrays.numeric_raw[:, 0]
    assert raw[0] == 3.0 and raw[2] == 1.0
    assert np.isnan(raw[1]) and np.isnan(raw[3])


def test_a_constant_numeric_column_keeps_unit_std() -> None:
    encoding, arrays = _encode({"item_id": ["i1", "i2"], "year": [1999, 1999]})
    assert encoding.numeric[0].std == 1.0
    assert arrays.numeric[:, 0].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_entities_absent_from_the_table_get_zeros() -> None:
    _, arrays = _encode(TABLE)
    i4 = 3
    assert all(array[i4].sum() == 0 for array in arrays.categorical)
    assert arrays.numeric[i4].tolist() == [0.0]


def test_a_high_cardinality_string_column_is_ignored_as_id_like() -> None:
    ids = [f"i{n:02d}" for n in range(30)]
    columns = {
        "item_id": ids,
        "title": [f"Title number {n}" for n in range(30)],  # 30 distinct of 30: free text
        "genre": ["A", "B", "C"] * 10,
    }
    encoding, _ = _encode(columns, vocabulary=Vocabulary.build(ids))
    assert [c.name for c in encoding.categorical] == ["genre"]


def test_a_bool_column_is_categorical() -> None:
    encoding, arrays = _encode({"item_id": ["i1", "i2"], "adult": [True, False]})
    assert encoding.categorical[0].values == ("False", "True")
    assert arrays.categorical[0][:2, 0].tolist() == [2, 1]


def test_declared_kinds_override_detection_and_restrict_to_declared_columns() -> None:
    columns = {
        "item_id": ["i1", "i2", "i3"],
        "year": [1999, 2001, 1999],  # numeric by detection, declared categorical
        "code": ["1", "2", "10"],  # categorical by detection, declared numeric
        "genre": ["A", "B", "A"],  # would be detected; not declared, so unused
        "tags": ["a;b", "b", "c"],
    }
    encoding, arrays = _encode(
        columns,
        FeatureDeclaration(categorical=("year",), numeric=("code",), multi_valued=("tags",), separator=";"),
    )
    assert [c.name for c in encoding.categorical] == ["year", "tags"]
    assert encoding.categorical[0].values == ("1999", "2001")
    assert encoding.categorical[1].values == ("a", "b", "c")
    assert encoding.categorical[1].multi_valued
    assert [n.name for n in encoding.numeric] == ["code"]
    assert arrays.numeric_raw[:3, 0].tolist() == [1.0, 2.0, 10.0]
    assert encoding.separator == ";"


def test_ignored_columns_are_skipped() -> None:
    encoding, _ = _encode(TABLE, FeatureDeclaration(ignore=("tags", "price")))
    assert [c.name for c in encoding.categorical] == ["genre"]
    assert encoding.numeric == ()


def test_an_unknown_declared_column_is_an_error() -> None:
    with pytest.raises(DataError, match="'colour' was not found") as info:
        _encode(TABLE, FeatureDeclaration(categorical=("genre", "colour")))
    assert "genre" in str(info.value)  # the columns present


def test_a_declared_numeric_column_with_text_is_an_error() -> None:
    with pytest.raises(DataError, match="'cheap'"):
        _encode({"item_id": ["i1", "i2"], "price": ["1.5", "cheap"]}, FeatureDeclaration(numeric=("price",)))


def test_duplicate_ids_are_an_error() -> None:
    with pytest.raises(DataError, match="'i1' appears in more than one row"):
        _encode({"item_id": ["i1", "i2", "i1"], "genre": ["A", "B", "C"]})


def test_a_missing_id_column_is_an_error() -> None:
    with pytest.raises(DataError, match="id column 'item_id' was not found"):
        _encode({"sku": ["i1"], "genre": ["A"]})


def test_a_table_sharing_no_id_with_the_vocabulary_is_an_error() -> None:
    with pytest.raises(DataError, match="none of its ids"):
        _encode({"item_id": ["x", "y"], "genre": ["A", "B"]})


def test_encoding_json_round_trip(tmp_path: Path) -> None:
    encoding, _ = _encode(TABLE)
    path = tmp_path / "item_features.json"
    save_encoding(encoding, path)
    assert load_encoding(path) == encoding
    assert FeatureEncoding.from_json(json.loads(json.dumps(encoding.to_json()))) == encoding
    assert feature_cardinalities(encoding) == ((3, 1), (3, 2))


def test_arrays_save_load_round_trip(tmp_path: Path) -> None:
    encoding, arrays = _encode(TABLE)
    arrays.save(tmp_path, "item")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "item_categorical_0.npy",
        "item_categorical_1.npy",
        "item_numeric.npy",
        "item_numeric_raw.npy",
    ]
    loaded = FeatureArrays.load(tmp_path, "item", encoding)
    assert len(loaded.categorical) == 2
    for before, after in zip(arrays.categorical, loaded.categorical, strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(arrays.numeric, loaded.numeric)
    np.testing.assert_array_equal(arrays.numeric_raw, loaded.numeric_raw)  # NaN compare equal here


def test_multi_hot_marks_every_value_of_every_column() -> None:
    encoding, arrays = _encode(TABLE)
    matrix = multi_hot(encoding, arrays)
    assert matrix is not None
    # Columns: genre A, genre B, tags x, tags y.
    assert matrix.tolist() == [
        [0, 1, 0, 1],  # i1: B, y
        [0, 0, 0, 0],  # i2: all missing
        [1, 0, 1, 1],  # i3: A, x|y
        [0, 0, 0, 0],  # i4: absent
    ]


def test_multi_hot_without_categorical_columns_is_none() -> None:
    encoding, arrays = _encode({"item_id": ["i1"], "price": [1.0]})
    assert multi_hot(encoding, arrays) is None


def test_text_columns_encode_like_the_python_rules() -> None:
    # Arrow kernels encode text columns; the per-value Python rules are the reference.
    from recsys.data.features import _encode_objects, _encode_text

    many = "|".join(f"v{n:02d}" for n in range(40))  # more than MAX_MULTI_VALUES
    values = [" a | b||", None, "b|a", "", many, "ä|a", "  "]
    rows = np.array([4, 0, 2, 5, 1, 3, 6])
    for multi in (True, False):
        expected = _encode_objects(pd.Series(values, dtype=object), rows, 8, multi=multi, separator="|")
        vocabulary, codes = _encode_text(pa.array(values), rows, 8, multi=multi, separator="|")
        assert vocabulary == expected[0]
        assert codes.tolist() == expected[1].tolist()


def test_text_kind_detection_matches_pandas() -> None:
    from recsys.data.features import _detect_kind, _detect_text_kind

    columns = [
        ["a", "b", None],
        ["a|b", "c", "d"],
        [f"t{n}" for n in range(30)],  # id-like: more distinct values than half the rows
        [None, None],
        ["x"] * 30,
    ]
    for column in columns:
        assert _detect_text_kind(pa.array(column, pa.string()), "|") == _detect_kind(
            pd.Series(column, dtype=object), "|"
        )


def test_label_columns_keep_unused_text_aligned_to_the_vocabulary() -> None:
    table = pa.table(
        {
            "item_id": ["i3", "i1", "zz"],
            "title": ["Third", "First " + "x" * 200, "Ghost"],
            "genre": ["A", "B", "A"],  # used by the model: not a label
            "price": [1.0, 2.0, 3.0],  # not text
        }
    )

    labels = label_columns(table, id_column="item_id", vocabulary=ITEMS, used=["genre"])

    assert labels.column_names == ["title"]
    titles = labels.column("title").to_pylist()
    assert titles[0].startswith("First ") and len(titles[0]) == 120  # cut for display
    assert titles[1:] == [None, "Third", None]  # i2 and i4 have no row; "zz" is no item
