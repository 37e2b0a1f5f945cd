"""Training data held as tensors on the device, and the batches the loop draws from it.

Interactions are stored flat, sorted by user then time (a CSR layout over users). The history
of the interaction at flat position j is the user's items at positions j-1, j-2, ... (most
recent first): the model learns to predict each item from what came before it, which is
exactly what it is asked at evaluation and serving time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from recsys.data.context import RowEncoding, gap_codes, previous_gaps, time_context
from recsys.data.interactions import IndexedInteractions
from recsys.models.ncf import SequenceBatch, UserExtras


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


def _history_extras(
    data: DeviceInteractions, starts: Tensor, ends: Tensor, length: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    positions, mask = history_positions(starts, ends, length)
    gaps = data.gaps[positions] * mask if data.gaps is not None else None
    events = data.events[positions] * mask if data.events is not None else None
    return data.items[positions] * mask, mask, gaps, events


def user_histories(data: DeviceInteractions, users: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Each user's latest ``length`` items (for evaluation and serving of known users)."""
    return gather_history(data.items, data.indptr[users], data.indptr[users + 1], length)


def user_inputs(
    data: DeviceInteractions,
    users: Tensor,
    length: int,
    *,
    context: Tensor | None = None,
    context_numeric: Tensor | None = None,
) -> tuple[Tensor, Tensor, UserExtras]:
    """Known users' latest ``length`` events with their gaps and types, and the given context."""
    history, mask, gaps, events = _history_extras(data, data.indptr[users], data.indptr[users + 1], length)
    return history, mask, UserExtras(gaps, events, context, context_numeric)


@dataclass(frozen=True)
class Batch:
    users: Tensor  # [B] id rows (hidden ids are num_users)
    positives: Tensor  # [B]
    history: Tensor  # [B, L]
    history_mask: Tensor  # [B, L]
    extras: UserExtras | None = None
    weights: Tensor | None = None  # [B] loss weight of each positive


def epoch_order(num_interactions: int, generator: torch.Generator) -> Tensor:
    """An epoch's shuffled positions [P]. Data-parallel ranks draw it from identically seeded
    generators, so each rank's shard of it is disjoint from the others'."""
    return torch.randperm(num_interactions, device=generator.device, generator=generator)


def _hide_ids(users: Tensor, num_users: int, dropout: float, generator: torch.Generator) -> Tensor:
    if dropout <= 0:
        return users
    # Hidden ids train the "unknown user" row that serving uses for new users.
    hide = torch.rand(users.shape, device=users.device, generator=generator) < dropout
    return torch.where(hide, torch.full_like(users, num_users), users)


def iterate_batches(
    data: DeviceInteractions,
    positions: Tensor,
    *,
    batch_size: int,
    history_length: int,
    user_id_dropout: float,
    generator: torch.Generator,
) -> Iterator[Batch]:
    """Batches over ``positions`` (flat interaction positions, already shuffled), built lazily on
    the device: one batch's history block exists at a time, whatever the epoch's size."""
    for chunk in torch.split(positions, batch_size):
        true_users = data.users[chunk]
        history, mask, gaps, events = _history_extras(data, data.starts[chunk], chunk, history_length)
        extras = UserExtras(
            gaps,
            events,
            data.context[chunk] if data.context is not None else None,
            data.context_numeric[chunk] if data.context_numeric is not None else None,
            attribute_rows=true_users,
        )
        users = _hide_ids(true_users, data.num_users, user_id_dropout, generator)
        weights = data.weights[chunk] if data.weights is not None else None
        yield Batch(users, data.items[chunk], history, mask, extras, weights)


@dataclass(frozen=True)
class Windows:
    """Each user's events cut into windows of at most ``length + 1`` targets, aligned to the end."""

    users: Tensor  # [Wn]
    starts: Tensor  # [Wn] flat position of the window's first target
    ends: Tensor  # [Wn] exclusive

    @property
    def count(self) -> int:
        return int(self.users.shape[0])


def sequence_windows(data: DeviceInteractions, length: int) -> Windows:
    """The windows of every user: the latest ``length + 1`` events, then the ones before, ..."""
    span = length + 1
    indptr = data.indptr.cpu().numpy()
    counts = np.diff(indptr)
    per_user = -(-counts // span)  # ceil
    users = np.repeat(np.arange(len(counts)), per_user)
    first = np.cumsum(per_user) - per_user
    back = np.arange(len(users)) - np.repeat(first, per_user)  # 0 = the latest window
    ends = indptr[1:][users] - back * span
    starts = np.maximum(indptr[:-1][users], ends - span)
    device = data.items.device
    return Windows(
        torch.from_numpy(users).to(device),
        torch.from_numpy(starts).to(device),
        torch.from_numpy(ends).to(device),
    )


def iterate_windows(
    data: DeviceInteractions,
    windows: Windows,
    order: Tensor,
    *,
    windows_per_step: int,
    history_length: int,
    user_id_dropout: float,
    generator: torch.Generator,
) -> Iterator[SequenceBatch]:
    """Batches of whole windows (``order`` indexes ``windows``, already shuffled): every event of
    a window is a target, predicted from the window's events before it."""
    span = history_length + 1
    steps = torch.arange(span, device=data.items.device)
    for chunk in torch.split(order, windows_per_step):
        starts, ends = windows.starts[chunk], windows.ends[chunk]
        sizes = ends - starts
        flat = starts.unsqueeze(1) + steps.unsqueeze(0)  # [W, T] the target at each position
        valid = steps.unsqueeze(0) < sizes.unsqueeze(1)
        flat = torch.where(valid, flat, starts.unsqueeze(1))
        # Token t (>= 1) is the event before target t; position 0 is the start token.
        before = (flat - 1).clamp(min=0)
        token_valid = valid & (steps.unsqueeze(0) >= 1)
        target_mask = valid if data.targets is None else valid & data.targets[flat]
        true_users = data.users[starts]
        yield SequenceBatch(
            users=_hide_ids(true_users, data.num_users, user_id_dropout, generator),
            attribute_rows=true_users,
            tokens=data.items[before] * token_valid,
            token_gaps=data.gaps[before] * token_valid if data.gaps is not None else None,
            token_events=data.events[before] * token_valid if data.events is not None else None,
            lengths=sizes,
            targets=data.items[flat],
            target_mask=target_mask,
            context=data.context[flat] if data.context is not None else None,
            context_numeric=data.context_numeric[flat] if data.context_numeric is not None else None,
            weights=data.weights[flat] if data.weights is not None else None,
        )
