"""The models of a multi-model endpoint: loaded on SageMaker's request, kept in a memory budget.

SageMaker calls ``POST /models`` when a request names a model that this instance does not hold,
and ``DELETE /models/<name>`` when it wants room. The store also keeps itself within
``budget_bytes``: loading a model that does not fit unloads the least recently used ones first, and
a model larger than the whole budget is a 507, on which SageMaker tries another instance.

A model's footprint is what it holds in memory once loaded (its tensors and arrays, counted
once each); before loading, its files' size on disk stands in for it, as a lower bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.errors import ServerStateError, UserError
from recsys.models.retrieval import ItemIndex
from recsys.sagemaker.contract import MODEL_MEMORY_ENV
from recsys.serving.batching import MicroBatcher
from recsys.serving.engine import Recommender

logger = logging.getLogger(__name__)

INSUFFICIENT_STORAGE = 507


@dataclass
class LoadedModel:
    name: str
    url: str
    recommender: Recommender
    batcher: MicroBatcher
    footprint_bytes: int
    loaded_at: float

    def describe(self) -> dict[str, Any]:
        return {"modelName": self.name, "modelUrl": self.url}


def footprint(root: object) -> int:
    """Bytes held by the tensors and arrays reachable from ``root``, each storage counted once."""
    seen: set[int] = set()
    total = 0
    stack: list[Any] = [root]
    visited: set[int] = set()
    while stack:
        value = stack.pop()
        if id(value) in visited:
            continue
        visited.add(id(value))
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, np.ndarray):
            base = value if value.base is None or not isinstance(value.base, np.ndarray) else value.base
            if id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
        elif isinstance(value, ItemIndex):  # faiss's memory, out of Python's sight
            if id(value) not in seen:
                seen.add(id(value))
                total += value.nbytes
        elif isinstance(value, torch.nn.Module):
            stack.extend(value.parameters())
            stack.extend(value.buffers())
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend(value)
        elif is_dataclass(value) and not isinstance(value, type):
            stack.extend(getattr(value, f.name) for f in fields(value))
        elif hasattr(value, "__dict__") and type(value).__module__.startswith("recsys."):
            stack.extend(vars(value).values())
    return total


def _disk_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


class ModelStore:
    """Loaded models by name, least recently used first."""

    def __init__(
        self,
        budget_bytes: int,
        executor: Executor,
        *,
        load: Callable[[Path], Recommender] = Recommender.load,
    ) -> None:
        self.budget_bytes = budget_bytes
        self._executor = executor
        self._load = load
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = asyncio.Lock()

    @property
    def used_bytes(self) -> int:
        return sum(model.footprint_bytes for model in self._models.values())

    def models(self) -> Iterable[LoadedModel]:
        return list(self._models.values())

    def get(self, name: str) -> LoadedModel:
        """The model, now the most recently used; 404 if it is not loaded."""
        model = self._models.get(name)
        if model is None:
            raise UserError(f"model {name!r} is not loaded; load it with POST /models", status_code=404)
        self._models.move_to_end(name)
        return model

    def unload(self, name: str) -> None:
        if self._models.pop(name, None) is None:
            raise UserError(f"model {name!r} is not loaded", status_code=404)
        logger.info("unloaded model %s", name)

    def _make_room(self, needed: int) -> None:
        while self._models and self.used_bytes + needed > self.budget_bytes:
            oldest = next(iter(self._models))
            self._models.pop(oldest)
            logger.info("unloaded model %s (least recently used) to make room", oldest)

    def _too_large(self, name: str, size: int, what: str) -> ServerStateError:
        return ServerStateError(
            f"model {name!r} needs {size / 2**20:,.1f} MiB ({what}), more than the budget of "
            f"{self.budget_bytes / 2**20:,.1f} MiB ({MODEL_MEMORY_ENV})",
            status_code=INSUFFICIENT_STORAGE,
        )

    async def load(self, name: str, url: str) -> LoadedModel:
        """Load the artifact at ``url`` as ``name``: 409 if loaded, 507 if it cannot fit, 400 if
        ``url`` holds no artifact."""
        async with self._lock:  # one load at a time: two would both count on the same free room
            if name in self._models:
                raise UserError(f"model {name!r} is already loaded", status_code=409)
            directory = Path(url)
            if not directory.is_dir():
                raise UserError(f"url {url!r} is not a directory holding a model", status_code=400)
            on_disk = _disk_bytes(directory)
            if on_disk > self.budget_bytes:
                raise self._too_large(name, on_disk, "its files alone")
            self._make_room(on_disk)
            loop = asyncio.get_running_loop()
            try:
                recommender = await loop.run_in_executor(self._executor, self._load, directory)
            except UserError as error:
                raise UserError(f"model {name!r} at {url}: {error.message}", status_code=400) from None
            except (OSError, ValueError) as error:
                raise UserError(
                    f"model {name!r} at {url} cannot be loaded: {error}", status_code=400
                ) from None
            size = footprint(recommender)
            if size > self.budget_bytes:
                raise self._too_large(name, size, "loaded")
            self._make_room(size)
            model = LoadedModel(
                name, url, recommender, MicroBatcher(recommender.recommend, self._executor), size, time.time()
            )
            self._models[name] = model
            logger.info("loaded model %s from %s: %.1f MiB", name, url, size / 2**20)
            return model
