"""What each feature buys on the bundled synthetic data: the job with and without it, side by side.

Run from the repository root::

    python -m benchmarks.features                       # every row below, on `make run`'s data
    python -m benchmarks.features --variant 'attention={"history_encoder": "attention"}'
    python -m benchmarks.features --markdown            # the table as markdown (for the README)

The data is what ``recsys generate-data`` writes for ``make run`` (1,000 users, 400 items, seed 0):
successor transitions, hour / weekday / device effects on genres, click / cart / purchase events
and user attributes that shift taste. Each user's latest interaction (by time) is the test set;
the rest is the ``train`` channel, with the ``items`` and ``users`` channels beside it.

Every row is one ``python -m recsys train`` child process through the SageMaker contract (a
``$SAGEMAKER_BASE_DIR`` tree, hyperparameters.json with the row's overrides only, no validation
channel: the job holds out each user's latest training interaction itself), then ``recsys evaluate
--json`` of the saved model on the test set, which feeds each held-out row's own time, device and
event type to the model as the request's context. A row leaves one feature out:

* all features: ``context_columns=device``, the time features (on by default), the ``event_type``
  column, the ``users`` channel;
* no time features: ``time_features=false`` (hour, weekday and time since the previous event);
* no device context: ``context_columns`` left unset;
* no event types: the ``event_type`` column dropped from train and test;
* no user attributes: no ``users`` channel;
* ids and history only: all of the above left out.

The table prints each row's validation NDCG@10 (the job's own hold-out, which is what a choice
between settings may look at) and its test NDCG@10 and HR@10 with standard errors, and the lift of
"all features" over the row: ``all - row`` and that difference in units of the "all features" row's
standard error (unpaired, so conservative). Progress goes to stderr, the table to stdout, the
figures to ``benchmarks/.cache/features.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.movielens import CACHE, split_last
from benchmarks.quality import (
    K,
    _parse_variant,
    run_evaluate,
    run_training,
)
from recsys.data.synthetic import SyntheticSpec, generate
from recsys.sagemaker.contract import CHANNEL_ITEMS, CHANNEL_TRAIN, CHANNEL_USERS, ContainerPaths

RUNS = CACHE / "runs" / "features"
RESULTS_FILE = CACHE / "features.json"
ALL_LABEL = "all features"
EVENT_COLUMN = "event_type"


@dataclass(frozen=True)
class Row:
    """One job of the table: its hyperparameter overrides and which inputs it is given."""

    label: str
    hyperparameters: Mapping[str, str]
    event_types: bool = True
    user_attributes: bool = True


ROWS: tuple[Row, ...] = (
    Row(ALL_LABEL, {"context_columns": "device"}),
    Row("no time features", {"context_columns": "device", "time_features": "false"}),
    Row("no device context", {}),
    Row("no event types", {"context_columns": "device"}, event_types=False),
    Row("no user attributes", {"context_columns": "device"}, user_attributes=False),
    Row("ids and history only", {"time_features": "false"}, event_types=False, user_attributes=False),
)


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    test: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)


def synthetic_split(spec: SyntheticSpec) -> Split:
    """The generated data with each user's latest interaction held out as the test set."""
    data = generate(spec)
    train, test = split_last(data.interactions, 1)
    summary = {
        "users": spec.num_users,
        "items": spec.num_items,
        "seed": spec.seed,
        "train_interactions": len(train),
        "test_interactions": len(test),
    }
    return Split(train, test, data.items, data.users, summary)


def _inputs(split: Split, row: Row) -> tuple[pd.DataFrame, pd.DataFrame]:
    if row.event_types:
        return split.train, split.test
    return split.train.drop(columns=EVENT_COLUMN), split.test.drop(columns=EVENT_COLUMN)


def write_tree(base: Path, split: Split, row: Row) -> tuple[ContainerPaths, Path]:
    """A fresh training tree for ``row`` and the test table it is judged on."""
    if base.exists():
        shutil.rmtree(base)
    paths = ContainerPaths(base)
    train, test = _inputs(split, row)
    channels = [(CHANNEL_TRAIN, train, "interactions.csv"), (CHANNEL_ITEMS, split.items, "items.csv")]
    if row.user_attributes:
        channels.append((CHANNEL_USERS, split.users, "users.csv"))
    for channel, frame, name in channels:
        folder = paths.channel_dir(channel)
        folder.mkdir(parents=True)
        frame.to_csv(folder / name, index=False)
    paths.input_config_dir.mkdir(parents=True)
    paths.hyperparameters_file.write_text(json.dumps(dict(row.hyperparameters), indent=1))
    test_file = base / "test.csv"
    test.to_csv(test_file, index=False)
    return paths, test_file


