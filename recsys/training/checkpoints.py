"""Spot-safe training checkpoints: written atomically, verified before use, resumed exactly.

A checkpoint is taken every N steps, at each epoch end, when a phase of training finishes, and
on SIGTERM (a spot interruption leaves 120 seconds). Each checkpoint has two kinds of file:

- ``{phase}-e{epoch}-s{step}.pt`` (rank 0 only): model, optimiser and loop state, identical on
  every rank because data-parallel replicas are kept in lockstep;
- ``{phase}-e{epoch}-s{step}.rank{r}.pt`` (every rank): that rank's random-number state, so a
  resumed run draws the same shuffles, negatives and dropout masks as an uninterrupted one.

Every file is written to a temporary name and renamed, then a ``.sha256`` sidecar is written the
same way: a file without a matching sidecar (truncated, corrupt, or cut off between the two
renames) is skipped with a log line. Files load with ``weights_only=True``, never full pickle.

A checkpoint is an optimisation (it saves a spot-interrupted job the work already done), so one
that does not fit on a full disk is not worth the job: its files are removed, a warning is logged
once, and training goes on; a restarted job resumes from the previous checkpoint, if any. Any
other error while saving is raised.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recsys.files import DiskFullError, disk_full_error, sha256_file
from recsys.training.distributed import DistContext, broadcast_object
from recsys.training.stop import StopRequest, TrainingInterrupted

__all__ = ["DONE", "Checkpointer", "Restored", "StopRequest", "TrainingInterrupted"]

logger = logging.getLogger(__name__)

_NAME = re.compile(
    r"^(?P<phase>[A-Za-z0-9_]+)-(?:e(?P<epoch>\d+)-s(?P<step>\d+)|(?P<done>done))(?:\.rank(?P<rank>\d+))?\.pt$"
)
DONE = (1 << 62, 0)  # sorts after every (epoch, step)


@dataclass(frozen=True)
class Restored:
    epoch: int  # the epoch to run next (1-based)
    step: int  # batches of that epoch already done
    done: bool  # the phase finished: nothing left to train
    shared: dict[str, Any]  # model, optimizer and loop state (rank 0's, on every rank)
    rng: dict[str, Any] | None  # this rank's generator states; None when its file is missing


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``path`` and its sidecar, or nothing: on any error both (and their temporary files)
    are removed; a full disk raises ``DiskFullError``."""
    sidecar = _sidecar(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp_sidecar = sidecar.with_name(f".{sidecar.name}.tmp")
    replaced = False
    try:
        # Through a Python file object: torch's own file writer reports a full disk as "unexpected
        # pos", while this way the OSError(ENOSPC) of the write that failed stays in the chain.
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        replaced = True
        with open(tmp_sidecar, "wb") as handle:
            handle.write((sha256_file(path) + "\n").encode("ascii"))
        os.replace(tmp_sidecar, sidecar)
    except BaseException as exc:
        # Judged before the files go: the space they hold is what tells a full disk apart.
        full = (
            disk_full_error(exc, path.parent, f"checkpoint {path.name}")
            if isinstance(exc, Exception)
            else None
        )
        # A file of the same name that this write did not replace is left as it was.
        for partial in (tmp, tmp_sidecar, *((path, sidecar) if replaced else ())):
            partial.unlink(missing_ok=True)
        if full is not None:
            raise full from exc
        raise


def _read_verified(path: Path) -> dict[str, Any] | None:
    """The file's payload, or None (with the reason logged) when it can't be trusted."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.exists():
        logger.warning("checkpoint %s has no checksum file (cut off while writing?); skipped", path.name)
        return None
    if sidecar.read_text().strip() != sha256_file(path):
        logger.warning("checkpoint %s does not match its checksum (truncated or corrupt); skipped", path.name)
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a file that verifies but does not load is still just skipped
        logger.warning("checkpoint %s could not be read (%s); skipped", path.name, exc)
        return None
    return payload if isinstance(payload, dict) else None


class Checkpointer:
    """Saves and finds the checkpoints of one training job in ``directory``.

    ``identity`` names the configuration and data: a checkpoint written for anything else (the
    directory reused for a different job) is ignored rather than resumed.
    """

    def __init__(
        self, directory: Path, *, ctx: DistContext, identity: str, interval_steps: int, keep: int = 2
    ) -> None:
        self.directory = directory
        self.ctx = ctx
        self.identity = identity
        self.interval_steps = interval_steps
        self.keep = keep
        self._warned_disk_full = False
        # The newest position of each phase this job wrote or resumed from. Pruning looks only at
        # positions up to it: a foreign job's later checkpoints (a reused directory, a local tree
        # laid out anew) would otherwise count as the newest and get this job's deleted at once.
        self._newest: dict[str, tuple[int, int]] = {}

    def _name(self, phase: str, epoch: int, step: int, rank: int | None) -> str:
        stem = f"{phase}-done" if (epoch, step) == DONE else f"{phase}-e{epoch:05d}-s{step:09d}"
        return stem + (f".rank{rank:04d}" if rank is not None else "") + ".pt"

    def _positions(self, phase: str, *, rank: int | None) -> list[tuple[int, int]]:
        """Positions with a file of this kind, newest first."""
        found = []
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                match = _NAME.match(path.name)
                if not match or match["phase"] != phase:
                    continue
                if (match["rank"] is None) != (rank is None):
                    continue
                if rank is not None and int(match["rank"]) != rank:
                    continue
                found.append(DONE if match["done"] else (int(match["epoch"]), int(match["step"])))
        return sorted(found, reverse=True)

    def save(self, phase: str, epoch: int, step: int, *, shared: dict[str, Any], rng: dict[str, Any]) -> None:
        """Write this rank's part of the checkpoint at (epoch, step); ``DONE`` marks a finished phase.

        ``shared`` is only written by rank 0 (every rank holds the same values). On a full disk
        nothing of this checkpoint is left behind and training goes on (see the module's doc)."""
        rank = self.ctx.rank
        written: list[Path] = []
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / self._name(phase, epoch, step, rank)
            _write_atomic(path, rng)
            written.append(path)
            if self.ctx.is_main:
                payload = {"identity": self.identity, "phase": phase, "epoch": epoch, "step": step, **shared}
                _write_atomic(self.directory / self._name(phase, epoch, step, None), payload)
        except Exception as exc:
            full = (
                exc
                if isinstance(exc, DiskFullError)
                else disk_full_error(exc, self.directory, "a checkpoint")
            )
            if full is None:
                raise
            # Half a checkpoint (this rank's random state without the model) is no checkpoint.
            for done in written:
                done.unlink(missing_ok=True)
                _sidecar(done).unlink(missing_ok=True)
            self._disk_full(full, phase, epoch, step)
            return
        if self.ctx.is_main:
            # Every epoch end and every interval writes one: useful when debugging, noise otherwise.
            logger.debug(
                "checkpoint saved: %s",
                self._name(phase, epoch, step, None) if (epoch, step) != DONE else f"{phase} finished",
            )
        self._newest[phase] = max(self._newest.get(phase, (epoch, step)), (epoch, step))
        self._prune(phase)

    def _disk_full(self, exc: DiskFullError, phase: str, epoch: int, step: int) -> None:
        where = f"{phase} finished" if (epoch, step) == DONE else f"{phase} {epoch}, step {step}"
        if self._warned_disk_full:
            logger.debug("checkpoint (%s) not saved: %s", where, exc.message)
            return
        self._warned_disk_full = True
        logger.warning(
            "checkpoint (%s) not saved: no space left on device at %s; training goes on without "
            "checkpoints that do not fit (this warning is not repeated), and a job restarted after an "
            "interruption resumes from the previous one, if any",
            where,
            self.directory,
        )

    def _prune(self, phase: str) -> None:
        kinds: list[int | None] = [self.ctx.rank] + ([None] if self.ctx.is_main else [])
        newest = self._newest[phase]
        for rank in kinds:
            ours = [position for position in self._positions(phase, rank=rank) if position <= newest]
            for epoch, step in ours[self.keep :]:
                path = self.directory / self._name(phase, epoch, step, rank)
                for stale in (path, path.with_name(path.name + ".sha256")):
                    stale.unlink(missing_ok=True)

    def load(self, phase: str) -> Restored | None:
        """The newest valid checkpoint of ``phase`` (a collective: every rank must call it)."""
        found: tuple[int, int, dict[str, Any]] | None = None
        if self.ctx.is_main:
            for epoch, step in self._positions(phase, rank=None):
                payload = _read_verified(self.directory / self._name(phase, epoch, step, None))
                if payload is None:
                    continue
                if payload.get("identity") != self.identity:
                    logger.warning(
                        "checkpoint %s was written for a different configuration or data; not resumed",
                        self._name(phase, epoch, step, None),
                    )
                    continue
                found = (epoch, step, payload)
                break
        found = broadcast_object(found, self.ctx)
        if found is None:
            return None
        epoch, step, shared = found
        self._newest[phase] = (epoch, step)
        rng = None
        if (epoch, step) != DONE:
            path = self.directory / self._name(phase, epoch, step, self.ctx.rank)
            rng = _read_verified(path) if path.exists() else None
            if rng is None:
                logger.warning(
                    "rank %d has no random-number state for %s; it is reseeded, so the resumed run "
                    "draws different samples than an uninterrupted one would",
                    self.ctx.rank,
                    path.name,
                )
        done = (epoch, step) == DONE
        logger.info(
            "resuming %s from its checkpoint: %s",
            phase,
            "phase finished" if done else f"epoch {epoch}, {step} steps done",
        )
        return Restored(epoch, step, done, shared, rng)
