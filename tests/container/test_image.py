"""The image, built and run for real: `train` on a local /opt/ml tree, then `serve` from it.

Needs a Docker engine; conftest.py builds the CPU image once and says when and why these skip.
Containers that write into a host tree run as the calling user, as `make local-train` runs them;
SageMaker's way, root, and an arbitrary uid with no passwd entry are tested on their own.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsys.data.synthetic import SyntheticSpec, generate, write_channels
from tests.container.conftest import ARBITRARY_UID, ARBITRARY_USER, docker_user, give_back

pytestmark = pytest.mark.slow  # Docker builds and containers


@pytest.fixture(scope="module")
def trained_tree(cpu_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("opt_ml")
    data = generate(SyntheticSpec(num_users=150, num_items=60, mean_interactions_per_user=12))
    write_channels(data, base / "input" / "data")
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"epochs": "2"}))
    result = subprocess.run(
        ["docker", "run", "--rm", "--user", docker_user(), "-v", f"{base}:/opt/ml", cpu_image, "train"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return base


def test_no_argument_prints_usage(cpu_image: str) -> None:
    result = subprocess.run(["docker", "run", "--rm", cpu_image], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "docker run IMAGE train" in result.stdout


def test_train_writes_the_artifact_and_success(trained_tree: Path) -> None:
    assert (trained_tree / "model" / "manifest.json").exists()
    assert (trained_tree / "output" / "success").exists()


def test_a_bad_tree_fails_with_a_failure_file(cpu_image: str, tmp_path: Path) -> None:
    (tmp_path / "input" / "data").mkdir(parents=True)
    result = subprocess.run(
        ["docker", "run", "--rm", "--user", docker_user(), "-v", f"{tmp_path}:/opt/ml", cpu_image, "train"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "'train' is missing" in (tmp_path / "output" / "failure").read_text()


def test_prepare_runs_the_processing_contract_and_its_output_trains(cpu_image: str, tmp_path: Path) -> None:
    """`docker run IMAGE prepare ARGS`, as a Processing job runs it: raw logs under
    /opt/ml/processing/input, channels out, the launcher (recsys/aws) absent from the image."""
    data = generate(SyntheticSpec(num_users=150, num_items=60, mean_interactions_per_user=12))
    write_channels(data, tmp_path / "raw")
    processing = tmp_path / "processing"
    (processing / "input").mkdir(parents=True)
    (tmp_path / "raw" / "train").rename(processing / "input" / "interactions")
    (tmp_path / "raw" / "items").rename(processing / "input" / "items")
    args = ["--min-user-interactions", "3", "--rating-column", "rating", "--min-rating", "2"]
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--user",
            docker_user(),
            "-v",
            f"{tmp_path}:/opt/ml",
            cpu_image,
            "prepare",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    output = processing / "output"
    for name in ("train", "validation", "test", "items"):
        assert (output / name / "part-00000.parquet").exists(), name
    steps = json.loads((output / "report" / "data_report.json").read_text())["steps"]
    assert steps[0]["rows"] == len(data.interactions)
    listed = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            cpu_image,
            "python",
            "-c",
            "import importlib.util as u; print(u.find_spec('recsys.aws'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.stdout.strip() == "None", listed.stdout + listed.stderr
    # A bad setting: exit 1, and the reason in output/message (the job's ExitMessage).
    bad = subprocess.run(
        ["docker", "run", "--rm", "--user", docker_user(), "-v", f"{tmp_path}:/opt/ml", cpu_image, "prepare",
         "--item-column", "movie"],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "'movie'" in (tmp_path / "output" / "message").read_text()


def _start_serving(image: str, tree: Path, *options: str) -> str:
    """``docker run -d IMAGE serve`` on a free loopback port with ``tree`` as /opt/ml; its id."""
    command = [
        "docker",
        "run",
        "-d",
        *options,
        "-p",
        "127.0.0.1::8080",
        "-v",
        f"{tree}:/opt/ml",
        image,
        "serve",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def _published_port(container: str) -> str:
    """The host port Docker published the container's 8080 on."""
    found = subprocess.run(
        ["docker", "port", container, "8080/tcp"], capture_output=True, text=True, check=True
    )
    return found.stdout.split(":")[-1].strip()


@pytest.fixture()
def server(cpu_image: str, trained_tree: Path) -> Iterator[tuple[str, str]]:
    container = _start_serving(cpu_image, trained_tree)
    try:
        port = _published_port(container)
        yield container, f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)


def _wait_for_ping(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/ping never answered 200")


def test_serve_answers_and_stops_cleanly_on_sigterm(server: tuple[str, str]) -> None:
    container, url = server
    _wait_for_ping(url)
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps({"user_id": "u0001", "k": 3}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = json.loads(response.read())
    assert len(body["predictions"][0]["item_ids"]) == 3
    subprocess.run(["docker", "stop", "-t", "30", container], check=True, capture_output=True, timeout=60)
    state = subprocess.run(
        ["docker", "inspect", container, "--format", "{{.State.ExitCode}}"], capture_output=True, text=True
    ).stdout.strip()
    assert state == "0"


def test_train_as_root_as_sagemaker_runs_it(cpu_image: str, tmp_path: Path) -> None:
    """No --user: the image's default user, root, which is how SageMaker runs `train`."""
    write_channels(
        generate(SyntheticSpec(num_users=60, num_items=30, mean_interactions_per_user=10)),
        tmp_path / "input" / "data",
    )
    (tmp_path / "input" / "config").mkdir(parents=True)
    (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps({"epochs": "1"}))
    try:
        result = subprocess.run(
            ["docker", "run", "--rm", "-v", f"{tmp_path}:/opt/ml", cpu_image, "train"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert (tmp_path / "model" / "manifest.json").stat().st_uid == 0
        assert (tmp_path / "output" / "success").exists()
    finally:
        give_back(cpu_image, tmp_path)


def test_an_arbitrary_uid_without_a_home_trains(
    arbitrary_user_tree: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    tree, result = arbitrary_user_tree
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    written = list((tree / "model").rglob("*"))
    assert written and all(path.stat().st_uid == ARBITRARY_UID for path in written)
    assert (tree / "output" / "success").stat().st_uid == ARBITRARY_UID
    # matplotlib found a writable config directory (HOME and MPLCONFIGDIR under /tmp), rather than
    # falling back, with a warning, to a fresh temporary one in every process.
    assert "Matplotlib created a temporary" not in log, log[-4000:]
    assert "Permission denied" not in log, log[-4000:]


def test_an_arbitrary_uid_without_a_home_serves(
    cpu_image: str, arbitrary_user_tree: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    tree, trained = arbitrary_user_tree
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    container = _start_serving(cpu_image, tree, "--user", ARBITRARY_USER)
    try:
        port = _published_port(container)
        _wait_for_ping(f"http://127.0.0.1:{port}")
        logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True, timeout=60)
        assert "Matplotlib created a temporary" not in logs.stdout + logs.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
