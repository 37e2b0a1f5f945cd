"""Interactions held as tensors on the device, and the CSR helpers that training, evaluation and
serving share.

Interactions are stored flat, sorted by user then time (a CSR layout over users). The history
of the interaction at flat position j is the user's items at positions j-1, j-2, ... (most
recent first): the model learns to predict each item from what came before it, which is
exactly what it is asked at evaluation and serving time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from recsys.data.context import RowEncoding, gap_codes, previous_gaps, time_context
from recsys.data.interactions import IndexedInteractions
from recsys.errors import DataError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("hyperparameter device=cuda, but no CUDA device is visible to this container.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class RowArrays:
    """Per-interaction features beside the items, rows as in the ``IndexedInteractions``."""

    gaps: np.ndarray | None = None  # [P] gap codes: the time since the user's previous event
    events: np.ndarray | None = None  # [P] event-type codes
    context: np.ndarray | None = None  # [P, C] codes of each event's moment
    context_numeric: np.ndarray | None = None  # [P, Cn]
    weights: np.ndarray | None = None  # [P] loss weight of each event as a target
    targets: np.ndarray | None = None  # [P] bool: the event is a positive to predict


def row_arrays(
    data: IndexedInteractions,
    encoding: RowEncoding,
    *,
    use_gaps: bool,
    event_weights: np.ndarray | None = None,
    target_codes: np.ndarray | None = None,
) -> RowArrays:
    """The features of every interaction: its time codes (with ``encoding.time_features``), its
    context and event type, and, from ``event_weights`` / ``target_codes`` (indexed by event
    code), its weight and whether it is a target."""
    gaps = previous_gaps(data.timestamps, data.indptr) if (use_gaps or encoding.time_features) else None
    parts = []
    if encoding.time_features and gaps is not None:
        parts.append(time_context(data.timestamps, gaps))
    if data.context is not None:
        parts.append(data.context)
    context = np.concatenate(parts, axis=1) if parts else None
    events = data.events
    weights = event_weights[events] if event_weights is not None and events is not None else None
    targets = target_codes[events] if target_codes is not None and events is not None else None
    return RowArrays(
        gap_codes(gaps) if use_gaps and gaps is not None else None,
        events,
        context,
        data.context_numeric,
        weights,
        targets,
    )


@dataclass(frozen=True)
class DeviceInteractions:
    users: Tensor  # [P] int64, sorted by user then time
    items: Tensor  # [P] int64
    starts: Tensor  # [P] int64, flat position of each row's user's first interaction
    indptr: Tensor  # [U+1] int64
    num_users: int
    num_items: int
    gaps: Tensor | None = None  # [P] int64 gap codes
    events: Tensor | None = None  # [P] int64 event-type codes
    context: Tensor | None = None  # [P, C] int64 context codes
    context_numeric: Tensor | None = None  # [P, Cn] float32
    weights: Tensor | None = None  # [P] float32
    targets: Tensor | None = None  # [P] bool

    @classmethod
    def from_indexed(
        cls, data: IndexedInteractions, device: torch.device, rows: RowArrays | None = None
    ) -> DeviceInteractions:
        starts = data.indptr[:-1][data.users]
        pin = device.type == "cuda"

        def to_device(array: np.ndarray | None, dtype: Any = np.int64) -> Tensor | None:
            if array is None:
                return None
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
            # Pinned host memory makes the one-off copy asynchronous on CUDA.
            return (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)

        rows = rows or RowArrays()
        return cls(
            users=cast(Tensor, to_device(data.users)),
            items=cast(Tensor, to_device(data.items)),
            starts=cast(Tensor, to_device(starts)),
            indptr=cast(Tensor, to_device(data.indptr)),
            num_users=data.num_users,
            num_items=data.num_items,
            gaps=to_device(rows.gaps),
            events=to_device(rows.events),
            context=to_device(rows.context),
            context_numeric=to_device(rows.context_numeric, np.float32),
            weights=to_device(rows.weights, np.float32),
            targets=to_device(rows.targets, np.bool_),
        )

    @property
    def num_interactions(self) -> int:
        return int(self.items.shape[0])

    def target_positions(self) -> Tensor:
        """Flat positions of the events that are targets (every one without ``targets``)."""
        if self.targets is None:
            return torch.arange(self.num_interactions, device=self.items.device)
        return torch.nonzero(self.targets).squeeze(1)


def history_positions(starts: Tensor, ends: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Flat positions of the ``length`` events before each end (most recent first) and their mask."""
    offsets = torch.arange(1, length + 1, device=ends.device)
    positions = ends.unsqueeze(1) - offsets.unsqueeze(0)  # [B, L]
    return positions.clamp(min=0), positions >= starts.unsqueeze(1)


def gather_history(flat_items: Tensor, starts: Tensor, ends: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The ``length`` items before each end position, most recent first.

    flat_items [P]; starts, ends [B] (ends exclusive) -> history [B, L] int64, mask [B, L] bool.
    """
    positions, mask = history_positions(starts, ends, length)
    return flat_items[positions] * mask, mask


def history_extras(
    data: DeviceInteractions, starts: Tensor, ends: Tensor, length: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The ``length`` events before each end position (most recent first): items, mask, gap codes
    and event codes (None where the data has none)."""
    positions, mask = history_positions(starts, ends, length)
    gaps = data.gaps[positions] * mask if data.gaps is not None else None
    events = data.events[positions] * mask if data.events is not None else None
    return data.items[positions] * mask, mask, gaps, events


def user_histories(data: DeviceInteractions, users: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Each user's latest ``length`` items (for evaluation and serving of known users)."""
    return gather_history(data.items, data.indptr[users], data.indptr[users + 1], length)


@dataclass(frozen=True)
class HeldOut:
    """Each user's held-out items as CSR over all users (most users may have none)."""

    indptr: Tensor  # [U+1]
    items: Tensor  # [R]
    # The moment each user is asked about (their first held-out event): context codes and numbers.
    context: Tensor | None = None  # [U, C]
    context_numeric: Tensor | None = None  # [U, Cn]

    @property
    def counts(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]


def segment_positions(indptr: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Flat positions of the CSR segments of ``rows``: (row number in ``rows``, flat position)."""
    starts, counts = indptr[rows], indptr[rows + 1] - indptr[rows]
    owner = torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts
    offset = torch.arange(owner.shape[0], device=rows.device) - first[owner]
    return owner, starts[owner] + offset
