"""``recsys evaluate``: a saved model against a held-out interaction table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from recsys.artifact import load_artifact
from recsys.config import DeviceName, resolve_train_config
from recsys.data.context import RowEncoding
from recsys.data.device import DeviceInteractions, resolve_device
from recsys.data.interactions import (
    IndexedInteractions,
    index_encoded,
    read_interactions,
)
from recsys.data.prepared import interaction_columns
from recsys.errors import DataError, UserError
from recsys.evaluation.evaluate import (
    EvaluationSettings,
    ItemStatistics,
    build_evaluation_report,
    evaluate_model,
    report_details,
    write_evaluation_report,
)
from recsys.evaluation.held_out import held_out_tensors
from recsys.evaluation.protocols import drop_repeats
from recsys.evaluation.summary import verdict

logger = logging.getLogger(__name__)


RepeatPolicy = Literal["drop", "count"]
REPEAT_POLICIES: tuple[RepeatPolicy, ...] = ("drop", "count")


def evaluate_saved_model(
    model_dir: Path,
    test_path: Path,
    *,
    k: int | None = None,
    repeats: RepeatPolicy = "drop",
    report_dir: Path | None = None,
    device: DeviceName = "auto",
) -> dict[str, Any]:
    """Metrics of a saved model on held-out interactions, beside the most-popular baseline.

    With ``report_dir``, the same ``report.html`` and ``report.json`` as a training job's are
    written there (without learning curves, which a saved model does not carry).

    A test row whose item the user already has in training (a repeat) can never be recommended
    by full ranking: ``repeats="drop"`` leaves such rows out, ``"count"`` scores them as misses.
    Either way their number is reported, and a warning is logged when they are most of the rows.

    ``device`` is where this evaluation runs (``auto``: CUDA when present), whatever device the
    model was trained on: the training job's ``device`` hyperparameter describes its machine, not
    this one.
    """
    artifact = load_artifact(model_dir)
    raw = dict(artifact.train_config)
    if k is not None:
        raw["eval_k"] = k
    config = resolve_train_config(raw)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA device is visible here; pass --device cpu or auto.")
    torch_device = resolve_device(device)
    # The rules of the training job's validation channel, with the codes its training learnt.
    columns = interaction_columns(config)
    encoded = read_interactions(
        test_path, columns, channel="test", min_rating=config.min_rating, allow_file=True
    )
    rows = artifact.feature_encodings.get("rows")
    row_encoding = RowEncoding.from_json(rows) if isinstance(rows, dict) else None
    held, dropped = index_encoded(encoded, artifact.users, artifact.items, row_encoding)
    del encoded
    if dropped:
        logger.warning(
            "%d of %d test interactions name an unknown user or item and are skipped",
            dropped,
            held.num_interactions + dropped,
        )
    if held.num_interactions == 0:
        raise DataError(f"{test_path}: no test interaction names a user and an item the model knows.")
    num_users = len(artifact.users)
    users = np.repeat(np.arange(num_users), np.diff(artifact.seen_indptr))
    seen = IndexedInteractions(
        users,
        artifact.seen_items.astype(np.int64),
        np.zeros(len(users)),
        artifact.seen_indptr,
        num_users,
        len(artifact.items),
    )
    total = held.num_interactions
    fresh, num_repeats = drop_repeats(held, seen)
    warnings = _warn_about_repeats(num_repeats, total, repeats)
    if repeats == "drop":
        if fresh.num_interactions == 0:
            raise DataError(
                f"{test_path}: every one of its {held.num_interactions} known interactions is a user-item "
                "pair the model was trained on, and full ranking never recommends an item the user "
                "already has, so nothing is left to evaluate. Is this the training data? Evaluate on "
                "interactions that came after training, or pass --repeats count to score them as misses."
            )
        held = fresh
    model = artifact.build_model(torch_device)
    train = DeviceInteractions.from_indexed(seen, torch_device)
    evaluation = evaluate_model(
        model,
        train,
        held_out_tensors(held, torch_device),
        ItemStatistics.build(
            artifact.item_popularity,
            num_users=num_users,
            encoding=artifact.item_encoding,
            arrays=artifact.item_arrays,
            device=torch_device,
        ),
        EvaluationSettings.of(config, model.config.history_length),
    )
    if not evaluation.comparison.clearly_better:
        warnings.append(verdict(evaluation.comparison))
    extra: dict[str, Any] = {}
    if report_dir is not None:
        treated = "left out" if repeats == "drop" else "scored as misses"
        details = report_details(
            config, artifact.model_config, device=torch_device, num_training_users=num_users
        )
        if isinstance(artifact.metrics.get("loss"), str):
            # "auto" resolves by device: the loss trained with is the one the job resolved on its own.
            details["loss"] = artifact.metrics["loss"]
        report = build_evaluation_report(
            evaluation,
            train,
            artifact.item_popularity,
            title="recsys evaluation report: held-out table",
            source=f"The saved model in {model_dir} on {test_path}: {held.num_interactions} of its "
            f"{total} known interactions evaluated ({num_repeats} repeats of training pairs {treated}, "
            f"{dropped} with an unknown user or item skipped), beside the most-popular baseline of "
            "the model's training data, computed in the same run.",
            details=details,
            notes=warnings,
        )
        extra["report"] = str(write_evaluation_report(report_dir, report))
    return {
        **evaluation.metrics,
        **evaluation.to_json(),
        "skipped_interactions": dropped,
        "test_interactions": total,
        "repeat_interactions": num_repeats,
        "repeats": repeats,
        "evaluated_interactions": held.num_interactions,
        "warnings": warnings,
        **extra,
    }


def _repeats_message(num_repeats: int, total: int, policy: RepeatPolicy) -> str:
    treated = "left out (--repeats drop)" if policy == "drop" else "scored as misses (--repeats count)"
    return (
        f"{num_repeats} of {total} test interactions repeat an item the user already has in the model's "
        f"training data; full ranking never recommends those, so they are {treated}. When most rows "
        "are repeats, the test set probably overlaps the training data."
    )


def _warn_about_repeats(num_repeats: int, total: int, policy: RepeatPolicy) -> list[str]:
    """Log how many repeats there were; a warning (also returned) when they are most of the rows."""
    if not num_repeats:
        return []
    message = _repeats_message(num_repeats, total, policy)
    if num_repeats * 2 > total:
        logger.warning("%s", message)
        return [message]
    logger.info("%s", message)
    return []
