"""``prepare`` under the SageMaker Processing contract: raw logs in, training channels out.

Inputs (``ProcessingInput`` names): ``interactions`` (required), ``items`` and ``users``
(optional attribute tables, passed through for the kept ids only). Outputs: ``train``,
``validation``, ``test`` (and ``cold`` when cold users are held out), ``items``, ``users``, each
a directory of Parquet parts (``part-<instance>.parquet``, so instances never overwrite each
other under one S3 prefix), and ``report`` (data_report.json / .md and three PNGs), written by the
first instance. The settings arrive as the job's arguments (``ContainerArguments``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.errors import ConfigError, UserError
from recsys.sagemaker.contract import (
    DEFAULT_MASTER_PORT,
    MASTER_PORT_ENV,
    ProcessingPaths,
    read_processing_contract,
    write_exit_message,
)

if TYPE_CHECKING:
    import pandas as pd

    from recsys.data.prepare import Peers, PrepareConfig

logger = logging.getLogger(__name__)
# Names of the data layer's outputs, repeated for the parser: `recsys --help` builds this module's
# options, and the data layer loads pandas (half a second) - tests/data/test_prepare.py checks they agree.
INTERACTIONS_INPUT = "interactions"
SPLIT_OUTPUTS = ("train", "validation", "test")
COLD_OUTPUT = "cold"

ATTRIBUTE_INPUTS = ("items", "users")
REPORT_OUTPUT = "report"


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's settings; ``recsys aws prepare`` passes the same ones on as container arguments."""
    columns = parser.add_argument_group("raw columns")
    columns.add_argument("--user-column", default="user_id", help="user ids (default user_id)")
    columns.add_argument("--item-column", default="item_id", help="item ids (default item_id)")
    columns.add_argument(
        "--timestamp-column",
        default="timestamp",
        help="epoch seconds, ISO 8601 or a datetime (default timestamp)",
    )
    columns.add_argument("--rating-column", default=None, help="ratings, for --min-rating (optional)")
    columns.add_argument("--event-type-column", default=None, help="click, purchase... (optional)")
    columns.add_argument(
        "--keep-columns", default="", help="other columns to carry through, comma-separated (device,country)"
    )
    steps = parser.add_argument_group("cleaning")
    steps.add_argument("--min-rating", type=float, default=None, help="drop rows rated below this")
    steps.add_argument(
        "--max-events-per-window", type=int, default=None, help="cap each user's events per window (bots)"
    )
    steps.add_argument("--window-seconds", type=float, default=3600.0, help="the cap's window (default 3600)")
    steps.add_argument(
        "--min-user-interactions", type=int, default=1, help="k-core: users with at least this many"
    )
    steps.add_argument(
        "--min-item-interactions", type=int, default=1, help="k-core: items with at least this many"
    )
    split = parser.add_argument_group("split (by time)")
    split.add_argument("--validation-from", default=None, help="a global cut: validation from this moment on")
    split.add_argument("--test-from", default=None, help="a global cut: test from this moment on")
    split.add_argument(
        "--holdout-last",
        type=int,
        default=1,
        help="without a cut: each user's latest N events to test, the N before to validation (default 1)",
    )
    split.add_argument(
        "--cold-user-fraction", type=float, default=0.0, help="hold out this share of users whole (cold/)"
    )
    split.add_argument("--seed", type=int, default=0, help="which users are cold")


def prepare_arguments(args: argparse.Namespace) -> list[str]:
    """The settings of ``args`` that differ from their defaults, as ``recsys prepare`` arguments."""
    parser = argparse.ArgumentParser(add_help=False)
    add_prepare_arguments(parser)
    tokens: list[str] = []
    for action in parser._actions:  # argparse keeps its options there; there is no public list
        value = getattr(args, action.dest, action.default)
        if action.option_strings and value != action.default:
            tokens += [action.option_strings[0], f"{value:g}" if isinstance(value, float) else str(value)]
    return tokens


def output_names(*, cold: bool, attributes: Sequence[str]) -> list[str]:
    """The job's output directories, each uploaded to its own prefix."""
    return [
        *SPLIT_OUTPUTS,
        *([COLD_OUTPUT] if cold else []),
        *[a for a in ATTRIBUTE_INPUTS if a in attributes],
        REPORT_OUTPUT,
    ]


