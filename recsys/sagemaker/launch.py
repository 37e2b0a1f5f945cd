"""Starting the training processes: one, or ``torchrun`` across GPUs and hosts.

SageMaker starts the same container on every host of a job and describes them all in
``resourceconfig.json``. With more than one host or more than one GPU, each container runs
``torchrun`` with the rendezvous on ``hosts[0]``; torchrun starts one ``recsys train`` process per
GPU (one per CPU host), and those processes train together with DDP.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from recsys.errors import UserError
from recsys.sagemaker.contract import LaunchSettings, ResourceConfig

logger = logging.getLogger(__name__)

# Environment variables a distributed job inherits from the launch (unless already set).
SOCKET_INTERFACE_ENV = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")


@dataclass(frozen=True)
class LaunchPlan:
    hosts: tuple[str, ...]
    node_rank: int
    processes_per_host: int
    master_port: int
    network_interface: str

    @property
    def master_addr(self) -> str:
        # One host needs no name service (nor a resolvable "algo-1" outside SageMaker).
        return self.hosts[0] if len(self.hosts) > 1 else "127.0.0.1"

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.processes_per_host


def plan_launch(resources: ResourceConfig, *, gpus: int, settings: LaunchSettings) -> LaunchPlan | None:
    """torchrun's plan, or None when one process on this host is the whole job."""
    if resources.current_host not in resources.hosts:
        raise UserError(
            f"resourceconfig.json: current_host {resources.current_host!r} is not among hosts "
            f"{list(resources.hosts)}."
        )
    processes = settings.processes_per_host or max(gpus, 1)
    if len(resources.hosts) == 1 and processes == 1:
        return None
    return LaunchPlan(
        hosts=resources.hosts,
        node_rank=resources.hosts.index(resources.current_host),
        processes_per_host=processes,
        master_port=settings.master_port,
        network_interface=resources.network_interface_name,
    )


def torchrun_command(plan: LaunchPlan, base_dir: Path, *, python: str = sys.executable) -> list[str]:
    """The command that starts this host's share of the job's processes."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={len(plan.hosts)}",
        f"--node-rank={plan.node_rank}",
        f"--nproc-per-node={plan.processes_per_host}",
        f"--master-addr={plan.master_addr}",
        f"--master-port={plan.master_port}",
        "--max-restarts=0",
        "--module",
        "recsys",
        "train",
        "--base-dir",
        str(base_dir),
    ]


def network_interfaces() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


def launch_environment(
    plan: LaunchPlan, environ: Mapping[str, str], *, interfaces: set[str], cpu_count: int
) -> dict[str, str]:
    """The processes' environment: the socket interface for NCCL and gloo, and a thread count
    that does not oversubscribe the host's cores."""
    env = dict(environ)
    if plan.network_interface in interfaces:
        for name in SOCKET_INTERFACE_ENV:
            env.setdefault(name, plan.network_interface)
    else:
        # SageMaker names eth0 in resourceconfig.json, but some instance types (and local runs)
        # have no such interface: naming a missing one would make NCCL and gloo fail outright.
        logger.warning(
            "network interface %r from resourceconfig.json does not exist here (have: %s); "
            "letting NCCL and gloo choose",
            plan.network_interface,
            ", ".join(sorted(interfaces)) or "none",
        )
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count // plan.processes_per_host)))
    return env


def wait_for_hosts(
    hosts: Sequence[str],
    *,
    timeout_seconds: float,
    resolve: Callable[[str], object] = socket.gethostbyname,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Block until every host name resolves: on SageMaker, DNS entries of the other hosts can
    appear seconds after the container starts."""
    deadline = clock() + timeout_seconds
    pending = list(hosts)
    delay = 1.0
    while pending:
        unresolved = []
        for host in pending:
            try:
                resolve(host)
            except OSError:
                unresolved.append(host)
        pending = unresolved
        if not pending:
            return
        if clock() >= deadline:
            raise RuntimeError(
                f"host names {pending} did not resolve within {timeout_seconds:.0f} s; the job's "
                "hosts cannot reach each other"
            )
        logger.info("waiting for host names to resolve: %s", ", ".join(pending))
        sleep(delay)
        delay = min(delay * 2, 10.0)


def run_torchrun(command: list[str], env: Mapping[str, str]) -> int:
    """Run torchrun to the end, handing it SIGTERM and SIGINT (spot interruption, docker stop)
    so that its processes can checkpoint; returns its exit code."""
    process = subprocess.Popen(command, env=dict(env))

    def forward(signum: int, frame: FrameType | None) -> None:
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch(
    plan: LaunchPlan,
    base_dir: Path,
    environ: Mapping[str, str],
    *,
    host_wait_seconds: float,
) -> int:
    if len(plan.hosts) > 1:
        wait_for_hosts(plan.hosts, timeout_seconds=host_wait_seconds)
    env = launch_environment(plan, environ, interfaces=network_interfaces(), cpu_count=os.cpu_count() or 1)
    command = torchrun_command(plan, base_dir)
    logger.info(
        "host %d of %d: starting %d training process(es), %d in all: %s",
        plan.node_rank + 1,
        len(plan.hosts),
        plan.processes_per_host,
        plan.world_size,
        " ".join(command),
    )
    return run_torchrun(command, env)
