"""Id vocabularies: deterministic indices, unknown ids, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recsys.data.vocab import Vocabulary


def test_build_sorts_and_deduplicates_whatever_the_input_order() -> None:
    forward = Vocabulary.build(["b", "a", "c", "a", "b"])
    backward = Vocabulary.build(["c", "b", "a"])
    assert forward.ids == ("a", "b", "c")
    assert forward == backward
    assert len(forward) == 3
    assert [forward.index(i) for i in ("a", "b", "c")] == [0, 1, 2]


def test_lookup_maps_unknown_ids_to_minus_one() -> None:
    vocab = Vocabulary.build(["u10", "u2", "u1"])  # string order: u1 < u10 < u2
    indices = vocab.lookup(["u2", "nobody", "u1", "u10", ""])
    assert indices.dtype == np.int64
    assert indices.tolist() == [2, -1, 0, 1, -1]
    assert vocab.lookup(["x"], default=7).tolist() == [7]
    assert vocab.get("nobody") == -1
    assert "u10" in vocab
    assert "nobody" not in vocab
    with pytest.raises(KeyError):
        vocab.index("nobody")


def test_lookup_of_nothing_is_empty() -> None:
    assert Vocabulary.build(["a"]).lookup([]).shape == (0,)


def test_save_load_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["β", "a", "007", "a b"])
    path = tmp_path / "users.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.ids == vocab.ids
    assert loaded.lookup(["a b", "β"]).tolist() == vocab.lookup(["a b", "β"]).tolist()


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(("a", "b", "a"))


def test_load_rejects_a_file_that_is_not_a_list_of_strings(tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    path.write_text('["a", 2]', encoding="utf-8")
    with pytest.raises(ValueError, match="string ids"):
        Vocabulary.load(path)
    path.write_text('["a", "a"]', encoding="utf-8")
    with pytest.raises(ValueError, match="unique"):
        Vocabulary.load(path)


# Built from Arrow: the same vocabulary as ``build``, without a Python string per row.

IDS = ["b", "β", "a", "007", "a b", "B", "ä", "a", "b", "", "z\u0301"]


def test_from_arrow_equals_build() -> None:
    arrow = Vocabulary.from_arrow(pa.array([*IDS, None]))
    built = Vocabulary.build(IDS)

    assert arrow == built
    assert arrow.ids == built.ids  # Arrow's UTF-8 byte order is Python's code point order
    assert arrow.lookup(["β", "007"]).tolist() == built.lookup(["β", "007"]).tolist()


def test_from_arrow_accepts_chunked_and_dictionary_arrays() -> None:
    chunked = pa.chunked_array([pa.array(["c", "a"]), pa.array(["a", "b"])])
    encoded = pa.array(["c", "a", "c", "b"]).dictionary_encode()

    assert Vocabulary.from_arrow(chunked).ids == ("a", "b", "c")
    assert Vocabulary.from_arrow(encoded).ids == ("a", "b", "c")


def test_lookup_array_is_int32_with_minus_one_for_unknown_and_null() -> None:
    vocab = Vocabulary.build(["u1", "u10", "u2"])
    found = vocab.lookup_array(pa.array(["u2", "nobody", None, "u1"]))

    assert found.dtype == np.int32
    assert found.tolist() == [2, -1, -1, 0]
    assert vocab.lookup_array(pa.chunked_array([], pa.string())).tolist() == []


def test_save_load_round_trip_of_an_arrow_vocabulary(tmp_path: Path) -> None:
    vocab = Vocabulary.from_arrow(pa.array(["x", "β", "a"]))
    vocab.save(tmp_path / "items.json")

    assert Vocabulary.load(tmp_path / "items.json").ids == ("a", "x", "β")
    assert len(vocab) == 3 and "β" in vocab and vocab.index("x") == 1
