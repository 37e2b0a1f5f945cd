"""Recommendation quality on MovieLens-100K: the project against sequential and classic references.

Run from the repository root::

    python -m benchmarks.quality                        # protocols A, B and cold users, every model
    python -m benchmarks.quality --protocol a --hyperparameters '{"epochs": "5"}'
    python -m benchmarks.quality --variant 'attention={"history_encoder": "attention"}'
    python -m benchmarks.quality --protocol a --references none --variant 'no time={"time_features": "false"}'
    python -m benchmarks.quality --validation-only --variant 'attention={"history_encoder": "attention"}'
    python -m benchmarks.quality --json                 # the side-by-side table as JSON on stdout
    python -m benchmarks.quality --markdown             # ... as a markdown table (for the README)

For each protocol the project is trained exactly as SageMaker would train it: a
``$SAGEMAKER_BASE_DIR`` tree with the ``train``, ``items`` and ``users`` channels (no ``validation``
channel, so the job holds out each user's latest training interaction itself), hyperparameters.json
holding only the overrides given here, and ``python -m recsys train`` as a child process. The saved
model is then scored by ``recsys evaluate --json`` on the held-out interactions (protocols A and B),
or through the serving engine (cold users). Each ``--variant NAME=JSON`` adds a row: the project
trained with those hyperparameters on top of ``--hyperparameters``.

The references see the same training interactions and are scored with the same full-ranking protocol
(every catalogue item ranked, the user's training items excluded, metrics from
``recsys.evaluation.metrics``):

* most-popular: items ranked by how many training users interacted with them;
* EASE (Steck 2019), whose l2 is chosen by validation NDCG@10 (the validation set is carved out of
  the training part the way the test set was carved out of the whole; EASE is fitted on the rest)
  and then refitted on the whole training part;
* SASRec and GRU4Rec (``benchmarks.sequential``), full softmax, early-stopped on each user's latest
  training interaction; the dropout grid is searched on protocol A's validation data and the chosen
  dropout reused for B and cold users (each still early-stopped on its own validation data). The
  early-stopped model then ranks from the user's whole training history (validation item included),
  as the project's default ``final_fit=best_checkpoint`` does: no refit.

Protocols:

* A: leave-one-out by time; each user's latest interaction is the test set.
* B: each user's latest 5 interactions are the test set (users with more than 5); lower variance.
* cold: 10% of users (seeded) never seen in training; each one's oldest 80% of interactions (by time)
  is the request history, the newest 20% are all judged. The project answers real requests
  ``{"history": [{"item_id": ..., "timestamp": ...}, ...], "k": 10, "context": {"timestamp": t}}``
  (t: the user's first judged interaction, the moment they come back) through ``recsys.serving``
  (request validation, then the in-process
  ``Recommender`` loaded from the saved artifact: the same engine ``recsys serve`` runs, without HTTP);
  the references rank from the same histories, with the history's items excluded.

MovieLens-100K holds each (user, item) pair once, so no test item repeats a training item: ``recsys
evaluate`` dropping repeats and the references counting them as misses agree (the count is reported).

Training time is the whole fit's wall time (the project: the ``recsys train`` child process, from
start to exit; a sequential reference: every dropout tried, validation included; EASE: the l2 search
and the refit); samples/s counts predicted positives per second of optimiser steps (the project's
``samples_per_second`` log lines; a reference's predicted positions).

On a machine that other jobs share, threads oversubscribe the cores and every model slows down many
times over (measured: 150 s instead of 9 s per epoch of the project's job); there run
``OMP_NUM_THREADS=1 python -m benchmarks.quality --threads 1`` (the job honours OMP_NUM_THREADS).
The references' time budget is wall-clock, so a slow machine buys them fewer epochs: the epochs run
are in the details below the table.

``--validation-only`` is how settings are chosen without looking at a test item: protocol A's
training part alone, each project row trained on it through the contract (the job holds out each
user's latest remaining interaction as its validation set and early-stops on it) and reported by
the job's own validation figures; most-popular and EASE (its l2 chosen on that same validation set)
are scored on each user's latest training interaction for scale (same-second ties may break
differently from the job's, which orders them by item). The test items are dropped unread; no
reference is trained.

Progress goes to stderr; the table to stdout; every figure to ``benchmarks/.cache/quality.json`` and
the markdown table to ``benchmarks/.cache/quality.md``. Run directories (channels, model, training
log) stay under ``benchmarks/.cache/runs/`` for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.baselines import (
    EASE_L2_GRID,
    choose_ease_l2,
    ease_fit,
    ease_scores,
    full_ranking_metrics,
    interaction_matrix,
    most_popular_scores,
    ranked_list_metrics,
    relevant_items,
)
from benchmarks.movielens import CACHE, MovieLens, fetch, load, split_last
from benchmarks.sequential import (
    Architecture,
    TrainingSettings,
    TunedReference,
    Validation,
    build_sequences,
    score_next_items,
    tune_sequence_model,
)
from recsys.sagemaker.contract import (
    BASE_DIR_ENV,
    CHANNEL_ITEMS,
    CHANNEL_TRAIN,
    CHANNEL_USERS,
    ContainerPaths,
)

K = 10
REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS = CACHE / "runs"
RESULTS_FILE = CACHE / "quality.json"
MARKDOWN_FILE = CACHE / "quality.md"
VALIDATION_FILE = CACHE / "quality_validation.json"
DEFAULT_LABEL = "recsys default"
REFERENCE_LABELS: dict[Architecture, str] = {"sasrec": "SASRec ref", "gru4rec": "GRU4Rec ref"}
# The target: the project's training within this many seconds.
TARGET_TRAINING_SECONDS = 180.0
INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
# One per-epoch log line of the training job, e.g. "... epoch=3 train_loss=0.41 ... samples_per_second=92162"
# or "refit_epoch=3 ..." for the refit on all data.
EPOCH_LINE = re.compile(
    r"(?:^|\s)(?P<phase>\w*epoch)=(?P<epoch>\d+)\s.*\bsamples_per_second=(?P<rate>[0-9.]+)"
)


@dataclass(frozen=True)
class Protocol:
    key: str
    title: str
    test_size: int  # each user's latest this-many interactions are held out for the test
    validation_size: int  # the same, within the training part, to choose EASE's l2


PROTOCOLS: dict[str, Protocol] = {
    "a": Protocol(
        "a", "Protocol A: leave-one-out by time (each user's latest interaction is the test)", 1, 1
    ),
    "b": Protocol("b", "Protocol B: each user's latest 5 interactions are the test (users with > 5)", 5, 5),
}
COLD_TITLE = (
    "Cold users: 10% of users never trained on; oldest 80% of each one's interactions is the request "
    "history, the newest 20% are judged"
)
PROTOCOL_CHOICES = {
    "a": ("a",),
    "b": ("b",),
    "cold": ("cold",),
    "both": ("a", "b"),
    "all": ("a", "b", "cold"),
}


@dataclass(frozen=True)
class Variant:
    """A row of the project: a label and the hyperparameters (as strings) its jobs get."""

    label: str
    hyperparameters: dict[str, str]


@dataclass(frozen=True)
class ReferenceSettings:
    """Which sequential references run, and how they are trained and tuned."""

    architectures: tuple[Architecture, ...] = ("sasrec", "gru4rec")
    dropouts: tuple[float, ...] = (0.2, 0.5)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    # Wall-clock seconds of one reference on one protocol, shared by its dropouts (None: no cap).
    budget_s: float | None = 180.0


@dataclass(frozen=True)
class TrainingRun:
    wall_seconds: float
    peak_rss_mib: float
    samples_per_second: float | None  # mean over every per-epoch log line, all phases
    epoch_lines: int
    job_metrics: dict[str, Any]  # the job's own output/data/metrics.json


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def hyperparameter_strings(overrides: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker hands every hyperparameter over as a string; non-strings are JSON-encoded."""
    return {name: value if isinstance(value, str) else json.dumps(value) for name, value in overrides.items()}


