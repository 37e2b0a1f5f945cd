"""A training job's outputs under ``output/data``: metrics JSON, learning curves as JSON and PNG, and
the evaluation report (``recsys.evaluation.evaluate``) with the same learning-curves chart in it."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recsys.evaluation.evaluate import write_evaluation_report
from recsys.training.loop import EpochRecord

logger = logging.getLogger(__name__)

LEARNING_CURVES_PNG = "learning_curves.png"


def write_report(
    directory: Path,
    metrics: dict[str, Any],
    records: list[EpochRecord],
    refit_records: list[EpochRecord],
    eval_k: int,
    *,
    evaluation_report: Mapping[str, Any] | None = None,
) -> None:
    """metrics.json, learning_curves.{json,png} and, given ``evaluation_report`` (a ``build_report``
    dict), report.json and report.html with the same learning-curves chart embedded."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True), encoding="utf-8")
    curves = {"epochs": [asdict(r) for r in records], "refit_epochs": [asdict(r) for r in refit_records]}
    (directory / "learning_curves.json").write_text(json.dumps(curves, indent=1), encoding="utf-8")
    plot_learning_curves(directory / LEARNING_CURVES_PNG, records, refit_records, eval_k)
    if evaluation_report is None:
        logger.info("no evaluation to report: report.html is not written")
        return
    # The page embeds the very PNG written beside it: drawn once, identical in both places.
    curves_png = (directory / LEARNING_CURVES_PNG).read_bytes()
    write_evaluation_report(directory, evaluation_report, learning_curves_png=curves_png)


def plot_learning_curves(
    path: Path, records: list[EpochRecord], refit_records: list[EpochRecord], eval_k: int
) -> None:
    # Imported here: matplotlib is slow to import and only the report needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r.epoch for r in records]
    loss_ax.plot(epochs, [r.train_loss for r in records], marker="o", label="training")
    if refit_records:
        loss_ax.plot(
            [r.epoch for r in refit_records],
            [r.train_loss for r in refit_records],
            marker="x",
            linestyle="--",
            label="refit on all data",
        )
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, metric_ax):
        # Epochs are whole numbers: no 1.5 on the axis of a two-epoch run.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.legend()
    for name in sorted({f"ndcg@{eval_k}", f"hr@{eval_k}", "ndcg@10", "hr@10"}):
        values = [r.validation.get(name) for r in records]
        if any(v is not None for v in values):
            metric_ax.plot(epochs, values, marker="o", label=f"validation {name}")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel("metric")
    metric_ax.legend()
    fig.suptitle("recsys learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
