"""Shared by every test under tests/container/: is there a Docker engine, and the CPU image built once.

Container tests skip, saying why, where no engine answers. CI sets RECSYS_REQUIRE_DOCKER=1 so that
a missing engine (or RECSYS_SKIP_CONTAINER) fails the run instead of passing it silently.
The image is the CPU variant; its torch wheel is fetched into docker/wheels/ with pip first
(PyTorch's CPU index may be out of reach). BASE_IMAGE picks the base (e.g.
local/bookworm-python:latest where Docker Hub is out of reach).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU_TAG = "recsys:test-cpu"
TORCH_VERSION = "2.13.0"
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"


def docker_unavailable_reason() -> str | None:
    """Why no container test can run here, or None when a Docker engine answers."""
    if os.environ.get("RECSYS_SKIP_CONTAINER"):
        return "RECSYS_SKIP_CONTAINER is set"
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 30 s"
    if probe.returncode != 0:
        detail = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "docker info failed"
        return f"no Docker engine answers ({detail})"
    return None


def docker_required() -> bool:
    return os.environ.get("RECSYS_REQUIRE_DOCKER", "") not in ("", "0")


def skip_or_fail(reason: str) -> None:
    """Skip with the reason; fail instead where CI asked for the container tests."""
    if docker_required():
        pytest.fail(f"RECSYS_REQUIRE_DOCKER is set but {reason}", pytrace=False)
    pytest.skip(f"container tests skipped: {reason}")


def fetch_cpu_torch_wheel() -> None:
    """Put the CPU torch wheel into docker/wheels/ unless one is there (the Dockerfile installs it)."""
    wheels = ROOT / "docker" / "wheels"
    if list(wheels.glob("torch-*.whl")):
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"torch=={TORCH_VERSION}",
            "-d",
            str(wheels),
        ],
        check=True,
    )


def build_cpu_image(tag: str = CPU_TAG) -> str:
    fetch_cpu_torch_wheel()
    base = os.environ.get("BASE_IMAGE", DEFAULT_BASE_IMAGE)
    subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--platform",
            "linux/amd64",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            "TORCH_VARIANT=cpu",
            "-t",
            tag,
            str(ROOT),
        ],
        check=True,
        timeout=1200,
    )
    return tag


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Skip (or, under RECSYS_REQUIRE_DOCKER, fail) the test where no Docker engine answers."""
    reason = docker_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture(scope="session")
def cpu_image(docker_engine: None) -> str:
    """The CPU image, built once per session; its tag."""
    return build_cpu_image()