def write_job(
    base: Path, train: pd.DataFrame, data: MovieLens, hyperparameters: Mapping[str, str]
) -> ContainerPaths:
    """A fresh SageMaker training tree under ``base``: train/items/users channels and hyperparameters."""
    if base.exists():
        shutil.rmtree(base)
    paths = ContainerPaths(base)
    for channel, frame, name in (
        (CHANNEL_TRAIN, train[INTERACTION_COLUMNS], "interactions.csv"),
        (CHANNEL_ITEMS, data.items, "items.csv"),
        (CHANNEL_USERS, data.users, "users.csv"),
    ):
        folder = paths.channel_dir(channel)
        folder.mkdir(parents=True)
        frame.to_csv(folder / name, index=False)
    paths.input_config_dir.mkdir(parents=True)
    paths.hyperparameters_file.write_text(json.dumps(dict(hyperparameters), indent=1))
    return paths


def run_training(paths: ContainerPaths, log_file: Path) -> TrainingRun:
    """``python -m recsys train`` against ``paths``: wall time, the child's peak RSS, throughput."""
    environ = dict(os.environ)
    environ[BASE_DIR_ENV] = str(paths.base)
    rates: list[float] = []
    start = time.perf_counter()
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "recsys", "train"],
            cwd=REPO_ROOT,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None  # stdout=PIPE above
        for line in process.stdout:
            log.write(line)
            match = EPOCH_LINE.search(line)
            if match:
                rates.append(float(match["rate"]))
                _progress("  " + line[match.start("phase") :].strip())
        # wait4 reaps this child alone and returns its own rusage, so the peak RSS is this job's even
        # after other children (an earlier protocol's job, pip) ran; ru_maxrss is in KiB on Linux.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall_seconds = time.perf_counter() - start
    if process.returncode != 0:
        failure = paths.failure_file.read_text() if paths.failure_file.exists() else "(no failure file)"
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-20:])
        raise SystemExit(
            f"recsys train exited {process.returncode}; failure: {failure}\nlog tail ({log_file}):\n{tail}"
        )
    metrics_file = paths.output_data_dir / "metrics.json"
    job_metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return TrainingRun(
        wall_seconds=wall_seconds,
        peak_rss_mib=usage.ru_maxrss / 1024.0,
        samples_per_second=float(np.mean(rates)) if rates else None,
        epoch_lines=len(rates),
        job_metrics=job_metrics,
    )


