"""Recommendation quality on MovieLens-100K: the project against EASE and most-popular.

Run from the repository root::

    python -m benchmarks.quality                       # both protocols, default hyperparameters
    python -m benchmarks.quality --protocol a --hyperparameters '{"epochs": "5"}'

For each protocol the project is trained exactly as SageMaker would train it: a
``$SAGEMAKER_BASE_DIR`` tree with the ``train``, ``items`` and ``users`` channels (no ``validation``
channel, so the job holds out each user's latest training interaction itself), hyperparameters.json
holding only the overrides given here, and ``python -m recsys train`` as a child process. The saved
model is then scored by ``recsys evaluate --json`` on the held-out interactions.

The baselines see the same training interactions and are scored with the same full-ranking protocol
(every catalogue item ranked, the user's training items excluded, metrics from
``recsys.evaluation.metrics``):

* most-popular: items ranked by how many training users interacted with them;
* EASE (Steck 2019), whose l2 is chosen by validation NDCG@10 (the validation set is carved out of
  the training part the way the test set was carved out of the whole; EASE is fitted on the rest)
  and then refitted on the whole training part.

Protocols:

* A: leave-one-out by time; each user's latest interaction is the test set.
* B: each user's latest 5 interactions are the test set (users with more than 5); lower variance.

The table goes to stdout, progress to stderr, and the same numbers to ``benchmarks/.cache/quality.json``.
Run directories (channels, model, training log) stay under ``benchmarks/.cache/runs/`` for inspection.
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
from dataclasses import dataclass
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
    relevant_items,
)
from benchmarks.movielens import CACHE, MovieLens, fetch, load, split_last
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


def baseline_results(
    train: pd.DataFrame, test: pd.DataFrame, data: MovieLens, protocol: Protocol
) -> dict[str, Any]:
    """Most-popular and validation-tuned EASE on ``train``, scored by full ranking on ``test``."""
    # The same catalogue the job builds: users of the training part; items of the training part
    # and of the items table.
    user_index = pd.Index(sorted(train["user_id"].astype(str).unique()))
    item_index = pd.Index(sorted(set(train["item_id"].astype(str)) | set(data.items["item_id"].astype(str))))
    X = interaction_matrix(train, user_index, item_index)
    relevant, skipped = relevant_items(test, user_index, item_index)

    fit_part, validation = split_last(train, protocol.validation_size)
    X_fit = interaction_matrix(fit_part, user_index, item_index)
    validation_relevant, _ = relevant_items(validation, user_index, item_index)
    start = time.perf_counter()
    l2, validation_ndcg = choose_ease_l2(X_fit, validation_relevant, EASE_L2_GRID, K)
    search_seconds = time.perf_counter() - start

    start = time.perf_counter()
    weights = ease_fit(X, l2)
    fit_seconds = time.perf_counter() - start
    return {
        "ease": full_ranking_metrics(ease_scores(X, weights), X, relevant, K),
        "most_popular": full_ranking_metrics(most_popular_scores(X), X, relevant, K),
        "ease_l2": l2,
        "ease_validation_ndcg@10": {str(key): value for key, value in validation_ndcg.items()},
        "ease_validation_interactions": len(validation),
        "ease_search_seconds": search_seconds,
        "ease_fit_seconds": fit_seconds,
        "num_users": len(user_index),
        "num_items": len(item_index),
        "skipped_test_interactions": skipped,
    }


def run_protocol(data: MovieLens, protocol: Protocol, hyperparameters: Mapping[str, str]) -> dict[str, Any]:
    train, test = split_last(data.interactions, protocol.test_size)
    base = RUNS / f"protocol_{protocol.key}"
    paths = write_job(base, train, data, hyperparameters)
    test_file = base / "test.csv"
    test[INTERACTION_COLUMNS].to_csv(test_file, index=False)
    log_file = base / "train.log"

    _progress(f"[{protocol.key}] training the project through the contract (log: {log_file})")
    training = run_training(paths, log_file)
    _progress(f"[{protocol.key}] evaluating the saved model on {len(test)} held-out interactions")
    project = run_evaluate(paths.model_dir, test_file)
    _progress(f"[{protocol.key}] most-popular and EASE (l2 grid {list(EASE_L2_GRID)})")
    baselines = baseline_results(train, test, data, protocol)

    ease_ndcg = baselines["ease"][f"ndcg@{K}"]
    return {
        "title": protocol.title,
        "test_size": protocol.test_size,
        "ease_validation_size": protocol.validation_size,
        "train_interactions": len(train),
        "test_interactions": len(test),
        "project": project,
        **baselines,
        f"ratio_ndcg@{K}_project_over_ease": project[f"ndcg@{K}"] / ease_ndcg if ease_ndcg > 0 else None,
        "training": {
            "wall_seconds": training.wall_seconds,
            "peak_rss_mib": training.peak_rss_mib,
            "samples_per_second": training.samples_per_second,
            "epoch_lines": training.epoch_lines,
            "job_metrics": training.job_metrics,
            "run_dir": str(base),
        },
    }


def _cell(metrics: Mapping[str, Any], name: str) -> str:
    value, se = metrics.get(name), metrics.get(f"{name}_se")
    if value is None:
        return "n/a"
    return f"{value:.4f} ± {se:.4f}" if se is not None else f"{value:.4f}"


def format_protocol(result: Mapping[str, Any]) -> str:
    names = [f"hr@{K}", f"ndcg@{K}"] + ([f"recall@{K}"] if result["test_size"] > 1 else [])
    headers = {f"hr@{K}": f"HR@{K}", f"ndcg@{K}": f"NDCG@{K}", f"recall@{K}": f"Recall@{K}"}
    rows = [
        ("project", result["project"]),
        ("EASE", result["ease"]),
        ("most-popular", result["most_popular"]),
    ]
    lines = [
        result["title"],
        f"  {result['num_users']} users, {result['num_items']} items, "
        f"{result['train_interactions']} training and {result['test_interactions']} test interactions",
        "  " + f"{'model':<14}" + "".join(f"{headers[n]:<19}" for n in names) + "users",
    ]
    for label, metrics in rows:
        cells = "".join(f"{_cell(metrics, n):<19}" for n in names)
        lines.append(f"  {label:<14}{cells}{int(metrics.get('num_users', 0))}")
    ratio = result[f"ratio_ndcg@{K}_project_over_ease"]
    training = result["training"]
    job = training["job_metrics"]
    rate = training["samples_per_second"]
    validation = ", ".join(
        f"{float(l2):g}: {v:.4f}"
        for l2, v in sorted(result["ease_validation_ndcg@10"].items(), key=lambda kv: float(kv[0]))
    )
    what = (
        "latest interaction"
        if result["ease_validation_size"] == 1
        else (f"latest {result['ease_validation_size']} interactions")
    )
    lines += [
        f"  ratio ndcg@{K} project/EASE = {ratio:.2f}" if ratio is not None else "  ratio: EASE NDCG is 0",
        f"  project training: wall {training['wall_seconds']:.1f} s, "
        + (
            f"{rate:.0f} samples/s (mean of {training['epoch_lines']} epoch lines)"
            if rate
            else "no epoch lines"
        )
        + f", peak RSS {training['peak_rss_mib']:.0f} MiB"
        + "".join(f", {name} {job[name]}" for name in ("epochs_run", "best_epoch") if name in job),
        f"  project sampled HR@{K} = {result['project'].get(f'sampled_hr@{K}', float('nan')):.4f}, "
        f"NDCG@{K} = {result['project'].get(f'sampled_ndcg@{K}', float('nan')):.4f} "
        "(held-out item vs sampled negatives, as in the NCF literature)",
        f"  EASE l2 = {result['ease_l2']:g}, chosen by validation NDCG@{K} on each user's {what} of the "
        f"training part ({validation}); refit on all training data in {result['ease_fit_seconds']:.1f} s",
    ]
    if result["skipped_test_interactions"] or result["project"].get("skipped_interactions"):
        lines.append(
            "  skipped test interactions (unknown user or item): "
            f"baselines {result['skipped_test_interactions']}, "
            f"project {result['project'].get('skipped_interactions')}"
        )
    return "\n".join(lines)


def _parse_overrides(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. \'{"epochs": "5"}\'')
    return hyperparameter_strings(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="Train the project on MovieLens-100K through the SageMaker contract and compare its "
        "full-ranking HR@10 / NDCG@10 with EASE and most-popular.",
    )
    parser.add_argument(
        "--protocol",
        choices=("a", "b", "both"),
        default="both",
        help="a: latest interaction per user; b: latest 5 per user; both (default)",
    )
    parser.add_argument(
        "--hyperparameters",
        type=_parse_overrides,
        default={},
        help='JSON object of hyperparameter overrides, e.g. \'{"epochs": "5"}\'',
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keys = ("a", "b") if args.protocol == "both" else (args.protocol,)
    data = load(fetch())
    results: dict[str, Any] = {
        "dataset": "MovieLens-100K (recbole 1.2.1 copy)",
        "k": K,
        "hyperparameter_overrides": args.hyperparameters,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "protocols": {},
    }
    for key in keys:
        results["protocols"][key] = run_protocol(data, PROTOCOLS[key], args.hyperparameters)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=1, sort_keys=True))

    overrides = json.dumps(args.hyperparameters) if args.hyperparameters else "defaults"
    print(f"MovieLens-100K, full ranking at k={K} (training items excluded); hyperparameters: {overrides}")
    for key in keys:
        print()
        print(format_protocol(results["protocols"][key]))
    print(f"\nJSON: {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
