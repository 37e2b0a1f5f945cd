"""Micro-batching: the queries of requests that arrive together are scored in one pass.

While one batch is being scored on the worker's scoring thread, new requests queue; when it
finishes, everything queued is scored as the next batch. A lone request is scored at once (no
waiting window), and under load the fixed cost of a scoring pass (torch dispatch, building the
user tensors, the catalogue product) is paid once per batch instead of once per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from recsys.errors import UserError
from recsys.serving.engine import Query, Recommendation

Score = Callable[[Sequence[Query]], list[Recommendation]]


class MicroBatcher:
    def __init__(self, score: Score, executor: Executor, *, max_batch: int = 256) -> None:
        self._score = score
        self._executor = executor
        self._max_batch = max_batch
        self._pending: list[tuple[Sequence[Query], asyncio.Future[list[Recommendation]]]] = []
        self._draining = False

    async def submit(self, queries: Sequence[Query]) -> list[Recommendation]:
        future: asyncio.Future[list[Recommendation]] = asyncio.get_running_loop().create_future()
        self._pending.append((queries, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch: list[tuple[Sequence[Query], asyncio.Future[list[Recommendation]]]] = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self._max_batch):
                    queries, future = self._pending.pop(0)
                    if not future.done():  # a request that timed out is not scored
                        batch.append((queries, future))
                        size += len(queries)
                if not batch:
                    continue
                merged = [q for queries, _ in batch for q in queries]
                try:
                    results = await loop.run_in_executor(self._executor, self._score, merged)
                except UserError:
                    # One request's bad query must not fail its neighbours: score each alone.
                    for queries, future in batch:
                        await self._score_alone(queries, future)
                    continue
                except Exception as exc:  # an internal error: every request of the batch sees it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                start = 0
                for queries, future in batch:
                    if not future.done():
                        future.set_result(results[start : start + len(queries)])
                    start += len(queries)
        finally:
            self._draining = False

    async def _score_alone(
        self, queries: Sequence[Query], future: asyncio.Future[list[Recommendation]]
    ) -> None:
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._score, queries)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)
