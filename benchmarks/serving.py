"""Serving throughput and latency: the real server, over loopback, at several catalogue sizes.

Run from the repository root::

    python -m benchmarks.serving                           # 1,682 / 100,000 / 1,000,000 items
    python -m benchmarks.serving --catalogues 1682 --concurrency 1,32 --duration 5 --workers 2

Below 200,000 items (where a job's ``retrieval=auto`` starts to build an item index) each
catalogue is a synthetic GMF artifact (randomly initialised: exact ranking's cost does not depend
on the weights' values), written once under ``benchmarks/.cache/serving/<N>/model`` with
``save_artifact`` and reused afterwards.

From 200,000 items on, an index's recall does depend on the vectors, so the artifact is trained:
``recsys train`` with its defaults (one epoch; ``context_columns=device``) on 4,000,000 generated
interactions of 200,000 users over the catalogue (Zipf popularity, genre tastes, timestamps, a
device per event; ``benchmarks/.cache/serving/<N>-trained/``, built once, about 10 minutes at 1M
items). The job builds the index and measures its recall, as for any user. That artifact is served
twice: first with ``RECSYS_RETRIEVAL=exact`` (the baseline: the whole catalogue ranked per
request), then as deployed (through its index). Both servers answer the top 10 of the same 1,000
users first; the recall@10 of the indexed answers against the exact ones is printed beside the
job's own figure, the index's build time and size.

``python -m recsys serve`` is then started as a child
process exactly as the container starts it (``SAGEMAKER_BASE_DIR``, ``SAGEMAKER_BIND_TO_PORT``,
and ``SAGEMAKER_MODEL_SERVER_WORKERS`` only when ``--workers`` is given), and loaded over
127.0.0.1 at each concurrency (keep-alive connections, for ``--duration`` seconds each) with:

* ``GET /ping``;
* ``POST /invocations`` with ``{"instances":[{"user_id":"<random known user>","k":10}]}``: a
  known user's top 10, their seen items excluded, one instance per request, a different random
  user on every request;
* ``POST /invocations`` "fresh": the same, plus 50 fresh events
  (``{"item_id": ..., "timestamp": ...}``, random items over the last hour) merged with the stored
  history, and ``"context": {"device": ..., "timestamp": ...}``: the request of a live session.

The artifact's model reads what a trained one does: the time features (hour, weekday, time since
the last event), a ``device`` context column and the gaps between history events, and it stores
every user's event times.

The load generator is ``wrk`` (with ``benchmarks/wrk_post.lua``) when it is installed or can be
installed with ``apt-get``; otherwise a small asyncio client with raw HTTP/1.1 keep-alive
connections. Either way it shares the machine's cores with the server, which the figures include.

Printed: req/s, p50 and p99 latency per endpoint and concurrency, the ratio of /invocations to /ping
req/s, the fresh requests' p50 and p99 against the plain ones', and whether the targets hold:

* ``/invocations`` >= 0.55 x ``/ping`` req/s at 32 connections with 1,682 items (issue 11: it keeps
  the ratio it had before requests could carry fresh events);
* p99 < 50 ms at 1,000,000 items through the index, judged at 1 and at 32 connections, with
  recall@10 >= 0.95 against the exact server's answers in the same run;
* fresh requests' p50 and p99 <= 1.5 x the plain requests', at 1,682 items, 1 and 32 connections.

The same numbers go to ``benchmarks/.cache/serving.json``; each server's log to
``benchmarks/.cache/serving/<N>/server.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute
import torch

from recsys.artifact import MANIFEST, Artifact, save_artifact
from recsys.data.context import RowEncoding
from recsys.data.features import FeatureEncoding, empty_arrays
from recsys.data.vocab import Vocabulary
from recsys.models.ncf import NCF, ModelConfig
from recsys.sagemaker.contract import (
    BASE_DIR_ENV,
    BIND_TO_PORT_ENV,
    RETRIEVAL_ENV,
    WORKERS_ENV,
    ContainerPaths,
    default_workers,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = REPO_ROOT / "benchmarks" / ".cache"
RUNS = CACHE / "serving"
RESULTS_FILE = CACHE / "serving.json"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"

NUM_USERS = 1000
EMBEDDING_DIM = 64
HISTORY_LENGTH = 50
SEEN_PER_USER = 20
K = 10
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 600.0  # a 1M-item artifact is checksummed twice and loaded before /ping says 200
STOP_TIMEOUT_S = 45.0  # the server drains in-flight requests for up to 30 s on SIGTERM
WARMUP_S = 2.0

PING_TARGET = (1682, 32, 0.55)  # (items, connections, minimum /invocations : /ping req/s)
P99_TARGET = (1_000_000, (1, 32), 50.0)  # (items, connections judged, p99 limit in ms)
FRESH_TARGET = (1682, (1, 32), 1.5)  # (items, connections judged, most fresh / plain p50 and p99)
INDEX_TARGET = (1_000_000, 0.95)  # (items, least recall@10 of the indexed server's against exact)
FRESH = "/invocations fresh"  # the endpoint label of the fresh-events requests
FRESH_EVENTS = 50
REQUEST_POOL = 2000  # distinct requests each load generator makes up front and draws from
DEVICES = ("desktop", "mobile", "tv")
NOW = 1_780_000_000.0  # the moment of the stored histories' end and of the fresh requests
ROWS = RowEncoding(None, (), (("device", DEVICES),), (), True)


@dataclass(frozen=True)
class LoadResult:
    """One load run of one endpoint at one concurrency."""

    items: int
    endpoint: str
    connections: int
    retrieval: str  # "exact", or "index" (the artifact's item index)
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # connection errors, timeouts and non-2xx responses


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- synthetic artifacts -------------------------------------------------------------------------


def model_config(num_items: int) -> ModelConfig:
    return ModelConfig(
        kind="gmf",
        num_users=NUM_USERS,
        num_items=num_items,
        embedding_dim=EMBEDDING_DIM,
        history_length=HISTORY_LENGTH,
        use_gaps=True,
        context_cardinalities=ROWS.context_cardinalities,
    )


def build_artifact(num_items: int, seed: int = 0) -> Artifact:
    """A randomly initialised GMF with ~20 seen items per user and random popularity."""
    config = model_config(num_items)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    state_dict = NCF(config).state_dict()
    users = Vocabulary.build(f"u{u}" for u in range(NUM_USERS))
    items = Vocabulary.build(f"i{i}" for i in range(num_items))
    counts = rng.integers(SEEN_PER_USER // 2, SEEN_PER_USER * 3 // 2 + 1, size=NUM_USERS)
    counts = np.minimum(counts, num_items)
    seen_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    seen_items = np.concatenate([rng.choice(num_items, size=c, replace=False) for c in counts])
    popularity = rng.zipf(1.5, size=num_items).clip(max=1_000_000).astype(np.int64)
    # A user's events an hour or so apart, the last within the day before NOW.
    cumulative = np.cumsum(rng.exponential(3600.0, size=len(seen_items)))
    within = cumulative - np.repeat(np.concatenate([[0.0], cumulative])[seen_indptr[:-1]], counts)
    last = np.repeat(within[seen_indptr[1:] - 1], counts)
    ends = np.repeat(NOW - rng.uniform(0, 86_400, size=NUM_USERS), counts)
    seen_timestamps = ends - (last - within)
    return Artifact(
        model_config=config,
        state_dict=state_dict,
        users=users,
        items=items,
        item_encoding=FeatureEncoding.empty("item_id"),
        item_arrays=empty_arrays(num_items),
        user_encoding=FeatureEncoding.empty("user_id"),
        user_arrays=empty_arrays(NUM_USERS),
        seen_indptr=seen_indptr,
        seen_items=seen_items.astype(np.int32),
        item_popularity=popularity,
        train_config={"synthetic": True, "benchmark": "serving"},
        metrics={},
        fingerprint={"synthetic": True, "num_items": num_items, "seed": seed},
        seen_timestamps=seen_timestamps,
        feature_encodings={"rows": ROWS.to_json()},
    )


def ensure_artifact(num_items: int) -> ContainerPaths:
    """The SageMaker tree whose ``model/`` holds the artifact of ``num_items`` items (built once)."""
    paths = ContainerPaths(RUNS / str(num_items))
    model_dir = paths.model_dir
    config_file = model_dir / "model_config.json"
    if (
        (model_dir / MANIFEST).exists()
        and config_file.exists()
        and ModelConfig.from_json(json.loads(config_file.read_text())) == model_config(num_items)
    ):
        return paths
    _progress(f"[{num_items:,} items] building the synthetic artifact in {model_dir}")
    started = time.perf_counter()
    save_artifact(build_artifact(num_items), model_dir)
    _progress(f"[{num_items:,} items] artifact written in {time.perf_counter() - started:.1f} s")
    return paths


# Catalogues from this size are served from a model the job trained, with the index the job
# built: an index's recall depends on the vectors it holds, which random weights do not resemble.
TRAINED_FROM = 200_000
TRAINED_USERS = 200_000
TRAINED_INTERACTIONS = 4_000_000
TRAINED_EPOCHS = 1
RECALL_USERS = 1000  # known users whose top 10 the exact and the indexed server both answer


@dataclass(frozen=True)
class Served:
    """A served artifact: its tree, and what its requests may name."""

    paths: ContainerPaths
    items: int
    users: int
    trained: bool


def _renumbered(column: pa.ChunkedArray, prefix: str) -> pa.Array:
    """``u0000123`` (the scaled writer's ids, from 1) -> ``u122``: the load generators' ids."""
    import pyarrow.compute as pc

    numbers = pc.subtract(pc.cast(pc.utf8_slice_codeunits(column, 1), pa.int64()), 1)
    return pc.binary_join_element_wise(prefix, pc.cast(numbers, pa.string()), "")


def _rewrite_for_load(data_dir: Path, seed: int) -> None:
    """Ids as the load generators write them, and a ``device`` column (each user's own mix of
    the three, as a log has it) for the requests' context."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    mixes = rng.dirichlet((5.0, 3.0, 2.0), size=TRAINED_USERS)
    for path in sorted((data_dir / "train").glob("*.parquet")):
        table = pq.read_table(path)
        users = _renumbered(table["user_id"], "u")
        user_numbers = np.asarray(pa.compute.cast(pa.compute.utf8_slice_codeunits(users, 1), pa.int64()))
        cumulative = np.cumsum(mixes[user_numbers], axis=1)
        devices = (rng.random(len(user_numbers))[:, None] > cumulative).sum(axis=1).clip(max=2)
        table = table.set_column(table.schema.get_field_index("user_id"), "user_id", users)
        table = table.set_column(
            table.schema.get_field_index("item_id"), "item_id", _renumbered(table["item_id"], "i")
        )
        table = table.append_column("device", pa.array(np.asarray(DEVICES, dtype=object)[devices]))
        pq.write_table(table, path)
    for channel, column, prefix in (("items", "item_id", "i"), ("users", "user_id", "u")):
        for path in sorted((data_dir / channel).glob("*.parquet")):
            table = pq.read_table(path)
            index = table.schema.get_field_index(column)
            pq.write_table(table.set_column(index, column, _renumbered(table[column], prefix)), path)


def ensure_trained_artifact(num_items: int) -> Served:
    """``recsys train`` with its defaults (``epochs`` aside) on a generated catalogue of
    ``num_items`` items: Zipf popularity, genre tastes, timestamps, a device per event. Built once;
    the job builds the item index and measures its recall, as it does for a user."""
    from recsys.data.synthetic import ScaledSpec, write_scaled_channels

    root = RUNS / f"{num_items}-trained"
    paths = ContainerPaths(root / "opt_ml")
    spec = ScaledSpec(num_users=TRAINED_USERS, num_items=num_items, num_interactions=TRAINED_INTERACTIONS)
    wanted = {**asdict(spec), "epochs": TRAINED_EPOCHS, "context_columns": "device"}
    marker = root / "spec.json"
    served = Served(paths, num_items, TRAINED_USERS, trained=True)
    if marker.exists() and json.loads(marker.read_text()) == wanted and (paths.model_dir / MANIFEST).exists():
        return served
    marker.unlink(missing_ok=True)
    data_dir = root / "data"
    _progress(
        f"[{num_items:,} items] generating {TRAINED_INTERACTIONS:,} interactions of {TRAINED_USERS:,} users"
    )
    write_scaled_channels(spec, data_dir, parts=4)
    _rewrite_for_load(data_dir, spec.seed)
    command = [
        sys.executable, "-m", "recsys", "train", "--base-dir", str(paths.base),
        "--train", str(data_dir / "train"), "--items", str(data_dir / "items"),
        "--users", str(data_dir / "users"),
        "-H", f"epochs={TRAINED_EPOCHS}", "-H", "device=cpu", "-H", "context_columns=device",
    ]  # fmt: skip
    _progress(f"[{num_items:,} items] {' '.join(command[1:])}")
    started = time.perf_counter()
    log_file = root / "train.log"
    with log_file.open("w") as log:
        completed = subprocess.run(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"training the {num_items:,}-item model failed ({completed.returncode}); see {log_file}"
        )
    _progress(f"[{num_items:,} items] trained in {time.perf_counter() - started:.0f} s (log: {log_file})")
    marker.write_text(json.dumps(wanted))
    return served


def retrieval_of(model_dir: Path) -> dict[str, Any]:
    """The manifest's account of the index (built, refused, or none)."""
    manifest = json.loads((model_dir / MANIFEST).read_text())
    return dict(manifest.get("retrieval") or {"kind": "exact", "reason": "no index recorded"})


def top_items(url: str, users: Sequence[int]) -> list[list[str]]:
    """Each user's top K from the server, 100 instances per request."""
    out: list[list[str]] = []
    for start in range(0, len(users), 100):
        body = json.dumps({"instances": [{"user_id": f"u{u}", "k": K} for u in users[start : start + 100]]})
        request = urllib.request.Request(
            f"{url}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            out += [p["item_ids"] for p in json.loads(response.read())["predictions"]]
    return out


def recall_against(found: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(len(t), 1) for f, t in zip(found, truth, strict=True)]))


