"""Data-parallel training and spot-safe restarts, through ``python -m recsys train`` as real processes.

- two processes on one host (torchrun, gloo), and two "hosts" on loopback (two containers' worth
  of ``recsys train``, each with its own ``/opt/ml`` tree and ``current_host``): each must write
  one artifact, on the leader only, and agree with a single-process run within 2 standard errors
  of its NDCG@10 (the shards and negatives differ, so equality is not expected);
- SIGTERM and SIGKILL in the middle of a run, then a restart in the same tree: the resumed run
  completes with every epoch and the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from recsys.artifact import load_artifact, verify_artifact
from recsys.data.synthetic import SyntheticData, SyntheticSpec, generate
from tests.conftest import TreeBuilder, free_port

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 300

DDP_HYPERPARAMETERS = {"epochs": "4", "embedding_dim": "16", "batch_size": "256", "patience": "10"}
# Long enough (about 200 steps an epoch) to be interrupted in the middle of an epoch.
RESUME_HYPERPARAMETERS = {
    "epochs": "5",
    "embedding_dim": "16",
    "batch_size": "128",
    "patience": "10",
    "checkpoint_interval_steps": "25",
}


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(SyntheticSpec(num_users=600, num_items=200, mean_interactions_per_user=40, seed=3))


def _start(base: Path, extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "RECSYS_"))}
    env.update({"SAGEMAKER_BASE_DIR": str(base), **(extra_env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "recsys", "train"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = process.communicate(timeout=TIMEOUT_SECONDS)
    return process.returncode, out


def _train(base: Path, extra_env: Mapping[str, str] | None = None) -> str:
    code, out = _finish(_start(base, extra_env))
    assert code == 0, out[-3000:]
    return out


def _metrics(base: Path) -> dict[str, Any]:
    return dict(json.loads((base / "output" / "data" / "metrics.json").read_text()))


def _assert_one_artifact(base: Path) -> None:
    verify_artifact(base / "model")
    artifact = load_artifact(base / "model")
    assert artifact.model_config.num_items > 0
    assert (base / "output" / "success").exists()
    assert not (base / "output" / "failure").exists()


def _assert_agrees_with(single: dict[str, Any], distributed: dict[str, Any]) -> None:
    a, b = single["validation"], distributed["validation"]
    tolerance = 2 * a["ndcg@10_se"]
    assert abs(a["ndcg@10"] - b["ndcg@10"]) <= tolerance, (a["ndcg@10"], b["ndcg@10"], tolerance)
    assert b["ndcg@10"] > 2 * single["validation"]["ndcg@10"] / 3  # learnt something, not noise


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory, data: SyntheticData, make_tree: TreeBuilder) -> Path:
    base = make_tree(tmp_path_factory.mktemp("single"), data, hyperparameters=DDP_HYPERPARAMETERS)
    _train(base)
    return base


def test_two_processes_on_one_host_train_together(
    tmp_path: Path, data: SyntheticData, make_tree: TreeBuilder, single_run: Path
) -> None:
    base = make_tree(tmp_path, data, hyperparameters=DDP_HYPERPARAMETERS)

    out = _train(base, {"RECSYS_PROCESSES_PER_HOST": "2", "RECSYS_MASTER_PORT": str(free_port())})

    assert "starting 2 training process(es), 2 in all" in out
    assert "rank 0 of 2 joined the gloo process group" in out
    assert "rank 1 of 2 joined the gloo process group" in out
    assert out.count("model written to") == 1  # rank 0 alone
    _assert_one_artifact(base)
    _assert_agrees_with(_metrics(single_run), _metrics(base))


def test_two_hosts_on_loopback_train_together_and_only_the_leader_writes_the_model(
    tmp_path: Path, data: SyntheticData, make_tree: TreeBuilder, single_run: Path
) -> None:
    # Two names for this machine: each "host" resolves to 127.0.0.1.
    hosts = ["localhost", "127.0.0.1"]
    port = str(free_port())
    bases = []
    for host in hosts:
        base = make_tree(tmp_path / host, data, hyperparameters=DDP_HYPERPARAMETERS)
        # SageMaker names eth0; an interface this machine lacks exercises the fallback.
        config = {"current_host": host, "hosts": hosts, "network_interface_name": "ethmissing0"}
        (base / "input" / "config" / "resourceconfig.json").write_text(json.dumps(config))
        bases.append(base)

    processes = [_start(base, {"RECSYS_MASTER_PORT": port}) for base in bases]
    (leader_code, leader_out), (follower_code, follower_out) = (_finish(p) for p in processes)

    assert leader_code == 0, leader_out[-3000:]
    assert follower_code == 0, follower_out[-3000:]
    assert "host 1 of 2: starting 1 training process(es), 2 in all" in leader_out
    assert "host 2 of 2: starting 1 training process(es), 2 in all" in follower_out
    assert "network interface 'ethmissing0' from resourceconfig.json does not exist here" in leader_out
    _assert_one_artifact(bases[0])
    assert (bases[1] / "output" / "success").exists()
    assert not (bases[1] / "model" / "manifest.json").exists()
    assert not (bases[1] / "output" / "data" / "metrics.json").exists()
    _assert_agrees_with(_metrics(single_run), _metrics(bases[0]))


# --- interrupted and resumed ------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, data: SyntheticData, make_tree: TreeBuilder
) -> Path:
    base = make_tree(tmp_path_factory.mktemp("uninterrupted"), data, hyperparameters=RESUME_HYPERPARAMETERS)
    _train(base)
    return base


def _wait_for_checkpoint(base: Path, process: subprocess.Popen[str], *, epoch: int) -> str:
    """Block until a mid-epoch checkpoint of ``epoch`` or later exists; returns its name."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    directory = base / "checkpoints"
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be interrupted"
        for path in sorted(directory.glob("epoch-e*-s*.pt.sha256")) if directory.exists() else []:
            name = path.name.removesuffix(".sha256")
            e, s = name.split("-")[1:3]
            if int(e[1:]) >= epoch and int(s[1:].split(".")[0]) > 0 and ".rank" not in name:
                return name
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _assert_same_result(uninterrupted: Path, resumed: Path) -> None:
    a, b = _metrics(uninterrupted), _metrics(resumed)
    assert b["epochs_run"] == a["epochs_run"] == int(RESUME_HYPERPARAMETERS["epochs"])
    assert b["best_epoch"] == a["best_epoch"]
    for name, value in a["validation"].items():
        assert b["validation"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_run_interrupted_in_mid_epoch_resumes_on_restart_with_the_same_result(
    tmp_path: Path, data: SyntheticData, make_tree: TreeBuilder, uninterrupted: Path, sig: signal.Signals
) -> None:
    base = make_tree(tmp_path, data, hyperparameters=RESUME_HYPERPARAMETERS)
    process = _start(base)
    _wait_for_checkpoint(base, process, epoch=2)
    process.send_signal(sig)
    code, out = _finish(process)

    if sig == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM, out[-3000:]
        failure = (base / "output" / "failure").read_text()
        assert "stopped by SIGTERM" in failure and "resumes from it" in failure
    else:
        assert code == -signal.SIGKILL
    assert not (base / "model" / "manifest.json").exists()

    out = _train(base)  # the restarted job, same tree (SageMaker restores /opt/ml/checkpoints)

    assert "resuming epoch from its checkpoint: epoch" in out
    _assert_one_artifact(base)
    _assert_same_result(uninterrupted, base)
    report = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert report["epochs_run"] == int(RESUME_HYPERPARAMETERS["epochs"])
