"""The container's ``train``: the SageMaker training contract around ``run_training``.

On one host with at most one GPU this process trains. Otherwise it starts ``torchrun`` (see
``launch``), whose processes come back here as workers, recognised by torchrun's variables.

Exit codes: 0 success (``output/success``), 1 a user error (its message in ``output/failure``),
2 an internal error (the traceback in ``output/failure``), 143 stopped by SIGTERM after a
checkpoint (a restarted job resumes from it). With torchrun, its exit code.

A full disk is a user error wherever it strikes: the writers that know what they were writing say
so (``DiskFullError``), and any other write that fails on a full disk is reported here with the
file or directory it was under. When ``output/failure`` itself cannot be written, its text goes to
the log and the exit code is the same.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from recsys.config import resolve_train_config
from recsys.errors import UserError
from recsys.files import NEARLY_FULL_BYTES, DiskFullError, disk_full_filename, free_bytes, is_disk_full
from recsys.sagemaker.contract import (
    CHANNEL_ITEMS,
    CHANNEL_TRAIN,
    CHANNEL_USERS,
    CHANNEL_VALIDATION,
    ContainerPaths,
    read_launch_settings,
    read_training_contract,
    read_worker_env,
    write_failure,
    write_failure_text,
    write_success,
)
from recsys.training.stop import StopRequest, TrainingInterrupted

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGTERM


def _install_stop_handler() -> StopRequest:
    """SIGTERM (spot interruption, ``docker stop``) asks the loop to checkpoint and stop."""
    stop = StopRequest()

    def handle(signum: int, frame: FrameType | None) -> None:
        logger.warning("%s received: saving a checkpoint and stopping", signal.Signals(signum).name)
        stop.request(signal.Signals(signum).name)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handle)
    return stop


def _is_short_of_space(directory: Path) -> bool:
    left = free_bytes(directory)
    return left is not None and left < NEARLY_FULL_BYTES


def _disk_full(exc: Exception, paths: ContainerPaths) -> DiskFullError | None:
    """``exc`` as a full disk, naming the file it names or else the job's directory that is short
    of space; None when a full disk is not why it failed."""
    filename = disk_full_filename(exc)
    if filename is not None:
        return DiskFullError(filename, "the file", removed=False)
    writable = (paths.model_dir, paths.output_data_dir, paths.checkpoint_dir, paths.output_dir, paths.base)
    short = next((d for d in writable if _is_short_of_space(d)), None)
    if is_disk_full(exc, short or paths.base):
        return DiskFullError(short or paths.base, "a file of the job's output", removed=False)
    return None


def _check_output_dirs(paths: ContainerPaths) -> None:
    """Refuse, before any training, a file where the job must write a directory (a local tree
    laid out by hand): found only when the model is saved, it would cost the whole run."""
    for directory in (paths.model_dir, paths.checkpoint_dir, paths.output_data_dir):
        for path in (directory, *directory.parents):
            if path == paths.base.parent:
                break
            if path.exists() and not path.is_dir():
                raise UserError(f"{path} is a file, but the job writes a directory there; remove the file.")


def _report(paths: ContainerPaths, failure: BaseException | str) -> str:
    """Write ``output/failure`` if the disk lets us; its text either way (never raises)."""
    try:
        if isinstance(failure, str):
            return write_failure_text(paths, failure)
        return write_failure(paths, failure)
    except OSError as exc:
        logger.error("could not write %s (%s)", paths.failure_file, exc)
        return failure if isinstance(failure, str) else str(failure)


def train(paths: ContainerPaths, environ: Mapping[str, str] | None = None) -> int:
    """Run one training job (or this host's part of one) under ``paths``; never raises, returns
    the process exit code."""
    environ = os.environ if environ is None else environ
    worker = read_worker_env(environ)
    # Every process may report a failure; one per host reports success.
    reports = worker is None or worker.local_rank == 0
    ctx = None
    try:
        # Imported here so that the CLI's --help does not pay for torch.
        import torch

        from recsys.data.device import resolve_device
        from recsys.data.prepared import Channels
        from recsys.sagemaker.launch import launch, plan_launch
        from recsys.training.distributed import DistContext, destroy_process_group, init_process_group
        from recsys.training.job import Resilience, run_training

        contract = read_training_contract(paths)
        config = resolve_train_config(contract.hyperparameters)
        _check_output_dirs(paths)
        if worker is None:
            settings = read_launch_settings(environ)
            gpus = torch.cuda.device_count() if config.device != "cpu" else 0
            plan = plan_launch(contract.resources, gpus=gpus, settings=settings)
            if plan is not None:
                code = launch(plan, paths.base, environ, host_wait_seconds=settings.host_wait_seconds)
                if code != 0 and not paths.failure_file.exists():
                    _report(paths, f"a training process exited with code {code}; see the job's logs")
                return code
        stop = _install_stop_handler()
        if worker is not None:
            ctx = DistContext(worker.rank, worker.world_size, worker.local_rank, worker.local_world_size)
            init_process_group(ctx, ctx.device_for(resolve_device(config.device)))
        channels = Channels(
            train=contract.channels[CHANNEL_TRAIN],
            validation=contract.channels.get(CHANNEL_VALIDATION),
            items=contract.channels.get(CHANNEL_ITEMS),
            users=contract.channels.get(CHANNEL_USERS),
        )
        outcome = run_training(
            channels,
            config,
            model_dir=paths.model_dir,
            output_data_dir=paths.output_data_dir,
            ctx=ctx or DistContext(),
            resilience=Resilience(paths.checkpoint_dir, stop),
        )
    except UserError as exc:
        text = _report(paths, exc)
        logger.error("training failed: %s", text.strip())
        return EXIT_USER_ERROR
    except TrainingInterrupted as exc:
        _report(paths, str(exc))
        logger.warning("%s", exc)
        return EXIT_INTERRUPTED
    except Exception as exc:
        full = _disk_full(exc, paths)
        if full is not None:
            text = _report(paths, full)
            logger.error("training failed: %s", text.strip(), exc_info=exc)
            return EXIT_USER_ERROR
        # Anything else is our bug: keep the traceback for whoever reads it.
        _report(paths, exc)
        logger.exception("training failed with an internal error")
        return EXIT_INTERNAL_ERROR
    finally:
        if ctx is not None:
            destroy_process_group(ctx)
    if reports:
        try:
            write_success(paths)
        except OSError as exc:
            # The model is written and whole: SageMaker goes by the exit code, not by this file.
            logger.warning("could not write %s (%s)", paths.success_file, exc)
    if outcome.artifact is not None:
        logger.info("model written to %s (best epoch %s)", paths.model_dir, outcome.metrics["best_epoch"])
    return 0
