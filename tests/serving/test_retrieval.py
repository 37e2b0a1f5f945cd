"""Serving through the item index: when it is used, when it falls back to exact ranking, and that
its answers keep every exclusion and filter (``test_engine.py`` runs its whole suite through the
index too)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.artifact import ITEM_INDEX, MANIFEST
from recsys.data.synthetic import SyntheticData
from recsys.errors import UserError
from recsys.models.retrieval import ItemIndex
from recsys.sagemaker.contract import RETRIEVAL_ENV, read_hosting_config
from recsys.serving.engine import Query, Recommender
from tests.serving.trained_model import trained_tree


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data, {"retrieval": "index"}) / "model"


@pytest.fixture()
def indexed(index_dir: Path) -> Recommender:
    return Recommender.load(index_dir)


@pytest.fixture(scope="module")
def exact(index_dir: Path) -> Recommender:
    """The same artifact, its index ignored, as ``RECSYS_RETRIEVAL=exact`` serves it."""
    return Recommender.load(index_dir, exact=True)


class _Calls:
    def __init__(self) -> None:
        self.count = 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return function(*args, **kwargs)

        return counted


def _spy(monkeypatch: pytest.MonkeyPatch, recommender: Recommender) -> tuple[_Calls, _Calls]:
    assert recommender.index is not None
    searches, scans = _Calls(), _Calls()
    monkeypatch.setattr(recommender.index, "search", searches.wrap(recommender.index.search))
    monkeypatch.setattr(recommender.model, "score_all", scans.wrap(recommender.model.score_all))
    return searches, scans


def _users(recommender: Recommender) -> list[str]:
    return list(recommender.artifact.users.ids)


def test_the_job_ships_the_index_and_says_how_good_it_is(index_dir: Path) -> None:
    manifest = json.loads((index_dir / MANIFEST).read_text())
    metrics = json.loads((index_dir / "metrics.json").read_text())
    assert ITEM_INDEX in manifest["files"]
    retrieval = manifest["retrieval"]
    assert retrieval["index_file"] == ITEM_INDEX and not retrieval["refused"]
    assert retrieval["recall@10"] >= retrieval["min_recall"] == 0.95
    assert retrieval["recall_sample_users"] > 0 and retrieval["build_seconds"] >= 0
    assert metrics["retrieval"]["recall@10"] == retrieval["recall@10"]
    assert metrics["retrieval"]["search_breadth"] == retrieval["search_breadth"]


def test_known_users_are_served_from_the_index_without_a_catalogue_scan(
    monkeypatch: pytest.MonkeyPatch, indexed: Recommender, exact: Recommender
) -> None:
    searches, scans = _spy(monkeypatch, indexed)
    queries = [Query(user_id=user, k=5) for user in _users(indexed)]
    through_index = indexed.recommend(queries)
    assert searches.count >= 1 and scans.count == 0
    baseline = exact.recommend(queries)
    # 60 items: the fetch covers the catalogue, so the index finds what exact ranking finds.
    for got, want in zip(through_index, baseline, strict=True):
        assert got.item_ids == want.item_ids
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


class _Returns:
    """An index that answers every search with the same candidates (``-1`` pads)."""

    def __init__(self, real: ItemIndex, candidates: list[int]) -> None:
        self.real = real
        self.candidates = candidates

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        row = (self.candidates + [-1] * n)[:n]
        return np.tile(np.asarray(row, dtype=np.int64), (len(queries), 1))


@pytest.mark.parametrize(
    "candidates",
    [[], [0, 1, 2]],
    ids=["nothing-found", "too-few-found"],
)
def test_rows_the_index_leaves_short_are_ranked_exactly(
    monkeypatch: pytest.MonkeyPatch, indexed: Recommender, exact: Recommender, candidates: list[int]
) -> None:
    assert indexed.index is not None
    monkeypatch.setattr(indexed, "index", _Returns(indexed.index, candidates))
    queries = [Query(user_id=user, k=8) for user in _users(indexed)[:20]]
    for got, want in zip(indexed.recommend(queries), exact.recommend(queries), strict=True):
        assert got.item_ids == want.item_ids and len(got.item_ids) == 8


def test_fetched_seen_and_excluded_items_never_come_back(
    monkeypatch: pytest.MonkeyPatch, indexed: Recommender
) -> None:
    """The index returns the user's seen items first: they are masked, and the rest ranked."""
    assert indexed.index is not None
    user = _users(indexed)[3]
    position = indexed.artifact.users.get(user)
    start, end = indexed.artifact.seen_indptr[position], indexed.artifact.seen_indptr[position + 1]
    seen = [int(i) for i in indexed.artifact.seen_items[start:end]]
    others = [i for i in range(indexed.num_items) if i not in seen]
    monkeypatch.setattr(indexed, "index", _Returns(indexed.index, seen + others))
    excluded = indexed.artifact.items.ids[others[0]]
    (result,) = indexed.recommend([Query(user_id=user, k=5, exclude=(excluded,))])
    ids = indexed.artifact.items.ids
    assert len(result.item_ids) == 5
    assert not {ids[i] for i in seen} & set(result.item_ids)
    assert excluded not in result.item_ids


