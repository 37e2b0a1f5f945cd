"""The training loop: epochs of device-side batches, validation, early stopping.

Readable top to bottom: one epoch is shuffle -> batches -> loss -> step; the only host syncs
are marked (once per epoch for the loss, and validation).
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from recsys.evaluation.protocols import HeldOut, full_ranking
from recsys.models.ncf import NCF
from recsys.training.batches import DeviceInteractions, iterate_batches
from recsys.training.losses import LossKind, compute_loss

logger = logging.getLogger(__name__)

EARLY_STOPPING_METRIC = "ndcg@10"


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    loss: LossKind
    num_negatives: int
    history_length: int
    user_id_dropout: float
    patience: int
    amp: bool
    seed: int
    eval_k: int


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    seconds: float
    samples_per_second: float
    validation: dict[str, float] = field(default_factory=dict)


@dataclass
class FitResult:
    best_epoch: int
    best_state: dict[str, Tensor]
    records: list[EpochRecord]
    stopped_early: bool


def metric_line(prefix: str, record: EpochRecord, eval_k: int) -> str:
    """The fixed, regex-friendly per-epoch log line (documented in the README)."""
    parts = [f"{prefix}={record.epoch}", f"train_loss={record.train_loss:.4f}"]
    for name in (f"ndcg@{eval_k}", f"hr@{eval_k}", "ndcg@10", "hr@10"):
        if name in record.validation and f"val_{name}" not in " ".join(parts):
            parts.append(f"val_{name}={record.validation[name]:.4f}")
    parts.append(f"epoch_seconds={record.seconds:.2f}")
    parts.append(f"samples_per_second={record.samples_per_second:.0f}")
    return " ".join(parts)


class _Progress:
    """A progress bar on stdout, only when stdout is a terminal (never in job logs)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label = total, label
        self.enabled = sys.stdout.isatty() and total > 1

    def update(self, done: int) -> None:
        if self.enabled and (done % max(1, self.total // 50) == 0 or done == self.total):
            filled = int(30 * done / self.total)
            sys.stdout.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}")
            sys.stdout.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stdout.write("\r" + " " * (len(self.label) + 50) + "\r")
            sys.stdout.flush()


def fit(
    model: NCF,
    train: DeviceInteractions,
    validation: HeldOut | None,
    settings: FitSettings,
    *,
    device: torch.device,
    epochs: int | None = None,
    prefix: str = "epoch",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> FitResult:
    """Train ``model`` in place. With ``validation``, stop early on its NDCG@10 and return the best
    state; without, run exactly ``epochs`` (default ``settings.epochs``) and return the last."""
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    use_amp = settings.amp and device.type == "cuda"
    num_epochs = epochs if epochs is not None else settings.epochs
    ks = tuple(sorted({10, settings.eval_k}))
    records: list[EpochRecord] = []
    best_score, best_epoch, best_state = float("-inf"), 0, _snapshot(model)
    stale = 0
    for epoch in range(1, num_epochs + 1):
        model.train()
        started = time.perf_counter()
        batches = iterate_batches(
            train,
            batch_size=settings.batch_size,
            history_length=settings.history_length,
            user_id_dropout=settings.user_id_dropout,
            generator=generator,
        )
        progress = _Progress(len(batches), f"{prefix} {epoch}")
        loss_sum = torch.zeros((), device=device)
        for step, batch in enumerate(batches, start=1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = compute_loss(
                    model,
                    batch,
                    loss=settings.loss,
                    num_negatives=settings.num_negatives,
                    generator=generator,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_sum += loss.detach() * batch.positives.shape[0]
            progress.update(step)
        progress.close()
        train_loss = float(loss_sum) / train.num_interactions  # host sync: once per epoch
        seconds = time.perf_counter() - started
        record = EpochRecord(epoch, train_loss, seconds, train.num_interactions / max(seconds, 1e-9))
        if validation is not None:
            model.eval()
            report = full_ranking(model, train, validation, ks, history_length=settings.history_length)
            record.validation = {k: v for k, v in report.summary().items() if not k.endswith("_se")}
        records.append(record)
        logger.info(metric_line(prefix, record, settings.eval_k))
        if on_epoch is not None:
            on_epoch(record)
        if validation is None:
            best_epoch = epoch
            continue
        score = record.validation[EARLY_STOPPING_METRIC]
        if score > best_score:
            best_score, best_epoch, best_state, stale = score, epoch, _snapshot(model), 0
        else:
            stale += 1
            if stale >= settings.patience:
                logger.info(
                    "early stop: val_%s has not improved for %d epochs; best epoch %d (%.4f)",
                    EARLY_STOPPING_METRIC,
                    stale,
                    best_epoch,
                    best_score,
                )
                model.load_state_dict(best_state)
                return FitResult(best_epoch, best_state, records, stopped_early=True)
    if validation is None:
        return FitResult(best_epoch, _snapshot(model), records, stopped_early=False)
    model.load_state_dict(best_state)
    return FitResult(best_epoch, best_state, records, stopped_early=False)


def _snapshot(model: NCF) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in copy.copy(model.state_dict()).items()}
