"""Soak: the real server under steady mixed load for minutes; errors, latency and memory over time.

Run from the repository root::

    python -m benchmarks.soak                    # 3 minutes at 70% of the measured maximum rate
    python -m benchmarks.soak --duration 30 --window 10

The model is trained once on the bundled synthetic data (``recsys generate-data``'s tables:
item genres, price and release year, a users table, event types, a ``device`` context column) under
``benchmarks/.cache/soak/``, so that every request kind below has something real to touch.
``python -m recsys serve`` is started as the container starts it (``benchmarks.serving.Server``,
the server's default worker count unless ``--workers``).

First the maximum rate is measured, briefly (``--probe`` seconds, closed loop on ``--connections``
keep-alive connections, the same mix of requests). Then the soak sends ``--load`` (0.7) of it, paced,
for ``--duration`` seconds, a mix of:

* a known user's top 10; a new user with a history of item ids; a known user's 20 fresh events
  with times, event types and a context (device, timestamp); a candidates list (``items``) to rank;
  filters on a genre and a price range (with ``exclude``);
* a few bad requests (about 4%): invalid JSON, k=0, an unsupported Content-Type, an Accept the
  server cannot answer. Each must get its own 4xx (400, 400, 415, 406).

Printed per ``--window`` (30 s): requests, rate, errors (a good request that did not get 200, a bad
one that did not get its 4xx, a broken connection), p50 and p99 of the good requests, and the RSS
of every server process (master and workers, from ``/proc``). The first ``--warmup`` seconds are
load too, not recorded; the RSS at their end is the baseline.

Then ``--heavy-rounds`` (5) rounds of the heaviest requests the default limits admit, one after
another on one connection: 100,000 known users in one request (a 30 MB answer), 2,000 new users
with 100-item histories, 200 known users with 500 fresh events each (about 4 MB). The RSS of each
server process is read 1.5 s after each round, so that a leak (growth every round) shows apart
from the footprint of the largest request (growth once, then flat).

Targets, with a verdict: 0 errors; each process's RSS at the end of the soak within 10% of its
baseline; over the second half of the heavy rounds, each process's RSS grows by at most 5% (the
largest request's footprint is set in the first rounds; a leak would grow it every round).
Figures also go to ``benchmarks/.cache/soak.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import CACHE, HOST, REPO_ROOT, Server, _progress, _read_response
from recsys.artifact import MANIFEST
from recsys.data.synthetic import SyntheticSpec, generate, write_channels
from recsys.sagemaker.contract import ContainerPaths, default_workers

RUN_DIR = CACHE / "soak"
RESULTS_FILE = CACHE / "soak.json"
SPEC = SyntheticSpec()  # 1,000 users, 400 items, ~30,000 interactions: trains in well under a minute
EPOCHS = 3
RSS_TARGET = 0.10  # most growth of a process's RSS after warm-up
HEAVY_RSS_TARGET = 0.05  # most growth of a process's RSS over the second half of the heavy rounds
REQUEST_POOL = 400  # distinct requests of each kind, made before the clock starts
RSS_EVERY_S = 5.0
GOOD_KINDS = {
    "user": 40,
    "new user + history": 15,
    "fresh events + context": 20,
    "candidates": 10,
    "filters": 11,
}
BAD_KINDS = {"invalid JSON": 1, "k=0": 1, "unsupported Content-Type": 1, "unanswerable Accept": 1}


# -- the model -----------------------------------------------------------------------------------


def ensure_model() -> ContainerPaths:
    """The tree whose ``model/`` holds a job's artifact on the synthetic data (trained once)."""
    paths = ContainerPaths(RUN_DIR / "opt_ml")
    marker = RUN_DIR / "spec.json"
    wanted = {**asdict(SPEC), "epochs": EPOCHS}
    if marker.exists() and json.loads(marker.read_text()) == wanted and (paths.model_dir / MANIFEST).exists():
        return paths
    marker.unlink(missing_ok=True)
    data_dir = RUN_DIR / "data"
    write_channels(generate(SPEC), data_dir)
    command = [
        sys.executable, "-m", "recsys", "train", "--base-dir", str(paths.base),
        "--train", str(data_dir / "train"), "--items", str(data_dir / "items"),
        "--users", str(data_dir / "users"),
        "-H", f"epochs={EPOCHS}", "-H", "context_columns=device",
    ]  # fmt: skip
    _progress(f"training the soak model: {' '.join(command[1:])}")
    log_file = RUN_DIR / "train.log"
    with log_file.open("w") as log:
        code = subprocess.run(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False
        ).returncode
    if code != 0:
        raise RuntimeError(f"training the soak model failed ({code}); see {log_file}")
    marker.write_text(json.dumps(wanted))
    return paths


