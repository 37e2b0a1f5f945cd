"""The Makefile's Docker targets against a real engine: `make image-cpu`, `make local-train`,
`make local-serve`.

conftest.py builds the image with `make image-cpu` once per session and says when these skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.container.conftest import (
    ARBITRARY_USER,
    ROOT,
    base_image,
    docker_user,
    make_env,
)

pytestmark = pytest.mark.slow  # Docker builds and containers

STAGE_LABEL = "recsys.stage=torch-cpu"


def make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=make_env(),
    )


def docker(*args: str, timeout: float = 120) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=timeout
    ).stdout.strip()


# --- make image-cpu -------------------------------------------------------------------------------


def test_image_cpu_leaves_no_dangling_torch_stage(cpu_image: str) -> None:
    # The stage's image, as the session's `make image-cpu` left it: built again, from the cache.
    stage = docker(
        "build", "-q", "--platform", "linux/amd64", "--build-arg", f"BASE_IMAGE={base_image()}",
        "--build-arg", "TORCH_VARIANT=cpu", "--target", "torch-cpu", str(ROOT),
        timeout=600,
    )  # fmt: skip
    dangling = docker("images", "-q", "--no-trunc", "-f", "dangling=true").split()
    assert stage not in dangling, f"the torch-cpu stage {stage} is left as a dangling <none> image"
    assert docker("images", "-q", "-f", "dangling=true", "-f", f"label={STAGE_LABEL}") == ""


# --- make local-train -------------------------------------------------------------------------------


def test_local_train_writes_the_tree_as_the_calling_user(cpu_image: str, tmp_path: Path) -> None:
    tree = tmp_path / "opt_ml"

    result = make("local-train", f"IMAGE={cpu_image}", f"LOCAL_ML={tree}")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"--user {docker_user()}" in result.stdout
    written = [tree / "input" / "data", *(tree / "model").iterdir(), tree / "output" / "success"]
    assert all(path.stat().st_uid == os.getuid() for path in written)
    shutil.rmtree(tree)  # what `make run` and `make local-train` do first, as this user


# --- make local-serve -------------------------------------------------------------------------------


@pytest.fixture()
def container_name() -> Iterator[str]:
    name = f"recsys-test-local-serve-{os.getpid()}"
    yield name
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def test_local_serve_as_another_user_on_the_given_port(
    cpu_image: str,
    arbitrary_user_tree: tuple[Path, subprocess.CompletedProcess[str]],
    container_name: str,
) -> None:
    tree, trained = arbitrary_user_tree
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    port = free_port()

    result = make(
        "local-serve", f"IMAGE={cpu_image}", f"LOCAL_ML={tree}", f"PORT={port}",
        f"SERVE_CONTAINER={container_name}", f"DOCKER_USER={ARBITRARY_USER}",
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The example request's answer, printed by make.
    answer = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    assert len(json.loads(answer)["predictions"][0]["item_ids"]) == 5
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
        assert response.status == 200
    assert docker("inspect", container_name, "--format", "{{.Config.User}}") == ARBITRARY_USER


@pytest.fixture(params=["a listening socket", "another container"])
def taken_port(request: pytest.FixtureRequest, cpu_image: str) -> Iterator[int]:
    """A port on 127.0.0.1 that something already holds."""
    port = free_port()
    if request.param == "a listening socket":
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            yield port
    else:
        holder_id = docker("run", "-d", "--rm", "-p", f"127.0.0.1:{port}:8080", cpu_image, "sleep", "300")
        try:
            yield port
        finally:
            subprocess.run(["docker", "rm", "-f", holder_id], capture_output=True, timeout=60)


def test_local_serve_names_a_taken_port_and_how_to_pick_another(
    cpu_image: str, taken_port: int, container_name: str, tmp_path: Path
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{}")  # never read: the port is checked first

    result = make(
        "local-serve", f"IMAGE={cpu_image}", f"LOCAL_ML={tmp_path}", f"PORT={taken_port}",
        f"SERVE_CONTAINER={container_name}",
    )  # fmt: skip

    assert result.returncode != 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert f"port {taken_port} " in lines[0]
    assert "make local-serve PORT=" in lines[0]
    assert "Bind for" not in result.stdout + result.stderr
    listed = docker("ps", "-a", "-q", "-f", f"name=^{container_name}$")
    assert listed == "", "no container should have been created"
