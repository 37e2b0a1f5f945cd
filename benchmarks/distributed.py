"""Data-parallel agreement on MovieLens-100K: one process against two (gloo, one host).

Run from the repository root::

    python -m benchmarks.distributed

Protocol A of ``benchmarks.quality`` (each user's latest interaction is the test set), default
hyperparameters, trained through the contract (``python -m recsys train``). Three jobs: one
process with the default seed, one process with another seed (how much a run moves by chance
alone), and two processes (``RECSYS_PROCESSES_PER_HOST=2``). The table gives test NDCG@10 with its
standard error and each job's difference from the first, in standard errors of that difference.

On a 2-core machine two processes share the cores, so their wall time says nothing about speed-up
on real hardware; what this measures is that sharding the data does not change the result.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from benchmarks.movielens import fetch, load, split_last
from benchmarks.quality import (
    INTERACTION_COLUMNS,
    RUNS,
    _progress,
    run_evaluate,
    run_training,
    write_job,
)
from recsys.sagemaker.contract import MASTER_PORT_ENV, PROCESSES_PER_HOST_ENV

K = 10
JOBS: tuple[tuple[str, int, dict[str, str]], ...] = (
    ("1 process, seed 42 (reference)", 1, {}),
    ("1 process, seed 43", 1, {"seed": "43"}),
    ("2 processes (gloo), seed 42", 2, {}),
)


def run(label: str, processes: int, hyperparameters: dict[str, str], data: Any) -> dict[str, Any]:
    train, test = split_last(data.interactions, 1)
    base = RUNS / f"distributed_{processes}p_{hyperparameters.get('seed', '42')}"
    paths = write_job(base, train, data, hyperparameters)
    test_file = base / "test.csv"
    test[INTERACTION_COLUMNS].to_csv(test_file, index=False)
    saved = {name: os.environ.get(name) for name in (PROCESSES_PER_HOST_ENV, MASTER_PORT_ENV)}
    os.environ[PROCESSES_PER_HOST_ENV] = str(processes)
    os.environ[MASTER_PORT_ENV] = "29533"
    try:
        _progress(f"{label}: training (log: {base / 'train.log'})")
        training = run_training(paths, base / "train.log")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    metrics = run_evaluate(paths.model_dir, test_file)
    return {
        "label": label,
        "ndcg": metrics[f"ndcg@{K}"],
        "se": metrics[f"ndcg@{K}_se"],
        "wall_seconds": training.wall_seconds,
        "best_epoch": training.job_metrics.get("best_epoch"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    data = load(fetch())
    rows = [run(label, processes, hp, data) for label, processes, hp in JOBS]
    reference = rows[0]
    print(f"| job | test NDCG@{K} ± SE | difference from the reference | in SEs | best epoch | wall s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        diff = row["ndcg"] - reference["ndcg"]
        se_diff = math.sqrt(row["se"] ** 2 + reference["se"] ** 2)
        in_se = "—" if row is reference else f"{diff / se_diff:+.2f}"
        print(
            f"| {row['label']} | {row['ndcg']:.4f} ± {row['se']:.4f} | "
            f"{'—' if row is reference else f'{diff:+.4f}'} | {in_se} | {row['best_epoch']} | "
            f"{row['wall_seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
