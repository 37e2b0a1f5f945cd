"""The SageMaker hosting contract as a FastAPI app: /ping, /invocations, /execution-parameters.

The app holds one piece of state, the loaded ``Recommender``, created in the lifespan before the
port answers: ``/ping`` is 200 only when it exists. Client errors are JSON ``{"error": ...}`` with
a 4xx status; anything else is a 500 whose body says nothing of the internals.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, cast

import torch
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from recsys.errors import ServerStateError, UserError
from recsys.sagemaker.contract import (
    CUSTOM_ATTRIBUTES_HEADER,
    MAX_PAYLOAD_ENV,
    HostingConfig,
    read_hosting_config,
)
from recsys.serving import codecs
from recsys.serving.batching import MicroBatcher
from recsys.serving.engine import Recommender
from recsys.serving.models import ModelStore
from recsys.serving.processes import LARGE_REQUEST_BYTES, exit_with_parent, release_freed_memory
from recsys.serving.schemas import (
    InvocationResponse,
    error_responses,
    parse_instances,
    request_json_schema,
)

logger = logging.getLogger(__name__)


def create_app(config: HostingConfig) -> InvocationsEndpoint:
    """Build the app; the model loads in its lifespan, from ``config.model_dir``."""
    # One scoring thread per worker. Scoring in the default thread pool (40 threads) makes
    # concurrent requests fight over the GIL, which every torch op releases and takes back, and
    # over torch's intra-op threads: at 32 connections throughput fell to a third of one
    # connection's. Queued here, they run one after another at full speed. (Its idle thread ends
    # with the process, or when the app is garbage-collected.)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recommend")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each worker gets its share of the cores, so workers do not fight over threads.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(config.workers, 1)))
        if config.multi_model:
            # No model of its own: SageMaker loads them through /models as requests name them.
            app.state.models = ModelStore(
                config.model_memory_bytes,
                executor,
                load=functools.partial(Recommender.load, exact=config.exact_retrieval),
            )
            logger.info("multi-model endpoint: a budget of %.0f MiB", config.model_memory_bytes / 2**20)
        else:
            app.state.recommender = Recommender.load(config.model_dir, exact=config.exact_retrieval)
            app.state.batcher = MicroBatcher(app.state.recommender.recommend, executor)
            logger.info("model loaded from %s: %d items", config.model_dir, app.state.recommender.num_items)
        # Everything alive now (imported modules, the model) lives as long as the worker: keep it
        # out of the collector's sight. Otherwise each full collection walks ~230,000 objects, a
        # ~110 ms pause that every request in flight waits for (it set p99 at 32 connections).
        gc.freeze()
        yield
        app.state.recommender = None
        app.state.models = None

    app = FastAPI(
        title="recsys",
        summary="Neural collaborative filtering recommendations under the SageMaker hosting contract.",
        lifespan=lifespan,
    )
    app.state.config = config

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": "internal error; see the endpoint's logs"}, status_code=500)

    @app.get(
        "/ping",
        summary="Health check: 200 with an empty body once the model can serve",
        response_class=Response,
        responses={200: {"description": "Ready"}, 503: {"description": "Not ready yet (an empty body)"}},
    )
    async def ping(request: Request) -> Response:
        state = request.app.state
        ready = getattr(state, "recommender", None) is not None or getattr(state, "models", None) is not None
        return Response(status_code=200 if ready else 503)

    @app.get("/execution-parameters", summary="Batch Transform's execution parameters")
    async def execution_parameters() -> dict[str, Any]:
        return {
            "MaxConcurrentTransforms": config.workers,
            "BatchStrategy": "MULTI_RECORD",
            # 1 MB of records (up to ~100,000 CSV lines) keeps a MultiRecord request inside both the
            # instance limit and the request timeout.
            "MaxPayloadInMB": 1,
        }

    jsonlines_body = {
        "type": "string",
        "minLength": 1,
        "description": "one instance (a JSON object) per line",
    }

    @app.post(
        "/invocations",
        summary="Recommend",
        response_model=InvocationResponse,
        responses={
            200: {
                "description": "One prediction per instance, in order, in the format Accept chose",
                "content": {
                    "application/jsonlines": {"schema": {"type": "string", "description": "one per line"}},
                    "text/csv": {"schema": {"type": "string", "description": "item ids, one line each"}},
                },
            },
            **error_responses(400, 404, 406, 413, 415, 500, 503, 504),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": request_json_schema(config.max_instances)},
                    "application/jsonlines": {"schema": jsonlines_body},
                    "application/x-jsonlines": {"schema": jsonlines_body},
                    "text/csv": {
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "description": "one `user_id[,k[,history]]` per line, the history's item "
                            "ids separated by `|`",
                        }
                    },
                },
            }
        },
    )
    async def invocations(request: Request) -> Response:
        # InvocationsEndpoint answers POST /invocations before FastAPI in the server; an app used
        # on its own (a test client, another ASGI server) gets the same handler here.
        status, headers, payload = await respond(request.app, request.scope, request.receive)
        kept = {k.decode(): v.decode("latin-1") for k, v in headers if k != b"content-length"}
        return Response(payload, status_code=status, headers=kept)

    _add_model_routes(app)
    generic_openapi = app.openapi

    def model_openapi() -> dict[str, Any]:
        # Built on the first GET /openapi.json, after the lifespan loaded the model: the request
        # schema then names its attributes, context keys and event types, which the server checks.
        if app.openapi_schema is None:
            document = generic_openapi()
            recommender = getattr(app.state, "recommender", None)
            if recommender is None:  # multi-model, or not loaded: the generic schema, not cached
                app.openapi_schema = None
                return document
            body = document["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]
            body["schema"] = request_json_schema(config.max_instances, recommender)
            return document
        return app.openapi_schema

    app.openapi = model_openapi  # type: ignore[method-assign]
    return InvocationsEndpoint(app, executor)


def _store(app: FastAPI) -> ModelStore:
    store = getattr(app.state, "models", None)
    if store is None:
        if app.state.config.multi_model:
            raise ServerStateError("the server is starting; retry once /ping answers 200", status_code=503)
        raise UserError(
            "this endpoint serves one model: POST /invocations (the /models API is for multi-model "
            "endpoints, SAGEMAKER_MULTI_MODEL=true)",
            status_code=404,
        )
    return cast(ModelStore, store)


def _add_model_routes(app: FastAPI) -> None:
    """SageMaker's multi-model API: load, list, describe, unload and invoke models by name."""

    def answer(error: UserError | ServerStateError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status_code)

    @app.post(
        "/models",
        summary="Multi-model: load a model",
        status_code=200,
        responses=error_responses(400, 404, 409, 500, 503, 507),
    )
    async def load_model(request: Request) -> Response:
        try:
            store = _store(request.app)
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UserError('the body must be JSON: {"model_name": ..., "url": ...}') from None
            if not isinstance(body, dict) or not all(
                isinstance(body.get(k), str) and body.get(k) for k in ("model_name", "url")
            ):
                raise UserError('the body must be {"model_name": "<name>", "url": "<directory>"}, both text')
            model = await store.load(body["model_name"], body["url"])
        except (UserError, ServerStateError) as error:
            return answer(error)
        return JSONResponse({"message": f"model {model.name!r} loaded", **model.describe()})

    @app.get("/models", summary="Multi-model: the loaded models", responses=error_responses(404, 500, 503))
    async def list_models(request: Request) -> Response:
        try:
            store = _store(request.app)
        except (UserError, ServerStateError) as error:
            return answer(error)
        models = sorted(store.models(), key=lambda m: m.name)
        # Pages of next_page_token / page_size, as SageMaker's list call may ask for.
        start = int(request.query_params.get("next_page_token") or 0)
        size = int(request.query_params.get("page_size") or len(models) or 1)
        page = models[start : start + size]
        listed: dict[str, Any] = {"models": [m.describe() for m in page]}
        if start + size < len(models):
            listed["nextPageToken"] = str(start + size)
        return JSONResponse(listed)

    @app.get(
        "/models/{name}", summary="Multi-model: one loaded model", responses=error_responses(404, 500, 503)
    )
    async def describe_model(request: Request, name: str) -> Response:
        try:
            model = _store(request.app).get(name)
        except (UserError, ServerStateError) as error:
            return answer(error)
        return JSONResponse(model.describe())

    @app.delete(
        "/models/{name}", summary="Multi-model: unload a model", responses=error_responses(404, 500, 503)
    )
    async def unload_model(request: Request, name: str) -> Response:
        try:
            _store(request.app).unload(name)
        except (UserError, ServerStateError) as error:
            return answer(error)
        return JSONResponse({"message": f"model {name!r} unloaded"})

    @app.post(
        "/models/{name}/invoke",
        summary="Multi-model: recommend with one model",
        responses=error_responses(400, 404, 406, 413, 415, 500, 503, 504),
    )
    async def invoke_model(request: Request, name: str) -> Response:
        status, headers, payload = await respond(request.app, request.scope, request.receive, model=name)
        kept = {k.decode(): v.decode("latin-1") for k, v in headers if k != b"content-length"}
        return Response(payload, status_code=status, headers=kept)


