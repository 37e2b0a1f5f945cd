"""Training data held as tensors on the device, and the batches the loop draws from it.

Interactions are stored flat, sorted by user then time (a CSR layout over users). The history
of the interaction at flat position j is the user's items at positions j-1, j-2, ... (most
recent first): the model learns to predict each item from what came before it, which is
exactly what it is asked at evaluation and serving time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from recsys.data.interactions import IndexedInteractions


@dataclass(frozen=True)
class DeviceInteractions:
    users: Tensor  # [P] int64, sorted by user then time
    items: Tensor  # [P] int64
    starts: Tensor  # [P] int64, flat position of each row's user's first interaction
    indptr: Tensor  # [U+1] int64
    num_users: int
    num_items: int

    @classmethod
    def from_indexed(cls, data: IndexedInteractions, device: torch.device) -> DeviceInteractions:
        starts = data.indptr[:-1][data.users]
        pin = device.type == "cuda"

        def to_device(array: np.ndarray) -> Tensor:
            tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
            # Pinned host memory makes the one-off copy asynchronous on CUDA.
            return (tensor.pin_memory() if pin else tensor).to(device, non_blocking=pin)

        return cls(
            users=to_device(data.users),
            items=to_device(data.items),
            starts=to_device(starts),
            indptr=to_device(data.indptr),
            num_users=data.num_users,
            num_items=data.num_items,
        )

    @property
    def num_interactions(self) -> int:
        return int(self.items.shape[0])


def gather_history(flat_items: Tensor, starts: Tensor, ends: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The ``length`` items before each end position, most recent first.

    flat_items [P]; starts, ends [B] (ends exclusive) -> history [B, L] int64, mask [B, L] bool.
    """
    offsets = torch.arange(1, length + 1, device=flat_items.device)
    positions = ends.unsqueeze(1) - offsets.unsqueeze(0)  # [B, L]
    mask = positions >= starts.unsqueeze(1)
    history = flat_items[positions.clamp(min=0)] * mask
    return history, mask


def user_histories(data: DeviceInteractions, users: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Each user's latest ``length`` items (for evaluation and serving of known users)."""
    return gather_history(data.items, data.indptr[users], data.indptr[users + 1], length)


@dataclass(frozen=True)
class Batch:
    users: Tensor  # [B]
    positives: Tensor  # [B]
    history: Tensor  # [B, L]
    history_mask: Tensor  # [B, L]


def epoch_order(num_interactions: int, generator: torch.Generator) -> Tensor:
    """An epoch's shuffled positions [P]. Data-parallel ranks draw it from identically seeded
    generators, so each rank's shard of it is disjoint from the others'."""
    return torch.randperm(num_interactions, device=generator.device, generator=generator)


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
    device = data.items.device
    for chunk in torch.split(positions, batch_size):
        users = data.users[chunk]
        history, mask = gather_history(data.items, data.starts[chunk], chunk, history_length)
        if user_id_dropout > 0:
            # Hidden ids train the "unknown user" row that serving uses for new users.
            hide = torch.rand(users.shape, device=device, generator=generator) < user_id_dropout
            users = torch.where(hide, torch.full_like(users, data.num_users), users)
        yield Batch(users, data.items[chunk], history, mask)