@dataclass(frozen=True)
class Catalogue:
    users: list[str]
    items: list[str]
    genres: list[str]
    event_types: list[str]
    devices: list[str]


def read_catalogue(paths: ContainerPaths) -> Catalogue:
    from recsys.serving.engine import Recommender

    engine = Recommender.load(paths.model_dir)
    genres = engine.attributes["genres"].values or {}
    devices = dict(engine.rows.categorical).get("device", ())
    return Catalogue(
        users=list(engine.artifact.users.ids),
        items=list(engine.artifact.items.ids),
        genres=sorted(genres),
        event_types=list(engine.rows.event_types),
        devices=list(devices),
    )


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    kind: str
    raw: bytes  # the whole HTTP/1.1 request
    expected: int


def _http(
    port: int, body: bytes, content_type: str = "application/json", accept: str = "application/json"
) -> bytes:
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Accept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _instance_body(instance: dict[str, Any]) -> bytes:
    return json.dumps({"instances": [instance]}, separators=(",", ":")).encode()


def build_request(kind: str, port: int, catalogue: Catalogue, rng: random.Random) -> Request:
    """One request of ``kind``, random within it."""
    now = time.time()
    user = rng.choice(catalogue.users)
    items = catalogue.items
    if kind == "user":
        return Request(kind, _http(port, _instance_body({"user_id": user, "k": 10})), 200)
    if kind == "new user + history":
        history = rng.sample(items, 8)
        return Request(kind, _http(port, _instance_body({"history": history, "k": 10})), 200)
    if kind == "fresh events + context":
        stamps = sorted(now - rng.uniform(0, 3600) for _ in range(20))
        events = [
            {
                "item_id": rng.choice(items),
                "timestamp": round(t, 1),
                "event_type": rng.choice(catalogue.event_types),
            }
            for t in stamps
        ]
        context = {"device": rng.choice(catalogue.devices), "timestamp": now}
        body = _instance_body({"user_id": user, "history": events, "context": context, "k": 10})
        return Request(kind, _http(port, body), 200)
    if kind == "candidates":
        return Request(
            kind, _http(port, _instance_body({"user_id": user, "items": rng.sample(items, 50)})), 200
        )
    if kind == "filters":
        instance = {
            "user_id": user,
            "k": 10,
            "filter": {"genres": [rng.choice(catalogue.genres)], "price": {"max": rng.uniform(5, 50)}},
            "exclude": rng.sample(items, 5),
        }
        return Request(kind, _http(port, _instance_body(instance)), 200)
    if kind == "invalid JSON":
        return Request(kind, _http(port, b'{"instances": [{"user_id": '), 400)
    if kind == "k=0":
        return Request(kind, _http(port, _instance_body({"user_id": user, "k": 0})), 400)
    if kind == "unsupported Content-Type":
        return Request(kind, _http(port, b"<user>u1</user>", content_type="application/xml"), 415)
    if kind == "unanswerable Accept":
        return Request(kind, _http(port, _instance_body({"user_id": user}), accept="image/png"), 406)
    raise ValueError(f"unknown request kind {kind!r}")