async def invoke(
    app: FastAPI, content_type: str | None, accept: str | None, body: bytes, *, model: str | None = None
) -> tuple[bytes, str]:
    """Decode, validate, score (micro-batched) and encode one /invocations request (or, on a
    multi-model endpoint, one /models/<model>/invoke)."""
    config: HostingConfig = app.state.config
    if model is not None:
        batcher = _store(app).get(model).batcher
    elif config.multi_model:
        raise UserError("a multi-model endpoint answers POST /models/<name>/invoke", status_code=404)
    elif getattr(app.state, "recommender", None) is None:
        raise ServerStateError("the model is not loaded yet; retry once /ping answers 200", status_code=503)
    else:
        batcher = app.state.batcher
    fmt_in = codecs.content_type_of(content_type)
    fmt_out = codecs.accept_of(accept)
    raw = codecs.decode_instances(body, fmt_in, max_instances=config.max_instances)
    queries = parse_instances(raw)
    try:
        # asyncio.timeout, unlike wait_for, adds no task per request on this hot path.
        async with asyncio.timeout(config.timeout_seconds):
            results = await batcher.submit(queries)
    except TimeoutError:
        raise ServerStateError(
            f"the request took longer than {config.timeout_seconds:g} s; send fewer instances",
            status_code=504,
        ) from None
    return codecs.encode_predictions([r.to_json() for r in results], fmt_out), codecs.MEDIA_TYPES[fmt_out]