# -- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class Server:
    """``python -m recsys serve`` as a child process, in its own process group."""

    def __init__(
        self, paths: ContainerPaths, workers: int | None, log_file: Path, *, exact: bool = False
    ) -> None:
        self.port = free_port()
        environ = dict(os.environ)
        environ.pop(RETRIEVAL_ENV, None)
        if exact:
            environ[RETRIEVAL_ENV] = "exact"  # the baseline: the same artifact, its index unused
        environ[BASE_DIR_ENV] = str(paths.base)
        environ[BIND_TO_PORT_ENV] = str(self.port)
        environ.pop(WORKERS_ENV, None)
        if workers is not None:
            environ[WORKERS_ENV] = str(workers)
        self.log_file = log_file
        self._log = log_file.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "recsys", "serve"],
            cwd=REPO_ROOT,
            env=environ,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> float:
        """Seconds until /ping answered 200; raises if the server exits or never gets there."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode} before /ping said 200; "
                    f"see {self.log_file}"
                )
            if _get(f"{self.url}/ping", timeout=2.0) == 200:
                return time.perf_counter() - started
            time.sleep(0.2)
        raise RuntimeError(f"/ping did not say 200 within {timeout:g} s; see {self.log_file}")

    def stop(self) -> int | None:
        """SIGTERM, as SageMaker stops a container; the return code, or None if it had to be killed."""
        code: int | None = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        else:
            code = self.process.returncode
        self._log.close()
        return code


def server_rss_mib(pid: int) -> float:
    """Resident memory of the server process and its children (uvicorn workers), MiB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def invocation_body(user: int) -> bytes:
    return json.dumps({"instances": [{"user_id": f"u{user}", "k": K}]}, separators=(",", ":")).encode()


