"""The app in process, through httpx's ASGI transport: its states and its one request path.

The real-uvicorn tests (tests/integration/test_serve_http.py) cover the server over TCP; here the
states that are hard to reach from outside are driven directly: the 503 before the model loads,
the 504 of a slow scoring pass, the micro-batcher merging concurrent requests, and the FastAPI
route for POST /invocations, which must answer exactly as the fast path in front of it does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from recsys.data.synthetic import SyntheticData
from recsys.errors import ServerStateError
from recsys.sagemaker.contract import MAX_PAYLOAD_ENV, HostingConfig
from recsys.serving import app as app_module
from recsys.serving.app import InvocationsEndpoint, create_app, invoke
from recsys.serving.engine import Query, Recommendation
from recsys.serving.processes import LARGE_REQUEST_BYTES, release_freed_memory
from recsys.serving.schemas import ERROR_STATUSES, InvocationResponse
from tests.serving.trained_model import trained_tree


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data) / "model"


def _config(model_dir: Path, **changes: Any) -> HostingConfig:
    base = HostingConfig(
        model_dir=model_dir,
        port=8080,
        workers=1,
        timeout_seconds=30.0,
        max_payload_bytes=1 << 20,
        max_instances=100,
    )
    return dataclasses.replace(base, **changes)


@asynccontextmanager
async def _client(endpoint: Any, *, loaded: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=endpoint)
    async with httpx.AsyncClient(transport=transport, base_url="http://recsys") as client:
        if not loaded:
            yield client
            return
        inner = endpoint.app if isinstance(endpoint, InvocationsEndpoint) else endpoint
        async with inner.router.lifespan_context(inner):
            yield client


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_a_body_over_the_limit_is_a_413_naming_the_limits_variable(model_dir: Path) -> None:
    endpoint = create_app(_config(model_dir, max_payload_bytes=1024))
    padded = b'{"user_id": "u1"' + b" " * 2048 + b"}"

    async def scenario() -> httpx.Response:
        async with _client(endpoint) as client:
            return await client.post(
                "/invocations", content=padded, headers={"Content-Type": "application/json"}
            )

    response = _run(scenario())

    assert response.status_code == 413
    assert (
        response.json()["error"]
        == "request body over the limit of 1,024 bytes (0.00 MB; SAGEMAKER_MAX_PAYLOAD_IN_MB)"
    )
    assert MAX_PAYLOAD_ENV == "SAGEMAKER_MAX_PAYLOAD_IN_MB"
    assert MAX_PAYLOAD_ENV in ERROR_STATUSES[413]  # the OpenAPI document names it too


def test_before_the_model_loads_ping_and_invocations_are_503_server_states(model_dir: Path) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with _client(create_app(_config(model_dir)), loaded=False) as client:
            return await client.get("/ping"), await client.post("/invocations", json={"user_id": "u1"})

    ping, invocation = _run(scenario())

    assert ping.status_code == 503
    assert invocation.status_code == 503
    assert "not loaded" in invocation.json()["error"]

    # Not a user error: the request may be fine, the client should retry.
    endpoint = create_app(_config(model_dir))
    with pytest.raises(ServerStateError) as caught:
        _run(invoke(endpoint.app, "application/json", None, b'{"user_id": "u1"}'))
    assert caught.value.status_code == 503


def test_a_slow_scoring_pass_is_a_504_naming_the_limit(model_dir: Path) -> None:
    endpoint = create_app(_config(model_dir, timeout_seconds=0.05))

    async def scenario() -> httpx.Response:
        async with _client(endpoint) as client:
            batcher = endpoint.app.state.batcher
            score = batcher._score

            def slow(queries: Sequence[Query]) -> list[Recommendation]:
                time.sleep(0.3)
                return score(queries)

            batcher._score = slow
            return await client.post("/invocations", json={"user_id": "u1"})

    response = _run(scenario())

    assert response.status_code == 504
    assert "longer than 0.05 s" in response.json()["error"]


def test_concurrent_requests_are_scored_together_and_answered_as_alone(
    model_dir: Path, tiny_data: SyntheticData
) -> None:
    users = [str(u) for u in tiny_data.interactions["user_id"].drop_duplicates()[:24]]
    endpoint = create_app(_config(model_dir))
    passes: list[int] = []

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        async with _client(endpoint) as client:
            alone = [await client.post("/invocations", json={"user_id": u, "k": 5}) for u in users]
            batcher = endpoint.app.state.batcher
            score = batcher._score
            gate = threading.Event()

            def counted(queries: Sequence[Query]) -> list[Recommendation]:
                gate.wait(5)  # the first pass waits until every request has queued behind it
                passes.append(len(queries))
                return score(queries)

            batcher._score = counted
            tasks = [
                asyncio.ensure_future(client.post("/invocations", json={"user_id": u, "k": 5})) for u in users
            ]
            await asyncio.sleep(0.2)
            gate.set()
            together = list(await asyncio.gather(*tasks))
            return alone, together

    alone, together = _run(scenario())

    # The same items in the same order, and the same scores up to the last of their six decimals:
    # a [B, N] product rounds a last bit differently from a [1, N] one now and then.
    for merged, single in zip(together, alone, strict=True):
        (got,), (expected,) = merged.json()["predictions"], single.json()["predictions"]
        assert got["item_ids"] == expected["item_ids"]
        assert got["scores"] == pytest.approx(expected["scores"], abs=1.5e-6)
        assert {k: v for k, v in got.items() if k != "scores"} == {
            k: v for k, v in expected.items() if k != "scores"
        }
    assert sum(passes) == len(users)
    assert len(passes) < len(users) / 2, passes  # merged into few passes, not one per request


def _validated(body: dict[str, Any]) -> InvocationResponse:
    """The body read against the declared response schema, no undeclared field allowed."""
    response = InvocationResponse.model_validate(body)
    declared = set(type(response.predictions[0]).model_fields)
    for prediction in body["predictions"]:
        assert set(prediction) <= declared, set(prediction) - declared
    return response


def test_the_fastapi_route_answers_as_the_fast_path_does(model_dir: Path, tiny_data: SyntheticData) -> None:
    user = str(tiny_data.interactions["user_id"].iloc[0])
    item = str(tiny_data.items["item_id"].iloc[0])
    bodies = [
        {"instances": [{"user_id": user, "k": 4}, {"history": [item, {"item_id": item}], "k": 3}]},
        {"user_id": user, "items": [item, "ghost"], "context": {"timestamp": "2026-12-02T08:00:00Z"}},
        {"user_id": user, "k": 0},
        {"user_id": user, "history": [{"item_id": item, "timestamp": "soon"}]},
    ]
    endpoint = create_app(_config(model_dir))

    async def scenario() -> list[tuple[httpx.Response, httpx.Response]]:
        out = []
        async with _client(endpoint) as fast:
            # The inner FastAPI app on its own: its route, not the fast path, answers.
            transport = httpx.ASGITransport(app=endpoint.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://recsys") as routed:
                for body in bodies:
                    out.append(
                        (
                            await fast.post("/invocations", json=body),
                            await routed.post("/invocations", json=body),
                        )
                    )
        return out

    pairs = _run(scenario())
    for (fast, routed), body in zip(pairs, bodies, strict=True):
        assert (fast.status_code, fast.content) == (routed.status_code, routed.content), body
        assert fast.headers["content-type"] == routed.headers["content-type"]
    answers = [fast for fast, _ in pairs]
    assert [a.status_code for a in answers] == [200, 200, 400, 400]
    first = _validated(answers[0].json())
    assert [p.kind for p in first.predictions] == ["user", "history"]
    assert first.predictions[0].stored_events is not None
    second = _validated(answers[1].json())
    assert second.predictions[0].unknown_items == ["ghost"]
    assert second.predictions[0].item_ids == [item]  # a candidate list comes back whole
    assert "k: Input should be greater than or equal to 1" in answers[2].json()["error"]
    assert "history.0.timestamp" in answers[3].json()["error"] and "'soon'" in answers[3].json()["error"]


def test_the_openapi_schema_documents_every_request_and_response_field(model_dir: Path) -> None:
    endpoint = create_app(_config(model_dir))

    async def scenario() -> dict[str, Any]:
        async with _client(endpoint, loaded=False) as client:
            return dict((await client.get("/openapi.json")).json())

    document = _run(scenario())
    operation = document["paths"]["/invocations"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    envelope, listed, bare = request["anyOf"]  # {"instances": [...]}, [...], or one instance
    instance = envelope["properties"]["instances"]["items"]
    assert envelope["properties"]["instances"]["minItems"] == 1 and listed["items"] == bare == instance
    for name in (
        "user_id",
        "history",
        "history_mode",
        "item_id",
        "k",
        "exclude_seen",
        "exclude_event_types",
        "exclude",
        "items",
        "filter",
        "context",
        "user_attributes",
    ):
        assert instance["properties"][name].get("description"), name
    event = instance["properties"]["history"]["anyOf"][0]["items"]["anyOf"][-1]  # or a bare item id
    assert set(event["properties"]) == {"item_id", "timestamp", "event_type"}
    assert "$ref" not in json.dumps(request)
    assert "history" in operation["requestBody"]["content"]["text/csv"]["schema"]["description"]
    response = document["components"]["schemas"]["Prediction"]["properties"]
    for name in ("stored_events", "fresh_events", "unknown_context", "unknown_attributes", "unknown_items"):
        assert response[name].get("description"), name


def test_release_freed_memory_trims_glibc_heaps_on_linux_only() -> None:
    assert release_freed_memory() is sys.platform.startswith("linux")


def test_a_large_request_is_followed_by_one_trim_on_the_scoring_thread(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[str] = []
    trimmed = threading.Event()

    def recorded() -> bool:
        trims.append(threading.current_thread().name)
        trimmed.set()
        return True

    monkeypatch.setattr(app_module, "release_freed_memory", recorded)
    endpoint = create_app(_config(model_dir, max_payload_bytes=4 << 20))
    # JSON's insignificant whitespace makes a small request's body large.
    padded = b'{"user_id": "u1"' + b" " * LARGE_REQUEST_BYTES + b"}"

    async def scenario() -> list[int]:
        async with _client(endpoint) as client:
            small = await client.post("/invocations", json={"user_id": "u1"})
            await asyncio.sleep(0.2)
            after_small = len(trims)
            large = await client.post(
                "/invocations", content=padded, headers={"Content-Type": "application/json"}
            )
            await asyncio.get_running_loop().run_in_executor(None, trimmed.wait, 5)
            return [small.status_code, after_small, large.status_code]

    small_status, after_small, large_status = _run(scenario())

    assert (small_status, large_status) == (200, 200)
    assert after_small == 0  # a small request costs no trim
    assert len(trims) == 1
    assert trims[0].startswith("recommend"), trims  # not on the event loop's thread


def test_a_large_multi_model_invocation_is_followed_by_a_trim_too(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trimmed = threading.Event()
    monkeypatch.setattr(app_module, "release_freed_memory", lambda: trimmed.set() or True)
    endpoint = create_app(
        _config(model_dir, multi_model=True, model_memory_bytes=1 << 30, max_payload_bytes=4 << 20)
    )
    padded = b'{"user_id": "u1"' + b" " * LARGE_REQUEST_BYTES + b"}"

    async def scenario() -> tuple[int, int, bool]:
        async with _client(endpoint) as client:
            loaded = await client.post("/models", json={"model_name": "m", "url": str(model_dir)})
            small = await client.post("/models/m/invoke", json={"user_id": "u1"})
            await asyncio.sleep(0.2)
            early = trimmed.is_set()
            large = await client.post(
                "/models/m/invoke", content=padded, headers={"Content-Type": "application/json"}
            )
            done = await asyncio.get_running_loop().run_in_executor(None, trimmed.wait, 5)
            assert loaded.status_code == 200, loaded.text
            return small.status_code, large.status_code, done and not early

    assert _run(scenario()) == (200, 200, True)