class InvocationsEndpoint:
    """POST /invocations as a plain ASGI handler in front of the FastAPI app.

    /invocations is the one hot path: FastAPI's middleware stack, request object, routing and
    dependency machinery cost more per request than scoring a micro-batched user does (as a
    Starlette middleware inside that stack it measured 0.42-0.50x of /ping's rate, against
    0.52-0.63x out here).
    Everything else (/ping, /execution-parameters, the OpenAPI page, the lifespan) goes to FastAPI.
    """

    def __init__(self, app: FastAPI, executor: Executor) -> None:
        self.app = app
        self._executor = executor  # the scoring thread
        self._trimming = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/invocations":
            status, headers, payload = await respond(self.app, scope, receive)
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            sent = len(payload)
            del payload  # the request's last large buffer: everything it made is freed by now
        else:  # a multi-model /models/<name>/invoke among them
            sent = 0

            async def counted(message: Message) -> None:
                nonlocal sent
                sent += len(message.get("body", b""))
                await send(message)

            await self.app(scope, receive, counted)
        size = max(sent, _declared_length(scope))
        if size >= LARGE_REQUEST_BYTES:
            self._release_memory(size)

    def _release_memory(self, size: int) -> None:
        # On the scoring thread, after the response is sent: no client waits for it, and requests
        # queued meanwhile are scored after it (a few ms) rather than beside it. One at a time.
        if self._trimming:
            logger.debug("after a request of %d bytes: a trim is running already; none added", size)
            return
        self._trimming = True

        def trim() -> None:
            try:
                released = release_freed_memory()
            finally:
                self._trimming = False
            # The only trace of a trim outside the process (its effect on RSS is noise to a test).
            logger.debug(
                "after a request of %d bytes: %s",
                size,
                "freed heap pages returned to the system (malloc_trim)"
                if released
                else "no malloc_trim here; nothing returned",
            )

        asyncio.get_running_loop().run_in_executor(self._executor, trim)


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


async def respond(
    app: FastAPI, scope: Scope, receive: Receive, *, model: str | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One POST /invocations: (status, headers, body). Errors are JSON ``{"error": ...}``."""
    headers = {name.lower(): value.decode("latin-1") for name, value in scope["headers"]}
    status, media_type = 200, codecs.MEDIA_TYPES["json"]
    try:
        body = await _read(headers, receive, app.state.config.max_payload_bytes)
        payload, media_type = await invoke(
            app, headers.get(b"content-type"), headers.get(b"accept"), body, model=model
        )
    except (UserError, ServerStateError) as exc:
        status, payload = exc.status_code, _error_body(exc.message)
    except Exception:
        logger.exception("internal error on /invocations")
        status, payload = 500, _error_body("internal error; see the endpoint's logs")
    response_headers = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    echo = headers.get(CUSTOM_ATTRIBUTES_HEADER.lower().encode())
    if echo is not None:
        response_headers.append((CUSTOM_ATTRIBUTES_HEADER.encode(), echo.encode("latin-1")))
    return status, response_headers, payload


async def _read(headers: dict[bytes, str], receive: Receive, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UserError(_too_large(limit), status_code=413)
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise UserError("the client disconnected", status_code=400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise UserError(_too_large(limit), status_code=413)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _too_large(limit: int) -> str:
    megabytes = limit / 2**20
    return f"request body over the limit of {limit:,} bytes ({megabytes:.2f} MB; {MAX_PAYLOAD_ENV})"


def app_from_environment() -> InvocationsEndpoint:
    """The uvicorn factory of each worker process: the edge that reads the environment."""
    exit_with_parent()  # a worker must not outlive a master killed with SIGKILL
    return create_app(read_hosting_config(os.environ, cpu_count=os.cpu_count() or 1))
