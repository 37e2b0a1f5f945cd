"""Shared fixtures and helpers: tiny synthetic data, a builder of ``/opt/ml``-shaped trees, the
hyperparameters of a fast run, and a free local port."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pandas as pd
import pytest

from recsys.data.synthetic import SyntheticData, SyntheticSpec, generate, write_channels

# Small enough that one training run takes about a second on two CPU cores.
TINY_SPEC = SyntheticSpec(num_users=120, num_items=60, mean_interactions_per_user=12)
FAST_HYPERPARAMETERS: dict[str, str] = {"epochs": "2", "embedding_dim": "8", "history_length": "10"}

TreeBuilder = Callable[..., Path]  # the ``make_tree`` fixture's type


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (another process may still take it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_data() -> SyntheticData:
    """The synthetic data set of ``TINY_SPEC``; treat it as read-only."""
    return generate(TINY_SPEC)


def write_hyperparameters(base: Path, hyperparameters: Mapping[str, str]) -> None:
    config_dir = base / "input" / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "hyperparameters.json").write_text(json.dumps(dict(hyperparameters)), encoding="utf-8")


def build_tree(
    base: Path,
    data: SyntheticData | None = None,
    *,
    fmt: str = "csv",
    hyperparameters: Mapping[str, str] | None = None,
    train: pd.DataFrame | None = None,
) -> Path:
    """Fill ``base`` like ``/opt/ml``: hyperparameters plus ``input/data/{train,items,users}``.

    ``train`` replaces the interactions of ``data`` in the train channel (items and users stay).
    Without ``data`` only the config is written, so a test can lay out the channels itself.
    """
    write_hyperparameters(base, FAST_HYPERPARAMETERS if hyperparameters is None else hyperparameters)
    if data is not None:
        if train is not None:
            data = SyntheticData(interactions=train, items=data.items, users=data.users)
        write_channels(data, base / "input" / "data", fmt=fmt)
    return base


@pytest.fixture(scope="session")
def make_tree() -> TreeBuilder:
    """``make_tree(base, data=None, *, fmt, hyperparameters, train)``: see ``build_tree``."""
    return build_tree


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """In-process CLI runs install a root handler on that test's captured stdout, which pytest
    closes afterwards; later tests' log records would then print a "Logging error" per record."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
