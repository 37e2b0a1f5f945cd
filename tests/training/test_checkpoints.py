"""Checkpoints: an interrupted-and-resumed fit ends exactly where an uninterrupted one does;
torn, corrupt or foreign checkpoints are skipped with a log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from recsys.data.device import DeviceInteractions, HeldOut
from recsys.data.interactions import split_last_out
from recsys.training import loop
from recsys.training.checkpoints import Checkpointer, StopRequest, TrainingInterrupted
from recsys.training.distributed import SINGLE_PROCESS
from recsys.training.loop import FitResult, RunContext, fit
from tests.training.test_loop import _data, _model, _settings

CPU = torch.device("cpu")


class StopOnPoll(StopRequest):
    """A stop request that turns true the ``poll``-th time the loop looks at it: SIGTERM at a
    chosen point, without signals. A single process polls after every step but an epoch's last,
    and once after each epoch's validation: with 7 steps per epoch here, polls 1-6 follow steps
    1-6 of epoch 1, poll 7 its end, poll 8 step 1 of epoch 2, and so on."""

    def __init__(self, poll: int) -> None:
        super().__init__()
        self.remaining = poll
        self.signal_name = "SIGTERM"

    @property  # type: ignore[override]
    def requested(self) -> bool:
        self.remaining -= 1
        return self.remaining <= 0

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def _checkpointer(directory: Path, *, interval: int = 4, identity: str = "job-a") -> Checkpointer:
    return Checkpointer(directory, ctx=SINGLE_PROCESS, identity=identity, interval_steps=interval)


def _run(
    directory: Path | None, stop: StopRequest | None = None, *, validated: bool = True, epochs: int = 4
) -> tuple[FitResult, dict[str, torch.Tensor]]:
    train, held = split_last_out(_data())
    model = _model(train)
    result = fit(
        model,
        DeviceInteractions.from_indexed(train, CPU),
        HeldOut(torch.from_numpy(held.indptr), torch.from_numpy(held.items)) if validated else None,
        _settings(epochs=epochs, patience=10),
        device=CPU,
        run=RunContext(checkpointer=_checkpointer(directory) if directory is not None else None, stop=stop),
    )
    return result, model.state_dict()


def _assert_same_run(
    a: tuple[FitResult, dict[str, torch.Tensor]], b: tuple[FitResult, dict[str, torch.Tensor]]
) -> None:
    (result_a, state_a), (result_b, state_b) = a, b
    assert [r.epoch for r in result_b.records] == [r.epoch for r in result_a.records]
    for ra, rb in zip(result_a.records, result_b.records, strict=True):
        assert rb.train_loss == pytest.approx(ra.train_loss, rel=1e-6)
        assert rb.validation == pytest.approx(ra.validation, rel=1e-6)
    assert result_b.best_epoch == result_a.best_epoch
    for name, tensor in state_a.items():
        assert torch.allclose(tensor, state_b[name], atol=1e-6), name


# Mid-epoch before any periodic checkpoint, at an epoch's end, on a periodic checkpoint's step,
# and just after one, in a later epoch.
@pytest.mark.parametrize("stop_at_step", [3, 7, 18, 19])
def test_a_run_stopped_by_sigterm_resumes_to_the_uninterrupted_result(
    tmp_path: Path, stop_at_step: int
) -> None:
    uninterrupted = _run(None)

    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        _run(tmp_path, StopOnPoll(stop_at_step))
    resumed = _run(tmp_path)

    _assert_same_run(uninterrupted, resumed)


def test_sparse_adam_state_resumes_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "SPARSE_MIN_ROWS", 30)  # SparseAdam for the user and item tables
    uninterrupted = _run(None)
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, StopOnPoll(10))
    _assert_same_run(uninterrupted, _run(tmp_path))


def test_a_killed_run_resumes_from_the_last_periodic_checkpoint(tmp_path: Path) -> None:
    uninterrupted = _run(None, validated=False)
    # A kill leaves whatever the last checkpoint was: simulate it by keeping only a mid-epoch one.
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, StopOnPoll(19), validated=False)  # epoch 3, step 5
    for path in tmp_path.glob("epoch-e00003-s000000005*"):
        path.unlink()  # the SIGTERM checkpoint: a SIGKILL would not have written it
    assert sorted(p.name for p in tmp_path.glob("epoch-*.pt")) == [
        "epoch-e00003-s000000004.pt",
        "epoch-e00003-s000000004.rank0000.pt",
    ]
    resumed = _run(tmp_path, validated=False)
    _assert_same_run(uninterrupted, resumed)


def test_a_finished_phase_is_not_trained_again(tmp_path: Path) -> None:
    first = _run(tmp_path)
    again = _run(tmp_path, StopOnPoll(1))  # would raise if it took a single step
    _assert_same_run(first, again)


def test_a_truncated_or_corrupt_checkpoint_is_skipped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uninterrupted = _run(None)
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, StopOnPoll(19))  # epoch 3, step 5; the periodic one before it is step 4
    newest = tmp_path / "epoch-e00003-s000000005.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated

    with caplog.at_level(logging.INFO, logger="recsys.training.checkpoints"):
        resumed = _run(tmp_path)
    assert "epoch-e00003-s000000005.pt does not match its checksum" in caplog.text
    assert "resuming epoch from its checkpoint: epoch 3, 4 steps done" in caplog.text
    _assert_same_run(uninterrupted, resumed)


def test_with_every_checkpoint_corrupt_training_starts_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uninterrupted = _run(None)
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, StopOnPoll(19))
    for path in tmp_path.glob("*.pt"):
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF  # one flipped byte
        path.write_bytes(bytes(blob))

    with caplog.at_level(logging.INFO, logger="recsys.training.checkpoints"):
        restarted = _run(tmp_path)
    assert "epoch-e00003-s000000004.pt does not match its checksum" in caplog.text
    assert "resuming" not in caplog.text
    _assert_same_run(uninterrupted, restarted)


def test_a_checkpoint_without_its_checksum_file_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, StopOnPoll(5))
    (tmp_path / "epoch-e00001-s000000005.pt.sha256").unlink()  # cut off between the two renames
    with caplog.at_level(logging.INFO, logger="recsys.training.checkpoints"):
        _run(tmp_path)
    assert "epoch-e00001-s000000005.pt has no checksum file" in caplog.text
    assert "resuming epoch from its checkpoint: epoch 1, 4 steps done" in caplog.text


def test_checkpoints_of_another_job_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saver = _checkpointer(tmp_path, identity="job-a")
    saver.save("epoch", 3, 0, shared={"model": {}, "optimizer": {}, "loop": {}}, rng={})
    with caplog.at_level(logging.WARNING, logger="recsys.training.checkpoints"):
        assert _checkpointer(tmp_path, identity="job-b").load("epoch") is None
    assert "different configuration or data" in caplog.text
    restored = _checkpointer(tmp_path, identity="job-a").load("epoch")
    assert restored is not None and (restored.epoch, restored.step, restored.done) == (3, 0, False)


def test_only_the_newest_checkpoints_are_kept_and_no_temporary_files_remain(tmp_path: Path) -> None:
    _run(tmp_path, epochs=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.startswith(".")]
    shared = [n for n in names if n.endswith(".pt") and ".rank" not in n]
    # The finished phase and the newest mid-run checkpoint (keep=2).
    assert shared == ["epoch-done.pt", "epoch-e00003-s000000004.pt"]
    for name in shared:
        assert (tmp_path / f"{name}.sha256").exists()


def test_checkpoints_load_without_pickle(tmp_path: Path) -> None:
    _run(tmp_path, epochs=1)
    for path in tmp_path.glob("*.pt"):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(payload, dict)


def test_routine_checkpoints_log_at_debug_not_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A line per epoch end and per interval drowned the epoch lines of a job's INFO log.
    with caplog.at_level(logging.INFO, logger="recsys.training.checkpoints"):
        _run(tmp_path, epochs=2)
    assert "checkpoint saved" not in caplog.text
    assert list(tmp_path.glob("epoch-*.pt"))  # they were written all the same
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="recsys.training.checkpoints"):
        _run(tmp_path / "again", epochs=1)
    assert "checkpoint saved" in caplog.text


def test_a_foreign_jobs_later_checkpoints_do_not_get_this_jobs_pruned(tmp_path: Path) -> None:
    # Another job (another configuration or data) ran to the end in this directory first, as in a
    # local tree laid out anew: its checkpoints are later than anything this job writes.
    train, held = split_last_out(_data())
    fit(
        _model(train),
        DeviceInteractions.from_indexed(train, CPU),
        HeldOut(torch.from_numpy(held.indptr), torch.from_numpy(held.items)),
        _settings(epochs=6, patience=10),
        device=CPU,
        run=RunContext(checkpointer=_checkpointer(tmp_path, identity="job-b")),
    )
    uninterrupted = _run(None)

    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, StopOnPoll(10))  # epoch 2, step 3: its newest checkpoint is e2's SIGTERM one
    assert (tmp_path / "epoch-e00002-s000000003.pt").exists()
    _assert_same_run(uninterrupted, _run(tmp_path))
