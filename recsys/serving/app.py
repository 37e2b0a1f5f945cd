"""The SageMaker hosting contract as a FastAPI app: /ping, /invocations, /execution-parameters.

The app holds one piece of state, the loaded ``Recommender``, created in the lifespan before the
port answers: ``/ping`` is 200 only when it exists. Client errors are JSON ``{"error": ...}`` with
a 4xx status; anything else is a 500 whose body says nothing of the internals.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from recsys.errors import UserError
from recsys.sagemaker.contract import CUSTOM_ATTRIBUTES_HEADER, HostingConfig, read_hosting_config
from recsys.serving import codecs
from recsys.serving.engine import Recommender
from recsys.serving.schemas import InvocationResponse, parse_instances, request_json_schema

logger = logging.getLogger(__name__)


async def get_recommender(request: Request) -> Recommender:
    """The app's one piece of state, or 503 while there is none.

    ``async`` so that FastAPI calls it on the event loop: a plain ``def`` dependency is run in the
    thread pool, a thread hop on every request for one attribute read.
    """
    current: Recommender | None = getattr(request.app.state, "recommender", None)
    if current is None:
        raise UserError("the model is not loaded", status_code=503)
    return current


ServingRecommender = Annotated[Recommender, Depends(get_recommender)]


def create_app(config: HostingConfig, *, recommender: Recommender | None = None) -> FastAPI:
    """Build the app; ``recommender`` skips loading from ``config.model_dir`` (tests)."""
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
        app.state.recommender = recommender or Recommender.load(config.model_dir)
        logger.info("model loaded from %s: %d items", config.model_dir, app.state.recommender.num_items)
        # Everything alive now (imported modules, the model) lives as long as the worker: keep it
        # out of the collector's sight. Otherwise each full collection walks ~230,000 objects, a
        # ~110 ms pause that every request in flight waits for (it set p99 at 32 connections).
        gc.freeze()
        yield
        app.state.recommender = None

    app = FastAPI(
        title="recsys",
        summary="Neural collaborative filtering recommendations under the SageMaker hosting contract.",
        lifespan=lifespan,
    )
    app.state.config = config

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=_echo(request))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": "internal error; see the endpoint's logs"}, status_code=500)

    @app.get("/ping", summary="Health check: 200 with an empty body once the model can serve")
    async def ping(request: Request) -> Response:
        ready = getattr(request.app.state, "recommender", None) is not None
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

    @app.post(
        "/invocations",
        summary="Recommend",
        response_model=InvocationResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": request_json_schema()},
                    "application/jsonlines": {
                        "schema": {"type": "string", "description": "one instance per line"}
                    },
                    "text/csv": {"schema": {"type": "string", "description": "one `user_id[,k]` per line"}},
                },
            }
        },
    )
    async def invocations(request: Request, recommender: ServingRecommender) -> Response:
        fmt_in = codecs.content_type_of(request.headers.get("content-type"))
        fmt_out = codecs.accept_of(request.headers.get("accept"))
        body = await _read_body(request, config.max_payload_bytes)
        raw = codecs.decode_instances(body, fmt_in, max_instances=config.max_instances)
        queries = parse_instances(raw)
        try:
            results = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(executor, recommender.recommend, queries),
                timeout=config.timeout_seconds,
            )
        except TimeoutError:
            raise UserError(
                f"the request took longer than {config.timeout_seconds:g} s; send fewer instances",
                status_code=504,
            ) from None
        payload = codecs.encode_predictions([r.to_json() for r in results], fmt_out)
        return Response(payload, media_type=codecs.MEDIA_TYPES[fmt_out], headers=_echo(request))

    return app


def _echo(request: Request) -> dict[str, str]:
    value = request.headers.get(CUSTOM_ATTRIBUTES_HEADER)
    return {CUSTOM_ATTRIBUTES_HEADER: value} if value is not None else {}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UserError(_too_large(limit), status_code=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UserError(_too_large(limit), status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> str:
    return f"request body over the limit of {limit / (1024 * 1024):g} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"


def app_from_environment() -> FastAPI:
    """The uvicorn factory of each worker process: the edge that reads the environment."""
    return create_app(read_hosting_config(os.environ, cpu_count=os.cpu_count() or 1))
