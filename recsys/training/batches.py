"""The batches the training loop draws from the interactions on the device (``recsys.data.device``):
single positives with their histories, or whole windows of a user's sequence for the attention
encoder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recsys.data.device import DeviceInteractions, history_extras
from recsys.models.ncf import SequenceBatch, UserExtras


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
        history, mask, gaps, events = history_extras(data, data.starts[chunk], chunk, history_length)
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
