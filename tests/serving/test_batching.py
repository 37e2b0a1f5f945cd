"""Micro-batching: a request's error stays with that request, and work nobody waits for is dropped.

The scoring function here is a stand-in for ``Recommender.recommend`` that records what it was
given; the executor is a real one-thread pool, as the app uses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from recsys.errors import UserError
from recsys.serving.batching import MicroBatcher
from recsys.serving.engine import Query, Recommendation

T = TypeVar("T")
# Long enough for a thread to start on a busy machine; no test waits this long when it passes.
WAIT_SECONDS = 10.0


class Scorer:
    """Scores each query as a fake recommendation; ``"boom"`` raises an internal error, ``"bad"``
    a UserError, each failing the whole call it is in, as the engine does."""

    def __init__(self) -> None:
        self.calls: list[list[str | None]] = []
        self.gate: threading.Event | None = None  # when set up, the first call waits on it
        self.entered = threading.Event()

    def __call__(self, queries: Sequence[Query]) -> list[Recommendation]:
        self.calls.append([q.user_id for q in queries])
        self.entered.set()
        if self.gate is not None and len(self.calls) == 1:
            assert self.gate.wait(WAIT_SECONDS)
        for query in queries:
            if query.user_id == "boom":
                raise RuntimeError("an internal error while scoring")
            if query.user_id == "bad":
                raise UserError("a bad query")
        return [Recommendation([str(q.user_id)], [0.0], "user") for q in queries]

    @property
    def scored(self) -> int:
        return sum(len(call) for call in self.calls)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, WAIT_SECONDS))


def _queries(*user_ids: str) -> list[Query]:
    return [Query(user_id=u) for u in user_ids]


def _ids(results: list[Recommendation]) -> list[str]:
    return [r.item_ids[0] for r in results]


@pytest.mark.parametrize("error", ["boom", "bad"])
def test_an_error_stays_with_the_request_that_raised_it(executor: ThreadPoolExecutor, error: str) -> None:
    scorer = Scorer()
    batcher = MicroBatcher(scorer, executor)
    requests = [_queries("a", "b"), _queries("c", error), _queries("d"), _queries("e", "f")]

    async def main() -> list[list[Recommendation] | BaseException]:
        return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)

    results = _run(main())

    assert _ids(results[0]) == ["a", "b"]  # type: ignore[arg-type]
    assert isinstance(results[1], RuntimeError if error == "boom" else UserError)
    assert _ids(results[2]) == ["d"]  # type: ignore[arg-type]
    assert _ids(results[3]) == ["e", "f"]  # type: ignore[arg-type]
    # One pass over the whole batch, then each request alone.
    assert scorer.calls[0] == ["a", "b", "c", error, "d", "e", "f"]
    assert scorer.calls[1:] == [["a", "b"], ["c", error], ["d"], ["e", "f"]]


def test_a_lone_request_that_fails_is_not_scored_twice(executor: ThreadPoolExecutor) -> None:
    scorer = Scorer()
    batcher = MicroBatcher(scorer, executor)

    with pytest.raises(RuntimeError):
        _run(batcher.submit(_queries("x", "boom")))

    assert scorer.calls == [["x", "boom"]]


def test_a_request_larger_than_a_batch_keeps_its_order(executor: ThreadPoolExecutor) -> None:
    scorer = Scorer()
    batcher = MicroBatcher(scorer, executor, max_batch=3)
    user_ids = [f"u{n}" for n in range(8)]

    async def main() -> tuple[list[Recommendation], list[Recommendation]]:
        return await asyncio.gather(batcher.submit(_queries(*user_ids)), batcher.submit(_queries("v")))

    big, small = _run(main())

    assert _ids(big) == user_ids
    assert _ids(small) == ["v"]
    assert max(len(call) for call in scorer.calls) <= 3


def test_the_rest_of_a_request_whose_caller_gave_up_is_not_scored(executor: ThreadPoolExecutor) -> None:
    scorer = Scorer()
    scorer.gate = threading.Event()
    batcher = MicroBatcher(scorer, executor, max_batch=4)
    big = _queries(*(f"u{n}" for n in range(40)))

    async def main() -> list[Recommendation]:
        request = asyncio.ensure_future(batcher.submit(big))
        # The first chunk is being scored: the caller gives up (a timeout cancels its await).
        await asyncio.get_running_loop().run_in_executor(None, scorer.entered.wait, WAIT_SECONDS)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        scorer.gate.set()  # type: ignore[union-attr]
        return await batcher.submit(_queries("next"))

    after = _run(main())

    assert _ids(after) == ["next"]
    assert scorer.calls == [["u0", "u1", "u2", "u3"], ["next"]]  # nothing of the big request after


def test_a_request_that_arrives_during_a_large_one_is_scored_between_its_chunks(
    executor: ThreadPoolExecutor,
) -> None:
    scorer = Scorer()
    scorer.gate = threading.Event()
    batcher = MicroBatcher(scorer, executor, max_batch=4)
    big = _queries(*(f"u{n}" for n in range(12)))

    async def main() -> tuple[list[Recommendation], list[Recommendation]]:
        request = asyncio.ensure_future(batcher.submit(big))
        await asyncio.get_running_loop().run_in_executor(None, scorer.entered.wait, WAIT_SECONDS)
        small = asyncio.ensure_future(batcher.submit(_queries("small")))
        await asyncio.sleep(0)  # queued behind the chunk being scored
        scorer.gate.set()  # type: ignore[union-attr]
        return await request, await small

    big_results, small_results = _run(main())

    assert _ids(big_results) == [f"u{n}" for n in range(12)]
    assert _ids(small_results) == ["small"]
    assert scorer.calls[1] == ["small"]  # not after the whole large request
