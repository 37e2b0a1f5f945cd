"""The instances of one data job as peers: bytes exchanged and arrays summed over gloo (TCP).

A Processing job's instances see each other on the network as its hosts (resourceconfig.json);
the first host holds the rendezvous. No GPU and no torchrun are involved: one process per host.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class GlooPeers:
    rank: int
    world: int

    def exchange(self, outgoing: Sequence[bytes]) -> list[bytes]:
        if len(outgoing) != self.world:
            raise ValueError(f"one payload per instance: {self.world} expected, {len(outgoing)} given")
        received: list[bytes] = [b""] * self.world
        received[self.rank] = bytes(outgoing[self.rank])
        # Round r: send to rank + r, receive from rank - r; every pair meets once, no deadlock.
        for step in range(1, self.world):
            to, source = (self.rank + step) % self.world, (self.rank - step) % self.world
            size_out = torch.tensor([len(outgoing[to])], dtype=torch.int64)
            size_in = torch.zeros(1, dtype=torch.int64)
            _wait([dist.isend(size_out, to), dist.irecv(size_in, source)])
            data_out = torch.frombuffer(bytearray(outgoing[to]), dtype=torch.uint8) if outgoing[to] else None
            data_in = torch.empty(int(size_in.item()), dtype=torch.uint8)
            sends = [dist.isend(data_out, to)] if data_out is not None else []
            receives = [dist.irecv(data_in, source)] if len(data_in) else []
            _wait(sends + receives)
            received[source] = data_in.numpy().tobytes()
        return received

    def sum(self, values: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(values).copy())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.numpy()


def _wait(works: list[dist.Work | None]) -> None:
    for work in works:
        if work is None:  # only a send to or a receive from this very process returns None
            raise RuntimeError("a point-to-point exchange with itself")
        work.wait()


@contextmanager
def gloo_peers(
    rank: int, world: int, master_addr: str, master_port: int, *, timeout_minutes: float = 30
) -> Iterator[GlooPeers]:
    """Join the job's process group for the duration of the block."""
    dist.init_process_group(
        backend="gloo",
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    try:
        yield GlooPeers(rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()