def run_row(base: Path, split: Split, row: Row) -> dict[str, Any]:
    paths, test_file = write_tree(base, split, row)
    print(f"[{row.label}] training through the contract (log: {base / 'train.log'})", file=sys.stderr)
    training = run_training(paths, base / "train.log")
    metrics = run_evaluate(paths.model_dir, test_file)
    validation = training.job_metrics.get("validation", {})
    return {
        "hyperparameters": dict(row.hyperparameters),
        "event_types": row.event_types,
        "user_attributes": row.user_attributes,
        "validation_ndcg": validation.get(f"ndcg@{K}"),
        "ndcg": metrics[f"ndcg@{K}"],
        "ndcg_se": metrics[f"ndcg@{K}_se"],
        "hr": metrics[f"hr@{K}"],
        "hr_se": metrics.get(f"hr@{K}_se"),
        "training_seconds": training.wall_seconds,
        "epochs_run": training.job_metrics.get("epochs_run"),
    }


def lifts(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """The "all features" row's NDCG minus each other row's, also in units of its standard error."""
    base = results[ALL_LABEL]
    out = {}
    for label, row in results.items():
        if label == ALL_LABEL:
            continue
        difference = float(base["ndcg"]) - float(row["ndcg"])
        se = float(base["ndcg_se"])
        out[label] = {"difference": difference, "standard_errors": difference / se if se > 0 else 0.0}
    return out


def table(results: Mapping[str, Mapping[str, Any]], *, markdown: bool = False) -> str:
    lift = lifts(results)
    headers = [
        "row",
        f"validation NDCG@{K}",
        f"test NDCG@{K}",
        f"test HR@{K}",
        "lift of all features",
        "train s",
    ]
    lines = [headers]
    for label, row in results.items():
        valid = row.get("validation_ndcg")
        hr_se = row.get("hr_se")
        gain = lift.get(label)
        lines.append(
            [
                label,
                f"{valid:.4f}" if valid is not None else "n/a",
                f"{row['ndcg']:.4f} ± {row['ndcg_se']:.4f}",
                f"{row['hr']:.4f}" + (f" ± {hr_se:.4f}" if hr_se is not None else ""),
                f"{gain['difference']:+.4f} ({gain['standard_errors']:+.1f} SE)" if gain else "-",
                f"{row['training_seconds']:.0f}",
            ]
        )
    if markdown:
        rendered = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(headers)]
        return "\n".join(rendered + ["| " + " | ".join(line) + " |" for line in lines[1:]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.features",
        description="Train the job on the bundled synthetic data with and without each feature and "
        "print what each one lifts on held-out NDCG@10.",
    )
    parser.add_argument("--users", type=int, default=SyntheticSpec.num_users)
    parser.add_argument("--items", type=int, default=SyntheticSpec.num_items)
    parser.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ROW",
        help=f"run only this row (repeatable; '{ALL_LABEL}' always runs): "
        + ", ".join(row.label for row in ROWS[1:]),
    )
    parser.add_argument(
        "--variant",
        type=_parse_variant,
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="one more row: all features plus these hyperparameters, e.g. "
        '\'attention={"history_encoder": "attention"}\' (repeatable)',
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    known = {row.label for row in ROWS}
    unknown = [label for label in args.only if label not in known]
    if unknown:
        raise SystemExit(f"--only: unknown row(s) {unknown}; rows: {', '.join(sorted(known))}")
    rows = [row for row in ROWS if not args.only or row.label == ALL_LABEL or row.label in args.only]
    base_overrides = dict(ROWS[0].hyperparameters)
    rows += [Row(label, {**base_overrides, **overrides}) for label, overrides in args.variant]
    if len({row.label for row in rows}) != len(rows):
        raise SystemExit("every row needs its own name")
    started = time.perf_counter()
    split = synthetic_split(SyntheticSpec(num_users=args.users, num_items=args.items, seed=args.seed))
    results = {row.label: run_row(RUNS / f"row_{index}", split, row) for index, row in enumerate(rows)}
    report = {
        "data": split.summary,
        "rows": results,
        "lifts": lifts(results),
        "wall_seconds": time.perf_counter() - started,
    }
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=1))
    print(table(results, markdown=args.markdown))
    print(
        f"\n{split.summary}; {report['wall_seconds']:.0f} s in all; figures in {RESULTS_FILE}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
