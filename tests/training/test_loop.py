"""The training loop: seeded determinism on CPU, early stopping, the metric line's format."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from recsys.data.device import DeviceInteractions, HeldOut
from recsys.data.interactions import IndexedInteractions, split_last_out
from recsys.models.ncf import NCF, ModelConfig
from recsys.training import loop
from recsys.training.loop import EpochRecord, FitSettings, fit, metric_line

CPU = torch.device("cpu")


def _data(num_users: int = 60, num_items: int = 30) -> IndexedInteractions:
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(num_users), 8)
    items = (users * 3 + rng.integers(0, 6, size=users.shape[0])) % num_items
    return IndexedInteractions.from_pairs(users, items, num_users, num_items)


def _settings(**overrides: object) -> FitSettings:
    values: dict[str, object] = {
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "loss": "sampled_softmax",
        "num_negatives": 8,
        "user_id_dropout": 0.2,
        "patience": 2,
        "amp": True,
        "seed": 7,
        "eval_k": 10,
    }
    values.update(overrides)
    return FitSettings(**values)  # type: ignore[arg-type]


def _model(data: IndexedInteractions, seed: int = 0) -> NCF:
    torch.manual_seed(seed)
    config = ModelConfig(
        kind="neumf",
        num_users=data.num_users,
        num_items=data.num_items,
        embedding_dim=8,
        mlp_layers=(16, 8),
        history_length=5,
    )
    return NCF(config)


def test_same_seed_gives_identical_weights_on_cpu() -> None:
    data = _data()
    states = []
    for _ in range(2):
        model = _model(data)
        fit(model, DeviceInteractions.from_indexed(data, CPU), None, _settings(), device=CPU)
        states.append(model.state_dict())
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name


def test_other_seed_gives_other_weights() -> None:
    data = _data()
    a, b = _model(data), _model(data)
    fit(a, DeviceInteractions.from_indexed(data, CPU), None, _settings(seed=1), device=CPU)
    fit(b, DeviceInteractions.from_indexed(data, CPU), None, _settings(seed=2), device=CPU)
    assert not torch.equal(a.item_bias.weight, b.item_bias.weight)


def test_early_stopping_keeps_the_best_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.05, 0.9])

    class FakeReport:
        def __init__(self, users: torch.Tensor) -> None:
            value = next(scores)
            # Per-user values whose mean is the scripted score.
            self.values = {name: torch.full((users.shape[0],), value) for name in ("ndcg@10", "hr@10")}

    monkeypatch.setattr(loop, "full_ranking", lambda *args, users, **kwargs: FakeReport(users))
    train, held = split_last_out(_data())
    model = _model(train)
    snapshots: list[torch.Tensor] = []
    result = fit(
        model,
        DeviceInteractions.from_indexed(train, CPU),
        HeldOut(torch.from_numpy(held.indptr), torch.from_numpy(held.items)),
        _settings(epochs=6, patience=2),
        device=CPU,
        on_epoch=lambda record: snapshots.append(model.item_bias.weight.detach().clone()),
    )
    # Epoch 2 scored best; epochs 3 and 4 did not improve on it, so patience 2 stops after epoch 4.
    assert result.best_epoch == 2
    assert result.stopped_early
    assert [r.epoch for r in result.records] == [1, 2, 3, 4]
    assert torch.equal(model.item_bias.weight, snapshots[1])


def test_metric_line_is_regex_friendly() -> None:
    record = EpochRecord(3, 0.41211, 1.234, 5000.4, {"ndcg@10": 0.08123, "hr@10": 0.15444})
    line = metric_line("epoch", record, 10)
    assert line == (
        "epoch=3 train_loss=0.4121 val_ndcg@10=0.0812 val_hr@10=0.1544 epoch_seconds=1.23 "
        "samples_per_second=5000"
    )
    assert re.search(r"val_ndcg@10=([0-9.]+)", line)


def test_metric_line_with_another_k_reports_both() -> None:
    record = EpochRecord(1, 1.0, 1.0, 1.0, {"ndcg@5": 0.2, "hr@5": 0.3, "ndcg@10": 0.25, "hr@10": 0.4})
    line = metric_line("epoch", record, 5)
    assert "val_ndcg@5=0.2000" in line and "val_ndcg@10=0.2500" in line


class _FakeStdout:
    def __init__(self, tty: bool) -> None:
        self.tty, self.written = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.written += text
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tty: bool) -> None:
    fake = _FakeStdout(tty)
    monkeypatch.setattr(loop.sys, "stdout", fake)
    progress = loop._Progress(10, "epoch 1")
    for step in range(1, 11):
        progress.update(step)
    progress.close()
    assert ("10/10" in fake.written) is tty
    assert (fake.written == "") is not tty


def test_large_tables_train_with_sparse_gradients_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "SPARSE_MIN_ROWS", 30)  # the 60-user and 30-item tables count as large
    data = _data()
    model = _model(data)
    optimizers = loop.build_optimizers(model, _settings(), CPU)
    assert [type(o).__name__ for o in optimizers] == ["SparseAdam", "AdamW"]
    sparse_tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse]
    assert sparse_tables and all(m.num_embeddings >= 30 for m in sparse_tables)
    # Every parameter is in exactly one optimizer.
    owned = [id(p) for o in optimizers for group in o.param_groups for p in group["params"]]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())

    result = fit(model, DeviceInteractions.from_indexed(data, CPU), None, _settings(epochs=4), device=CPU)
    losses = [r.train_loss for r in result.records]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_weight_decay_and_small_tables_keep_dense_adamw(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data()
    assert [type(o).__name__ for o in loop.build_optimizers(_model(data), _settings(), CPU)] == ["AdamW"]
    monkeypatch.setattr(loop, "SPARSE_MIN_ROWS", 30)
    decayed = loop.build_optimizers(_model(data), _settings(weight_decay=0.01), CPU)
    assert [type(o).__name__ for o in decayed] == ["AdamW"]
