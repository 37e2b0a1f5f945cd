"""Container image figures: size per tag, and how long `serve` takes from `docker run` to /ping 200.

Run from the repository root, with a Docker engine and the image(s) built (``make image-cpu``)::

    python -m benchmarks.image                              # recsys:latest, 7 cold starts
    python -m benchmarks.image --image recsys:cpu --image recsys:gpu --runs 9   # make image[-cpu] IMAGE=...

For each tag:

* size: ``docker image inspect`` (the uncompressed size that ``docker images`` shows), and the
  layers of 1 MB or more from ``docker history``;
* a model: the bundled synthetic data (``recsys generate-data``) is written and
  ``docker run IMAGE train`` trains on it, both inside the image, in a fresh /opt/ml tree under
  ``benchmarks/.cache/image/<tag>/``, with the default hyperparameters;
* cold start, ``--runs`` times: the clock starts before ``docker run -d ... IMAGE serve`` and stops
  at the first 200 on ``GET /ping`` (polled every 20 ms); the container is removed before the next
  run. The time for ``docker run -d`` alone (container created and started) is shown beside it.
  The container runs without a CPU or memory limit, on whatever cores the host has: the figure
  is serve's own start there, not a serverless endpoint's cold start at a given memory size
  (which also sets its CPU share, and adds provisioning).

The containers run as the calling user (``--user UID:GID``), so that the tree they write stays
removable without root; ``--user ''`` runs them as the image's default user, root, as SageMaker does.

Only the standard library is used on the host; nothing but the Docker CLI is needed. Figures go to
``benchmarks/.cache/image.json`` as well.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / "benchmarks" / ".cache"
RESULTS_FILE = CACHE / "image.json"
PING_TIMEOUT_S = 120.0
POLL_S = 0.02


@dataclass(frozen=True)
class Layer:
    size_bytes: int
    created_by: str


@dataclass(frozen=True)
class ImageFigures:
    tag: str
    size_bytes: int
    layers: list[Layer]
    train_seconds: float
    run_seconds: list[float]
    ping_seconds: list[float]


def _docker(*args: str, timeout: float = 600) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout.strip()


def read_size(tag: str) -> int:
    return int(_docker("image", "inspect", tag, "--format", "{{.Size}}"))


def read_layers(tag: str, min_bytes: int = 1_000_000) -> list[Layer]:
    """The image's layers of at least ``min_bytes``, newest first (as ``docker history`` lists them)."""
    rows = _docker("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", tag)
    layers = []
    for row in rows.splitlines():
        size, _, created_by = row.partition("\t")
        if int(size) >= min_bytes:
            layers.append(Layer(int(size), " ".join(created_by.split()) or "(the base image)"))
    return layers


def calling_user() -> str:
    """``UID:GID`` of this process, for ``docker run --user``."""
    return f"{os.getuid()}:{os.getgid()}"


def _user_flags(user: str) -> list[str]:
    return ["--user", user] if user else []


def train_model(tag: str, tree: Path, user: str) -> float:
    """Bundled data, then `docker run IMAGE train`, in a fresh /opt/ml tree; the training seconds."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    run = ["run", "--rm", *_user_flags(user), "-v", f"{tree.resolve()}:/opt/ml", tag]
    _docker(*run, "recsys", "generate-data", "--output", "/opt/ml/input/data")
    started = time.monotonic()
    _docker(*run, "train", timeout=1800)
    seconds = time.monotonic() - started
    if not (tree / "model" / "manifest.json").exists():
        raise RuntimeError(f"`docker run {tag} train` wrote no model/manifest.json under {tree}")
    return seconds


def _ping_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def cold_start(tag: str, tree: Path, user: str) -> tuple[float, float]:
    """Seconds from `docker run -d` to its return, and to the first 200 on /ping."""
    mount = f"{tree.resolve()}:/opt/ml"
    started = time.monotonic()
    container = _docker("run", "-d", *_user_flags(user), "-p", "127.0.0.1::8080", "-v", mount, tag, "serve")
    run_seconds = time.monotonic() - started
    try:
        port = _docker("port", container, "8080/tcp").splitlines()[0].rsplit(":", 1)[-1]
        url = f"http://127.0.0.1:{port}/ping"
        while not _ping_ok(url):
            if time.monotonic() - started > PING_TIMEOUT_S:
                logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stderr
                raise RuntimeError(f"{tag}: /ping not 200 after {PING_TIMEOUT_S:.0f} s\n{logs[-2000:]}")
            time.sleep(POLL_S)
        return run_seconds, time.monotonic() - started
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=120)


def measure(tag: str, runs: int, user: str) -> ImageFigures:
    tree = CACHE / "image" / tag.replace("/", "_").replace(":", "_") / "opt_ml"
    train_seconds = train_model(tag, tree, user)
    run_seconds, ping_seconds = [], []
    for _ in range(runs):
        to_run, to_ping = cold_start(tag, tree, user)
        run_seconds.append(to_run)
        ping_seconds.append(to_ping)
    return ImageFigures(tag, read_size(tag), read_layers(tag), train_seconds, run_seconds, ping_seconds)


def _spread(values: Sequence[float]) -> str:
    return f"median {statistics.median(values):.2f} s, min {min(values):.2f} s, max {max(values):.2f} s"


def report(figures: ImageFigures) -> str:
    lines = [
        f"== {figures.tag} ==",
        f"size: {figures.size_bytes / 1e9:.2f} GB ({figures.size_bytes:,} bytes)",
        "layers of 1 MB or more (newest first):",
    ]
    for layer in figures.layers:
        lines.append(f"  {layer.size_bytes / 1e6:9.1f} MB  {layer.created_by[:100]}")
    lines += [
        f"train on the bundled data: {figures.train_seconds:.1f} s",
        f"cold start, docker run -> /ping 200 ({len(figures.ping_seconds)} runs): "
        + _spread(figures.ping_seconds),
        f"  of which `docker run -d` returned after: {_spread(figures.run_seconds)}",
        "  each run: " + ", ".join(f"{s:.2f}" for s in figures.ping_seconds),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--image", action="append", help="a tag to measure (repeatable; default recsys:latest)"
    )
    parser.add_argument("--runs", type=int, default=7, help="cold starts per image (default 7)")
    parser.add_argument(
        "--user",
        default=calling_user(),
        help="docker run --user for each container (default: this process's UID:GID; '' for root)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if shutil.which("docker") is None:
        print("no docker client on PATH", file=sys.stderr)
        return 1
    results = []
    for tag in args.image or ["recsys:latest"]:
        figures = measure(tag, args.runs, args.user)
        print(report(figures), flush=True)
        results.append(asdict(figures))
    CACHE.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(results, indent=2) + "\n")
    print(f"figures written to {RESULTS_FILE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
