"""``recsys serve``: check the artifact, then run uvicorn under the hosting contract."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
from collections.abc import Mapping
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from recsys.sagemaker.contract import read_hosting_config
from recsys.training.artifact import verify_artifact

logger = logging.getLogger(__name__)

# SIGTERM lets in-flight requests finish for up to this long before workers are stopped.
GRACEFUL_SHUTDOWN_SECONDS = 30
APP = "recsys.serving.app:app_from_environment"


def serve(environ: Mapping[str, str], *, host: str = "0.0.0.0") -> int:
    """Serve until stopped; returns the exit code. A bad artifact fails here, before any port opens."""
    config = read_hosting_config(environ, cpu_count=os.cpu_count() or 1)
    # Checked once in this process so that a missing or corrupt model is one clear error and a
    # quick non-zero exit, not workers that crash and restart behind a port that never says 200.
    if not config.multi_model:  # a multi-model endpoint starts empty: SageMaker loads its models
        verify_artifact(config.model_dir)
    logger.info(
        "serving %s on %s:%d with %d worker(s), timeout %gs, max payload %d bytes",
        "the /models API (multi-model)" if config.multi_model else config.model_dir,
        host,
        config.port,
        config.workers,
        config.timeout_seconds,
        config.max_payload_bytes,
    )
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it
    # found: make that a clean exit 0 (SageMaker stopping the container), not a death by signal (143).
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": config.port,
        "workers": config.workers,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "timeout_keep_alive": 75,  # above the 60 s idle timeout of SageMaker's front end
        "log_level": "info",
        "access_log": False,
    }
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        if config.workers > 1:
            _run_workers(uvicorn.Config(APP, **options))
        else:
            uvicorn.run(APP, **options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _run_workers(config: uvicorn.Config) -> None:
    """``uvicorn.run``'s multi-worker branch, with the shared listening socket marked as TCP.

    uvicorn binds it with ``proto`` 0 (Kludex/uvicorn#3149). Accepted connections inherit that, and
    asyncio, not seeing IPPROTO_TCP, leaves Nagle's algorithm on: every keep-alive response then
    waits ~40 ms for the client's delayed ACK. The same descriptor, re-wrapped, fixes it.
    """
    bound = config.bind_socket()
    listener = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn: the worker target too
        Multiprocess(config, target=uvicorn.Server(config).run, sockets=[listener]).run()  # type: ignore[call-arg]
    else:
        Multiprocess(config, sockets=[listener]).run()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
