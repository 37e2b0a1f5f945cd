"""Checkpoints and data-parallel training on CUDA.

Skipped, with the reason, where no CUDA device is visible (or, for NCCL, fewer than two).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recsys.data.device import DeviceInteractions, HeldOut
from recsys.data.interactions import split_last_out
from recsys.data.synthetic import SyntheticSpec, generate
from recsys.training.checkpoints import Checkpointer, TrainingInterrupted
from recsys.training.distributed import SINGLE_PROCESS
from recsys.training.loop import RunContext, fit
from tests.conftest import build_tree, free_port
from tests.training.test_checkpoints import StopOnPoll
from tests.training.test_loop import _data, _model, _settings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: GPU tests skipped"),
]
CUDA = torch.device("cuda")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(
    directory: Path | None, stop: StopOnPoll | None = None
) -> tuple[list[float], dict[str, torch.Tensor]]:
    train, held = split_last_out(_data())
    model = _model(train).to(CUDA)  # a small NeuMF: dropout exercises the CUDA RNG state
    result = fit(
        model,
        DeviceInteractions.from_indexed(train, CUDA),
        HeldOut(torch.from_numpy(held.indptr).to(CUDA), torch.from_numpy(held.items).to(CUDA)),
        _settings(epochs=3, patience=10, amp=False),
        device=CUDA,
        run=RunContext(
            checkpointer=Checkpointer(directory, ctx=SINGLE_PROCESS, identity="gpu", interval_steps=2)
            if directory is not None
            else None,
            stop=stop,
        ),
    )
    return [r.validation["ndcg@10"] for r in result.records], model.state_dict()


def test_a_cuda_run_stopped_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    scores, state = _run(None)
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, StopOnPoll(5))
    resumed_scores, resumed_state = _run(tmp_path)
    # CUDA's embedding backward sums with atomics, so "the same" is within float noise here.
    assert resumed_scores == pytest.approx(scores, abs=1e-3)
    for name, tensor in state.items():
        assert torch.allclose(tensor, resumed_state[name], atol=1e-4), name


@pytest.mark.slow  # `recsys train` as two processes
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than two CUDA devices: NCCL test skipped")
def test_two_gpus_train_together_with_nccl(tmp_path: Path) -> None:
    data = generate(SyntheticSpec(num_users=600, num_items=200, mean_interactions_per_user=40, seed=3))
    base = build_tree(tmp_path, data, hyperparameters={"epochs": "3", "batch_size": "256"})
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGEMAKER_")}
    env.update(
        {"SAGEMAKER_BASE_DIR": str(base), "RECSYS_PROCESSES_PER_HOST": "2", "RECSYS_MASTER_PORT": str(port)}
    )
    result = subprocess.run(
        [sys.executable, "-m", "recsys", "train"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "joined the nccl process group" in result.stdout + result.stderr
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert metrics["device"] == "cuda:0"
