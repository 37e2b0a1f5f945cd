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

At DEBUG level the batcher logs what it does that a test from outside needs to see: each chunk of
a chunked request as it is scored, the moment such a request's caller stops waiting, and a failed
batch being scored again request by request.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import NamedTuple

from recsys.serving.engine import Query, Recommendation

logger = logging.getLogger(__name__)

Score = Callable[[Sequence[Query]], list[Recommendation]]


class _Pending(NamedTuple):
    queries: Sequence[Query]
    future: asyncio.Future[list[Recommendation]]
    # (request number, chunk number from 1, chunks) for a chunk of a request larger than a batch;
    # None for a whole request. Only logged: it names the chunk in the DEBUG lines.
    chunk: tuple[int, int, int] | None


class MicroBatcher:
    def __init__(self, score: Score, executor: Executor, *, max_batch: int = 256) -> None:
        self._score = score
        self._executor = executor
        self._max_batch = max_batch
        self._pending: list[_Pending] = []
        self._draining = False
        self._chunked = 0  # chunked requests so far: their number in the log lines

    async def submit(self, queries: Sequence[Query]) -> list[Recommendation]:
        if len(queries) <= self._max_batch:
            return await self._queue(queries, None)
        # One chunk queued at a time: requests that arrive meanwhile are scored between its chunks,
        # not after all of them, and once the caller stops waiting (a timeout cancels this await)
        # no further chunk is queued, so the scoring thread is free for requests still answered.
        self._chunked += 1
        request, chunks = self._chunked, math.ceil(len(queries) / self._max_batch)
        results: list[Recommendation] = []
        number = 0
        try:
            for number, start in enumerate(range(0, len(queries), self._max_batch), start=1):
                chunk = queries[start : start + self._max_batch]
                results.extend(await self._queue(chunk, (request, number, chunks)))
        except asyncio.CancelledError:
            logger.debug(
                "chunked request %d: its caller stopped waiting during chunk %d of %d; "
                "the chunks left are dropped",
                request,
                number,
                chunks,
            )
            raise
        return results

    async def _queue(
        self, queries: Sequence[Query], chunk: tuple[int, int, int] | None
    ) -> list[Recommendation]:
        future: asyncio.Future[list[Recommendation]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(queries, future, chunk))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch: list[_Pending] = []
                size = 0
                while self._pending and (
                    not batch or size + len(self._pending[0].queries) <= self._max_batch
                ):
                    pending = self._pending.pop(0)
                    if not pending.future.done():  # a request that timed out is not scored
                        batch.append(pending)
                        size += len(pending.queries)
                if not batch:
                    continue
                if logger.isEnabledFor(logging.DEBUG):  # the hot path: no loop unless it is read
                    for pending in batch:
                        if pending.chunk is not None:
                            logger.debug("chunked request %d: scoring chunk %d of %d", *pending.chunk)
                merged = [q for pending in batch for q in pending.queries]
                try:
                    results = await loop.run_in_executor(self._executor, self._score, merged)
                except Exception as exc:
                    if len(batch) == 1:
                        _fail(batch[0].future, exc)
                        continue
                    # One request's bad query, a UserError or an internal error, must not fail its
                    # neighbours: score each alone, so only the one that fails alone sees an error.
                    logger.debug("a batch of %d requests failed (%s): scoring each alone", len(batch), exc)
                    for queries, future, _ in batch:
                        await self._score_alone(queries, future)
                    continue
                start = 0
                for queries, future, _ in batch:
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
