"""The item index: what it retrieves, the recall the job measures, and when it is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.models.ncf import NCF, ModelConfig, UserState
from recsys.models.retrieval import (
    SEARCH_BREADTHS,
    ItemIndex,
    catalogue_vectors,
    exact_top,
    index_top,
    query_vectors,
    recall,
    tune_index,
)

NUM_ITEMS = 3_000


def _model(kind: str, *, num_items: int = NUM_ITEMS, dim: int = 16, spread: bool = False) -> NCF:
    """A model with item biases that differ (a trained model's do; the initial zeros would hide
    the bias column); ``spread``: every weight drawn from N(0, 1), vectors a graph finds hard."""
    torch.manual_seed(0)
    config = ModelConfig(
        kind=kind, num_users=200, num_items=num_items, embedding_dim=dim, mlp_layers=(32, 16),
        history_length=5, use_history=not spread,
    )  # type: ignore[arg-type]  # fmt: skip
    model = NCF(config).eval()
    with torch.no_grad():
        model.item_bias.weight.normal_(0, 0.5)
        if spread:
            for parameter in model.parameters():
                parameter.normal_(0, 1)
    return model


def _users(model: NCF, count: int = 300) -> UserState:
    users = torch.arange(count) % model.config.num_users
    history = torch.randint(0, model.config.num_items, (count, model.config.history_length))
    with torch.inference_mode():
        return model.encode_users(users, history, torch.ones_like(history, dtype=torch.bool))


def test_the_index_holds_gmf_vectors_and_bias_so_inner_product_is_the_gmf_logit() -> None:
    model = _model("gmf")
    with torch.inference_mode():
        items = model.all_items(torch.device("cpu"))
        users = _users(model, 8)
        logits = model.score_all(users, items)
    product = query_vectors(users) @ catalogue_vectors(items).T
    np.testing.assert_allclose(product, logits.numpy(), rtol=1e-4, atol=1e-4)


def test_a_gmf_index_is_kept_at_the_narrowest_breadth_that_reaches_the_recall() -> None:
    model = _model("gmf", num_items=20_000, dim=32, spread=True)
    users = _users(model)
    with torch.inference_mode():
        items = model.all_items(torch.device("cpu"))
        index, report = tune_index(model, items, users, min_recall=0.99)
    assert index is not None and not report.refused
    assert report.recall_at_10 >= 0.99
    assert report.search_breadth == index.search_breadth
    # The narrower breadths were tried and fell short: the kept one is the first to reach it.
    tried = list(report.recall_by_breadth)
    assert len(tried) >= 2 and tried == [str(b) for b in SEARCH_BREADTHS[: len(tried)]]
    assert tried[-1] == str(report.search_breadth)
    assert all(report.recall_by_breadth[b] < 0.99 for b in tried[:-1])
    assert report.sample_users == 300 and report.items == 20_000 and report.index_bytes > 0
    # The recall the report states is the recall of the kept index, measured again here.
    with torch.inference_mode():
        found = index_top(model, index, users, items, 10)
        truth = exact_top(model, users, items, 10)
    assert recall(found, truth) == pytest.approx(report.recall_at_10)


def test_an_index_whose_gmf_share_carries_nothing_is_refused() -> None:
    """NeuMF whose GMF tower and biases are zero: the graph ranks every item alike, the MLP
    decides, and recall stays near (fetched / catalogue), far under any sensible target."""
    model = _model("neumf")
    with torch.no_grad():
        assert model.gmf_out is not None
        model.gmf_out.zero_()
        model.item_bias.weight.zero_()
    users = _users(model)
    with torch.inference_mode():
        index, report = tune_index(model, model.all_items(torch.device("cpu")), users, min_recall=0.95)
    assert index is None and report.refused and report.search_breadth is None
    assert list(report.recall_by_breadth) == [str(b) for b in SEARCH_BREADTHS]  # every breadth tried
    assert report.recall_at_10 < 0.5
    assert report.to_json()["refused"] is True


def test_neumf_reranks_with_the_mlp_tower_which_the_index_does_not_see() -> None:
    model = _model("neumf")
    users = _users(model, 16)
    with torch.inference_mode():
        items = model.all_items(torch.device("cpu"))
        index = ItemIndex.build(catalogue_vectors(items)).with_breadth(512)
        found = index_top(model, index, users, items, 10)
        full = model.score_all(users, items)
    gmf_only = torch.from_numpy(query_vectors(users) @ catalogue_vectors(items).T)
    # The returned order is the whole model's, not the graph's inner product.
    chosen = torch.gather(full, 1, found)
    assert torch.all(chosen[:, :-1] >= chosen[:, 1:])
    assert not torch.equal(torch.topk(gmf_only, 10).indices, torch.topk(full, 10).indices)


def test_an_index_file_round_trips(tmp_path: Path) -> None:
    model = _model("gmf")
    with torch.inference_mode():
        items = model.all_items(torch.device("cpu"))
    index = ItemIndex.build(catalogue_vectors(items)).with_breadth(64)
    index.save(tmp_path / "item_index.faiss")
    loaded = ItemIndex.load(tmp_path / "item_index.faiss", 64)
    assert (loaded.num_items, loaded.dim, loaded.search_breadth) == (NUM_ITEMS, 17, 64)
    queries = query_vectors(_users(model, 4))
    np.testing.assert_array_equal(loaded.search(queries, 20), index.search(queries, 20))