def run_evaluate(model_dir: Path, test_file: Path) -> dict[str, Any]:
    """``recsys evaluate --json`` of the saved model on ``test_file``."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "recsys",
            "evaluate",
            "--model-dir",
            str(model_dir),
            "--test",
            str(test_file),
            "--k",
            str(K),
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(
            f"recsys evaluate exited {completed.returncode}:\n{completed.stderr}{completed.stdout}"
        )
    # Log lines share stdout with the JSON object, which starts on a line of its own.
    lines = completed.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "{"), None)
    if start is None:
        raise SystemExit(f"recsys evaluate printed no JSON object:\n{completed.stdout}")
    metrics: dict[str, Any] = json.loads("\n".join(lines[start:]))
    return metrics


@dataclass(frozen=True)
class Catalogue:
    """Row and column order of the references' matrices: the same catalogue the job builds (users of
    the training part; items of the training part and of the items table)."""

    users: pd.Index
    items: pd.Index

    @classmethod
    def of(cls, train: pd.DataFrame, data: MovieLens) -> Catalogue:
        users = pd.Index(sorted(train["user_id"].astype(str).unique()))
        items = pd.Index(sorted(set(train["item_id"].astype(str)) | set(data.items["item_id"].astype(str))))
        return cls(users, items)


@dataclass(frozen=True)
class ColdSplit:
    """Cold users held out of training entirely; their histories and judged interactions."""

    train: pd.DataFrame  # every interaction of the other users
    history: pd.DataFrame  # each cold user's oldest interactions: what a request carries
    judged: pd.DataFrame  # each cold user's newest interactions: what is scored
    cold_users: tuple[str, ...]


def split_cold_users(
    interactions: pd.DataFrame, *, fraction: float = 0.1, history_share: float = 0.8, seed: int = 42
) -> ColdSplit:
    """``fraction`` of the users (at least one, drawn with ``seed``) leave training entirely.

    Each cold user's interactions are ordered by time (ties by row order, as ``split_last``); the
    oldest ``floor(history_share * n)`` (at least one) form the request history, the rest are
    judged. Raises ``ValueError`` for a fraction or share outside (0, 1).
    """
    if not 0.0 < fraction < 1.0 or not 0.0 < history_share < 1.0:
        raise ValueError(f"fraction and history_share must lie in (0, 1); got {fraction}, {history_share}")
    ordered = interactions.reset_index(drop=True)
    ordered["_row"] = np.arange(len(ordered))
    ordered["user_id"] = ordered["user_id"].astype(str)
    ordered = ordered.sort_values(["user_id", "timestamp", "_row"], kind="stable")
    users = np.array(sorted(ordered["user_id"].unique()))
    count = min(len(users) - 1, max(1, round(fraction * len(users))))
    cold = set(np.random.default_rng(seed).choice(users, size=count, replace=False).tolist())
    is_cold = ordered["user_id"].isin(cold).to_numpy()
    rank = ordered.groupby("user_id").cumcount().to_numpy()
    size = ordered.groupby("user_id")["item_id"].transform("size").to_numpy()
    history_count = np.maximum(1, np.floor(history_share * size))
    columns = [c for c in ordered.columns if c != "_row"]
    return ColdSplit(
        train=ordered.loc[~is_cold, columns].reset_index(drop=True),
        history=ordered.loc[is_cold & (rank < history_count), columns].reset_index(drop=True),
        judged=ordered.loc[is_cold & (rank >= history_count), columns].reset_index(drop=True),
        cold_users=tuple(sorted(cold)),
    )


def _training_figures(seconds: float, samples_per_second: float | None, **extra: Any) -> dict[str, Any]:
    return {"wall_seconds": seconds, "samples_per_second": samples_per_second, **extra}


def _project_training(run: TrainingRun, base: Path) -> dict[str, Any]:
    job = run.job_metrics
    return _training_figures(
        run.wall_seconds,
        run.samples_per_second,
        peak_rss_mib=run.peak_rss_mib,
        epoch_lines=run.epoch_lines,
        epochs_run=job.get("epochs_run"),
        best_epoch=job.get("best_epoch"),
        # The job's own validation figures (NDCG@10 and the rest, with standard errors).
        validation=job.get("validation"),
        run_dir=str(base),
    )


def train_project(
    base: Path, train: pd.DataFrame, data: MovieLens, variant: Variant, tag: str
) -> tuple[ContainerPaths, dict[str, Any]]:
    """One ``recsys train`` job of ``variant`` on ``train``: its paths and training figures."""
    paths = write_job(base, train, data, variant.hyperparameters)
    log_file = base / "train.log"
    _progress(f"[{tag}] training {variant.label} through the contract (log: {log_file})")
    return paths, _project_training(run_training(paths, log_file), base)


def ease_and_popular(
    X: np.ndarray,
    fit_part: pd.DataFrame,
    validation: pd.DataFrame,
    catalogue: Catalogue,
    query_rows: np.ndarray,
    relevant: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """Most-popular and validation-tuned EASE fitted on ``X`` [U, N] (the training users), ranking
    for the users whose interaction rows are ``query_rows`` [Q, N] (seen items there are excluded)."""
    X_fit = interaction_matrix(fit_part, catalogue.users, catalogue.items)
    validation_relevant, _ = relevant_items(validation, catalogue.users, catalogue.items)
    start = time.perf_counter()
    l2, validation_ndcg = choose_ease_l2(X_fit, validation_relevant, EASE_L2_GRID, K)
    weights = ease_fit(X, l2)
    ease_seconds = time.perf_counter() - start
    start = time.perf_counter()
    popularity = most_popular_scores(X)[:1]
    popular_seconds = time.perf_counter() - start
    return {
        "models": {
            "most-popular": full_ranking_metrics(
                np.broadcast_to(popularity, query_rows.shape).copy(), query_rows, relevant, K
            ),
            "EASE": full_ranking_metrics(ease_scores(query_rows, weights), query_rows, relevant, K),
        },
        "training": {
            "most-popular": _training_figures(popular_seconds, None),
            "EASE": _training_figures(ease_seconds, None, l2=l2),
        },
        "ease_l2": l2,
        f"ease_validation_ndcg@{K}": {str(key): value for key, value in validation_ndcg.items()},
    }


def train_references(
    train: pd.DataFrame,
    catalogue: Catalogue,
    settings: ReferenceSettings,
    dropouts: Mapping[Architecture, tuple[float, ...]],
    tag: str,
) -> dict[Architecture, TunedReference]:
    """Each reference trained on ``train`` without each user's latest interaction, early-stopped on
    that interaction; one fit per dropout in ``dropouts[architecture]``, the best kept."""
    fit_part, validation = split_last(train, 1)
    sequences = build_sequences(fit_part, catalogue.users, catalogue.items)
    validation_relevant, _ = relevant_items(validation, catalogue.users, catalogue.items)
    checked = Validation(
        sequences, validation_relevant, interaction_matrix(fit_part, catalogue.users, catalogue.items)
    )
    tuned: dict[Architecture, TunedReference] = {}
    for architecture in settings.architectures:
        grid = dropouts[architecture]
        _progress(f"[{tag}] training {REFERENCE_LABELS[architecture]} (dropout {list(grid)})")
        per_fit = settings.budget_s / len(grid) if settings.budget_s is not None else None
        tuned[architecture] = tune_sequence_model(
            architecture,
            len(catalogue.items),
            sequences,
            checked,
            replace(settings.training, time_budget_s=per_fit),
            grid,
        )
        summary = tuned[architecture].summary()
        _progress(
            f"  dropout {summary['dropout']}, best epoch {summary['best_epoch']}, validation NDCG@{K} "
            f"{summary[f'validation_ndcg@{K}']:.4f}, {summary['wall_seconds']:.1f} s"
        )
    return tuned


def reference_rows(
    tuned: Mapping[Architecture, TunedReference],
    histories: Sequence[np.ndarray],
    seen: np.ndarray,
    relevant: Sequence[Sequence[int]],
) -> dict[str, Any]:
    """The tuned references ranking from ``histories`` (one per row of ``seen`` [Q, N])."""
    models, training, details = {}, {}, {}
    for architecture, reference in tuned.items():
        label = REFERENCE_LABELS[architecture]
        scores = score_next_items(reference.best.model, histories)
        models[label] = full_ranking_metrics(scores, seen, relevant, K)
        training[label] = _training_figures(reference.wall_seconds, reference.samples_per_second)
        details[label] = reference.summary()
    return {"models": models, "training": training, "references": details}


def run_protocol(
    data: MovieLens,
    protocol: Protocol,
    variants: Sequence[Variant],
    references: ReferenceSettings,
    dropouts: Mapping[Architecture, tuple[float, ...]],
) -> tuple[dict[str, Any], dict[Architecture, TunedReference]]:
    """Protocol A or B: every model trained on the same training part and scored on the same test."""
    tag = protocol.key
    train, test = split_last(data.interactions, protocol.test_size)
    catalogue = Catalogue.of(train, data)
    X = interaction_matrix(train, catalogue.users, catalogue.items)
    relevant, skipped = relevant_items(test, catalogue.users, catalogue.items)
    models: dict[str, Any] = {}
    training: dict[str, Any] = {}
    project_details: dict[str, Any] = {}
    base = RUNS / f"protocol_{protocol.key}"
    for index, variant in enumerate(variants):
        run_dir = base / f"variant_{index}"
        paths, training[variant.label] = train_project(run_dir, train, data, variant, tag)
        test_file = run_dir / "test.csv"
        test[INTERACTION_COLUMNS].to_csv(test_file, index=False)
        _progress(f"[{tag}] evaluating {variant.label} on {len(test)} held-out interactions")
        metrics = run_evaluate(paths.model_dir, test_file)
        models[variant.label] = metrics
        project_details[variant.label] = {
            "hyperparameters": variant.hyperparameters,
            f"sampled_hr@{K}": metrics.get(f"sampled_hr@{K}"),
            f"sampled_ndcg@{K}": metrics.get(f"sampled_ndcg@{K}"),
            "repeat_interactions": metrics.get("repeat_interactions"),
            "skipped_interactions": metrics.get("skipped_interactions"),
        }
    _progress(f"[{tag}] most-popular and EASE (l2 grid {list(EASE_L2_GRID)})")
    fit_part, validation = split_last(train, protocol.validation_size)
    baselines = ease_and_popular(X, fit_part, validation, catalogue, X, relevant)
    tuned = train_references(train, catalogue, references, dropouts, tag)
    sequences = build_sequences(train, catalogue.users, catalogue.items)
    seq = reference_rows(tuned, sequences, X, relevant)
    repeats = int(sum(X[u, i] > 0 for u, items in enumerate(relevant) for i in items))
    result = {
        "title": protocol.title,
        "test_size": protocol.test_size,
        "ease_validation_size": protocol.validation_size,
        "num_users": len(catalogue.users),
        "num_items": len(catalogue.items),
        "train_interactions": len(train),
        "test_interactions": len(test),
        "skipped_test_interactions": skipped,
        "repeat_test_interactions": repeats,
        "models": {**baselines["models"], **seq["models"], **models},
        "training": {**baselines["training"], **seq["training"], **training},
        "ease_l2": baselines["ease_l2"],
        f"ease_validation_ndcg@{K}": baselines[f"ease_validation_ndcg@{K}"],
        "references": seq["references"],
        "project": project_details,
    }
    return result, tuned


def cold_requests(
    history: pd.DataFrame, judged: pd.DataFrame, users: Sequence[str], k: int
) -> list[dict[str, Any]]:
    """Each cold user's request as a client in the present sends it: their events, oldest first
    with their times, and the moment of their first judged interaction as the request's time."""
    ordered = history.assign(_row=np.arange(len(history))).sort_values(["timestamp", "_row"], kind="stable")
    events: dict[str, list[dict[str, Any]]] = {user: [] for user in users}
    for user, item, stamp in zip(
        ordered["user_id"].astype(str), ordered["item_id"].astype(str), ordered["timestamp"], strict=True
    ):
        events[user].append({"item_id": item, "timestamp": float(stamp)})
    first = judged.groupby(judged["user_id"].astype(str))["timestamp"].min()
    requests = []
    for user in users:
        request: dict[str, Any] = {"history": events[user], "k": k}
        if user in first.index:
            request["context"] = {"timestamp": float(first[user])}
        requests.append(request)
    return requests


