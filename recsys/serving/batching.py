"""Micro-batching: the queries of requests that arrive together are scored in one pass.

While one batch is being scored on the worker's scoring thread, new requests queue; when it
finishes, everything queued is scored as the next batch. A lone request is scored at once (no
waiting window), and under load the fixed cost of a scoring pass (torch dispatch, building the
user tensors, the catalogue product) is paid once per batch instead of once per request.

A request's error stays with that request: when a batch fails, its requests are scored again one
by one, and only those that fail alone see an error. A request larger than a batch is queued as
chunks of at most ``max_batch`` queries, so when its caller stops waiting (a timeout) the chunks
not yet scored are dropped rather than keeping the scoring thread busy for nobody. While it is
scored, requests that arrive meanwhile are scored between its chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

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
        if len(queries) <= self._max_batch:
            return await self._queue(queries)
        # One chunk queued at a time: requests that arrive meanwhile are scored between its chunks,
        # not after all of them, and once the caller stops waiting (a timeout cancels this await)
        # no further chunk is queued, so the scoring thread is free for requests still answered.
        results: list[Recommendation] = []
        for start in range(0, len(queries), self._max_batch):
            results.extend(await self._queue(queries[start : start + self._max_batch]))
        return results

    async def _queue(self, queries: Sequence[Query]) -> list[Recommendation]:
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
                except Exception as exc:
                    if len(batch) == 1:
                        _fail(batch[0][1], exc)
                        continue
                    # One request's bad query, a UserError or an internal error, must not fail its
                    # neighbours: score each alone, so only the one that fails alone sees an error.
                    for queries, future in batch:
                        await self._score_alone(queries, future)
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
        if future.done():  # its caller stopped waiting while the batch was scored
            return
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._score, queries)
        except Exception as exc:
            _fail(future, exc)
            return
        if not future.done():
            future.set_result(result)


def _fail(future: asyncio.Future[list[Recommendation]], exc: Exception) -> None:
    if not future.done():  # a request that timed out is answered already
        future.set_exception(exc)