def request_pool(port: int, catalogue: Catalogue, seed: int) -> list[Request]:
    """The mix, by weight: REQUEST_POOL requests per unit of weight would be too many; each kind
    gets REQUEST_POOL distinct requests and is drawn by its weight."""
    rng = random.Random(seed)
    weights = {**GOOD_KINDS, **BAD_KINDS}
    kinds = [kind for kind, weight in weights.items() for _ in range(weight)]
    return [build_request(rng.choice(kinds), port, catalogue, rng) for _ in range(REQUEST_POOL * 10)]


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Window:
    """What happened in one stretch of the soak."""

    start_s: float
    seconds: float
    good: int = 0
    bad: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    rss_mib: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        ms = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        total = self.good + self.bad
        return {
            "start_s": round(self.start_s, 1),
            "requests": total,
            "req_per_s": round(total / self.seconds, 1) if self.seconds > 0 else 0.0,
            "bad_requests": self.bad,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "rss_mib": self.rss_mib,
        }


def process_rss_mib(pid: int) -> dict[str, float]:
    """RSS of the server's master and each worker (its children), MiB, from /proc."""
    pids = {"master": pid}
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        # multiprocessing's resource tracker is a child too, beside the uvicorn workers.
        role = "resource tracker" if b"resource_tracker" in command else "worker"
        pids[f"{role} {child}"] = int(child)
    out: dict[str, float] = {}
    for name, process in pids.items():
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return out


