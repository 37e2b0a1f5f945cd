"""``recsys serve``: check the artifact, then run uvicorn under the hosting contract.

The process model. With one worker, uvicorn serves in the ``recsys serve`` process itself. With
more, that process is the master: it binds the port, starts the workers and restarts one that
dies. Before any of that it loads the artifact once in full, so a broken model is one ``error:``
line and exit 1 whatever the worker count. A worker whose master is gone (killed with SIGKILL,
say) stops by itself: no orphan keeps serving a port nothing supervises.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from recsys.sagemaker.contract import HostingConfig, read_hosting_config
from recsys.serving.engine import Recommender
from recsys.serving.processes import GRACEFUL_SHUTDOWN_SECONDS

logger = logging.getLogger(__name__)

APP = "recsys.serving.app:app_from_environment"


def serve(environ: Mapping[str, str], *, host: str = "0.0.0.0") -> int:
    """Serve until stopped; returns the exit code. A bad artifact fails here, before any port opens."""
    config = read_hosting_config(environ, cpu_count=os.cpu_count() or 1)
    if not config.multi_model:  # a multi-model endpoint starts empty: SageMaker loads its models
        _check_model(config)
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
            return _run_workers(uvicorn.Config(APP, **options))
        uvicorn.run(APP, **options)  # it exits with STARTUP_FAILURE (3) itself if the app fails to start
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _check_model(config: HostingConfig) -> None:
    """Load the model in full once, here, then drop it.

    Checksums alone pass a file rewritten after training with its manifest entry updated; loaded
    first in a worker, such a file was a traceback and exit 3 with one worker, and exit 0 with no
    error at all with several (uvicorn stops quietly when a worker fails to start). Loaded here,
    before any port opens, it is one ``ArtifactError`` naming the file: ``error:`` and exit 1.
    """
    started = time.monotonic()
    recommender = Recommender.load(config.model_dir, exact=config.exact_retrieval)
    logger.info(
        "checked the model in %s: %d items, loaded in %.1f s",
        config.model_dir,
        recommender.num_items,
        time.monotonic() - started,
    )
    del recommender
    gc.collect()  # the workers load their own copy: give this one's memory back first


def _run_workers(config: uvicorn.Config) -> int:
    """``uvicorn.run``'s multi-worker branch, with the shared listening socket marked as TCP.

    uvicorn binds it with ``proto`` 0 (Kludex/uvicorn#3149). Accepted connections inherit that, and
    asyncio, not seeing IPPROTO_TCP, leaves Nagle's algorithm on: every keep-alive response then
    waits ~40 ms for the client's delayed ACK. The same descriptor, re-wrapped, fixes it.
    """
    bound = config.bind_socket()
    listener = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn: the worker target too
        supervisor = Multiprocess(config, target=uvicorn.Server(config).run, sockets=[listener])  # type: ignore[call-arg]
    else:
        supervisor = Multiprocess(config, sockets=[listener])
    supervisor.run()
    # uvicorn stops every worker when one fails to start, but returns as if all went well: exit
    # as one worker would (uvicorn.run exits STARTUP_FAILURE), not 0.
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        logger.error("worker process %s failed to start (see its log above); stopping", failed[0])
        return STARTUP_FAILURE
    return 0


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