def test_a_narrow_filter_is_ranked_exactly_and_stays_correct(
    monkeypatch: pytest.MonkeyPatch, indexed: Recommender, exact: Recommender
) -> None:
    """A filter that keeps few items would need a fetch beyond MAX_FETCH: exact ranking, the
    same answer as the exact engine's."""
    genres = sorted(indexed.attributes["genres"].values or {})
    user = _users(indexed)[0]
    query = Query(user_id=user, k=10, filter={"genres": genres[0]})
    allowed = indexed.filter_mask({"genres": genres[0]})
    assert 0 < allowed.sum() < len(allowed)  # a real filter: it keeps some items, not all
    monkeypatch.setattr("recsys.serving.engine.MAX_FETCH", 1)  # every fetch is too large
    searches, scans = _spy(monkeypatch, indexed)
    (got,) = indexed.recommend([query])
    (want,) = exact.recommend([query])
    assert scans.count == 1 and searches.count == 0
    assert got.item_ids == want.item_ids and got.item_ids


class _Fetches:
    """Records each search's fetch size and what it fetched."""

    def __init__(self, index: ItemIndex) -> None:
        self.index = index
        self.sizes: list[int] = []
        self.fetched: list[np.ndarray] = []

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        found = self.index.search(queries, n)
        self.sizes.append(n)
        self.fetched.append(found)
        return found


def _filters(recommender: Recommender) -> list[dict[str, Any]]:
    """A categorical and a numeric filter, each keeping about half the catalogue: narrow enough
    that the filter removes some of what the index fetches, wide enough that the fetch (k times
    OVERFETCH over the share kept) stays well inside the catalogue."""
    genres = sorted(recommender.attributes["genres"].values or {})
    some = next(
        genres[:n]
        for n in range(1, len(genres) + 1)
        if recommender.filter_mask({"genres": genres[:n]}).mean() >= 0.4
    )
    years = recommender.attributes["release_year"].numbers
    assert years is not None
    return [{"genres": some}, {"release_year": {"min": float(np.nanmedian(years))}}]


@pytest.mark.parametrize("which", [0, 1], ids=["categorical", "numeric"])
def test_a_filter_is_applied_to_a_fetch_smaller_than_the_catalogue(
    monkeypatch: pytest.MonkeyPatch, index_dir: Path, indexed: Recommender, exact: Recommender, which: int
) -> None:
    """Through the index, without falling back to exact ranking, a filtered request gets the exact
    engine's filtered answer, where the index fetched only part of the catalogue.

    Equal, not close: the model is a GMF, whose whole logit is what the index holds, and at this
    size the index is exact (60 items, each linked to up to 2 x CONNECTIONS = 64 others at the
    graph's base: a complete graph), as the job's measured recall of 1.0 says; so a fetch holds
    the exact top of the ranking, and the best k items the filter keeps within it are the best k
    it keeps anywhere.
    """
    assert indexed.index is not None and indexed.model.config.kind == "gmf"
    assert json.loads((index_dir / MANIFEST).read_text())["retrieval"]["recall@10"] == 1.0
    spec = _filters(indexed)[which]
    allowed = indexed.filter_mask(spec)
    assert 0 < allowed.sum() < indexed.num_items
    fetches = _Fetches(indexed.index)
    monkeypatch.setattr(indexed, "index", fetches)
    scans = _Calls()
    monkeypatch.setattr(indexed.model, "score_all", scans.wrap(indexed.model.score_all))
    # Seen items stay eligible (exclude_seen false): each row then fetches k * OVERFETCH / share.
    queries = [Query(user_id=user, k=3, exclude_seen=False, filter=spec) for user in _users(indexed)]

    through_index = indexed.recommend(queries)

    assert scans.count == 0  # no row was ranked exactly
    assert fetches.sizes and max(fetches.sizes) < indexed.num_items / 2
    fetched = np.concatenate([found.ravel() for found in fetches.fetched])
    assert not allowed[fetched[fetched >= 0]].all()  # the filter had candidates to remove
    for got, want in zip(through_index, exact.recommend(queries), strict=True):
        assert got.item_ids == want.item_ids and len(got.item_ids) == 3
        assert all(allowed[indexed.artifact.items.get(item)] for item in got.item_ids)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


def test_the_host_can_ask_for_exact_ranking(index_dir: Path, tmp_path: Path) -> None:
    assert Recommender.load(index_dir, exact=True).index is None
    assert read_hosting_config({RETRIEVAL_ENV: "exact"}, cpu_count=2).exact_retrieval
    assert not read_hosting_config({}, cpu_count=2).exact_retrieval
    with pytest.raises(UserError, match=f"{RETRIEVAL_ENV} must be one of auto, exact; got 'fast'"):
        read_hosting_config({RETRIEVAL_ENV: "fast"}, cpu_count=2)
