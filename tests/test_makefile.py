"""The Makefile, run for real with GNU make: the two installs, `make help`, `make serve PORT=...`.

The install tests give make a ``VENV`` of their own whose ``bin/python`` and ``bin/recsys`` are
stubs that log their arguments, so that what make would install, and when, is seen without pip
(a real pip run is minutes; the figures in the README were measured from a fresh clone).
``make serve`` runs the real ``recsys serve`` of this interpreter's environment over real HTTP.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest

from recsys.data.synthetic import SyntheticData
from tests.conftest import free_port
from tests.serving.trained_model import trained_tree

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
RUNTIME_INSTALL = "-m pip install --quiet -e ."
FULL_INSTALL = "-m pip install --quiet -e .[dev,aws]"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make on PATH")


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what would steer make or pip from outside the test."""
    steer = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "TORCH_INDEX", "PIP_INDEX_URL")
    env = {k: v for k, v in os.environ.items() if k not in steer and not k.startswith(("SAGEMAKER_", "SM_"))}
    env.update(extra or {})
    return env


def make(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), f"PYTHON={sys.executable}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_clean_env(),
    )


# --- the two installs ----------------------------------------------------------------------------

STUB = """#!/bin/sh
echo "$*" >> "{log}"
"""


@pytest.fixture()
def stub_venv(tmp_path: Path) -> Path:
    """A VENV whose python and recsys log their arguments to ``pip.log`` and ``recsys.log``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, log in (("python", "pip.log"), ("recsys", "recsys.log")):
        stub = venv / "bin" / name
        stub.write_text(STUB.format(log=venv / log))
        stub.chmod(0o755)
    return venv


def pip_runs(venv: Path) -> list[str]:
    log = venv / "pip.log"
    return log.read_text().splitlines() if log.exists() else []


def test_run_installs_only_what_running_needs_and_says_so_first(stub_venv: Path, tmp_path: Path) -> None:
    result = make("run", f"VENV={stub_venv}", f"LOCAL_ML={tmp_path / 'opt_ml'}")

    assert result.returncode == 0, result.stdout + result.stderr
    assert pip_runs(stub_venv) == [RUNTIME_INSTALL]
    # The line before pip says what is installed, how long and how big, and that it happens once.
    first = result.stdout.splitlines()[0]
    assert first.startswith("First run: installing recsys"), result.stdout
    assert re.search(r"about \d+(\.\d+)? min and \d+(\.\d+)? GB, once", first), first
    assert (stub_venv / ".installed-runtime").exists()
    assert not (stub_venv / ".installed").exists()
    recsys_calls = (stub_venv / "recsys.log").read_text()
    assert "generate-data" in recsys_calls and "train" in recsys_calls


def test_install_upgrades_a_runtime_only_venv(stub_venv: Path, tmp_path: Path) -> None:
    assert make("run", f"VENV={stub_venv}", f"LOCAL_ML={tmp_path / 'opt_ml'}").returncode == 0

    result = make("install", f"VENV={stub_venv}")

    assert result.returncode == 0, result.stdout + result.stderr
    assert pip_runs(stub_venv) == [RUNTIME_INSTALL, FULL_INSTALL]
    assert result.stdout.startswith("Adding the dev tools"), result.stdout
    assert make("-q", "install", f"VENV={stub_venv}").returncode == 0


def test_a_full_install_satisfies_run_and_serve_without_a_second_pip_run(
    stub_venv: Path, tmp_path: Path
) -> None:
    result = make("install", f"VENV={stub_venv}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("First install: recsys, its dev tools"), result.stdout

    run = make("run", f"VENV={stub_venv}", f"LOCAL_ML={tmp_path / 'opt_ml'}")

    assert run.returncode == 0, run.stdout + run.stderr
    assert pip_runs(stub_venv) == [FULL_INSTALL]
    # Both stamps are up to date for make itself (-q: exit 0 when nothing would be remade).
    for stamp in (".installed", ".installed-runtime"):
        assert make("-q", f"VENV={stub_venv}", str(stub_venv / stamp)).returncode == 0


def test_a_changed_pyproject_reinstalls_without_the_first_time_line(stub_venv: Path, tmp_path: Path) -> None:
    assert make("run", f"VENV={stub_venv}", f"LOCAL_ML={tmp_path / 'opt_ml'}").returncode == 0
    old = PYPROJECT.stat().st_mtime - 3600
    os.utime(stub_venv / ".installed-runtime", (old, old))  # as if pyproject.toml changed since

    result = make("run", f"VENV={stub_venv}", f"LOCAL_ML={tmp_path / 'opt_ml'}")

    assert result.returncode == 0, result.stdout + result.stderr
    assert pip_runs(stub_venv) == [RUNTIME_INSTALL, RUNTIME_INSTALL]
    assert result.stdout.startswith("pyproject.toml changed: updating"), result.stdout
    assert "First" not in result.stdout


def test_the_test_lint_and_push_targets_need_the_full_install(stub_venv: Path) -> None:
    # -n: print what would run. Each of them starts with the full install.
    for target in ("test", "test-fast", "lint", "push"):
        result = make("-n", target, f"VENV={stub_venv}")
        assert result.returncode == 0, result.stderr
        assert "-e '.[dev,aws]'" in result.stdout, (target, result.stdout)


# --- make help --------------------------------------------------------------------------------------


def test_help_prints_the_values_of_its_variables() -> None:
    result = make("help", "IMAGE=registry.example/recsys:abc", "PORT=8123", "LOCAL_ML=/tmp/tree")

    assert result.returncode == 0, result.stderr
    assert "$(" not in result.stdout, result.stdout
    assert "build registry.example/recsys:abc with CPU-only torch" in result.stdout
    assert "serve on localhost:8123" in result.stdout
    assert "/tmp/tree" in result.stdout
    assert "recsys:latest" in make("help").stdout


# --- the image's tag, in make and in the README ------------------------------------------------------


def _built_tag(target: str) -> str:
    """The tag that `make TARGET` gives the image: the last ``docker build ... -t TAG .`` it would run."""
    result = make("-n", target)
    assert result.returncode == 0, result.stderr
    commands = result.stdout.replace("\\\n", " ")  # a recipe's continued lines, joined
    tags = re.findall(r"docker build .*?-t (\S+) \.$", commands, re.M)
    assert tags, result.stdout
    return tags[-1]


def test_the_readme_runs_the_tag_that_make_builds() -> None:
    tag = _built_tag("image-cpu")
    assert _built_tag("image") == tag
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    run_tags = re.findall(r"^docker run .*?\s(recsys(?::[\w.-]+)?)\s+(?:train|serve)\b", readme, re.M)
    assert run_tags, "README shows no `docker run ... recsys... train|serve` line"
    normalised = {t if ":" in t else f"{t}:latest" for t in run_tags}
    assert normalised == {tag}, f"README runs {sorted(normalised)}; make image / image-cpu build {tag}"


# --- make serve PORT=... --------------------------------------------------------------------------


def _ping(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


@pytest.mark.slow
def test_serve_listens_on_the_port_it_is_given(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData, tmp_path: Path
) -> None:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "recsys").exists():
        pytest.skip(f"no recsys console script in {venv}/bin (run the tests from the project's .venv)")
    tree = trained_tree(tmp_path_factory, tiny_data)
    port = free_port()
    log = tmp_path / "serve.log"
    # -o STAMP: make takes both install stamps as up to date, whatever their age, so this can never
    # start pip (`make test` has installed this environment already).
    command = ["make", "--no-print-directory", "-C", str(ROOT), f"VENV={venv}"]
    command += ["-o", str(venv / ".installed"), "-o", str(venv / ".installed-runtime")]
    command += ["serve", f"PORT={port}", f"LOCAL_ML={tree}"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_clean_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while _ping(port) != 200:
            assert server.poll() is None, f"make serve exited with {server.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no 200 on /ping at port {port} in 60 s:\n{log.read_text()}"
            time.sleep(0.2)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    output = log.read_text()
    assert "pip install" not in output
    assert f"SAGEMAKER_BIND_TO_PORT={port}" in output
