"""The launch decision and torchrun's command line, from resourceconfig.json and the GPU count."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.errors import UserError
from recsys.sagemaker.contract import (
    LaunchSettings,
    ResourceConfig,
    read_launch_settings,
    read_worker_env,
)
from recsys.sagemaker.launch import (
    LaunchPlan,
    launch_environment,
    plan_launch,
    torchrun_command,
    wait_for_hosts,
)

THREE_HOSTS = ResourceConfig("algo-2", ("algo-1", "algo-2", "algo-3"), "eth0")


def test_one_host_with_at_most_one_gpu_trains_in_this_process() -> None:
    for gpus in (0, 1):
        assert plan_launch(ResourceConfig(), gpus=gpus, settings=LaunchSettings()) is None


def test_one_host_with_several_gpus_starts_one_process_per_gpu_on_loopback() -> None:
    plan = plan_launch(ResourceConfig(), gpus=8, settings=LaunchSettings())
    assert plan is not None
    assert (plan.processes_per_host, plan.world_size, plan.node_rank) == (8, 8, 0)
    assert plan.master_addr == "127.0.0.1"


def test_several_hosts_rendezvous_on_the_first_host_at_port_7777() -> None:
    plan = plan_launch(THREE_HOSTS, gpus=4, settings=LaunchSettings())
    assert plan is not None
    assert (plan.node_rank, plan.processes_per_host, plan.world_size) == (1, 4, 12)
    command = torchrun_command(plan, base_dir=Path("/opt/ml"), python="python3")
    assert command == [
        "python3",
        "-m",
        "torch.distributed.run",
        "--nnodes=3",
        "--node-rank=1",
        "--nproc-per-node=4",
        "--master-addr=algo-1",
        "--master-port=7777",
        "--max-restarts=0",
        "--module",
        "recsys",
        "train",
        "--base-dir",
        "/opt/ml",
    ]


def test_cpu_hosts_run_one_process_each_unless_told_otherwise() -> None:
    plan = plan_launch(THREE_HOSTS, gpus=0, settings=LaunchSettings())
    assert plan is not None and plan.processes_per_host == 1 and plan.world_size == 3
    override = plan_launch(ResourceConfig(), gpus=0, settings=LaunchSettings(processes_per_host=2))
    assert override is not None and override.world_size == 2


def test_a_current_host_missing_from_hosts_is_a_user_error() -> None:
    with pytest.raises(UserError, match="current_host 'algo-9' is not among hosts"):
        plan_launch(ResourceConfig("algo-9", ("algo-1", "algo-2")), gpus=0, settings=LaunchSettings())


def _plan(interface: str = "eth0", processes: int = 4) -> LaunchPlan:
    return LaunchPlan(("algo-1", "algo-2"), 0, processes, 7777, interface)


def test_the_socket_interface_comes_from_resourceconfig_when_it_exists() -> None:
    env = launch_environment(_plan("eth0"), {"PATH": "/bin"}, interfaces={"lo", "eth0"}, cpu_count=16)
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert env["OMP_NUM_THREADS"] == "4"  # 16 cores over 4 processes
    assert env["PATH"] == "/bin"


def test_a_missing_interface_is_left_to_nccl_and_gloo(caplog: pytest.LogCaptureFixture) -> None:
    env = launch_environment(_plan("eth0"), {}, interfaces={"lo", "ens5"}, cpu_count=2)
    assert "NCCL_SOCKET_IFNAME" not in env and "GLOO_SOCKET_IFNAME" not in env
    assert "'eth0' from resourceconfig.json does not exist here (have: ens5, lo)" in caplog.text
    assert env["OMP_NUM_THREADS"] == "1"


def test_settings_the_user_made_win() -> None:
    env = launch_environment(
        _plan("eth0"),
        {"NCCL_SOCKET_IFNAME": "ens9", "OMP_NUM_THREADS": "3"},
        interfaces={"eth0"},
        cpu_count=8,
    )
    assert env["NCCL_SOCKET_IFNAME"] == "ens9" and env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert env["OMP_NUM_THREADS"] == "3"


class FakeDns:
    """Host names that start resolving after a number of lookups, and a clock that sleeps instantly."""

    def __init__(self, failures: dict[str, int]) -> None:
        self.failures = dict(failures)
        self.now = 0.0
        self.sleeps: list[float] = []

    def resolve(self, host: str) -> str:
        if self.failures.get(host, 0) > 0:
            self.failures[host] -= 1
            raise OSError(f"{host}: Name or service not known")
        return "10.0.0.1"

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_host_names_are_retried_until_they_resolve() -> None:
    dns = FakeDns({"algo-2": 3})
    wait_for_hosts(
        ["algo-1", "algo-2"], timeout_seconds=60, resolve=dns.resolve, sleep=dns.sleep, clock=lambda: dns.now
    )
    assert dns.sleeps == [1.0, 2.0, 4.0]  # backing off


def test_host_names_that_never_resolve_fail_after_the_timeout() -> None:
    dns = FakeDns({"algo-2": 10**6})
    with pytest.raises(RuntimeError, match=r"host names \['algo-2'\] did not resolve within 30 s"):
        wait_for_hosts(
            ["algo-1", "algo-2"],
            timeout_seconds=30,
            resolve=dns.resolve,
            sleep=dns.sleep,
            clock=lambda: dns.now,
        )
    assert 30 <= dns.now <= 40


def test_launch_settings_and_worker_variables_from_the_environment() -> None:
    assert read_launch_settings({}) == LaunchSettings(7777, None, 600)
    settings = read_launch_settings(
        {"RECSYS_MASTER_PORT": "29500", "RECSYS_PROCESSES_PER_HOST": "2", "RECSYS_HOST_WAIT_SECONDS": "5"}
    )
    assert settings == LaunchSettings(29500, 2, 5.0)
    with pytest.raises(UserError, match="RECSYS_PROCESSES_PER_HOST must be a whole number"):
        read_launch_settings({"RECSYS_PROCESSES_PER_HOST": "two"})
    assert read_worker_env({"RANK": "1", "WORLD_SIZE": "2"}) is None
    worker = read_worker_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert worker is not None and (worker.rank, worker.world_size, worker.local_rank) == (3, 8, 1)
