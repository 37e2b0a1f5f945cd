"""The same training code on CUDA: AMP, device-side sampling, and CPU/GPU agreement.

Skipped, with the reason, where no CUDA device is visible (CI and laptops); run on a GPU host.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.device import DeviceInteractions, HeldOut, user_histories
from recsys.data.interactions import IndexedInteractions, split_last_out
from recsys.evaluation.protocols import full_ranking
from recsys.models.ncf import NCF, ModelConfig
from recsys.training.loop import FitSettings, fit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: GPU tests skipped"),
]


def _interactions(num_users: int = 300, num_items: int = 120, per_user: int = 15) -> IndexedInteractions:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(num_users), per_user)
    # Each user draws from a band of items, so there is something to learn.
    items = (users * 7 + rng.integers(0, 20, size=users.shape[0])) % num_items
    return IndexedInteractions.from_pairs(users, items, num_users, num_items)


def _settings(loss: str, amp: bool) -> FitSettings:
    return FitSettings(
        epochs=3,
        batch_size=256,
        learning_rate=0.01,
        weight_decay=0.0,
        loss=loss,  # type: ignore[arg-type]
        num_negatives=16,
        user_id_dropout=0.1,
        patience=5,
        amp=amp,
        seed=0,
        eval_k=10,
    )


@pytest.mark.parametrize("kind,loss", [("gmf", "softmax"), ("neumf", "sampled_softmax"), ("mlp", "bce")])
def test_trains_on_cuda_with_amp(kind: str, loss: str) -> None:
    device = torch.device("cuda")
    data = _interactions()
    config = ModelConfig(
        kind=kind,
        num_users=data.num_users,
        num_items=data.num_items,  # type: ignore[arg-type]
        embedding_dim=16,
        mlp_layers=(32, 16),
        history_length=10,
    )
    torch.manual_seed(0)
    model = NCF(config).to(device)
    train = DeviceInteractions.from_indexed(data, device)
    result = fit(model, train, None, _settings(loss, amp=True), device=device)
    losses = [r.train_loss for r in result.records]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_cpu_and_cuda_score_the_same() -> None:
    data = _interactions()
    config = ModelConfig(
        kind="neumf",
        num_users=data.num_users,
        num_items=data.num_items,
        embedding_dim=16,
        mlp_layers=(32, 16),
        history_length=10,
    )
    torch.manual_seed(0)
    cpu_model = NCF(config).eval()
    gpu_model = NCF(config)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model = gpu_model.cuda().eval()
    logits = []
    for model, device in ((cpu_model, torch.device("cpu")), (gpu_model, torch.device("cuda"))):
        train = DeviceInteractions.from_indexed(data, device)
        users = torch.arange(data.num_users, device=device)
        history, mask = user_histories(train, users, 10)
        with torch.no_grad():
            state = model.encode_users(users, history, mask)
            logits.append(model.score_all(state, model.all_items(device)).cpu())
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)


def test_full_ranking_runs_on_cuda() -> None:
    device = torch.device("cuda")
    train_data, held_data = split_last_out(_interactions())
    config = ModelConfig(
        kind="gmf",
        num_users=train_data.num_users,
        num_items=train_data.num_items,
        embedding_dim=16,
        history_length=10,
    )
    model = NCF(config).to(device)
    train = DeviceInteractions.from_indexed(train_data, device)
    held = HeldOut(
        torch.from_numpy(held_data.indptr).to(device), torch.from_numpy(held_data.items).to(device)
    )
    fit(model, train, held, _settings("softmax", amp=True), device=device)
    summary = full_ranking(model, train, held, (10,), history_length=10).summary()
    assert summary["num_users"] == train_data.num_users
    # Users draw from a band of 20 items: a trained model must beat random ranking (10/120) clearly.
    assert summary["hr@10"] > 0.2
