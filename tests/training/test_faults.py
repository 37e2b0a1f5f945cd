"""Nothing a disk or a broken file does takes the job down: every such failure is a readable
``output/failure`` and exit 1, and the job's own partial files are gone afterwards.

A full disk is a real, small tmpfs where this process may mount one (root with CAP_SYS_ADMIN),
and a fault-injecting file layer otherwise, so the same tests run everywhere: writes under a
limited directory (checkpoints through Python file objects, the artifact's weights through
safetensors) fail with ENOSPC, the way the real ones do, once its budget of bytes is spent.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import safetensors
import safetensors.torch
import torch

from recsys.artifact import load_artifact
from recsys.data.synthetic import SyntheticData
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import EXIT_USER_ERROR, train
from recsys.training import checkpoints as checkpoints_module
from recsys.training.checkpoints import Checkpointer
from recsys.training.distributed import SINGLE_PROCESS
from tests.conftest import TreeBuilder

PAGE = 4096


@pytest.fixture(autouse=True)
def _no_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing learning_curves.png and the report's charts: a third of a tiny run."""

    def touch(path: Path, *args: Any) -> None:
        path.touch()

    monkeypatch.setattr("recsys.training.report.plot_learning_curves", touch)
    monkeypatch.setattr("recsys.evaluation.evaluate.draw_charts", lambda report: {})


# --- a disk that fills up ------------------------------------------------------------------------


def _can_mount_tmpfs(scratch: Path) -> bool:
    target = scratch / f"probe-{uuid.uuid4().hex}"
    target.mkdir(parents=True)
    try:
        mounted = _run_quiet(["mount", "-t", "tmpfs", "-o", f"size={PAGE}", "tmpfs", str(target)])
        if mounted:
            _run_quiet(["umount", str(target)])
        return mounted
    finally:
        target.rmdir()


def _run_quiet(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, check=False, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class _Budget:
    """Bytes left on one injected 'filesystem'."""

    def __init__(self, directory: Path, free_bytes: int) -> None:
        self.directory = directory.resolve()
        self.left = free_bytes


class _LimitedFile:
    """A binary file whose writes fail with ENOSPC once its filesystem's budget is spent, after
    writing what still fits: what a real full disk does."""

    def __init__(self, handle: Any, budget: _Budget, path: Path) -> None:
        self._handle, self._budget, self._path = handle, budget, path

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) > self._budget.left:
            self._handle.write(view[: self._budget.left])
            self._budget.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._path))
        self._budget.left -= len(view)
        return int(self._handle.write(view))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _LimitedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


