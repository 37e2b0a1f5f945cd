"""Id vocabularies: deterministic indices, unknown ids, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
