"""The training loop: epochs of device-side batches, validation, early stopping, checkpoints.

Readable top to bottom: one epoch is shuffle -> this rank's shard -> batches -> loss -> step.
The host syncs are marked: once per epoch for the loss and validation, at checkpoints, and (with
several processes) every ``STOP_POLL_STEPS`` steps to agree on a SIGTERM.

With several processes (``DistContext``), ``batch_size`` stays the global batch: each rank takes
``batch_size / world_size`` positives per step, so a configuration means the same on one GPU as
on eight, and DDP averages the gradients of the ranks' equal shards.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from recsys.data.device import DeviceInteractions, HeldOut
from recsys.evaluation.protocols import cutoffs, full_ranking
from recsys.models.ncf import NCF, SequenceBatch
from recsys.training.batches import Batch, epoch_order, iterate_batches, iterate_windows, sequence_windows
from recsys.training.checkpoints import DONE, Checkpointer, StopRequest, TrainingInterrupted
from recsys.training.distributed import (
    SINGLE_PROCESS,
    DistContext,
    all_reduce_sum,
    any_rank,
    broadcast_object,
    shard,
)
from recsys.training.losses import LossKind, TrainingObjective, sample_negatives

logger = logging.getLogger(__name__)

EARLY_STOPPING_METRIC = "ndcg@10"
# With several processes, a SIGTERM is agreed on every this many steps (one tiny all-reduce):
# every rank must stop at the same step, or the next gradient all-reduce would wait forever.
STOP_POLL_STEPS = 32
# Embedding tables at least this large train with sparse gradients on the CPU (see build_optimizers).
SPARSE_MIN_ROWS = 100_000


@dataclass(frozen=True)
class FitSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    loss: LossKind
    num_negatives: int
    user_id_dropout: float
    patience: int
    amp: bool
    seed: int
    eval_k: int


@dataclass(frozen=True)
class RunContext:
    """What every ``fit`` of one job shares: its processes, where checkpoints go, what asks it to stop."""

    ctx: DistContext = SINGLE_PROCESS
    checkpointer: Checkpointer | None = None
    stop: StopRequest | None = None


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


@dataclass
class _LoopState:
    """Everything a resumed run needs beyond the model and optimiser (and the random state)."""

    epoch: int = 1  # the epoch to run next
    step: int = 0  # batches of it already done
    elapsed: float = 0.0  # seconds spent on those batches
    best_score: float = float("-inf")
    best_epoch: int = 0
    stale: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)
    records: list[EpochRecord] = field(default_factory=list)
    order_state: Tensor | None = None  # the shuffle generator at the start of ``epoch``
    stopped_early: bool = False

    def to_payload(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["records"] = [dataclasses.asdict(r) for r in self.records]
        return out

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> _LoopState:
        values = dict(payload)
        values["records"] = [EpochRecord(**r) for r in payload["records"]]
        return cls(**values)


def _rng_state(sample_generator: torch.Generator, loss_sum: Tensor) -> dict[str, Any]:
    state: dict[str, Any] = {
        "sample": sample_generator.get_state(),
        "torch": torch.get_rng_state(),
        "loss_sum": loss_sum.detach().cpu(),  # this rank's partial epoch loss
    }
    if loss_sum.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(loss_sum.device)
    return state


def _restore_rng(rng: dict[str, Any], sample_generator: torch.Generator, device: torch.device) -> Tensor:
    sample_generator.set_state(rng["sample"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    loss_sum: Tensor = rng["loss_sum"].to(device)
    return loss_sum


def _validate(
    model: NCF,
    train: DeviceInteractions,
    validation: HeldOut,
    ks: tuple[int, ...],
    *,
    history_length: int,
    ctx: DistContext,
) -> dict[str, float]:
    """Mean validation metrics, each rank ranking its share of the users, summed across ranks."""
    users = torch.nonzero(validation.counts > 0).squeeze(1)
    mine = users[ctx.rank :: ctx.world_size]
    report = full_ranking(model, train, validation, ks, history_length=history_length, users=mine)
    names = sorted(report.values)
    sums = torch.stack([report.values[n].sum() for n in names] + [torch.tensor(float(mine.shape[0]))])
    sums = all_reduce_sum(sums.to(users.device, torch.float64), ctx).cpu()  # host sync
    count = max(float(sums[-1]), 1.0)
    return {name: float(sums[i]) / count for i, name in enumerate(names)}


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
    run: RunContext = RunContext(),
) -> FitResult:
    """Train ``model`` in place. With ``validation``, stop early on its NDCG@10 and return the best
    state; without, run exactly ``epochs`` (default ``settings.epochs``) and return the last.

    ``run`` says how many processes train (each on its shard); with its ``checkpointer``, resume from
    this phase's (``prefix``) newest valid checkpoint and save new ones; with its ``stop`` request
    set (SIGTERM), save one and raise ``TrainingInterrupted``. The history length is the model's."""
    ctx, checkpointer, stop = run.ctx, run.checkpointer, run.stop
    history_length = model.config.history_length
    num_epochs = epochs if epochs is not None else settings.epochs
    per_rank_batch = math.ceil(settings.batch_size / ctx.world_size)
    # The shuffle is the same on every rank (each takes its own shard of it); negatives, id
    # dropout and model dropout differ per rank.
    order_generator = torch.Generator(device=device).manual_seed(settings.seed)
    sample_generator = torch.Generator(device=device).manual_seed(settings.seed + 1 + ctx.rank)
    torch.manual_seed(settings.seed + 1 + ctx.rank)
    optimizers = build_optimizers(model, settings, device)
    state = _LoopState(best_state=_snapshot(model))
    loss_sum = torch.zeros((), device=device)
    restored = checkpointer.load(prefix) if checkpointer is not None else None
    if restored is not None:
        model.load_state_dict(restored.shared["model"])
        state = _LoopState.from_payload(restored.shared["loop"])
        if restored.done:
            return FitResult(state.best_epoch, _snapshot(model), state.records, state.stopped_early)
        for optimizer, saved in zip(optimizers, restored.shared["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        if restored.rng is not None:
            loss_sum = _restore_rng(restored.rng, sample_generator, device)
        else:  # reseeded, but not to the values a fresh run starts from
            sample_generator.manual_seed(
                settings.seed + 1 + ctx.rank + 7919 * (state.epoch * 100_003 + state.step)
            )
    objective: torch.nn.Module = TrainingObjective(model, settings.loss)
    if ctx.enabled:
        objective = DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    use_amp = settings.amp and device.type == "cuda"
    ks = cutoffs(settings.eval_k)
    targets = train.target_positions()
    windows = (
        sequence_windows(train, history_length)
        if model.config.use_history and model.config.history_encoder == "attention"
        else None
    )

    def save(epoch: int, step: int) -> None:
        if checkpointer is None:
            return
        if (epoch, step) != DONE:
            state.epoch, state.step = epoch, step
        shared = {
            "model": model.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in optimizers],
            "loop": state.to_payload(),
        }
        checkpointer.save(prefix, epoch, step, shared=shared, rng=_rng_state(sample_generator, loss_sum))

    for epoch in range(state.epoch, num_epochs + 1):
        model.train()
        state.epoch = epoch
        if state.order_state is not None:  # a resumed run replays this epoch's shuffle
            order_generator.set_state(state.order_state)
        state.order_state = order_generator.get_state()
        batches: Iterator[Batch | SequenceBatch]
        if windows is not None:
            # Attention models: every event of a window is a target, in one forward pass.
            positions = shard(epoch_order(windows.count, order_generator), ctx)
            per_step = max(1, per_rank_batch // (history_length + 1))
            num_steps = math.ceil(positions.shape[0] / per_step)
            batches = iterate_windows(
                train,
                windows,
                positions[state.step * per_step :],
                windows_per_step=per_step,
                history_length=history_length,
                user_id_dropout=settings.user_id_dropout,
                generator=sample_generator,
            )
        else:
            order = epoch_order(targets.shape[0], order_generator)
            positions = shard(targets[order] if train.targets is not None else order, ctx)
            num_steps = math.ceil(positions.shape[0] / per_rank_batch)
            batches = iterate_batches(
                train,
                positions[state.step * per_rank_batch :],
                batch_size=per_rank_batch,
                history_length=history_length,
                user_id_dropout=settings.user_id_dropout,
                generator=sample_generator,
            )
        progress = _Progress(num_steps, f"{prefix} {epoch}")
        started = time.perf_counter() - state.elapsed
        for batch in batches:
            negatives = sample_negatives(
                settings.loss,
                batch_size=per_rank_batch if isinstance(batch, SequenceBatch) else batch.positives.shape[0],
                num_items=model.config.num_items,
                num_negatives=settings.num_negatives,
                generator=sample_generator,
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = objective(batch, negatives)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            loss_sum += loss.detach() * (
                batch.target_mask.sum() if isinstance(batch, SequenceBatch) else batch.positives.shape[0]
            )
            state.step += 1
            progress.update(state.step)
            if state.step == num_steps:
                break
            if _stop_requested(stop, state.step, ctx, device):
                progress.close()
                state.elapsed = time.perf_counter() - started
                save(epoch, state.step)  # host sync
                raise TrainingInterrupted(_interrupted(stop, prefix, epoch, state.step))
            if (
                checkpointer is not None
                and checkpointer.interval_steps
                and (state.step % checkpointer.interval_steps == 0)
            ):
                state.elapsed = time.perf_counter() - started
                save(epoch, state.step)  # host sync
        progress.close()
        total = all_reduce_sum(loss_sum.clone(), ctx)
        # Targets, not windows: samples/s means the same for both encoders.
        samples = targets.shape[0]
        train_loss = float(total) / max(samples, 1)  # host sync: once per epoch
        seconds = time.perf_counter() - started
        record = EpochRecord(epoch, train_loss, seconds, samples / max(seconds, 1e-9))
        if validation is not None:
            model.eval()
            record.validation = _validate(
                model, train, validation, ks, history_length=history_length, ctx=ctx
            )
        state.records.append(record)
        if ctx.is_main:
            logger.info(metric_line(prefix, record, settings.eval_k))
        if on_epoch is not None:
            on_epoch(record)
        finished = epoch == num_epochs
        if validation is None:
            state.best_epoch = epoch
        else:
            score = record.validation[EARLY_STOPPING_METRIC]
            if score > state.best_score:
                state.best_score, state.best_epoch, state.stale = score, epoch, 0
                state.best_state = _snapshot(model)
            else:
                state.stale += 1
            # Every rank computed the same reduced score; rank 0's decision is made everyone's
            # all the same, since one rank stopping alone would leave the others waiting.
            if broadcast_object(state.stale >= settings.patience, ctx) and not finished:
                logger.info(
                    "early stop: val_%s has not improved for %d epochs; best epoch %d (%.4f)",
                    EARLY_STOPPING_METRIC,
                    state.stale,
                    state.best_epoch,
                    state.best_score,
                )
                state.stopped_early = finished = True
        loss_sum.zero_()
        state.step, state.elapsed = 0, 0.0
        state.order_state = order_generator.get_state()  # where the next epoch's shuffle starts
        if finished:
            break
        save(epoch + 1, 0)  # host sync, once per epoch
        if _stop_requested(stop, STOP_POLL_STEPS, ctx, device):
            raise TrainingInterrupted(_interrupted(stop, prefix, epoch + 1, 0))
    if validation is not None:
        model.load_state_dict(state.best_state)
    state.best_state = {}  # the model holds it now; no need to store it twice
    save(*DONE)
    return FitResult(state.best_epoch, _snapshot(model), state.records, state.stopped_early)


def build_optimizers(model: NCF, settings: FitSettings, device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW; on the CPU, embedding tables of ``SPARSE_MIN_ROWS`` rows or more get sparse
    gradients and a row-wise Adam instead.

    Dense AdamW reads and writes every row of every table on every step: with a million users
    that is most of a step's time on a CPU, whatever the batch. Sparse gradients make the cost
    follow the rows a batch touches. A GPU does the dense update in about a millisecond, so it
    keeps dense AdamW; so do jobs with weight decay, which SparseAdam does not support.
    """
    tables = [
        module
        for module in model.modules()
        if isinstance(module, nn.Embedding) and module.num_embeddings >= SPARSE_MIN_ROWS
    ]
    if device.type != "cpu" or settings.weight_decay > 0 or not tables:
        return [
            torch.optim.AdamW(
                model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
            )
        ]
    for table in tables:
        table.sparse = True
    sparse = {id(table.weight) for table in tables}
    dense = [p for p in model.parameters() if id(p) not in sparse]
    return [
        torch.optim.SparseAdam([table.weight for table in tables], lr=settings.learning_rate),
        torch.optim.AdamW(dense, lr=settings.learning_rate, weight_decay=0.0),
    ]


def _stop_requested(stop: StopRequest | None, step: int, ctx: DistContext, device: torch.device) -> bool:
    if not ctx.enabled:
        return stop is not None and stop.requested
    if step % STOP_POLL_STEPS:
        return False
    return any_rank(stop is not None and stop.requested, ctx, device)  # host sync


def _interrupted(stop: StopRequest | None, prefix: str, epoch: int, step: int) -> str:
    signal_name = stop.signal_name if stop is not None and stop.signal_name else "a stop request"
    return (
        f"training stopped by {signal_name} in {prefix} {epoch} after {step} steps; a checkpoint was "
        "saved and a restarted job resumes from it"
    )


def _snapshot(model: NCF) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in copy.copy(model.state_dict()).items()}
