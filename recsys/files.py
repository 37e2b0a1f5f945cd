"""File utilities every layer shares: a file's checksum, and a full disk told apart from other
write failures and reported as what is full and where.

The libraries that write a job's files say "disk full" in different ways: Python and NumPy raise
``OSError(ENOSPC)`` (NumPy sometimes only "N requested and M written"), safetensors raises its own
error whose text carries "os error 28", and torch's file writer a ``RuntimeError`` ("unexpected
pos") with no errno at all. ``is_disk_full`` recognises each, and ``DiskFullError`` is the user
error that names the path, so the job fails with one readable line instead of a traceback.

Standard library only: the training entry imports this before it imports torch.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from recsys.errors import UserError

__all__ = [
    "NEARLY_FULL_BYTES",
    "DiskFullError",
    "disk_full_error",
    "disk_full_filename",
    "free_bytes",
    "is_disk_full",
    "sha256_file",
]

# ENOSPC: the filesystem is full; EDQUOT: this user's quota on it is.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How the errors without an errno (safetensors' Rust writer) spell the same two conditions.
_DISK_FULL_TEXTS = (
    os.strerror(errno.ENOSPC).lower(),
    os.strerror(errno.EDQUOT).lower(),
    f"os error {errno.ENOSPC})",
    f"os error {errno.EDQUOT})",
)
# A write that failed for no stated reason on a filesystem with less than this left filled it: a
# writer stops at the first block it cannot get, so what remains is less than its last write.
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(UserError):
    """A file could not be written because its filesystem (or the quota on it) is full."""

    def __init__(self, path: Path, what: str, *, removed: bool = True) -> None:
        """``removed``: whether the writer removed its partial files (the message says so)."""
        self.path = path
        cleaned = "The partial files were removed; give" if removed else "Give"
        super().__init__(
            f"no space left on device at {path}: {what} could not be written. {cleaned} the training "
            "job more storage (VolumeSizeInGB of its ResourceConfig), or less to write."
        )


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a failed write may have removed the file)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem; None when unknown."""
    try:
        stats = os.statvfs(_existing(path))
    except (OSError, AttributeError):  # AttributeError: no statvfs on this platform
        return None
    return int(stats.f_bavail * stats.f_frsize)


def disk_full_filename(error: BaseException) -> Path | None:
    """The file that a disk-full ``OSError`` in ``error``'s chain names, if any."""
    for exc in _chain(error):
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS and exc.filename:
            return Path(os.fsdecode(exc.filename))
    return None


def is_disk_full(error: BaseException, path: Path) -> bool:
    """Whether ``error``, raised while writing under ``path``, means that its disk is full.

    Call it before removing the partial files: their space is part of the evidence.
    """
    for exc in _chain(error):
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc).lower() for text in _DISK_FULL_TEXTS):
            return True
    # torch's and NumPy's writers lose the errno; a programming error (TypeError, ValueError) is
    # never taken for a full disk, however little space is left.
    if isinstance(error, OSError | RuntimeError):
        left = free_bytes(path)
        return left is not None and left < NEARLY_FULL_BYTES
    return False


def disk_full_error(error: BaseException, path: Path, what: str) -> DiskFullError | None:
    """The ``DiskFullError`` for ``error`` raised while writing ``what`` under ``path``, or None
    when the disk is not why it failed."""
    return DiskFullError(path, what) if is_disk_full(error, path) else None


def sha256_file(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB blocks (files can be gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
