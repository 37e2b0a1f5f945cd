"""The command line: parse, resolve config, call, turn errors into exit codes.

``recsys train`` is the SageMaker training contract (``$SAGEMAKER_BASE_DIR``, default ``/opt/ml``);
the other commands work on explicit paths.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from recsys import __version__
from recsys.errors import UserError

logger = logging.getLogger("recsys")


def _configure_logging(verbose: bool, *, to_stderr: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr if to_stderr else sys.stdout,
        force=True,
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from recsys.sagemaker.contract import BASE_DIR_ENV, ContainerPaths
    from recsys.sagemaker.train import train

    environ = dict(os.environ)
    if args.base_dir:
        environ[BASE_DIR_ENV] = str(args.base_dir)
    return train(ContainerPaths.from_env(environ))


def _cmd_serve(args: argparse.Namespace) -> int:
    from recsys.sagemaker.contract import BASE_DIR_ENV
    from recsys.serving.server import serve

    environ = dict(os.environ)
    if args.base_dir:
        environ[BASE_DIR_ENV] = str(args.base_dir)
        # Workers read the environment themselves: hand the override on.
        os.environ[BASE_DIR_ENV] = str(args.base_dir)
    return serve(environ)


def _cmd_hyperparameters(args: argparse.Namespace) -> int:
    from recsys.config import hyperparameter_table

    print(hyperparameter_table())
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from recsys.data.synthetic import (
        ScaledSpec,
        SyntheticSpec,
        generate,
        write_channels,
        write_scaled_channels,
    )

    if args.interactions is not None:
        parts = args.parts or max(1, -(-args.interactions // 1_000_000))
        try:
            scaled = ScaledSpec(
                num_users=args.users, num_items=args.items, num_interactions=args.interactions, seed=args.seed
            )
            summary = write_scaled_channels(scaled, args.output, parts=parts, fmt=args.format or "parquet")
        except ValueError as exc:  # a bad size or format given on the command line
            raise UserError(f"generate-data: {exc}") from exc
        print(
            f"wrote {summary.num_interactions} interactions of {scaled.num_users} users and "
            f"{scaled.num_items} items in {parts} part(s) to {args.output}/{{train,items,users}}"
        )
        return 0
    spec = SyntheticSpec(num_users=args.users, num_items=args.items, seed=args.seed)
    data = generate(spec)
    write_channels(data, args.output, fmt=args.format or "csv")
    print(
        f"wrote {len(data.interactions)} interactions of {spec.num_users} users and {spec.num_items} items "
        f"to {args.output}/{{train,items,users}}"
    )
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from recsys.serving.engine import Query, Recommender

    recommender = Recommender.load(args.model_dir)
    queries = [Query(user_id=u, k=args.k) for u in args.user]
    queries += [Query(history=tuple(i for i in h.split(",") if i), k=args.k) for h in args.history]
    if not queries:
        raise UserError("give at least one --user or --history")
    for query, result in zip(queries, recommender.recommend(queries), strict=True):
        who = (
            f"user {query.user_id}"
            if query.user_id
            else f"new user with history {','.join(query.history or ())}"
        )
        note = " (unknown: most popular items)" if result.fallback else ""
        if result.unknown_items:
            note += f" (ignored unknown items: {', '.join(result.unknown_items)})"
        print(f"{who}{note}:")
        for item, score in zip(result.item_ids, result.scores, strict=True):
            print(f"  {item}  {score:.3f}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys.evaluation.offline import evaluate_saved_model

    metrics = evaluate_saved_model(args.model_dir, args.test, k=args.k)
    if args.json:
        print(json.dumps(metrics, indent=1, sort_keys=True))
    else:
        for name, value in metrics.items():
            print(f"{name}={value:.4f}" if isinstance(value, float) else f"{name}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Neural collaborative filtering for Amazon SageMaker: train, evaluate, recommend.",
    )
    parser.add_argument("--version", action="version", version=f"recsys {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="run the SageMaker training contract",
        description="Train under the SageMaker training contract: read input/config and input/data "
        "under $SAGEMAKER_BASE_DIR (default /opt/ml), write model/ and output/. "
        "Exit 0 on success, 1 on bad input (see output/failure), 2 on an internal error.",
    )
    train.add_argument("--base-dir", type=Path, help="use this instead of $SAGEMAKER_BASE_DIR")
    train.set_defaults(func=_cmd_train)

    serve = sub.add_parser(
        "serve",
        help="serve $SAGEMAKER_BASE_DIR/model over HTTP (the SageMaker hosting contract)",
        description="Serve the model under $SAGEMAKER_BASE_DIR/model (default /opt/ml/model) on "
        "0.0.0.0:$SAGEMAKER_BIND_TO_PORT (default 8080): GET /ping, POST /invocations, "
        "GET /execution-parameters. Workers: $SAGEMAKER_MODEL_SERVER_WORKERS; request timeout: "
        "$SAGEMAKER_MODEL_SERVER_TIMEOUT; body limit: $SAGEMAKER_MAX_PAYLOAD_IN_MB.",
    )
    serve.add_argument("--base-dir", type=Path, help="use this instead of $SAGEMAKER_BASE_DIR")
    serve.set_defaults(func=_cmd_serve)

    hp = sub.add_parser("hyperparameters", help="print every hyperparameter with its default")
    hp.set_defaults(func=_cmd_hyperparameters)

    gen = sub.add_parser("generate-data", help="write the bundled synthetic data set as channel files")
    gen.add_argument("--output", type=Path, required=True, help="the input/data directory to fill")
    gen.add_argument("--users", type=int, default=1000)
    gen.add_argument("--items", type=int, default=400)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--interactions",
        type=int,
        default=None,
        help="scaled mode: exactly this many interactions (power-law popularity, O(interactions) "
        "work), written as time-sliced parts",
    )
    gen.add_argument(
        "--parts", type=int, default=None, help="scaled mode: train files (default: one per 1M rows)"
    )
    gen.add_argument(
        "--format",
        default=None,
        help="csv, tsv, parquet, jsonl, optionally with .gz (default csv; scaled mode: parquet, csv or tsv)",
    )
    gen.set_defaults(func=_cmd_generate)

    rec = sub.add_parser("recommend", help="print top-k recommendations from a saved model")
    rec.add_argument("--model-dir", type=Path, required=True)
    rec.add_argument("--user", action="append", default=[], help="a known user id (repeatable)")
    rec.add_argument(
        "--history", action="append", default=[], help="comma-separated item ids of a new user (repeatable)"
    )
    rec.add_argument("--k", type=int, default=10)
    rec.set_defaults(func=_cmd_recommend)

    ev = sub.add_parser(
        "evaluate",
        help="score a saved model against a held-out interaction table",
        description="Full-ranking and sampled metrics of a saved model on held-out interactions "
        "(a file or a directory of files, same columns as the training channel).",
    )
    ev.add_argument("--model-dir", type=Path, required=True)
    ev.add_argument("--test", type=Path, required=True, help="held-out interactions: a file or directory")
    ev.add_argument("--k", type=int, default=None, help="cut-off (default: the model's eval_k)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(func=_cmd_evaluate)

    from recsys.sagemaker.launcher_cli import add_aws_parser  # boto3 and the SDK load only when run

    add_aws_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Machine-readable output (--json) must stay parseable: its log lines go to stderr.
    _configure_logging(args.verbose, to_stderr=bool(getattr(args, "json", False)))
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
