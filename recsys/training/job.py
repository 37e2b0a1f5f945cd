"""One training job, start to finish: channels -> prepared data -> fit -> evaluate -> artifact -> report.

``train`` is the job without files: prepared data and a ``TrainConfig`` in, the artifact, its
metrics and its report out. ``run_training`` is the channel job around it: it reads the channels
and writes the model directory and ``output/data``. Everything arrives as explicit, typed
arguments: only ``recsys.sagemaker`` knows where those come from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.artifact import Artifact, build_artifact, save_artifact
from recsys.config import TrainConfig, config_to_json
from recsys.data.device import DeviceInteractions, resolve_device
from recsys.data.features import column_names
from recsys.data.prepared import Channels, PreparedData, prepare_data, training_rows
from recsys.evaluation.evaluate import (
    EvaluationSettings,
    ItemStatistics,
    build_evaluation_report,
    evaluate_model,
    log_evaluation,
    report_details,
)
from recsys.evaluation.held_out import ValidationSplit, held_out_tensors, query_context, validation_split
from recsys.models.ncf import NCF
from recsys.training.checkpoints import Checkpointer, StopRequest
from recsys.training.distributed import SINGLE_PROCESS, DistContext, barrier
from recsys.training.item_index import build_item_index
from recsys.training.loop import EpochRecord, FitResult, FitSettings, RunContext, fit
from recsys.training.report import write_report
from recsys.training.setup import build_model, fit_settings, pretrained_neumf

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingOutcome:
    """What ``train`` gives back; on every data-parallel rank but 0, only ``metrics`` (rank 0 alone
    evaluates and writes)."""

    metrics: dict[str, Any]
    artifact: Artifact | None = None
    report: dict[str, Any] | None = None  # the evaluation report's content (report.json)
    records: list[EpochRecord] = field(default_factory=list)  # one per epoch of the kept model's fit
    refit_records: list[EpochRecord] = field(default_factory=list)  # one per epoch of the refit


@dataclass(frozen=True)
class Resilience:
    """Where checkpoints go and what asks training to stop (SIGTERM); both optional."""

    checkpoint_dir: Path | None = None
    stop: StopRequest | None = None


def run_training(
    channels: Channels,
    config: TrainConfig,
    *,
    model_dir: Path,
    output_data_dir: Path,
    ctx: DistContext = SINGLE_PROCESS,
    resilience: Resilience | None = None,
) -> TrainingOutcome:
    """Read the channels, train, and save. With several processes (``ctx``), each trains on its
    shard and only rank 0 writes ``model_dir`` and ``output_data_dir``."""
    started = time.perf_counter()
    # Resolved first: a job asking for a GPU it does not have fails before reading any data.
    device = ctx.device_for(resolve_device(config.device))
    data = prepare_data(channels, config)
    outcome = train(data, config, device=device, ctx=ctx, resilience=resilience, started=started)
    if outcome.artifact is not None:
        save_artifact(outcome.artifact, model_dir)
        write_report(
            output_data_dir,
            outcome.metrics,
            outcome.records,
            outcome.refit_records,
            config.eval_k,
            evaluation_report=outcome.report,
        )
    # Rank 0 evaluates and writes alone; the others wait here so that the job ends together.
    barrier(ctx)
    return outcome


def train(
    data: PreparedData,
    config: TrainConfig,
    *,
    device: torch.device | None = None,
    ctx: DistContext = SINGLE_PROCESS,
    resilience: Resilience | None = None,
    started: float | None = None,
) -> TrainingOutcome:
    """Fit, validate, evaluate beside most-popular and build the artifact, writing no file (but
    checkpoints, given ``resilience.checkpoint_dir``). ``device`` defaults to ``config.device``;
    ``started`` (a ``time.perf_counter()`` reading) is when the job began, so that the reported
    training time covers reading the data."""
    started = time.perf_counter() if started is None else started
    if device is None:
        device = ctx.device_for(resolve_device(config.device))
    logger.info(
        "data: %d users, %d items, %d interactions; item attributes: %s; user attributes: %s; device: %s",
        len(data.users),
        len(data.items),
        data.interactions.num_interactions,
        ", ".join(column_names(data.item_encoding)) or "none",
        ", ".join(column_names(data.user_encoding)) or "none",
        device,
    )
    settings = fit_settings(config, num_items=len(data.items), device=device)
    split = validation_split(data, config)
    resilience = resilience or Resilience()
    run = RunContext(ctx, _checkpointer(config, data, ctx, resilience.checkpoint_dir), resilience.stop)

    train_device = DeviceInteractions.from_indexed(
        split.fit_data, device, training_rows(config, data, split.fit_data)
    )
    held = held_out_tensors(split.held, device, query_context(split.held, split.fit_data, data.row_encoding))
    if config.model == "neumf" and config.pretrain:
        model = pretrained_neumf(config, data, settings, train_device, held, device, run)
    else:
        model = build_model(config, data, device)
    result = fit(model, train_device, held, settings, device=device, run=run)
    final_model, refit_records = _final_model(model, result, config, data, settings, device, run)
    if not ctx.is_main:
        return TrainingOutcome({"best_epoch": result.best_epoch})

    item_counts = np.bincount(split.fit_data.items, minlength=len(data.items))
    evaluation = evaluate_model(
        model,
        train_device,
        held,
        ItemStatistics.build(
            item_counts,
            num_users=len(data.users),
            encoding=data.item_encoding,
            arrays=data.item_arrays,
            device=device,
        ),
        EvaluationSettings.of(config, model.config.history_length),
    )
    # The line SageMaker's metric definitions read last: the kept model's values.
    logger.info(
        "best epoch %d: %s",
        result.best_epoch,
        " ".join(
            f"val_{k}={v:.4f}"
            for k, v in evaluation.metrics.items()
            if not k.endswith("_se") and k != "num_users"
        ),
    )
    source = "the validation channel" if split.from_channel else "each user's latest interaction"
    sampled = split.evaluated_users < split.held_out_users
    warnings = log_evaluation(
        evaluation,
        title=f"validation on {int(evaluation.metrics['num_users'])} users ({source}"
        + (f"; a fixed sample of {split.held_out_users:,}" if sampled else "")
        + f"), best epoch {result.best_epoch}:",
    )

    final_model.eval()
    item_index, retrieval = build_item_index(final_model, train_device, held, evaluation.users, config)
    if retrieval.get("refused"):
        warnings.append(
            f"the item index was refused (recall@10 {retrieval['recall@10']:.4f} < min_index_recall "
            f"{config.min_index_recall}); the endpoint ranks the whole catalogue exactly"
        )
    metrics = _metrics(config, settings, split, result, refit_records, evaluation.metrics, device, started)
    metrics.update({**evaluation.to_json(), "retrieval": retrieval, "warnings": warnings})
    artifact = build_artifact(final_model, data, config, metrics)
    artifact.item_index, artifact.retrieval = item_index, retrieval

    report = build_evaluation_report(
        evaluation,
        train_device,
        item_counts,
        title="recsys evaluation report: validation",
        source=f"Validation of the kept model (best epoch {result.best_epoch}) on {source}"
        + (
            f", on a fixed random sample of {split.evaluated_users:,} of its {split.held_out_users:,} users "
            "(validation_users)"
            if sampled
            else ""
        )
        + ", beside the most-popular baseline computed in the same job.",
        details=report_details(config, model.config, device=device, num_training_users=len(data.users)),
        notes=warnings,
        epochs=[asdict(r) for r in result.records],
        refit_epochs=[asdict(r) for r in refit_records],
        best_epoch=result.best_epoch,
    )
    return TrainingOutcome(metrics, artifact, report, list(result.records), refit_records)


def _checkpointer(
    config: TrainConfig, data: PreparedData, ctx: DistContext, directory: Path | None
) -> Checkpointer | None:
    if directory is None:
        return None
    return Checkpointer(
        directory, ctx=ctx, identity=_identity(config, data), interval_steps=config.checkpoint_interval_steps
    )


def _identity(config: TrainConfig, data: PreparedData) -> str:
    """What a checkpoint must have been written for to be resumed: this configuration and data."""
    # The checkpoint cadence does not change what is trained.
    settings = {k: v for k, v in config_to_json(config).items() if k != "checkpoint_interval_steps"}
    text = json.dumps(settings, sort_keys=True) + str(data.fingerprint["sha256"])
    return hashlib.sha256(text.encode()).hexdigest()


def _final_model(
    model: NCF,
    result: FitResult,
    config: TrainConfig,
    data: PreparedData,
    settings: FitSettings,
    device: torch.device,
    run: RunContext,
) -> tuple[NCF, list[EpochRecord]]:
    """The model to serve: the kept (best-epoch) one, or with ``final_fit=refit`` and no validation
    channel, a new one fitted on every interaction for the best epoch count."""
    if data.validation is not None or config.final_fit != "refit":
        return model, []
    # The held-out interactions are each user's most recent: refitting on them too lets the
    # served model use the freshest signal. The epoch count comes from early stopping.
    if run.ctx.is_main:
        logger.info(
            "refitting on all %d interactions for %d epochs",
            data.interactions.num_interactions,
            result.best_epoch,
        )
    every = DeviceInteractions.from_indexed(
        data.interactions, device, training_rows(config, data, data.interactions)
    )
    refitted = build_model(config, data, device)
    refit = fit(
        refitted,
        every,
        None,
        settings,
        device=device,
        epochs=result.best_epoch,
        prefix="refit_epoch",
        run=run,
    )
    return refitted, list(refit.records)


def _metrics(
    config: TrainConfig,
    settings: FitSettings,
    split: ValidationSplit,
    result: FitResult,
    refit_records: list[EpochRecord],
    validation: dict[str, float],
    device: torch.device,
    started: float,
) -> dict[str, Any]:
    """metrics.json's account of the fit and of what was validated."""
    metrics: dict[str, Any] = {
        "validation": validation,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.records),
        "stopped_early": result.stopped_early,
        "loss": settings.loss,
        "final_fit": "refit" if refit_records else "best_checkpoint",
        "validation_source": "channel" if split.from_channel else "latest interaction per user",
        # Which users the validation figures are about: all the held-out ones, or a fixed sample.
        "validation_users": {
            "evaluated": split.evaluated_users,
            "held_out": split.held_out_users,
            "sampled": split.evaluated_users < split.held_out_users,
            "seed": config.seed,
        },
        "device": str(device),
        "training_seconds": round(time.perf_counter() - started, 2),
    }
    if split.from_channel:
        metrics["validation_repeats_dropped"] = split.repeats_dropped
    return metrics