def serve_cold_users(model_dir: Path, requests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each request, as JSON would carry it, validated by the serving schemas and answered by the
    ``Recommender`` loaded from the saved artifact (in process)."""
    from recsys.serving.engine import Recommender
    from recsys.serving.schemas import parse_instances

    start = time.perf_counter()
    recommender = Recommender.load(model_dir)
    load_seconds = time.perf_counter() - start
    queries = parse_instances([dict(request) for request in requests])
    start = time.perf_counter()
    answers = recommender.recommend(queries)
    seconds = time.perf_counter() - start
    return {
        "lists": [answer.item_ids for answer in answers],
        "fallbacks": sum(answer.fallback for answer in answers),
        "load_seconds": load_seconds,
        "requests_per_second": len(queries) / max(seconds, 1e-9),
    }


def run_cold(
    data: MovieLens,
    variants: Sequence[Variant],
    references: ReferenceSettings,
    dropouts: Mapping[Architecture, tuple[float, ...]],
    seed: int,
) -> dict[str, Any]:
    """Cold users: every model trained without them, asked with their oldest 80%."""
    tag = "cold"
    split = split_cold_users(data.interactions, seed=seed)
    catalogue = Catalogue.of(split.train, data)
    cold_index = pd.Index(split.cold_users)
    history_rows = interaction_matrix(split.history, cold_index, catalogue.items)
    relevant, skipped = relevant_items(split.judged, cold_index, catalogue.items)
    histories = build_sequences(split.history, cold_index, catalogue.items)
    requests = cold_requests(split.history, split.judged, split.cold_users, K)
    # The users table without the cold users: the job knows nothing about them.
    warm = replace(data, users=data.users[~data.users["user_id"].astype(str).isin(set(split.cold_users))])
    models: dict[str, Any] = {}
    training: dict[str, Any] = {}
    serving: dict[str, Any] = {}
    for index, variant in enumerate(variants):
        paths, training[variant.label] = train_project(
            RUNS / "protocol_cold" / f"variant_{index}", split.train, warm, variant, tag
        )
        _progress(f"[{tag}] {len(histories)} history requests to {variant.label} through recsys.serving")
        answered = serve_cold_users(paths.model_dir, requests)
        lists = [catalogue.items.get_indexer(pd.Index(ids)).tolist() for ids in answered.pop("lists")]
        models[variant.label] = ranked_list_metrics(lists, relevant, K)
        serving[variant.label] = answered
    _progress(f"[{tag}] most-popular and EASE (l2 grid {list(EASE_L2_GRID)})")
    X = interaction_matrix(split.train, catalogue.users, catalogue.items)
    fit_part, validation = split_last(split.train, 1)
    baselines = ease_and_popular(X, fit_part, validation, catalogue, history_rows, relevant)
    tuned = train_references(split.train, catalogue, references, dropouts, tag)
    seq = reference_rows(tuned, histories, history_rows, relevant)
    return {
        "title": COLD_TITLE,
        "cold_users": len(split.cold_users),
        "num_users": len(catalogue.users),
        "num_items": len(catalogue.items),
        "train_interactions": len(split.train),
        "history_interactions": len(split.history),
        "judged_interactions": len(split.judged),
        "skipped_judged_interactions": skipped,
        "models": {**baselines["models"], **seq["models"], **models},
        "training": {**baselines["training"], **seq["training"], **training},
        "ease_l2": baselines["ease_l2"],
        f"ease_validation_ndcg@{K}": baselines[f"ease_validation_ndcg@{K}"],
        "references": seq["references"],
        "serving": serving,
    }


VALIDATION_TITLE = (
    "Validation only: protocol A's training part; each user's latest remaining interaction is the "
    "validation set; the test items are never scored"
)


def run_validation_only(data: MovieLens, variants: Sequence[Variant]) -> dict[str, Any]:
    """Every project row trained on protocol A's training part and judged by its job's validation
    figures, beside most-popular and validation-tuned EASE on the same users' latest interaction."""
    tag = "validation"
    # Protocol A's test items are cut off here and never read again.
    train, _ = split_last(data.interactions, PROTOCOLS["a"].test_size)
    catalogue = Catalogue.of(train, data)
    fit_part, validation = split_last(train, 1)
    X_fit = interaction_matrix(fit_part, catalogue.users, catalogue.items)
    relevant, _ = relevant_items(validation, catalogue.users, catalogue.items)
    models: dict[str, Any] = {}
    training: dict[str, Any] = {}
    for index, variant in enumerate(variants):
        _, figures = train_project(RUNS / "validation" / f"variant_{index}", train, data, variant, tag)
        job_validation = figures.get("validation")
        if not job_validation:
            raise SystemExit(f"the job of {variant.label!r} wrote no validation figures")
        models[variant.label] = job_validation
        training[variant.label] = figures
    _progress(f"[{tag}] most-popular and EASE (l2 grid {list(EASE_L2_GRID)})")
    l2, by_l2 = choose_ease_l2(X_fit, relevant, EASE_L2_GRID, K)
    popularity = most_popular_scores(X_fit)[:1]
    baselines = {
        "most-popular": full_ranking_metrics(
            np.broadcast_to(popularity, X_fit.shape).copy(), X_fit, relevant, K
        ),
        "EASE": full_ranking_metrics(ease_scores(X_fit, ease_fit(X_fit, l2)), X_fit, relevant, K),
    }
    return {
        "title": VALIDATION_TITLE,
        "num_users": len(catalogue.users),
        "num_items": len(catalogue.items),
        "train_interactions": len(train),
        "models": {**baselines, **models},
        "training": training,
        "ease_l2": l2,
        f"ease_validation_ndcg@{K}": {str(key): value for key, value in by_l2.items()},
    }


def format_validation_markdown(result: Mapping[str, Any]) -> str:
    """The validation-only table: one row per model, NDCG@10 ± SE, HR@10, epochs and training time."""
    lines = [
        f"| model | val NDCG@{K} | val HR@{K} | best epoch (of) | train s |",
        "|---|---|---|---|---|",
    ]
    for label, metrics in result["models"].items():
        figures = result["training"].get(label, {})
        epochs = f"{figures['best_epoch']} ({figures['epochs_run']})" if figures.get("epochs_run") else "n/a"
        seconds = f"{figures['wall_seconds']:.0f}" if "wall_seconds" in figures else "n/a"
        lines.append(
            f"| {label} | {metrics[f'ndcg@{K}']:.4f} ± {metrics[f'ndcg@{K}_se']:.4f} "
            f"| {metrics[f'hr@{K}']:.4f} | {epochs} | {seconds} |"
        )
    return "\n".join(lines)


# -- the table ----------------------------------------------------------------------------------

# (key, header, protocol, metric, with its standard error)
COLUMNS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("a_ndcg", f"A NDCG@{K}", "a", f"ndcg@{K}", True),
    ("a_hr", f"A HR@{K}", "a", f"hr@{K}", False),
    ("b_ndcg", f"B NDCG@{K}", "b", f"ndcg@{K}", True),
    ("cold_ndcg", f"cold NDCG@{K}", "cold", f"ndcg@{K}", True),
    ("cold_hr", f"cold HR@{K}", "cold", f"hr@{K}", False),
    ("cold_recall", f"cold Recall@{K}", "cold", f"recall@{K}", False),
)