async def drive(
    port: int,
    pool: Sequence[Request],
    *,
    connections: int,
    seconds: float,
    rate: float | None,
    window_s: float,
    server_pid: int,
    on_window: Any = None,
) -> list[Window]:
    """``connections`` keep-alive connections for ``seconds``: closed loop (``rate`` None: each sends
    its next request when the last is answered) or paced at ``rate`` req/s in all."""
    started = time.perf_counter()
    deadline = started + seconds
    windows: list[Window] = []

    last = max(0, math.ceil(seconds / window_s) - 1)

    def window_at(now: float) -> Window:
        # A request answered after the deadline belongs to the last window, not a new one.
        index = min(int((now - started) // window_s), last)
        while len(windows) <= index:
            begin = len(windows) * window_s
            windows.append(Window(begin, min(window_s, seconds - begin)))
        return windows[index]

    def record(request: Request, status: int | None, latency_s: float, now: float) -> None:
        window = window_at(now)
        if request.expected == 200:
            window.good += 1
            window.latencies_ms.append(latency_s * 1000)
        else:
            window.bad += 1
        if status != request.expected:
            window.errors += 1
            label = f"{request.kind}: {status}"
            window.error_kinds[label] = window.error_kinds.get(label, 0) + 1

    async def connection(seed: int) -> None:
        rng = random.Random(seed)
        interval = connections / rate if rate else 0.0
        next_send = started + rng.uniform(0, interval)
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while True:
                if interval:
                    delay = next_send - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_send += interval
                if time.perf_counter() >= deadline:
                    break
                request = pool[rng.randrange(len(pool))]
                sent = time.perf_counter()
                try:
                    writer.write(request.raw)
                    status: int | None = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status = None
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                now = time.perf_counter()
                record(request, status, now - sent, now)
        finally:
            writer.close()

    async def sample_rss() -> None:
        while time.perf_counter() < deadline:
            window_at(time.perf_counter()).rss_mib = process_rss_mib(server_pid)
            await asyncio.sleep(RSS_EVERY_S)

    async def report_windows() -> None:
        reported = 0
        while True:
            done = int((time.perf_counter() - started) // window_s)
            while reported < min(done, len(windows), last) and on_window is not None:
                on_window(windows[reported])
                reported += 1
            if time.perf_counter() >= deadline:
                return
            await asyncio.sleep(0.5)

    await asyncio.gather(*(connection(seed) for seed in range(connections)), sample_rss(), report_windows())
    if windows:
        windows[-1].rss_mib = process_rss_mib(server_pid)
        if on_window is not None:
            on_window(windows[-1])  # report_windows stops at the deadline, before the last
    return windows


def print_window(window: Window) -> None:
    row = window.summary()
    rss = "  ".join(f"{name} {mib:.0f}" for name, mib in row["rss_mib"].items())
    errors = f"{row['errors']}" + (f" {row['error_kinds']}" if row["error_kinds"] else "")
    print(
        f"{row['start_s']:>7.0f}  {row['requests']:>8,}  {row['req_per_s']:>7.1f}  {row['bad_requests']:>5}  "
        f"{errors:>6}  {row['p50_ms']:>7.2f}  {row['p99_ms']:>7.2f}  RSS MiB: {rss}",
        flush=True,
    )


# -- the run -------------------------------------------------------------------------------------


def heavy_bodies(catalogue: Catalogue, rng: random.Random) -> dict[str, bytes]:
    """The heaviest requests of each kind that the default limits (6 MB, 100,000 instances) admit."""
    now = time.time()
    items = catalogue.items

    def body(instances: list[dict[str, Any]]) -> bytes:
        return json.dumps({"instances": instances}, separators=(",", ":")).encode()

    def events(count: int) -> list[dict[str, Any]]:
        stamps = sorted(now - rng.uniform(0, 86_400) for _ in range(count))
        return [{"item_id": rng.choice(items), "timestamp": round(t)} for t in stamps]

    return {
        "100,000 users": body([{"user_id": rng.choice(catalogue.users), "k": 10} for _ in range(100_000)]),
        "2,000 histories x 100": body([{"history": rng.choices(items, k=100)} for _ in range(2_000)]),
        "200 users x 500 fresh events": body(
            [{"user_id": rng.choice(catalogue.users), "history": events(500)} for _ in range(200)]
        ),
    }


def heavy_rounds(port: int, server_pid: int, bodies: dict[str, bytes], rounds: int) -> list[dict[str, Any]]:
    """Each round sends every heavy body once; the RSS is read after a pause that lets a trim run."""
    import http.client

    out: list[dict[str, Any]] = []
    connection = http.client.HTTPConnection(HOST, port, timeout=300)
    try:
        for index in range(1, rounds + 1):
            statuses: dict[str, int] = {}
            seconds: dict[str, float] = {}
            for name, body in bodies.items():
                started = time.perf_counter()
                connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                statuses[name], seconds[name] = response.status, round(time.perf_counter() - started, 2)
            time.sleep(1.5)
            rss = process_rss_mib(server_pid)
            out.append({"round": index, "statuses": statuses, "seconds": seconds, "rss_mib": rss})
            shown = ", ".join(f"{name} {statuses[name]} in {seconds[name]:.1f} s" for name in bodies)
            print(f"heavy round {index}: {shown}; RSS MiB: {rss}", flush=True)
    finally:
        connection.close()
    return out


def judge(
    windows: Sequence[Window], baseline: dict[str, float], heavy: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    errors = sum(w.errors for w in windows)
    final = windows[-1].rss_mib if windows else {}
    growth = {
        name: round(final[name] / before - 1, 4)
        for name, before in baseline.items()
        if name in final and before
    }
    flat = bool(growth) and all(g <= RSS_TARGET for g in growth.values())
    heavy_errors = sum(status != 200 for r in heavy for status in r["statuses"].values())
    middle = len(heavy) // 2  # 0-based: round 3 of 5
    first, last = (heavy[middle]["rss_mib"], heavy[-1]["rss_mib"]) if heavy else ({}, {})
    heavy_growth = {
        name: round(last[name] / mib - 1, 4) for name, mib in first.items() if name in last and mib
    }
    return {
        "errors": {
            "target": "0 errors (good requests 200, bad ones their 4xx)",
            "measured": errors,
            "holds": errors == 0,
        },
        "rss": {
            "target": f"each server process's RSS within {RSS_TARGET:.0%} of its value after warm-up",
            "baseline_mib": baseline,
            "final_mib": final,
            "growth": growth,
            "holds": flat,
        },
        "heavy": {
            "target": f"every heavy request 200; each process's RSS grows at most {HEAVY_RSS_TARGET:.0%} "
            f"over the second half of the heavy rounds (round {middle + 1} to {len(heavy)})",
            "measured": {"errors": heavy_errors, "growth": heavy_growth},
            "growth_from_soak_baseline": {
                name: round(last[name] / mib - 1, 4) for name, mib in baseline.items() if name in last and mib
            },
            "rounds": list(heavy),
            "holds": bool(heavy_growth)
            and heavy_errors == 0
            and all(g <= HEAVY_RSS_TARGET for g in heavy_growth.values()),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of soak (after warm-up)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per printed window")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds of load before the soak, unrecorded"
    )
    parser.add_argument("--probe", type=float, default=10.0, help="seconds of the maximum-rate measurement")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the maximum rate to soak at")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--workers", type=int, default=None, help="SAGEMAKER_MODEL_SERVER_WORKERS")
    parser.add_argument(
        "--heavy-rounds", type=int, default=5, help="rounds of the heaviest requests after the soak"
    )
    args = parser.parse_args(argv)

    RUN_DIR.mkdir(parents=True, exist_ok=True)
    paths = ensure_model()
    catalogue = read_catalogue(paths)
    cpu_count = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else default_workers(cpu_count)
    server = Server(paths, args.workers, RUN_DIR / "server.log")
    try:
        ready_s = server.wait_ready()
        pool = request_pool(server.port, catalogue, seed=0)
        rss = process_rss_mib(server.process.pid)
        _progress(f"server ready in {ready_s:.1f} s on port {server.port}; RSS (MiB) {rss}")

        def run(seconds: float, rate: float | None, window_s: float, on_window: Any = None) -> list[Window]:
            return asyncio.run(
                drive(
                    server.port,
                    pool,
                    connections=args.connections,
                    seconds=seconds,
                    rate=rate,
                    window_s=window_s,
                    server_pid=server.process.pid,
                    on_window=on_window,
                )
            )

        probe = run(args.probe, None, args.probe)
        max_rate = sum(w.good + w.bad for w in probe) / args.probe
        rate = args.load * max_rate
        probe_errors = sum(w.errors for w in probe)
        _progress(
            f"maximum rate: {max_rate:,.0f} req/s over {args.probe:g} s ({probe_errors} errors); soaking "
            f"at {rate:,.0f} req/s ({args.load:.0%}) for {args.duration:g} s after {args.warmup:g} s warm-up"
        )
        run(args.warmup, rate, args.warmup)
        baseline = process_rss_mib(server.process.pid)
        print(
            f"Soak: {workers} worker(s) on {cpu_count} CPU(s), {args.connections} connections, "
            f"{rate:,.0f} req/s "
            f"({args.load:.0%} of the {max_rate:,.0f} req/s measured), {len(catalogue.items)} items; "
            f"RSS after warm-up (MiB): {baseline}"
        )
        columns = ("t (s)", 7), ("requests", 8), ("req/s", 7), ("bad", 5), ("errors", 6), ("p50 ms", 7)
        print("  ".join(f"{name:>{width}}" for name, width in columns) + f"  {'p99 ms':>7}")
        windows = run(args.duration, rate, args.window, print_window)
        heavy: list[dict[str, Any]] = []
        if args.heavy_rounds > 0:
            bodies = heavy_bodies(catalogue, random.Random(1))
            sizes = ", ".join(f"{name} {len(body) / 2**20:.1f} MB" for name, body in bodies.items())
            _progress(f"heavy requests ({sizes}), {args.heavy_rounds} rounds")
            heavy = heavy_rounds(server.port, server.process.pid, bodies, args.heavy_rounds)
    finally:
        code = server.stop()
    verdict = judge(windows, baseline, heavy)
    names = ("errors", "rss", "heavy") if heavy else ("errors", "rss")
    for name in names:
        target = verdict[name]
        shown = target["measured"] if name != "rss" else target["growth"]
        print(f"target: {target['target']}: {'HOLDS' if target['holds'] else 'FAILS'} (measured {shown})")
    RESULTS_FILE.write_text(
        json.dumps(
            {
                "workers": workers,
                "cpu_count": cpu_count,
                "connections": args.connections,
                "max_req_per_s": round(max_rate, 1),
                "soak_req_per_s": round(rate, 1),
                "duration_s": args.duration,
                "baseline_rss_mib": baseline,
                "windows": [w.summary() for w in windows],
                "targets": verdict,
                "server_exit_code": code,
            },
            indent=1,
        )
    )
    _progress(f"wrote {RESULTS_FILE}")
    return 0 if all(verdict[name]["holds"] for name in names) else 1


if __name__ == "__main__":
    sys.exit(main())
