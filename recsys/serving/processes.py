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
# A request whose body or answer is at least this large is followed by release_freed_memory().
LARGE_REQUEST_BYTES = 1 << 20


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


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``); False elsewhere.

    Not a leak fix; there is no leak. After a large request (100,000 users, 20 MB of histories)
    every Python object it made is freed: gc finds no cycles and the bytes Python holds are the
    same before and after. What stays is the peak's footprint: pymalloc keeps an arena while any
    of its pools is in use, and glibc keeps freed heap pages (its dynamic mmap threshold moves
    large buffers onto that heap after the first one). Repeated heavy requests took a worker from
    452 to 655 MiB, where it stayed; trimmed after each, it stays at 567-575 MiB. The rest is the
    arenas' fragmentation, bounded by the largest request the limits admit
    (``SAGEMAKER_MAX_PAYLOAD_IN_MB``, ``RECSYS_MAX_INSTANCES``). ``PYTHONMALLOC=malloc`` removes it
    too (423-460 MiB flat) but costs 6-12% of the request rate, so it is the operator's choice,
    not the default. ``ctypes`` releases the GIL during the call, which takes milliseconds.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # no glibc (musl has no malloc_trim)
        return False
    trim(0)
    return True