def table_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model: metric values (and standard errors), training seconds and samples/s of the
    first protocol run (A when run), in the order most-popular, EASE, references, project rows."""
    protocols: Mapping[str, Any] = results["protocols"]
    labels: list[str] = []
    for result in protocols.values():
        labels += [label for label in result["models"] if label not in labels]
    fixed = ["most-popular", "EASE", *REFERENCE_LABELS.values()]
    labels = [label for label in fixed if label in labels] + [label for label in labels if label not in fixed]
    timed = next(iter(protocols), None)
    rows = []
    for label in labels:
        row: dict[str, Any] = {"model": label}
        for key, _, protocol, metric, _ in COLUMNS:
            metrics = protocols.get(protocol, {}).get("models", {}).get(label)
            row[key] = metrics.get(metric) if metrics else None
            row[f"{key}_se"] = metrics.get(f"{metric}_se") if metrics else None
        figures = protocols[timed]["training"].get(label, {}) if timed else {}
        row["training_protocol"] = timed
        row["training_seconds"] = figures.get("wall_seconds")
        row["samples_per_second"] = figures.get("samples_per_second")
        rows.append(row)
    return rows


def _value(row: Mapping[str, Any], key: str, with_se: bool) -> str:
    value, se = row.get(key), row.get(f"{key}_se")
    if value is None:
        return "n/a"
    return f"{value:.4f} ± {se:.4f}" if with_se and se is not None else f"{value:.4f}"


def _row_cells(row: Mapping[str, Any]) -> list[str]:
    seconds, rate = row.get("training_seconds"), row.get("samples_per_second")
    return (
        [str(row["model"])]
        + [_value(row, key, with_se) for key, _, _, _, with_se in COLUMNS]
        + [f"{seconds:.1f}" if seconds is not None else "n/a", f"{rate:,.0f}" if rate else "n/a"]
    )


def _headers(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    timed = next((row["training_protocol"] for row in rows if row.get("training_protocol")), None)
    suffix = f" ({timed})" if timed else ""
    return ["model", *(header for _, header, _, _, _ in COLUMNS), f"train s{suffix}", f"samples/s{suffix}"]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The side-by-side table as aligned plain text."""
    cells = [_headers(rows), *(_row_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The side-by-side table as a markdown table (pasteable into the README)."""
    headers = _headers(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_row_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def target_verdicts(results: Mapping[str, Any], labels: Sequence[str]) -> list[str]:
    """The issue's target per project row: NDCG@10 at least the better reference's on protocol A and
    on cold users, with training within ``TARGET_TRAINING_SECONDS``."""
    lines = []
    protocols = results["protocols"]
    for label in labels:
        parts = []
        for key in ("a", "cold"):
            result = protocols.get(key)
            if result is None or label not in result["models"]:
                continue
            references = {
                ref: result["models"][ref][f"ndcg@{K}"]
                for ref in REFERENCE_LABELS.values()
                if ref in result["models"]
            }
            ours = result["models"][label][f"ndcg@{K}"]
            seconds = result["training"][label]["wall_seconds"]
            if references:
                best = max(references, key=lambda ref: references[ref])
                met = ours >= references[best] and seconds <= TARGET_TRAINING_SECONDS
                parts.append(
                    f"{key}: {ours:.4f} vs {best} {references[best]:.4f}, {seconds:.0f} s training -> "
                    + ("met" if met else "not met")
                )
        if parts:
            lines.append(f"target ({label}): " + "; ".join(parts))
    return lines


def variant_deltas(results: Mapping[str, Any], labels: Sequence[str]) -> list[str]:
    """Each variant's NDCG@10 against the default row's, per protocol, also in units of the default's
    standard error: a feature that costs more than one standard error is a cost, not noise."""
    lines = []
    for key, result in results["protocols"].items():
        models = result["models"]
        base = models.get(DEFAULT_LABEL)
        if base is None:
            continue
        for label in labels:
            if label == DEFAULT_LABEL or label not in models:
                continue
            difference = models[label][f"ndcg@{K}"] - base[f"ndcg@{K}"]
            se = base[f"ndcg@{K}_se"]
            units = difference / se if se > 0 else 0.0
            verdict = "within one standard error" if abs(units) <= 1.0 else "more than one standard error"
            lines.append(
                f"{key}: {label} - {DEFAULT_LABEL} = {difference:+.4f} NDCG@{K} ({units:+.2f} SE): {verdict}"
            )
    return lines


def format_details(results: Mapping[str, Any]) -> str:
    lines = []
    for key, result in results["protocols"].items():
        lines.append(f"{key}: {result['title']}")
        lines.append(
            f"  {result['num_users']} training users, {result['num_items']} items, "
            f"{result['train_interactions']} training interactions, EASE l2 {result['ease_l2']:g}"
            + (
                f", {result['repeat_test_interactions']} test repeats"
                if "repeat_test_interactions" in result
                else ""
            )
        )
        for label, summary in result["references"].items():
            grid = ", ".join(
                f"{dropout}: {point[f'validation_ndcg@{K}']:.4f} "
                f"(epoch {point['best_epoch']} of {point['epochs_run']})"
                for dropout, point in summary["grid"].items()
            )
            lines.append(f"  {label}: dropout {summary['dropout']} chosen on validation NDCG@{K} ({grid})")
        for label, figures in result["training"].items():
            if figures.get("epochs_run") is not None:
                lines.append(
                    f"  {label}: {figures['epochs_run']} epochs (best {figures['best_epoch']}), "
                    f"peak RSS {figures['peak_rss_mib']:.0f} MiB"
                )
        for label, served in result.get("serving", {}).items():
            lines.append(
                f"  {label} served in process: {served['requests_per_second']:.0f} requests/s, "
                f"{served['fallbacks']} popular fallbacks, artifact loaded in {served['load_seconds']:.1f} s"
            )
    return "\n".join(lines)


# -- the command line ---------------------------------------------------------------------------


def _parse_overrides(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"epochs": "5"}\'')
    return hyperparameter_strings(value)


def _parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, sep, overrides = text.partition("=")
    if not sep or not label.strip():
        raise argparse.ArgumentTypeError(
            'give NAME=JSON, e.g. \'attention={"history_encoder": "attention"}\''
        )
    return label.strip(), _parse_overrides(overrides)


def _parse_floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("give at least one value")
    return values


def _parse_references(text: str) -> tuple[Architecture, ...]:
    if text == "none":
        return ()
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in REFERENCE_LABELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown references {unknown}; choose from sasrec, gru4rec or none")
    return tuple(name for name in REFERENCE_LABELS if name in names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="Train the project on MovieLens-100K through the SageMaker contract and compare its "
        "full-ranking HR@10 / NDCG@10 with SASRec, GRU4Rec, EASE and most-popular.",
    )
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOL_CHOICES),
        default="all",
        help="a: latest interaction per user; b: latest 5 per user; cold: unseen users; "
        "both: a and b; all (default): a, b and cold",
    )
    parser.add_argument(
        "--hyperparameters",
        type=_parse_overrides,
        default={},
        help=f"JSON object of hyperparameter overrides for the '{DEFAULT_LABEL}' row (and under every "
        'variant), e.g. \'{"epochs": "5"}\'',
    )
    parser.add_argument(
        "--variant",
        type=_parse_variant,
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="one more project row, trained with these hyperparameters on top of --hyperparameters, "
        'e.g. \'attention={"history_encoder": "attention"}\' (repeatable)',
    )
    parser.add_argument(
        "--no-default", action="store_true", help=f"leave out the '{DEFAULT_LABEL}' row (variants only)"
    )
    parser.add_argument(
        "--references",
        type=_parse_references,
        default=("sasrec", "gru4rec"),
        help="sequential references to train: sasrec,gru4rec (default), one of them, or none",
    )
    parser.add_argument(
        "--dropouts",
        type=_parse_floats,
        default=(0.2, 0.5),
        help="the references' dropout grid (default 0.2,0.5)",
    )
    parser.add_argument(
        "--reference-epochs", type=int, default=200, help="a reference's maximum epochs (default 200)"
    )
    parser.add_argument(
        "--reference-budget",
        type=float,
        default=180.0,
        help="wall-clock seconds of one reference on one protocol, shared by its dropouts: a fit starts "
        "no new epoch once its share is spent (default 180; 0: no cap)",
    )
    parser.add_argument("--seed", type=int, default=42, help="the cold users' draw and the references' seed")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of the references (default: all)",
    )
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="choose settings without the test: train every project row on protocol A's training part "
        "and print its validation figures beside most-popular and EASE (no references, no test "
        "scoring; --protocol and the reference options are ignored)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the side-by-side table as JSON")
    output.add_argument("--markdown", action="store_true", help="print the side-by-side table as markdown")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    variants = ([] if args.no_default else [Variant(DEFAULT_LABEL, dict(args.hyperparameters))]) + [
        Variant(label, {**args.hyperparameters, **overrides}) for label, overrides in args.variant
    ]
    if len({v.label for v in variants}) != len(variants):
        raise SystemExit(
            "every row needs its own name: two variants (or a variant and the default) share one"
        )
    references = ReferenceSettings(
        architectures=args.references,
        dropouts=args.dropouts,
        training=TrainingSettings(max_epochs=args.reference_epochs, seed=args.seed),
        budget_s=args.reference_budget if args.reference_budget > 0 else None,
    )
    keys = PROTOCOL_CHOICES[args.protocol]
    data = load(fetch())
    if args.validation_only:
        return _main_validation_only(data, variants, started)
    results: dict[str, Any] = {
        "dataset": "MovieLens-100K (recbole 1.2.1 copy)",
        "k": K,
        "hyperparameter_overrides": args.hyperparameters,
        "variants": {v.label: v.hyperparameters for v in variants},
        "references": {
            "architectures": list(references.architectures),
            "dropout_grid": list(references.dropouts),
            "training": asdict(references.training),
            "budget_seconds_per_protocol": references.budget_s,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            # Other work on the machine slows every model down; the references' time budget then
            # buys them fewer epochs.
            "load_average_at_start": os.getloadavg(),
        },
        "protocols": {},
    }
    # The dropout grid is searched once, on the first protocol's validation data; later protocols
    # reuse each reference's choice (still early-stopped on their own validation data).
    dropouts: dict[Architecture, tuple[float, ...]] = {
        a: references.dropouts for a in references.architectures
    }
    for key in keys:
        if key == "cold":
            results["protocols"][key] = run_cold(data, variants, references, dropouts, args.seed)
            continue
        results["protocols"][key], tuned = run_protocol(data, PROTOCOLS[key], variants, references, dropouts)
        dropouts = {a: (t.best_dropout,) for a, t in tuned.items()}
    results["wall_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = os.getloadavg()
    rows = table_rows(results)
    results["table"] = rows
    markdown = format_markdown(rows)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=1, sort_keys=True))
    MARKDOWN_FILE.write_text(markdown + "\n")

    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.markdown:
        print(markdown)
        return 0
    overrides = json.dumps(args.hyperparameters) if args.hyperparameters else "defaults"
    print(
        f"MovieLens-100K, full ranking at k={K} (seen items excluded); project hyperparameters: {overrides}; "
        f"± one standard error over users"
    )
    print(format_table(rows))
    print()
    print(format_details(results))
    for line in target_verdicts(results, [v.label for v in variants]):
        print(line)
    for line in variant_deltas(results, [v.label for v in variants]):
        print(line)
    load_average = results["machine"]["load_average_at_end"]
    print(
        f"\nwall time {results['wall_seconds']:.0f} s (load average at the end {load_average[0]:.1f} on "
        f"{os.cpu_count()} CPUs); JSON: {RESULTS_FILE}; markdown: {MARKDOWN_FILE}"
    )
    return 0


def _main_validation_only(data: MovieLens, variants: Sequence[Variant], started: float) -> int:
    result = run_validation_only(data, variants)
    result["variants"] = {v.label: v.hyperparameters for v in variants}
    result["wall_seconds"] = time.perf_counter() - started
    result["machine"] = {
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    markdown = format_validation_markdown(result)
    VALIDATION_FILE.parent.mkdir(parents=True, exist_ok=True)
    VALIDATION_FILE.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(
        f"MovieLens-100K, {result['title']} (EASE l2 {result['ease_l2']:g}); ± one standard error over users"
    )
    print(markdown)
    print(
        f"\nwall time {result['wall_seconds']:.0f} s (load average at the end "
        f"{result['machine']['load_average_at_end'][0]:.1f} on {os.cpu_count()} CPUs); "
        f"JSON: {VALIDATION_FILE}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