class FullDisk:
    """``limit(directory, free_bytes)``: from now on ``directory`` has ``free_bytes`` left."""

    def __init__(self, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mode = mode
        self._monkeypatch = monkeypatch
        self._mounts: list[Path] = []
        self._budgets: list[_Budget] = []
        if mode == "injected":
            self._inject()

    def limit(self, directory: Path, free_bytes: int) -> None:
        if self.mode == "tmpfs":
            self._mount(directory, free_bytes)
        else:
            self._budgets.append(_Budget(directory, free_bytes))

    def _mount(self, directory: Path, free_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        aside = directory.with_name(f".{directory.name}-aside")
        shutil.copytree(directory, aside)
        assert _run_quiet(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(directory)])
        self._mounts.append(directory)
        shutil.copytree(aside, directory, dirs_exist_ok=True)
        shutil.rmtree(aside)
        stats = os.statvfs(directory)
        used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
        size = -(-(used + max(free_bytes, PAGE)) // PAGE) * PAGE
        assert _run_quiet(["mount", "-o", f"remount,size={size}", str(directory)])

    def _budget(self, path: Path) -> _Budget | None:
        resolved = path.resolve()
        return next((b for b in self._budgets if resolved.is_relative_to(b.directory)), None)

    def _inject(self) -> None:
        real_open = open
        real_save_file = safetensors.torch.save_file

        def limited_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            budget = self._budget(Path(file)) if "w" in mode or "a" in mode else None
            handle = real_open(file, mode, *args, **kwargs)
            return handle if budget is None else _LimitedFile(handle, budget, Path(file))

        def limited_save_file(tensors: dict[str, torch.Tensor], filename: Any, metadata: Any = None) -> None:
            budget = self._budget(Path(filename))
            if budget is None:
                real_save_file(tensors, filename, metadata)
                return
            data = safetensors.torch.save(tensors, metadata)
            with real_open(filename, "wb") as handle:
                handle.write(data[: budget.left])
            if len(data) > budget.left:
                budget.left = 0
                # The text safetensors really raises on a full disk.
                raise safetensors.SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"
                )
            budget.left -= len(data)

        self._monkeypatch.setattr(checkpoints_module, "open", limited_open, raising=False)
        self._monkeypatch.setattr(safetensors.torch, "save_file", limited_save_file)

    def close(self) -> None:
        for directory in reversed(self._mounts):
            if not _run_quiet(["umount", str(directory)]):
                _run_quiet(["umount", "-l", str(directory)])


@pytest.fixture(scope="session")
def tmpfs_available(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return _can_mount_tmpfs(tmp_path_factory.mktemp("tmpfs-probe"))


@pytest.fixture(params=["tmpfs", "injected"])
def full_disk(
    request: pytest.FixtureRequest, tmpfs_available: bool, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FullDisk]:
    # Without the right to mount, the tmpfs case runs on the injected layer rather than skipping.
    mode = request.param if tmpfs_available else "injected"
    disk = FullDisk(mode, monkeypatch)
    try:
        yield disk
    finally:
        disk.close()


def _partial_files(base: Path) -> list[Path]:
    return [
        path for path in base.rglob("*") if path.name.endswith(".tmp") or path.name.startswith(".staging-")
    ]


def _failure(paths: ContainerPaths) -> str:
    return paths.failure_file.read_text(encoding="utf-8") if paths.failure_file.exists() else ""


def _disk_full_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "no space left on device" in r.getMessage()
    ]


def test_a_full_checkpoint_disk_warns_once_and_the_job_still_succeeds(
    tmp_path: Path,
    tiny_data: SyntheticData,
    make_tree: TreeBuilder,
    full_disk: FullDisk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    paths = ContainerPaths(make_tree(tmp_path, tiny_data))
    full_disk.limit(paths.checkpoint_dir, PAGE)

    with caplog.at_level(logging.WARNING):
        code = train(paths)

    assert code == 0, _failure(paths)
    assert paths.success_file.exists()
    load_artifact(paths.model_dir)
    warnings = _disk_full_records(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert str(paths.checkpoint_dir) in warnings[0].getMessage()
    assert not _partial_files(tmp_path)
    # No checkpoint was written whole, and none is left half-written.
    assert not [p for p in paths.checkpoint_dir.glob("*.pt") if not Path(f"{p}.sha256").exists()]


def test_a_full_model_disk_fails_with_the_path_and_leaves_no_partial_files(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder, full_disk: FullDisk
) -> None:
    paths = ContainerPaths(make_tree(tmp_path, tiny_data))
    full_disk.limit(paths.model_dir, PAGE)

    code = train(paths)

    text = _failure(paths)
    assert code == EXIT_USER_ERROR, text
    assert "no space left on device" in text
    assert str(paths.model_dir) in text
    assert "Traceback" not in text
    assert len(text) <= 1024
    assert not paths.success_file.exists()
    assert not (paths.model_dir / "manifest.json").exists()
    assert not _partial_files(tmp_path)


def test_a_full_tree_fails_with_the_path_and_removes_its_partial_files(
    tmp_path: Path,
    tiny_data: SyntheticData,
    make_tree: TreeBuilder,
    full_disk: FullDisk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = tmp_path / "opt_ml"
    paths = ContainerPaths(make_tree(base, tiny_data))
    full_disk.limit(base, 2 * PAGE)

    with caplog.at_level(logging.WARNING):
        code = train(paths)

    text = _failure(paths)
    assert code == EXIT_USER_ERROR, text
    assert "no space left on device" in text
    assert str(paths.model_dir) in text
    assert "Traceback" not in text
    assert not _partial_files(base)
    assert len(_disk_full_records(caplog)) >= 1  # the checkpoints' warning, then the error


def test_a_full_disk_elsewhere_in_the_job_names_the_file(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = ContainerPaths(make_tree(tmp_path, tiny_data))
    report_file = paths.output_data_dir / "report.html"

    def full_report(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(report_file))

    monkeypatch.setattr("recsys.training.job.write_report", full_report)

    code = train(paths)

    text = _failure(paths)
    assert code == EXIT_USER_ERROR, text
    assert "no space left on device" in text
    assert str(report_file) in text
    assert "Traceback" not in text


def test_a_failure_file_that_cannot_be_written_still_gives_the_exit_code(
    tmp_path: Path, make_tree: TreeBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    paths = ContainerPaths(make_tree(tmp_path))  # no train channel: a user error
    paths.failure_file.mkdir(parents=True)  # output/failure cannot be written as a file

    with caplog.at_level(logging.ERROR):
        code = train(paths)

    assert code == EXIT_USER_ERROR
    assert "the required channel 'train' is missing" in caplog.text


# --- checkpoints on a full disk, one save at a time -----------------------------------------------


WEIGHTS = 256 * 1024  # bytes of weights in each checkpoint: the files around them are far smaller


def _checkpointer(directory: Path) -> Checkpointer:
    return Checkpointer(directory, ctx=SINGLE_PROCESS, identity="job", interval_steps=0)


def _save(checkpointer: Checkpointer, epoch: int) -> None:
    checkpointer.save(
        "epoch",
        epoch,
        0,
        shared={"model": {"w": torch.ones(WEIGHTS // 4)}},
        rng={"seed": torch.tensor([epoch])},
    )


def test_a_checkpoint_that_does_not_fit_is_removed_and_the_previous_one_resumes(
    tmp_path: Path, full_disk: FullDisk, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "checkpoints"
    checkpointer = _checkpointer(directory)
    full_disk.limit(directory, WEIGHTS * 3 // 2)  # one checkpoint fits, not two
    _save(checkpointer, 1)

    with caplog.at_level(logging.WARNING, logger="recsys.training.checkpoints"):
        _save(checkpointer, 2)
        _save(checkpointer, 3)

    assert len(_disk_full_records(caplog)) == 1  # once, not at every save
    assert not _partial_files(directory)
    assert sorted(p.name for p in directory.iterdir()) == [
        "epoch-e00001-s000000000.pt",
        "epoch-e00001-s000000000.pt.sha256",
        "epoch-e00001-s000000000.rank0000.pt",
        "epoch-e00001-s000000000.rank0000.pt.sha256",
    ]
    restored = _checkpointer(directory).load("epoch")
    assert restored is not None and restored.epoch == 1


def test_a_checkpoint_error_other_than_a_full_disk_is_still_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(file: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))

    monkeypatch.setattr(checkpoints_module, "open", denied, raising=False)

    with pytest.raises(PermissionError):
        _save(_checkpointer(tmp_path), 1)
    assert not _partial_files(tmp_path)


# --- files that are not what they should be ---------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        '{"epochs": "2", "note": "caf\xe9"}'.encode("latin-1"),
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    ],
    ids=["latin-1", "binary"],
)
def test_hyperparameters_that_are_not_utf8_are_a_user_error(
    tmp_path: Path, make_tree: TreeBuilder, content: bytes
) -> None:
    paths = ContainerPaths(make_tree(tmp_path))
    paths.hyperparameters_file.write_bytes(content)

    code = train(paths)

    text = _failure(paths)
    assert code == EXIT_USER_ERROR, text
    assert "not valid UTF-8 JSON" in text
    assert str(paths.hyperparameters_file) in text
    assert "Traceback" not in text


def test_a_train_channel_whose_csv_is_only_a_header_names_the_file(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    paths = ContainerPaths(make_tree(tmp_path, tiny_data))
    channel = paths.channel_dir("train")
    for path in channel.iterdir():
        path.unlink()
    header_only = channel / "part-0000.csv"
    header_only.write_text("user_id,item_id,timestamp\n", encoding="utf-8")

    code = train(paths)

    text = _failure(paths)
    assert code == EXIT_USER_ERROR, text
    assert str(header_only) in text
    assert "no rows" in text


def test_ids_with_nul_bytes_are_dropped_counted_and_located(
    tmp_path: Path, tiny_data: SyntheticData, make_tree: TreeBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    interactions = tiny_data.interactions.copy()
    interactions["user_id"] = interactions["user_id"].astype(object)
    interactions.loc[3, "user_id"] = "u\x00corrupt"
    interactions.loc[7, "item_id"] = "\x00\x00"
    paths = ContainerPaths(make_tree(tmp_path, tiny_data, train=pd.DataFrame(interactions)))
    (train_file,) = paths.channel_dir("train").iterdir()

    with caplog.at_level(logging.WARNING):
        code = train(paths)

    assert code == 0, _failure(paths)
    artifact = load_artifact(paths.model_dir)
    assert not [u for u in artifact.users.values.to_pylist() if "\x00" in u]
    assert not [i for i in artifact.items.values.to_pylist() if "\x00" in i]
    warning = next(r.getMessage() for r in caplog.records if "NUL" in r.getMessage())
    assert "2 rows" in warning
    assert f"row 4 of {train_file}" in warning  # data rows counted from 1


@pytest.mark.parametrize("name", ["model", "checkpoints", "output/data"])
def test_a_file_where_the_job_writes_a_directory_is_refused_before_training(
    tmp_path: Path,
    tiny_data: SyntheticData,
    make_tree: TreeBuilder,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    paths = ContainerPaths(make_tree(tmp_path, tiny_data))
    in_the_way = tmp_path / name
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("not a directory\n")

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("training started")

    monkeypatch.setattr("recsys.training.job.run_training", no_training)

    code = train(paths)

    text = _failure(paths)
    assert code == EXIT_USER_ERROR, text
    assert f"{in_the_way} is a file" in text
