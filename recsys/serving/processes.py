"""The lifetime of a serving worker process, shared by the server (its master) and the app."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

# SIGTERM lets in-flight requests finish for up to this long before workers are stopped.
GRACEFUL_SHUTDOWN_SECONDS = 30
# How often a worker checks that its master is still there (where prctl cannot tell it at once).
PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def exit_with_parent() -> None:
    """In a worker process, stop (as on SIGTERM) when the master dies, however it dies.

    A master killed with SIGKILL cannot stop its workers, and they would go on serving as orphans:
    holding the port and the memory, answering /ping, with nothing left to restart or stop them.
    On Linux the kernel signals the worker at once (``PR_SET_PDEATHSIG``); everywhere, a thread
    also watches the parent process id. A no-op in a process not started by multiprocessing: with
    one worker, uvicorn serves in the ``recsys serve`` process, which has no master to outlive.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as exc:  # no libc to load, or no prctl in it
            logger.warning("prctl(PR_SET_PDEATHSIG) is unavailable: %s", exc)
    threading.Thread(target=_watch_parent, args=(parent.pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    # Checked first, not only after a sleep: the master may have died before prctl was set.
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    logger.warning("the master process %d is gone: stopping this worker", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown: requests in flight finish
    time.sleep(GRACEFUL_SHUTDOWN_SECONDS + 5)
    os._exit(1)  # the graceful shutdown hung
