"""Shared by every test under tests/container/: is there a Docker engine, and the CPU image built once.

Container tests skip, saying why, where no engine answers. CI sets RECSYS_REQUIRE_DOCKER=1 so that
a missing engine (or RECSYS_SKIP_CONTAINER) fails the run instead of passing it silently.
The image is the CPU variant, built by `make image-cpu` as an engineer builds it; its torch wheel
is fetched into docker/wheels/ with pip first (PyTorch's CPU index may be out of reach). BASE_IMAGE
picks the base (e.g. local/bookworm-python:latest where Docker Hub is out of reach).
Containers that write into a host tree run as the calling user (``docker_user()``), as
`make local-train` runs them, so that the tree stays removable without root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
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


def base_image() -> str:
    return os.environ.get("BASE_IMAGE", DEFAULT_BASE_IMAGE)


def docker_user() -> str:
    """``UID:GID`` of this process, for ``docker run --user``: what `make local-train` passes."""
    return f"{os.getuid()}:{os.getgid()}"


def make_env() -> dict[str, str]:
    """The environment for a `make` subprocess, without what a parent make would pass down."""
    steer = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")
    return {k: v for k, v in os.environ.items() if k not in steer}


def build_cpu_image(tag: str = CPU_TAG) -> str:
    """`make image-cpu IMAGE=tag`; its output is shown only when it fails."""
    fetch_cpu_torch_wheel()
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT),
            "image-cpu",
            f"IMAGE={tag}",
            f"BASE_IMAGE={base_image()}",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=make_env(),
    )
    if result.returncode != 0:
        pytest.fail(
            f"make image-cpu failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}", pytrace=False
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


# A uid with no passwd entry in the image and no home: `docker run --user 12345:12345`.
ARBITRARY_USER = "12345:12345"
ARBITRARY_UID = 12345


def _hand_over(tree: Path, uid: int) -> None:
    """Make ``tree`` the given uid's: chown where this process may, else open it to everyone."""
    paths = [tree, *tree.rglob("*")]
    for path in paths:
        if os.getuid() == 0:
            os.chown(path, uid, uid)
        else:
            path.chmod(0o777 if path.is_dir() else 0o666)


def give_back(image: str, tree: Path) -> None:
    """Files a container wrote as another user, chowned back to this process's user (through the
    image, as root) so that pytest can remove them; nothing to do when this process is root."""
    if os.getuid() != 0:
        subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "-v",
                f"{tree}:/opt/ml",
                image,
                "chown",
                "-R",
                docker_user(),
                "/opt/ml",
            ],
            capture_output=True,
            timeout=120,
        )


@pytest.fixture(scope="session")
def arbitrary_user_tree(
    cpu_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    """A tree made for uid 12345 and `docker run --user 12345:12345 IMAGE train` run in it: the tree
    and the run's result (the tests assert on both)."""
    from recsys.data.synthetic import SyntheticSpec, generate, write_channels

    tree = tmp_path_factory.mktemp("uid_opt_ml")
    write_channels(
        generate(SyntheticSpec(num_users=60, num_items=30, mean_interactions_per_user=10)),
        tree / "input" / "data",
    )
    (tree / "input" / "config").mkdir(parents=True)
    (tree / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"epochs": "1", "embedding_dim": "8"})
    )
    _hand_over(tree, ARBITRARY_UID)
    result = subprocess.run(
        ["docker", "run", "--rm", "--user", ARBITRARY_USER, "-v", f"{tree}:/opt/ml", cpu_image, "train"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    yield tree, result
    give_back(cpu_image, tree)