def _moment(value: str | None, flag: str) -> float | None:
    from recsys.data.context import epoch_seconds

    if value is None:
        return None
    try:
        return epoch_seconds(value)
    except ValueError as error:
        raise ConfigError(f"{flag}: {error}") from None


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    from recsys.data.prepare import PrepareConfig

    keep = tuple(c.strip() for c in str(args.keep_columns or "").split(",") if c.strip())
    return PrepareConfig(
        user_column=args.user_column,
        item_column=args.item_column,
        timestamp_column=args.timestamp_column,
        rating_column=args.rating_column,
        event_type_column=args.event_type_column,
        keep_columns=keep,
        min_rating=args.min_rating,
        max_events_per_window=args.max_events_per_window,
        window_seconds=args.window_seconds,
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions,
        validation_from=_moment(args.validation_from, "--validation-from"),
        test_from=_moment(args.test_from, "--test-from"),
        holdout_last=args.holdout_last,
        cold_user_fraction=args.cold_user_fraction,
        seed=args.seed,
    )


def _part(paths: ProcessingPaths, output: str, rank: int) -> Path:
    return paths.output_dir(output) / f"part-{rank:05d}.parquet"


def _pass_through(
    paths: ProcessingPaths, name: str, keep: Sequence[str], column: str, standard: str, rank: int
) -> None:
    """The rows of an attribute table whose id was kept, the id column named as the
    interactions' (``standard``), so that the outputs feed a training job as they are."""
    from recsys.data.io import read_path, write_table

    directory = paths.input_dir(name)
    if not directory.is_dir():
        return
    table = read_path(directory, channel=name, string_columns=(column,)).to_pandas()
    if column not in table:
        raise UserError(
            f"input '{name}': no column {column!r} (columns: {', '.join(map(str, table.columns))})."
        )
    ids = table[column].astype("string").str.strip()
    kept = table.drop(columns=[column]).assign(**{standard: ids})[ids.isin(set(keep)).to_numpy()]
    kept = kept[[standard] + [c for c in kept.columns if c != standard]]
    write_table(kept.reset_index(drop=True), _part(paths, name, rank))


def _run(paths: ProcessingPaths, config: PrepareConfig, environ: Mapping[str, str]) -> None:
    from recsys.data.io import write_table
    from recsys.data.prepare import INTERACTIONS, SOLO, instance_files, prepare
    from recsys.data.prepare_report import write_data_report

    contract = read_processing_contract(paths)
    hosts = contract.resources.hosts
    rank, world = hosts.index(contract.resources.current_host), len(hosts)
    source = paths.input_dir(INTERACTIONS)
    replicated = contract.replicated.get(INTERACTIONS, False)
    # A sharded instance may get no file, and then no directory: it runs with zero rows.
    if not source.is_dir() and (world == 1 or replicated):
        raise UserError(
            f"the required input '{INTERACTIONS}' is missing: expected raw interaction files under {source}."
        )
    files = instance_files(source, rank=rank, world=world, replicated=replicated)
    # Every output exists, empty or not: an instance with no rows of a split still has the
    # directory that its ProcessingOutput uploads.
    given = [name for name in ATTRIBUTE_INPUTS if paths.input_dir(name).is_dir()]
    for name in output_names(cold=config.cold_user_fraction > 0, attributes=given):
        paths.output_dir(name).mkdir(parents=True, exist_ok=True)

    def write(output: str, rows: pd.DataFrame) -> None:
        write_table(rows, _part(paths, output, rank))

    def run(peers: Peers) -> None:
        prepared = prepare(files, config, peers=peers, write=write)
        # Every instance knows every kept item: the first writes the items table, once. Each
        # instance writes the users it holds (each user sits on exactly one).
        if rank == 0:
            _pass_through(paths, "items", list(prepared.items), config.item_column, "item_id", rank)
            write_data_report(prepared.report, paths.output_dir(REPORT_OUTPUT))
        _pass_through(paths, "users", list(prepared.users), config.user_column, "user_id", rank)
        logger.info(
            "instance %d of %d: %s",
            rank + 1,
            world,
            ", ".join(f"{k} {v:,}" for k, v in prepared.report.splits.items()),
        )

    if world == 1:
        run(SOLO)
        return
    from recsys.data.peers import gloo_peers

    port = int(environ.get(MASTER_PORT_ENV) or DEFAULT_MASTER_PORT)
    with gloo_peers(rank, world, hosts[0], port) as peers:
        run(peers)


def run_prepare(
    paths: ProcessingPaths, config: PrepareConfig, environ: Mapping[str, str] | None = None
) -> int:
    """Run the job; 0 on success, 1 on bad input, 2 on an internal error (``output/message``)."""
    try:
        _run(paths, config, os.environ if environ is None else environ)
    except UserError as error:
        write_exit_message(paths, error)
        logger.error("%s", error.message)
        return 1
    except Exception as error:  # an internal error: its traceback goes to the message and the log
        write_exit_message(paths, error)
        logger.exception("prepare failed")
        return 2
    if paths.message_file.exists():
        paths.message_file.unlink()
    return 0