def fresh_body(user: int, num_items: int, rng: random.Random) -> bytes:
    """A known user's request with ``FRESH_EVENTS`` fresh events over the last hour and a context."""
    stamps = sorted(NOW - rng.uniform(0, 3600) for _ in range(FRESH_EVENTS))
    events = [{"item_id": f"i{rng.randrange(num_items)}", "timestamp": round(t, 1)} for t in stamps]
    instance = {
        "user_id": f"u{user}",
        "k": K,
        "history": events,
        "context": {"device": rng.choice(DEVICES), "timestamp": NOW},
    }
    return json.dumps({"instances": [instance]}, separators=(",", ":")).encode()


def check_invocation(url: str, num_items: int) -> dict[str, Any]:
    """Requests up front: the benchmark must measure known-user top-k (plain, and with fresh events
    merged into the stored ones), not an error or a fallback."""
    out: dict[str, Any] = {}
    for kind, body in (("user", invocation_body(7)), ("history", fresh_body(7, num_items, random.Random(7)))):
        request = urllib.request.Request(
            f"{url}/invocations",
            data=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            prediction = json.loads(response.read())["predictions"][0]
        if prediction.get("kind") != kind or len(prediction.get("item_ids", [])) != K:
            raise RuntimeError(f"unexpected prediction for a known user: {prediction}")
        # All 50 are newer than every stored event, so the merged window of 50 is theirs.
        if kind == "history" and prediction.get("fresh_events") != FRESH_EVENTS:
            raise RuntimeError(f"the fresh events were not the latest of the history: {prediction}")
        out[kind] = prediction
    return out


# -- load generators -----------------------------------------------------------------------------


def find_wrk(install: bool) -> str | None:
    """The wrk binary, installing the Debian package once if allowed and possible."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    _progress("wrk not found: trying `apt-get install -y wrk`")
    completed = subprocess.run(
        ["apt-get", "install", "-y", "wrk"], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        _progress(
            f"apt-get could not install wrk ({completed.stderr.strip()[-200:]}); using the asyncio client"
        )
    return shutil.which("wrk")


WRK_LINE = re.compile(r"^WRK_RESULT (\{.*\})$", re.MULTILINE)


def run_wrk(
    wrk: str,
    url: str,
    endpoint: str,
    connections: int,
    duration: float,
    threads: int,
    num_items: int,
    num_users: int,
) -> dict[str, Any]:
    mode = {"/ping": "ping", FRESH: "fresh"}.get(endpoint, "invocations")
    command = [
        wrk,
        f"--threads={max(1, min(threads, connections))}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration))}s",
        "--timeout=30s",
        "--latency",
        f"--script={WRK_SCRIPT}",
        url,
        "--",
        mode,
        str(num_users),
        str(K),
        str(num_items),
        str(FRESH_EVENTS),
        str(NOW),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, timeout=duration + 120)
    match = WRK_LINE.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout}\n{completed.stderr}")
    raw: dict[str, Any] = json.loads(match.group(1))
    seconds = raw["duration_us"] / 1e6
    errors = sum(
        raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return {
        "requests": raw["requests"],
        "seconds": seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "errors": errors,
    }


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length body; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def _python_load(
    port: int, endpoint: str, connections: int, duration: float, num_items: int, num_users: int
) -> dict[str, Any]:
    """``connections`` keep-alive connections, each sending its next request as soon as the last ends."""
    latencies: list[float] = []
    errors = 0

    def build(rng: random.Random) -> bytes:
        if endpoint == "/ping":
            return f"GET /ping HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
        user = rng.randrange(num_users)
        body = fresh_body(user, num_items, rng) if endpoint == FRESH else invocation_body(user)
        head = (
            f"POST /invocations HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def connection(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while time.perf_counter() < deadline:
                request = pool[rng.randrange(len(pool))]
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                if not 200 <= status < 300:
                    errors += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
        finally:
            writer.close()

    # Requests are made before the clock starts (as wrk_post.lua does): the load generator shares
    # the server's cores, and making 50 fresh events per request would take CPU from the server.
    pool = [build(random.Random(seed)) for seed in range(REQUEST_POOL)]
    deadline = time.perf_counter() + duration
    started = time.perf_counter()
    await asyncio.gather(*(connection(seed) for seed in range(connections)))
    seconds = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "errors": errors,
    }


def measure(
    server: Server,
    wrk: str | None,
    served: Served,
    endpoint: str,
    connections: int,
    duration: float,
    threads: int,
    retrieval: str,
) -> LoadResult:
    items, users = served.items, served.users
    if wrk is not None:
        raw = run_wrk(wrk, server.url, endpoint, connections, duration, threads, items, users)
    else:
        raw = asyncio.run(_python_load(server.port, endpoint, connections, duration, items, users))
    return LoadResult(
        items=items,
        endpoint=endpoint,
        connections=connections,
        retrieval=retrieval,
        requests=raw["requests"],
        seconds=round(raw["seconds"], 3),
        requests_per_second=round(raw["requests"] / raw["seconds"], 1) if raw["seconds"] > 0 else 0.0,
        p50_ms=round(raw["p50_ms"], 3),
        p90_ms=round(raw["p90_ms"], 3),
        p99_ms=round(raw["p99_ms"], 3),
        max_ms=round(raw["max_ms"], 3),
        errors=int(raw["errors"]),
    )


# -- the report ----------------------------------------------------------------------------------


def _find(
    results: Sequence[LoadResult], items: int, endpoint: str, connections: int, retrieval: str | None = None
) -> LoadResult | None:
    """The run of that cell; ``retrieval`` None: the served one (the index where there is one)."""
    matching = [r for r in results if (r.items, r.endpoint, r.connections) == (items, endpoint, connections)]
    if retrieval is not None:
        matching = [r for r in matching if r.retrieval == retrieval]
    else:
        matching.sort(key=lambda r: r.retrieval != "index")
    return matching[0] if matching else None


def ratio(results: Sequence[LoadResult], items: int, connections: int) -> float | None:
    ping = _find(results, items, "/ping", connections, "exact")
    invocations = _find(results, items, "/invocations", connections, "exact")
    if ping is None or invocations is None or ping.requests_per_second == 0:
        return None
    return invocations.requests_per_second / ping.requests_per_second


def judge_index(results: Sequence[LoadResult], indexes: dict[str, Any]) -> dict[str, Any]:
    items, least = INDEX_TARGET
    found = indexes.get(str(items), {})
    job = found.get("job", {})
    measured = found.get("served_recall@10")
    speedups = {}
    for connections in sorted({r.connections for r in results if r.items == items}):
        exact = _find(results, items, "/invocations", connections, "exact")
        index = _find(results, items, "/invocations", connections, "index")
        if exact is not None and index is not None and index.p99_ms > 0:
            speedups[str(connections)] = {
                "exact_p99_ms": exact.p99_ms,
                "index_p99_ms": index.p99_ms,
                "p99_ratio": round(exact.p99_ms / index.p99_ms, 2),
                "req_per_s_ratio": round(index.requests_per_second / max(exact.requests_per_second, 1e-9), 2),
            }
    return {
        "target": f"recall@10 >= {least:g} of the indexed server's top 10 against the exact server's, "
        f"at {items:,} items",
        "served_recall@10": measured,
        "job_recall@10": job.get("recall@10"),
        "search_breadth": job.get("search_breadth"),
        "build_seconds": job.get("build_seconds"),
        "index_bytes": job.get("index_bytes"),
        "against_exact": speedups,
        "holds": None if measured is None else measured >= least,
    }


def judge_targets(results: Sequence[LoadResult], indexes: dict[str, Any]) -> dict[str, Any]:
    items, connections, minimum = PING_TARGET
    measured = ratio(results, items, connections)
    throughput = {
        "target": (
            f"/invocations >= {minimum} x /ping req/s at {connections} connections with {items:,} items"
        ),
        "measured_ratio": None if measured is None else round(measured, 3),
        "holds": None if measured is None else measured >= minimum,
    }
    items, judged, limit = P99_TARGET
    latency: dict[str, Any] = {
        "target": f"/invocations p99 < {limit:g} ms at {items:,} items (through its index)",
        "by_connections": {},
    }
    for connections in judged:
        result = _find(results, items, "/invocations", connections)
        latency["by_connections"][str(connections)] = {
            "p99_ms": None if result is None else result.p99_ms,
            "holds": None if result is None else result.p99_ms < limit,
        }
    return {
        "throughput": throughput,
        "latency": latency,
        "fresh": judge_fresh(results),
        "index": judge_index(results, indexes),
    }


def fresh_ratios(results: Sequence[LoadResult], items: int, connections: int) -> tuple[float, float] | None:
    """(p50, p99) of the fresh requests over the plain known-user ones'."""
    plain = _find(results, items, "/invocations", connections)
    fresh = _find(results, items, FRESH, connections)
    if plain is None or fresh is None or plain.p50_ms <= 0 or plain.p99_ms <= 0:
        return None
    return fresh.p50_ms / plain.p50_ms, fresh.p99_ms / plain.p99_ms


def judge_fresh(results: Sequence[LoadResult]) -> dict[str, Any]:
    items, judged, limit = FRESH_TARGET
    out: dict[str, Any] = {
        "target": f"{FRESH_EVENTS} fresh events + context: p50 and p99 <= {limit:g} x plain known-user "
        f"requests' at {items:,} items",
        "by_connections": {},
    }
    for connections in judged:
        measured = fresh_ratios(results, items, connections)
        out["by_connections"][str(connections)] = {
            "p50_ratio": None if measured is None else round(measured[0], 3),
            "p99_ratio": None if measured is None else round(measured[1], 3),
            "holds": None if measured is None else max(measured) <= limit,
        }
    return out


def _verdict(holds: bool | None) -> str:
    return "not measured" if holds is None else ("HOLDS" if holds else "FAILS")


def print_report(results: Sequence[LoadResult], targets: dict[str, Any], header: str) -> None:
    print(header)
    print()
    line = (
        f"{'items':>9}  {'ranking':>7}  {'conns':>5}  {'/ping req/s':>11}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'/inv req/s':>10}  {'p50 ms':>7}  {'p99 ms':>7}  {'inv/ping':>8}  "
        f"{'fresh req/s':>11}  {'p50 ms':>7}  {'p99 ms':>7}  {'p50 x':>5}  {'p99 x':>5}  {'errors':>6}"
    )
    print(line)
    print("-" * len(line))
    keys = sorted({(r.items, r.retrieval, r.connections) for r in results})
    _, judged, _ = P99_TARGET
    for items, retrieval, connections in keys:
        ping = _find(results, items, "/ping", connections, retrieval)
        inv = _find(results, items, "/invocations", connections, retrieval)
        fresh = _find(results, items, FRESH, connections, retrieval)
        served = _find(results, items, "/invocations", connections)
        judged_row = served is not None and served.retrieval == retrieval
        measured = (
            None
            if ping is None or inv is None or not ping.requests_per_second
            else (inv.requests_per_second / ping.requests_per_second)
        )
        against = None
        if inv is not None and fresh is not None and inv.p50_ms > 0 and inv.p99_ms > 0:
            against = (fresh.p50_ms / inv.p50_ms, fresh.p99_ms / inv.p99_ms)
        mark = " *" if items == P99_TARGET[0] and connections in judged and judged_row else ""
        mark += " +" if (items, connections) == PING_TARGET[:2] else ""
        errors = sum(r.errors for r in (ping, inv, fresh) if r is not None)
        mark += " f" if items == FRESH_TARGET[0] and connections in FRESH_TARGET[1] else ""

        def cells(r: LoadResult | None, width: int) -> str:
            if r is None:
                return f"{'-':>{width}}  {'-':>7}  {'-':>7}"
            return f"{r.requests_per_second:>{width},.0f}  {r.p50_ms:>7.2f}  {r.p99_ms:>7.2f}"

        times = ("-", "-") if against is None else (f"{against[0]:.2f}", f"{against[1]:.2f}")
        print(
            f"{items:>9,}  {retrieval:>7}  {connections:>5}  {cells(ping, 11)}  {cells(inv, 10)}  "
            f"{'-' if measured is None else f'{measured:.2f}':>8}  {cells(fresh, 11)}  "
            f"{times[0]:>5}  {times[1]:>5}  {errors:>6}{mark}"
        )
    print()
    print(
        "+ the row that judges the throughput target; * the rows that judge the p99 target; f the rows "
        "that judge the fresh requests' target (p50 x, p99 x: fresh over plain /invocations)"
    )
    throughput = targets["throughput"]
    measured = throughput["measured_ratio"]
    print(
        f"target: {throughput['target']}: {_verdict(throughput['holds'])}"
        + ("" if measured is None else f" (measured {measured:.2f} x)")
    )
    fresh_target = targets["fresh"]
    for connections, verdict in fresh_target["by_connections"].items():
        shown = (
            ""
            if verdict["holds"] is None
            else f" (p50 {verdict['p50_ratio']:.2f} x, p99 {verdict['p99_ratio']:.2f} x)"
        )
        print(
            f"target: {fresh_target['target']}, judged at {connections} connection(s): "
            f"{_verdict(verdict['holds'])}{shown}"
        )
    index = targets["index"]
    if index["served_recall@10"] is not None:
        size = index["index_bytes"] or 0
        print(
            f"index at {INDEX_TARGET[0]:,} items: built by the job in {index['build_seconds']:.1f} s, "
            f"{size / 2**20:.0f} MiB, search breadth {index['search_breadth']}, recall@10 "
            f"{index['job_recall@10']:.4f} as the job measured it"
        )
        for connections, row in index["against_exact"].items():
            print(
                f"  {connections} connection(s): p99 {row['exact_p99_ms']:.1f} ms exact -> "
                f"{row['index_p99_ms']:.1f} ms indexed ({row['p99_ratio']:.1f}x lower), req/s "
                f"{row['req_per_s_ratio']:.1f}x"
            )
    shown = "" if index["served_recall@10"] is None else f" (measured {index['served_recall@10']:.4f})"
    print(f"target: {index['target']}: {_verdict(index['holds'])}{shown}")
    latency = targets["latency"]
    for connections, verdict in latency["by_connections"].items():
        p99 = verdict["p99_ms"]
        print(
            f"target: {latency['target']}, judged at {connections} connection(s): "
            f"{_verdict(verdict['holds'])}" + ("" if p99 is None else f" (p99 {p99:.2f} ms)")
        )


def _int_list(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--catalogues", type=_int_list, default=[1682, 100_000, 1_000_000], help="item counts"
    )
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 32], help="connection counts")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint and concurrency")
    parser.add_argument(
        "--workers", type=int, default=None, help="SAGEMAKER_MODEL_SERVER_WORKERS (default: the server's own)"
    )
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    parser.add_argument(
        "--wrk-threads", type=int, default=1, help="wrk threads (they share the server's cores)"
    )
    args = parser.parse_args(argv)

    wrk = None if args.tool == "python" else find_wrk(install=True)
    if args.tool == "wrk" and wrk is None:
        parser.error("wrk is not installed and could not be installed")
    tool = "wrk" if wrk is not None else "asyncio client"
    cpu_count = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else default_workers(cpu_count)
    RUNS.mkdir(parents=True, exist_ok=True)

    results: list[LoadResult] = []
    servers: dict[str, Any] = {}
    indexes: dict[str, Any] = {}
    for items in args.catalogues:
        served = (
            ensure_trained_artifact(items)
            if items >= TRAINED_FROM
            else Served(ensure_artifact(items), items, NUM_USERS, trained=False)
        )
        modes = ["exact"]
        if served.trained:
            retrieval = retrieval_of(served.paths.model_dir)
            _progress(f"[{items:,} items] the job's retrieval: {json.dumps(retrieval)}")
            if retrieval.get("index_file"):
                modes.append("index")  # after the exact baseline, on the same artifact
            indexes[str(items)] = {"job": retrieval}
        answers: dict[str, list[list[str]]] = {}
        sample = random.Random(0).sample(range(served.users), min(RECALL_USERS, served.users))
        for mode in modes:
            key = f"{items} {mode}" if served.trained else str(items)
            log_file = (
                served.paths.base.parent / f"server-{mode}.log"
                if served.trained
                else served.paths.base / "server.log"
            )
            server = Server(served.paths, args.workers, log_file, exact=served.trained and mode == "exact")
            try:
                ready_s = server.wait_ready()
                check_invocation(server.url, items)
                rss = server_rss_mib(server.process.pid)
                _progress(
                    f"[{items:,} items, {mode}] server ready in {ready_s:.1f} s on port {server.port}, "
                    f"RSS {rss:.0f} MiB"
                )
                if served.trained:
                    answers[mode] = top_items(server.url, sample)
                # Warm-up, not recorded: first requests pay for lazy imports, allocator growth, thread pools.
                measure(
                    server,
                    wrk,
                    served,
                    "/invocations",
                    max(args.concurrency),
                    WARMUP_S,
                    args.wrk_threads,
                    mode,
                )
                for connections in args.concurrency:
                    for endpoint in ("/ping", "/invocations", FRESH):
                        result = measure(
                            server, wrk, served, endpoint, connections, args.duration, args.wrk_threads, mode
                        )
                        results.append(result)
                        _progress(
                            f"[{items:,} items, {mode}] {endpoint:<12} c={connections:<3} "
                            f"{result.requests_per_second:>9,.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
                            f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                        )
                servers[key] = {"ready_seconds": round(ready_s, 2), "rss_mib_after_load": round(rss, 1)}
            finally:
                code = server.stop()
                _progress(f"[{items:,} items, {mode}] server stopped (exit code {code})")
                if key in servers:
                    servers[key]["exit_code"] = code
        if "index" in answers:
            measured = recall_against(answers["index"], answers["exact"])
            indexes[str(items)]["served_recall@10"] = round(measured, 4)
            indexes[str(items)]["recall_users"] = len(sample)
            _progress(
                f"[{items:,} items] recall@10 of the indexed server against the exact one: {measured:.4f}"
            )

    targets = judge_targets(results, indexes)
    header = (
        f"Serving benchmark: GMF (D={EMBEDDING_DIM}, time and device context; {NUM_USERS:,} users "
        f"and random weights under {TRAINED_FROM:,} items, a trained model of {TRAINED_USERS:,} users "
        f"from there), "
        f"top-{K} for a random known user, plain or with {FRESH_EVENTS} fresh events and a context, "
        f"one instance per request; {tool} over {HOST} keep-alive, {args.duration:g} s per cell; "
        f"{workers} worker(s){' (default)' if args.workers is None else ''} on {cpu_count} CPU(s), "
        f"load generator on the same machine."
    )
    print_report(results, targets, header)
    report = {
        "tool": tool,
        "duration_seconds": args.duration,
        "workers": workers,
        "workers_default": args.workers is None,
        "cpu_count": cpu_count,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "num_users": NUM_USERS,
        "embedding_dim": EMBEDDING_DIM,
        "k": K,
        "servers": servers,
        "results": [asdict(r) for r in results],
        "invocations_to_ping_ratios": {
            f"{items} items, {connections} connections": None if value is None else round(value, 3)
            for items, connections in sorted({(r.items, r.connections) for r in results})
            for value in [ratio(results, items, connections)]
        },
        "indexes": indexes,
        "targets": targets,
    }
    RESULTS_FILE.write_text(json.dumps(report, indent=1))
    _progress(f"wrote {RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
