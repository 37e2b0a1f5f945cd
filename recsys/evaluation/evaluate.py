"""A trained model's evaluation on held-out data, beside the most-popular baseline computed over the
same users with the same masks, and the report a person reads (``report.html`` with the
``report.json`` behind it). The training job and ``recsys evaluate`` both call it."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from recsys.data.device import DeviceInteractions, HeldOut
from recsys.data.features import FeatureArrays, FeatureEncoding, multi_hot
from recsys.evaluation.protocols import (
    Comparison,
    RankingReport,
    beyond_accuracy,
    compare_rankings,
    cutoffs,
    full_ranking,
    popular_ranking,
    sampled_ranking,
)
from recsys.evaluation.report import ReportInputs, build_report, draw_charts, write_report_files
from recsys.evaluation.summary import side_by_side, verdict
from recsys.models.ncf import NCF

if TYPE_CHECKING:
    from recsys.config import TrainConfig
    from recsys.models.ncf import ModelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics on held-out data, beside the most-popular baseline's on the same users."""

    metrics: dict[str, float]  # every metric of the model: full ranking (with SEs), sampled, beyond accuracy
    most_popular: dict[str, float]  # full-ranking metrics of the most-popular baseline
    comparison: Comparison  # NDCG@10 of the two, paired over users
    ks: tuple[int, ...]  # the cut-offs of the accuracy metrics
    k: int  # the cut-off of the beyond-accuracy metrics (eval_k, at most the catalogue)
    # Per-user values and lists of both, over ``users`` in the same order: the report's segments.
    model_ranking: RankingReport
    popular_ranking: RankingReport
    users: torch.Tensor  # [U_eval] the evaluated users

    def to_json(self) -> dict[str, Any]:
        return {
            "most_popular": self.most_popular,
            "vs_most_popular": {**self.comparison.to_json(), "verdict": verdict(self.comparison)},
        }


@dataclass(frozen=True)
class ItemStatistics:
    """What the beyond-accuracy metrics and the most-popular baseline know of the catalogue."""

    counts: Tensor  # [N] training interactions per item: the most-popular baseline ranks by them
    popularity: Tensor  # [N] float, interactions per training user: novelty's item probabilities
    features: Tensor | None  # [N, F] multi-hot attributes for intra-list diversity, None without any

    @classmethod
    def build(
        cls,
        counts: np.ndarray,
        *,
        num_users: int,
        encoding: FeatureEncoding,
        arrays: FeatureArrays,
        device: torch.device,
    ) -> ItemStatistics:
        """From ``counts`` [N] over ``num_users`` training users and the items' attribute encoding."""
        features = multi_hot(encoding, arrays)
        return cls(
            torch.from_numpy(counts).to(device),
            torch.from_numpy(counts / max(num_users, 1)).float().to(device),
            torch.from_numpy(features).to(device) if features is not None else None,
        )


@dataclass(frozen=True)
class EvaluationSettings:
    """How a model is evaluated: explicit values, so that evaluation needs no training config."""

    ks: tuple[int, ...]  # the accuracy metrics' cut-offs
    k: int  # the cut-off of the sampled protocol and of the beyond-accuracy metrics
    history_length: int  # the model's: how many of each user's latest events it reads
    sampled_negatives: int  # per held-out item in the sampled protocol
    seed: int  # of the sampled protocol's negatives

    @classmethod
    def of(cls, config: TrainConfig, history_length: int) -> EvaluationSettings:
        """The settings a training job's hyperparameters give (``eval_k``, ``sampled_eval_negatives``,
        ``seed``) for a model reading ``history_length`` events."""
        return cls(
            cutoffs(config.eval_k), config.eval_k, history_length, config.sampled_eval_negatives, config.seed
        )


def evaluate_model(
    model: NCF,
    train: DeviceInteractions,
    held: HeldOut,
    items: ItemStatistics,
    settings: EvaluationSettings,
) -> Evaluation:
    """Every metric (full ranking at each of ``settings.ks`` with standard errors; the sampled
    protocol and the beyond-accuracy metrics at ``settings.k``), and the most-popular baseline
    ranked by ``items.counts`` over the same users with the same masks."""
    ks, k, history_length = settings.ks, settings.k, settings.history_length
    sampled_negatives, seed = settings.sampled_negatives, settings.seed
    model.eval()
    users = torch.nonzero(held.counts > 0).squeeze(1)
    report = full_ranking(model, train, held, ks, history_length=history_length, users=users)
    out = report.summary()
    generator = torch.Generator(device=held.items.device)
    generator.manual_seed(seed)
    out.update(
        sampled_ranking(
            model,
            train,
            held,
            k,
            num_negatives=sampled_negatives,
            history_length=history_length,
            generator=generator,
        )
    )
    lists_k = min(k, report.top_items.shape[1])

    def lists_properties(ranking: RankingReport) -> dict[str, float]:
        return beyond_accuracy(
            ranking.top_items,
            num_items=model.config.num_items,
            item_popularity=items.popularity,
            num_users=train.num_users,
            item_features=items.features,
            k=lists_k,
        )

    out.update(lists_properties(report))
    popular = popular_ranking(items.counts, train, held, ks, users=users)
    baseline = {**popular.summary(), **lists_properties(popular)}
    comparison = compare_rankings(report, popular, "ndcg@10")
    return Evaluation(out, baseline, comparison, ks, lists_k, report, popular, users)


def log_evaluation(evaluation: Evaluation, *, title: str) -> list[str]:
    """Log the model beside the most-popular baseline; return the warnings (also logged)."""
    logger.info("%s", title)
    for line in side_by_side(evaluation.metrics, evaluation.most_popular, evaluation.ks):
        logger.info("  %s", line)
    message = verdict(evaluation.comparison)
    if evaluation.comparison.clearly_better:
        logger.info("%s", message)
        return []
    logger.warning("%s", message)
    return [message]


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
    epochs: Sequence[Mapping[str, Any]] = (),
    refit_epochs: Sequence[Mapping[str, Any]] = (),
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
        epochs=list(epochs),
        refit_epochs=list(refit_epochs),
        best_epoch=best_epoch,
        details=details,
        notes=notes,
    )
    return build_report(inputs)
