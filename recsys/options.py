"""Command-line options that the container's commands and the launcher's both take."""

from __future__ import annotations

import argparse


def key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE; got {text!r}")
    return name.strip(), value


def add_hyperparameter_option(parser: argparse.ArgumentParser, what: str) -> None:
    """``-H NAME=VALUE``, repeatable, as ``recsys train`` and the launcher's jobs take it."""
    parser.add_argument(
        "--hyperparameter",
        "-H",
        type=key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"{what}; see `recsys hyperparameters`",
    )
