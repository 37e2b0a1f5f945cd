"""The evaluation report under ``output/data``: metrics JSON, learning curves as JSON and PNG, and
the page a person reads (``report.html`` with the ``report.json`` behind it)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from recsys.evaluation.report import ReportInputs, build_report, draw_charts, write_report_files
from recsys.training.batches import DeviceInteractions
from recsys.training.loop import EpochRecord

if TYPE_CHECKING:
    from recsys.config import TrainConfig
    from recsys.models.ncf import ModelConfig
    from recsys.training.job import Evaluation

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


def write_evaluation_report(
    directory: Path, report: Mapping[str, Any], *, learning_curves_png: bytes = b""
) -> Path:
    """report.json and report.html (charts drawn from ``report``) in ``directory``; the HTML's path."""
    charts = draw_charts(report)
    if learning_curves_png:
        charts["learning_curves"] = learning_curves_png
    _, html_path = write_report_files(directory, report, charts)
    logger.info("evaluation report: %s", html_path)
    return html_path


def report_details(
    config: TrainConfig, model_config: ModelConfig, *, device: torch.device, num_training_users: int
) -> dict[str, Any]:
    """The lines under the report's summary that say what was evaluated."""
    return {
        "model": f"{model_config.kind} (embedding_dim {model_config.embedding_dim})",
        "user representation": config.user_representation,
        "loss": config.resolved_loss(model_config.num_items, on_gpu=device.type == "cuda"),
        "training users": num_training_users,
        "device": str(device),
    }


def build_evaluation_report(
    evaluation: Evaluation,
    train: DeviceInteractions,
    item_counts: np.ndarray,
    *,
    title: str,
    source: str,
    details: Mapping[str, Any],
    notes: Sequence[str] = (),
    records: Sequence[EpochRecord] = (),
    refit_records: Sequence[EpochRecord] = (),
    best_epoch: int | None = None,
) -> dict[str, Any]:
    """The ``build_report`` dict of ``evaluation``: its per-user values and lists brought to the host,
    each evaluated user's training-history length from ``train``, item popularity ``item_counts`` [N]."""

    def host(values: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {name: v.detach().cpu().numpy() for name, v in values.items()}

    history = (train.indptr[1:] - train.indptr[:-1])[evaluation.users]
    inputs = ReportInputs(
        title=title,
        source=source,
        ks=evaluation.ks,
        k=evaluation.k,
        model_metrics=evaluation.metrics,
        baseline_metrics=evaluation.most_popular,
        comparison=evaluation.to_json()["vs_most_popular"],
        model_values=host(evaluation.model_ranking.values),
        baseline_values=host(evaluation.popular_ranking.values),
        history_lengths=history.cpu().numpy(),
        item_counts=np.asarray(item_counts),
        model_top=evaluation.model_ranking.top_items.cpu().numpy(),
        baseline_top=evaluation.popular_ranking.top_items.cpu().numpy(),
        epochs=[asdict(r) for r in records],
        refit_epochs=[asdict(r) for r in refit_records],
        best_epoch=best_epoch,
        details=details,
        notes=notes,
    )
    return build_report(inputs)


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
