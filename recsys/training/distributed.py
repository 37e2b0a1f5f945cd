"""Data-parallel training across processes: the process group, shards and cross-rank reductions.

One process per GPU (or one per host on CPU), started by ``torchrun``; the container entry
decides that and hands each process a ``DistContext``. A single process is the same code with
``world_size == 1``, where every helper here is a no-op.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the job's training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Global rank 0: the only process that writes the model and the report."""
        return self.rank == 0

    def device_for(self, device: torch.device) -> torch.device:
        """Each process on a GPU host owns the GPU of its local rank."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device


SINGLE_PROCESS = DistContext()


def init_process_group(ctx: DistContext, device: torch.device, *, timeout_minutes: float = 30) -> None:
    """NCCL between GPUs, gloo between CPU processes; rendezvous from torchrun's environment."""
    if not ctx.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
        device_id=device if device.type == "cuda" else None,
    )
    logger.info("rank %d of %d joined the %s process group", ctx.rank, ctx.world_size, backend)


def destroy_process_group(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(order: Tensor, ctx: DistContext) -> Tensor:
    """This rank's equal share of an epoch's order.

    Every rank must take the same number of steps or the gradient all-reduce deadlocks, so the
    last ``len(order) % world_size`` positions of the (freshly shuffled) order are dropped.
    """
    if not ctx.enabled:
        return order
    per_rank = order.shape[0] // ctx.world_size
    return order[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]


def all_reduce_sum(tensor: Tensor, ctx: DistContext) -> Tensor:
    """The sum over ranks, in place and returned (a no-op for one process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank when it is true on any rank (a host sync: call it sparingly)."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
