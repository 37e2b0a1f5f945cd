"""One tiny model trained once per test session, shared by the serving and HTTP tests.

``trained_tree`` runs the real training contract (``recsys.sagemaker.train.train``) in-process on
the shared tiny synthetic data and caches the resulting ``/opt/ml``-shaped tree for the session, so
``tests/serving`` and ``tests/integration/test_serve_http.py`` load the same artifact and training
happens once however the tests are selected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from recsys.data.synthetic import SyntheticData
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import train
from tests.conftest import FAST_HYPERPARAMETERS, build_tree

# 20 sampled-evaluation negatives: the tiny catalogue has 60 items, 99 would mostly be redraws.
HYPERPARAMETERS = {**FAST_HYPERPARAMETERS, "sampled_eval_negatives": "20"}

# (the session's base temporary directory, id of the data, extra hyperparameters) -> the tree.
_TREES: dict[tuple[Path, int, tuple[tuple[str, str], ...]], Path] = {}


def trained_tree(
    factory: pytest.TempPathFactory, data: SyntheticData, extra: Mapping[str, str] | None = None
) -> Path:
    """The base directory of a finished training job on ``data``: ``model/`` holds the artifact.

    Cached per session (``tmp_path_factory``), data set (the session's ``tiny_data``) and
    ``extra`` hyperparameters (``{"retrieval": "index"}``: the same model with an item index).
    """
    key = (factory.getbasetemp(), id(data), tuple(sorted((extra or {}).items())))
    if key not in _TREES:
        _TREES[key] = _train(factory, data, extra or {})
    return _TREES[key]


def _train(factory: pytest.TempPathFactory, data: SyntheticData, extra: Mapping[str, str]) -> Path:
    hyperparameters = {**HYPERPARAMETERS, **extra}
    base = build_tree(factory.mktemp("served_opt_ml"), data, hyperparameters=hyperparameters)
    paths = ContainerPaths(base)
    code = train(paths)
    if code != 0:
        failure = paths.failure_file.read_text() if paths.failure_file.exists() else "(no failure file)"
        pytest.fail(f"training the shared serving model failed with exit code {code}: {failure}")
    return base
