"""``recsys evaluate``: a saved model against a held-out interaction table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recsys.artifact import load_artifact
from recsys.config import resolve_train_config
from recsys.data.device import DeviceInteractions, resolve_device
from recsys.data.interactions import (
    IndexedInteractions,
    InteractionColumns,
    clean_interactions,
    index_interactions,
)
from recsys.data.io import read_path
from recsys.errors import DataError
from recsys.evaluation.evaluate import (
    ItemStatistics,
    build_evaluation_report,
    evaluate_model,
    report_details,
    write_evaluation_report,
)
from recsys.evaluation.held_out import held_out_tensors
from recsys.evaluation.protocols import cutoffs, drop_repeats
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
) -> dict[str, Any]:
    """Metrics of a saved model on held-out interactions, beside the most-popular baseline.

    With ``report_dir``, the same ``report.html`` and ``report.json`` as a training job's are
    written there (without learning curves, which a saved model does not carry).

    A test row whose item the user already has in training (a repeat) can never be recommended
    by full ranking: ``repeats="drop"`` leaves such rows out, ``"count"`` scores them as misses.
    Either way their number is reported, and a warning is logged when they are most of the rows.
    """
    artifact = load_artifact(model_dir)
    raw = dict(artifact.train_config)
    if k is not None:
        raw["eval_k"] = k
    config = resolve_train_config(raw)
    device = resolve_device(config.device)
    columns = InteractionColumns(
        config.user_id_column, config.item_id_column, config.rating_column, config.timestamp_column
    )
    table = read_path(test_path, channel="test", string_columns=(columns.user, columns.item))
    frame = clean_interactions(table, columns, channel="test", min_rating=config.min_rating).frame
    held, dropped = index_interactions(frame, artifact.users, artifact.items)
    if dropped:
        logger.warning(
            "%d of %d test interactions name an unknown user or item and are skipped", dropped, len(frame)
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
    model = artifact.build_model(device)
    train = DeviceInteractions.from_indexed(seen, device)
    evaluation = evaluate_model(
        model,
        train,
        held_out_tensors(held, device),
        ItemStatistics.build(
            artifact.item_popularity,
            num_users=num_users,
            encoding=artifact.item_encoding,
            arrays=artifact.item_arrays,
            device=device,
        ),
        ks=cutoffs(config.eval_k),
        k=config.eval_k,
        history_length=model.config.history_length,
        sampled_negatives=config.sampled_eval_negatives,
        seed=config.seed,
    )
    if not evaluation.comparison.clearly_better:
        warnings.append(verdict(evaluation.comparison))
    extra: dict[str, Any] = {}
    if report_dir is not None:
        treated = "left out" if repeats == "drop" else "scored as misses"
        report = build_evaluation_report(
            evaluation,
            train,
            artifact.item_popularity,
            title="recsys evaluation report: held-out table",
            source=f"The saved model in {model_dir} on {test_path}: {held.num_interactions} of its "
            f"{total} known interactions evaluated ({num_repeats} repeats of training pairs {treated}, "
            f"{dropped} with an unknown user or item skipped), beside the most-popular baseline of "
            "the model's training data, computed in the same run.",
            details=report_details(
                config, artifact.model_config, device=device, num_training_users=num_users
            ),
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
