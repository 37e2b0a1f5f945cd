"""The command line: parse, resolve config, call, turn errors into exit codes.

``recsys train`` is the SageMaker training contract (``$SAGEMAKER_BASE_DIR``, default ``/opt/ml``);
the other commands work on explicit paths.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from recsys import __version__
from recsys.config import DeviceName
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
    from recsys.sagemaker.contract import BASE_DIR_ENV, KNOWN_CHANNELS, ContainerPaths
    from recsys.sagemaker.layout import DEFAULT_LOCAL_BASE_DIR, LocalJob, lay_out_job
    from recsys.sagemaker.train import train

    environ = dict(os.environ)
    if args.base_dir:
        environ[BASE_DIR_ENV] = str(args.base_dir)
    given = {channel: list(getattr(args, channel) or []) for channel in KNOWN_CHANNELS}
    if not any(given.values()):
        if args.hyperparameter:
            raise UserError("-H sets the hyperparameters of a job laid out from --train PATH; give --train.")
        # The SageMaker contract as is: `docker run IMAGE train` comes here.
        return train(ContainerPaths.from_env(environ))
    if environ.get(BASE_DIR_ENV) is None:
        environ[BASE_DIR_ENV] = str(DEFAULT_LOCAL_BASE_DIR)
    paths = ContainerPaths.from_env(environ)
    lay_out_job(paths, LocalJob({c: v for c, v in given.items() if v}, dict(args.hyperparameter)))
    logger.info("training tree laid out in %s", paths.base)
    code = train(paths)
    if code == 0:
        serve_hint = f"recsys serve --base-dir {paths.base}"
        print(
            f"\nmodel: {paths.model_dir}\nreport: {paths.output_data_dir} (metrics.json, "
            f"learning_curves.png)\nnext: recsys recommend --model-dir {paths.model_dir} --user USER_ID\n"
            f"      {serve_hint}   # then POST localhost:8080/invocations"
        )
    else:
        print(f"training failed (exit {code}): see {paths.failure_file}", file=sys.stderr)
    return code


def _cmd_prepare(args: argparse.Namespace) -> int:
    from recsys.sagemaker.contract import BASE_DIR_ENV, ProcessingPaths
    from recsys.sagemaker.layout import DEFAULT_LOCAL_BASE_DIR, link_inputs
    from recsys.sagemaker.process import config_from_args, run_prepare

    environ = dict(os.environ)
    if args.base_dir:
        environ[BASE_DIR_ENV] = str(args.base_dir)
    given = {name: getattr(args, name) for name in ("interactions", "items", "users") if getattr(args, name)}
    config = config_from_args(args)
    if given and environ.get(BASE_DIR_ENV) is None:
        environ[BASE_DIR_ENV] = str(DEFAULT_LOCAL_BASE_DIR)
    paths = ProcessingPaths.from_env(environ)
    if given:
        link_inputs(paths.input_root, given)
    code = run_prepare(paths, config, environ)
    if code == 0:
        print(
            f"\nchannels: {paths.output_root} (train, validation, test)\nreport: "
            f"{paths.output_root / 'report' / 'data_report.md'}\nnext: recsys train --train "
            f"{paths.output_dir('train')} --validation {paths.output_dir('validation')}"
        )
    else:
        print(f"prepare failed (exit {code}): see {paths.message_file}", file=sys.stderr)
    return code


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
        WRITTEN_CHANNELS,
        ScaledSpec,
        SyntheticSpec,
        generate,
        write_channels,
        write_scaled_channels,
    )

    written = f"{args.output}/{{{','.join(WRITTEN_CHANNELS)}}}"  # DIR/{train,items,users}
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
            f"{scaled.num_items} items in {parts} part(s) to {written}"
        )
        return 0
    spec = SyntheticSpec(num_users=args.users, num_items=args.items, seed=args.seed)
    data = generate(spec)
    write_channels(data, args.output, fmt=args.format or "csv")
    print(
        f"wrote {len(data.interactions)} interactions of {spec.num_users} users and {spec.num_items} items "
        f"to {written}"
    )
    return 0


def _attribute_text(attributes: dict[str, str]) -> str:
    return "  ".join(f"{name}={value}" for name, value in attributes.items())


def _split_ids(text: str) -> tuple[str, ...]:
    return tuple(i.strip() for i in text.split(",") if i.strip())


def _filter_spec(texts: Sequence[str], numeric: set[str]) -> dict[str, Any]:
    """``NAME=V1,V2`` (a categorical attribute: any of the values), ``NAME=LOW:HIGH`` (a numeric
    one; either bound may be left out) or ``NAME=X`` (a numeric one: exactly X)."""
    spec: dict[str, Any] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise UserError(f"--filter takes NAME=VALUE[,VALUE...] or NAME=LOW:HIGH; got {text!r}.")
        if name not in numeric:
            spec[name] = list(_split_ids(value))
            continue
        try:
            if ":" in value:
                low, _, high = value.partition(":")
                bounds = {
                    "min": float(low) if low.strip() else None,
                    "max": float(high) if high.strip() else None,
                }
                spec[name] = {key: bound for key, bound in bounds.items() if bound is not None}
            else:
                spec[name] = float(value)
        except ValueError:
            raise UserError(
                f"--filter {name}: '{name}' is numeric; give LOW:HIGH, LOW:, :HIGH or a number; "
                f"got {value!r}."
            ) from None
    return spec


def _pairs(texts: Sequence[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} takes KEY=VALUE; got {text!r}.")
        out[key.strip()] = value.strip()
    return out


def _cmd_recommend(args: argparse.Namespace) -> int:
    from recsys.serving.engine import Query, Recommender

    recommender = Recommender.load(args.model_dir)
    common: dict[str, Any] = {
        "k": args.k,
        "exclude": tuple(i for text in args.exclude for i in _split_ids(text)),
        "filter": _filter_spec(args.filter, recommender.numeric_attributes()) or None,
    }
    context = _pairs(args.context, "--context")
    if context:
        common["context"] = context
    asked: list[tuple[str, Query]] = [(f"user {u}", Query(user_id=u, **common)) for u in args.user]
    for text in args.fresh:
        user, _, items = text.partition("=")
        if not user.strip() or not items.strip():
            raise UserError(f"--fresh takes USER_ID=ITEM_IDS (i0003,i0017); got {text!r}.")
        fresh = _split_ids(items)
        asked.append(
            (f"user {user} after {','.join(fresh)} just now", Query(user_id=user, history=fresh, **common))
        )
    asked += [
        (f"new user with history {','.join(_split_ids(h))}", Query(history=_split_ids(h), **common))
        for h in args.history
    ]
    for item, attributes in zip(args.similar, recommender.describe_items(args.similar), strict=True):
        about = _attribute_text(attributes) if args.attributes else ""
        asked.append(
            (f"items similar to {item}" + (f" ({about})" if about else ""), Query(item_id=item, **common))
        )
    if not asked:
        raise UserError("give at least one --user, --fresh, --history or --similar")
    results = recommender.recommend([query for _, query in asked])
    for (who, _), result in zip(asked, results, strict=True):
        note = " (unknown: most popular items)" if result.fallback else ""
        if result.fresh_events:
            note += f" ({result.stored_events} stored and {result.fresh_events} fresh events)"
        if result.unknown_context:
            note += f" (unknown context: {', '.join(f'{k}={v}' for k, v in result.unknown_context.items())})"
        if result.unknown_items:
            note += f" (ignored unknown items: {', '.join(result.unknown_items)})"
        print(f"{who}{note}:")
        if not result.item_ids:
            print("  (no item passes the filters and exclusions)")
        described = recommender.describe_items(result.item_ids) if args.attributes else []
        for row, (item, score) in enumerate(zip(result.item_ids, result.scores, strict=True)):
            shown = _attribute_text(described[row]) if described else ""
            print(f"  {item}  {score:.3f}" + (f"  {shown}" if shown else ""))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys.evaluation.offline import evaluate_saved_model
    from recsys.evaluation.summary import side_by_side

    metrics = evaluate_saved_model(
        args.model_dir, args.test, k=args.k, repeats=args.repeats, report_dir=args.report, device=args.device
    )
    if args.json:
        print(json.dumps(metrics, indent=1, sort_keys=True))
        return 0
    treated = "left out" if metrics["repeats"] == "drop" else "scored as misses"
    print(
        f"test: {metrics['test_interactions']} interactions of known users and items "
        f"({metrics['skipped_interactions']} more skipped as unknown); {metrics['repeat_interactions']} "
        f"repeat an item the user has in training: {treated} (--repeats {metrics['repeats']}); "
        f"{metrics['evaluated_interactions']} evaluated over {int(metrics['num_users'])} users"
    )
    ks = tuple(sorted(int(n.split("@")[1]) for n in metrics["most_popular"] if re.fullmatch(r"ndcg@\d+", n)))
    for line in side_by_side(metrics, metrics["most_popular"], ks):
        print(line)
    print(metrics["vs_most_popular"]["verdict"])
    for name, value in metrics.items():
        if name == "num_users":
            print(f"{name}={int(value)}")
        elif isinstance(value, float) and not name.endswith("_se"):
            print(f"{name}={value:.4f}")
    if "report" in metrics:
        print(f"report: {metrics['report']} (and report.json beside it)")
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
        help="run the SageMaker training contract (or lay out a local job from your files and run it)",
        description="Train under the SageMaker training contract: read input/config and input/data "
        "under $SAGEMAKER_BASE_DIR (default /opt/ml), write model/ and output/. With --train PATH "
        "(and optionally --validation, --items, --users, -H), first lay out that tree from your own "
        "files (links, no copies) under --base-dir (default $SAGEMAKER_BASE_DIR, else local/opt_ml). "
        "Exit 0 on success, 1 on bad input (see output/failure), 2 on an internal error.",
    )
    train.add_argument("--base-dir", type=Path, help="use this instead of $SAGEMAKER_BASE_DIR")
    # The launcher's parsers load boto3 and the SDK only when an aws command runs.
    from recsys.options import add_hyperparameter_option
    from recsys.sagemaker.contract import CHANNEL_ITEMS, CHANNEL_TRAIN, CHANNEL_USERS, CHANNEL_VALIDATION

    # One flag per channel, named as the channel (_cmd_train reads them back by KNOWN_CHANNELS).
    for channel, what in (
        (CHANNEL_TRAIN, "interactions to train on (required with any other of these)"),
        (CHANNEL_VALIDATION, "held-out interactions: early stopping and the reported metrics"),
        (CHANNEL_ITEMS, "item attributes"),
        (CHANNEL_USERS, "user attributes"),
    ):
        train.add_argument(
            f"--{channel}",
            type=Path,
            action="append",
            metavar="PATH",
            help=f"a file or directory of {what} (repeatable)",
        )
    add_hyperparameter_option(train, "a hyperparameter of the job laid out from --train (repeatable)")
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

    from recsys.sagemaker.process import add_prepare_arguments

    prep = sub.add_parser(
        "prepare",
        help="clean and split raw interaction logs (the SageMaker Processing contract)",
        description="Clean raw logs and split them by time into train/validation/test channels, under "
        "the Processing contract: input/<name> and output/<name> under $SAGEMAKER_BASE_DIR/processing "
        "(default /opt/ml/processing). With --interactions PATH (and --items, --users), first link "
        "your own files into that tree under --base-dir (default local/opt_ml). Exit 0 on success, "
        "1 on bad input, 2 on an internal error (see output/message).",
    )
    prep.add_argument("--base-dir", type=Path, help="use this instead of $SAGEMAKER_BASE_DIR")
    for name in ("interactions", "items", "users"):
        prep.add_argument(f"--{name}", type=Path, metavar="PATH", help=f"a file or directory of raw {name}")
    add_prepare_arguments(prep)
    prep.set_defaults(func=_cmd_prepare)

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

    rec = sub.add_parser(
        "recommend",
        help="print top-k recommendations from a saved model, with the items' attributes",
        description="Recommendations of a saved model for known users (--user), new users given their "
        "items (--history), or items similar to an item (--similar), optionally filtered by item "
        "attributes and excluding items; each item is shown with its attributes.",
    )
    rec.add_argument("--model-dir", type=Path, required=True)
    rec.add_argument("--user", action="append", default=[], help="a known user id (repeatable)")
    rec.add_argument(
        "--history", action="append", default=[], help="comma-separated item ids of a new user (repeatable)"
    )
    rec.add_argument(
        "--fresh",
        action="append",
        default=[],
        metavar="USER_ID=ITEM_IDS",
        help="a known user who just interacted with these items (comma-separated): merged with their "
        "stored history, as a request's fresh events are (repeatable)",
    )
    rec.add_argument("--similar", action="append", default=[], metavar="ITEM_ID", help="items like this one")
    rec.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the moment of every query: a context column (device=tv) or timestamp=2026-12-02T20:00:00Z "
        "(repeatable; default: now, context unknown)",
    )
    rec.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="item-attribute constraint (repeatable, all must hold): genres=Comedy,Drama (any of them), "
        "release_year=1990:1999, price=:20",
    )
    rec.add_argument("--exclude", action="append", default=[], metavar="IDS", help="comma-separated item ids")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument(
        "--no-attributes", dest="attributes", action="store_false", help="do not print the items' attributes"
    )
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
    ev.add_argument(
        "--repeats",
        choices=["drop", "count"],
        default="drop",
        help="test rows whose item the user already has in training, which full ranking never "
        "recommends: drop leaves them out (default), count scores them as misses",
    )
    ev.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write report.html (self-contained, charts embedded) and report.json into DIR",
    )
    ev.add_argument(
        "--device",
        choices=get_args(DeviceName),
        default="auto",
        help="where to evaluate: auto (CUDA when present, the default), cpu or cuda; the device the "
        "model was trained on does not matter",
    )
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(func=_cmd_evaluate)

    # The launcher runs on the engineer's machine; the image leaves recsys.aws out.
    if importlib.util.find_spec("recsys.aws") is not None:
        from recsys.aws.cli import add_aws_parser

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
