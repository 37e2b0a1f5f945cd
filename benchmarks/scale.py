"""Data at scale: load-and-encode time, one training epoch and peak memory, from 1M to 50M interactions.

Run from the repository root::

    python -m benchmarks.scale                          # 1m, 10m, 50m, then the 1M-item artifact
    python -m benchmarks.scale --sizes 1m --no-artifact # a quick run
    python -m benchmarks.scale --sizes 10m --no-epoch   # load-and-encode only

For each size the scaled synthetic generator (``recsys generate-data --interactions``: power-law
item popularity, users of varying activity, a favourite genre each, item and user attributes)
writes ``train`` as time-sliced Parquet parts of 1M rows plus ``items`` and ``users``, once, under
``--data-dir`` (default ``benchmarks/.cache/scale``). Then a fresh Python process per size:

* load and encode: ``prepare_data`` over the three channels, exactly as a training job does
  (streamed reading, vocabularies, merge of repeats, ordering, attribute encodings, fingerprint);
* one epoch: ``fit(..., validation=None, epochs=1)`` on the CPU with the job's defaults (GMF, the
  loss ``auto`` resolves to, batch 1,024) unless ``--loss`` / ``--batch-size`` say otherwise. An
  epoch still running after ``--epoch-limit`` seconds is stopped through ``fit``'s stop request;
  its time is then estimated from the steps done (shown as "~");
* peak RSS (``VmHWM``) after loading and after the epoch, against the interactions' arrays
  (``IndexedInteractions.nbytes``: int32 users and items, float64 times, the CSR offsets).

Printed: a table, and the time per interaction of each size relative to the smallest (1.0 means
linear). Last, a 1M-item catalogue: a job's artifact (``prepare_data`` on 4M interactions of 200k
users, an untrained GMF, ``save_artifact``), then a fresh process that loads it with the serving
engine (``Recommender.load``: checksums, weights, vocabularies, item state, user cache) and
answers one request. Figures also go to ``<data-dir>/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "benchmarks" / ".cache" / "scale"
ROWS_PER_PART = 1_000_000
MIB = 2**20


@dataclass(frozen=True)
class Size:
    name: str
    interactions: int
    users: int
    items: int


SIZES = {
    size.name: size
    for size in (
        Size("1m", 1_000_000, 100_000, 50_000),
        Size("10m", 10_000_000, 400_000, 120_000),
        Size("50m", 50_000_000, 1_000_000, 200_000),
    )
}
ARTIFACT_SIZE = Size("artifact-1m-items", 4_000_000, 200_000, 1_000_000)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _peak_rss_bytes() -> int:
    """This process's peak resident set size.

    From VmHWM, the high-water mark of this process's own memory map: ru_maxrss also counts the
    parent's, because Linux carries the old map's peak across the fork and exec that start a child.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def ensure_data(size: Size, root: Path) -> Path:
    """The ``input/data`` directory of ``size``, generated once; a spec file marks it complete."""
    from recsys.data.synthetic import ScaledSpec, write_scaled_channels

    data_dir = root / size.name / "input" / "data"
    marker = root / size.name / "spec.json"
    spec = ScaledSpec(num_users=size.users, num_items=size.items, num_interactions=size.interactions)
    wanted = {**asdict(spec), "rows_per_part": ROWS_PER_PART}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return data_dir
    marker.unlink(missing_ok=True)
    parts = max(1, -(-size.interactions // ROWS_PER_PART))
    _progress(
        f"[{size.name}] generating {size.interactions:,} interactions in {parts} part(s) into {data_dir}"
    )
    started = time.perf_counter()
    write_scaled_channels(spec, data_dir, parts=parts)
    _progress(f"[{size.name}] generated in {time.perf_counter() - started:.0f} s")
    marker.write_text(json.dumps(wanted))
    return data_dir


# -- what runs in the child processes ------------------------------------------------------------


def _config(batch_size: int | None = None, loss: str | None = None) -> Any:
    from recsys.config import resolve_train_config

    raw: dict[str, Any] = {"device": "cpu"}
    if batch_size is not None:
        raw["batch_size"] = batch_size
    if loss is not None:
        raw["loss"] = loss
    return resolve_train_config(raw)


def _prepare(data_dir: Path, config: Any) -> Any:
    from recsys.data.prepared import Channels, prepare_data

    channels = Channels(train=data_dir / "train", items=data_dir / "items", users=data_dir / "users")
    return prepare_data(channels, config)


def child_train(
    data_dir: Path, *, epoch_limit: float, batch_size: int | None, loss_name: str | None
) -> dict[str, Any]:
    """Load and encode, then (unless ``epoch_limit`` is 0) train one epoch; this process's figures.

    An epoch still running after ``epoch_limit`` seconds is stopped through ``fit``'s stop request
    (what SIGTERM sets in a job): its rate so far gives the epoch's time, marked as an estimate.
    """
    import torch

    from recsys.data.device import DeviceInteractions
    from recsys.training.loop import RunContext, fit
    from recsys.training.setup import build_model, fit_settings
    from recsys.training.stop import StopRequest, TrainingInterrupted

    baseline = _peak_rss_bytes()
    config = _config(batch_size, loss_name)
    started = time.perf_counter()
    data = _prepare(data_dir, config)
    load_seconds = time.perf_counter() - started
    out: dict[str, Any] = {
        "users": len(data.users),
        "items": len(data.items),
        "positives": data.interactions.num_interactions,
        "dtype": str(data.interactions.items.dtype),
        "load_seconds": load_seconds,
        "array_bytes": data.interactions.nbytes,
        "baseline_rss_bytes": baseline,
        "load_peak_rss_bytes": _peak_rss_bytes(),
        "torch_threads": torch.get_num_threads(),
    }
    if epoch_limit <= 0:
        return out
    device = torch.device("cpu")
    settings = replace(fit_settings(config, num_items=len(data.items), device=device), epochs=1)
    loss = settings.loss
    train = DeviceInteractions.from_indexed(data.interactions, device)
    model = build_model(config, data, device)
    out.update({"loss": loss, "batch_size": config.batch_size})
    stop = StopRequest()
    timer = threading.Timer(epoch_limit, stop.request, args=("the benchmark's epoch limit",))
    timer.start()
    started = time.perf_counter()
    try:
        result = fit(model, train, None, settings, device=device, epochs=1, run=RunContext(stop=stop))
        record = result.records[-1]
        out.update(
            {
                "epoch_complete": True,
                "epoch_seconds": record.seconds,
                "samples_per_second": record.samples_per_second,
            }
        )
    except TrainingInterrupted as stopped:
        elapsed = time.perf_counter() - started
        found = re.search(r"after (\d+) steps", str(stopped))
        steps = int(found.group(1)) if found else 0
        rate = steps * config.batch_size / elapsed
        out.update(
            {
                "epoch_complete": False,
                "steps_done": steps,
                "steps_seconds": elapsed,
                "samples_per_second": rate,
                "epoch_seconds": data.interactions.num_interactions / rate if rate else float("inf"),
            }
        )
    finally:
        timer.cancel()
    out["peak_rss_bytes"] = _peak_rss_bytes()
    return out


def child_build_artifact(data_dir: Path, model_dir: Path) -> dict[str, Any]:
    """A job's artifact for the catalogue in ``data_dir``: real vocabularies, attributes, history."""
    import torch

    from recsys.artifact import build_artifact, save_artifact
    from recsys.training.setup import build_model

    config = _config(None)
    data = _prepare(data_dir, config)
    model = build_model(config, data, torch.device("cpu")).eval()
    artifact = build_artifact(model, data, config, {"benchmark": "scale", "trained": False})
    started = time.perf_counter()
    save_artifact(artifact, model_dir)
    files = sorted(model_dir.iterdir())
    return {
        "users": len(data.users),
        "items": len(data.items),
        "save_seconds": time.perf_counter() - started,
        "artifact_bytes": sum(path.stat().st_size for path in files),
    }


def child_load_artifact(model_dir: Path) -> dict[str, Any]:
    """Load the artifact as a serving worker does, then answer one known-user request."""
    import torch

    from recsys.artifact import load_artifact
    from recsys.serving.engine import Query, Recommender

    baseline = _peak_rss_bytes()
    started = time.perf_counter()
    # Recommender.load in its two steps: verify and read the files, then build the engine (the
    # model, the catalogue's item vectors, the known users' vectors).
    artifact = load_artifact(model_dir)
    read_seconds = time.perf_counter() - started
    recommender = Recommender(artifact, torch.device("cpu"))
    load_seconds = time.perf_counter() - started
    user = recommender.artifact.users.ids[0]
    started = time.perf_counter()
    result = recommender.recommend([Query(user_id=user, k=10)])
    first_request_ms = (time.perf_counter() - started) * 1000
    return {
        "items": recommender.num_items,
        "users": recommender.num_users,
        "load_seconds": load_seconds,
        "read_seconds": read_seconds,
        "user_cache": recommender.user_cache is not None,
        "first_request_ms": first_request_ms,
        "returned": len(result[0].item_ids),
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def _child_main(args: argparse.Namespace) -> None:
    if args.child == "train":
        limit = 0.0 if args.no_epoch else args.epoch_limit
        out = child_train(args.data, epoch_limit=limit, batch_size=args.batch_size, loss_name=args.loss)
    elif args.child == "build-artifact":
        out = child_build_artifact(args.data, args.model_dir)
    else:
        out = child_load_artifact(args.model_dir)
    print(json.dumps(out))


# -- the parent ----------------------------------------------------------------------------------


def _run_child(argv: list[str], timeout: float | None) -> dict[str, Any]:
    """``python -m benchmarks.scale --child ...`` in a fresh process: its RSS is its own."""
    command = [sys.executable, "-m", "benchmarks.scale", *argv]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {completed.returncode}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _mib(value: float) -> str:
    return f"{value / MIB:,.0f}"


def _epoch_text(row: dict[str, Any]) -> str:
    if "epoch_seconds" not in row:
        return "-"
    if row["epoch_complete"]:
        return f"{row['epoch_seconds']:,.0f}"
    return f"~{row['epoch_seconds']:,.0f} ({row['steps_done']:,} steps in {row['steps_seconds']:,.0f} s)"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| interactions | users | items | load + encode s | epoch s | samples/s | loss, batch | "
        "peak RSS load MiB | peak RSS epoch MiB | arrays MiB | (load peak - start) / arrays |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        growth = (row["load_peak_rss_bytes"] - row["baseline_rss_bytes"]) / row["array_bytes"]
        rate = f"{row['samples_per_second']:,.0f}" if "samples_per_second" in row else "-"
        peak = _mib(row["peak_rss_bytes"]) if "peak_rss_bytes" in row else "-"
        loss = f"{row['loss']}, {row['batch_size']:,}" if "loss" in row else "-"
        print(
            f"| {row['positives']:,} | {row['users']:,} | {row['items']:,} | {row['load_seconds']:.1f} | "
            f"{_epoch_text(row)} | {rate} | {loss} | {_mib(row['load_peak_rss_bytes'])} | {peak} | "
            f"{_mib(row['array_bytes'])} | {growth:.1f} |"
        )
    first = rows[0]
    for row in rows[1:]:
        scale = row["positives"] / first["positives"]
        line = (
            f"time per interaction, {row['size']} vs {first['size']}: "
            f"load + encode {row['load_seconds'] / first['load_seconds'] / scale:.2f}"
        )
        if "epoch_seconds" in row and "epoch_seconds" in first:
            line += f", epoch {row['epoch_seconds'] / first['epoch_seconds'] / scale:.2f}"
        print(line + " (1.00 = linear)")


# The job's log lines that end each phase (asctime first: "2026-12-03 07:30:00,123 INFO ...").
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_PHASE_ENDS = (
    ("load and encode", re.compile(r"recsys\.training\.job: data: ")),
    ("epochs (training and validation)", re.compile(r"recsys\.training\.loop: .*epoch=\d+ train_loss=")),
    ("final evaluation", re.compile(r"best epoch \d+: ")),
    ("report and artifact", re.compile(r"model written to ")),
)


def _when(line: str) -> float | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    from datetime import datetime

    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_job(size: Size, data_dir: Path, work: Path, epochs: int, timeout: float | None) -> dict[str, Any]:
    """``recsys train`` as a user runs it (its defaults, ``epochs`` epochs, validation and the final
    evaluation included) in a fresh process; wall time per phase from its log, peak RSS."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    command = [
        sys.executable, "-m", "recsys", "train", "--base-dir", str(work),
        "--train", str(data_dir / "train"), "--items", str(data_dir / "items"),
        "--users", str(data_dir / "users"),
        "-H", f"epochs={epochs}", "-H", "device=cpu",
    ]  # fmt: skip
    started = time.time()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    ended = time.time()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    lines = (completed.stdout + completed.stderr).splitlines()
    if completed.returncode != 0:
        raise RuntimeError(f"the job failed ({completed.returncode}):\n" + "\n".join(lines[-30:]))
    phases: dict[str, float] = {}
    previous = started
    for name, pattern in _PHASE_ENDS:
        stamps = [t for line in lines if pattern.search(line) and (t := _when(line)) is not None]
        if stamps:
            phases[name] = round(stamps[-1] - previous, 1)
            previous = stamps[-1]
    phases["exit"] = round(ended - previous, 1)
    metrics = json.loads((work / "output" / "data" / "metrics.json").read_text())
    epoch_rates = [float(m.group(1)) for line in lines if (m := re.search(r"samples_per_second=(\d+)", line))]
    return {
        "size": size.name,
        "rows": size.interactions,
        "total_seconds": round(ended - started, 1),
        "phases": phases,
        "samples_per_second": epoch_rates,
        "loss": metrics.get("loss"),
        "validation_users": metrics.get("validation_users"),
        "ndcg@10": metrics["validation"].get("ndcg@10"),
        "peak_rss_bytes": peak,
    }


def main() -> None:
    # The thresholds named in --loss's help: recsys.config's own, so that the help follows them.
    from recsys.config import CPU_FULL_SOFTMAX_MAX_ITEMS, FULL_SOFTMAX_MAX_ITEMS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--job",
        action="store_true",
        help="run `recsys train` itself with its defaults on each size (validation and the final "
        "evaluation included) and time its phases; the target: 10m within 10 minutes",
    )
    parser.add_argument("--job-epochs", type=int, default=1, help="with --job: epochs (default 1)")
    parser.add_argument("--sizes", default="1m,10m,50m", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="generated data (reused)")
    parser.add_argument("--no-epoch", action="store_true", help="load and encode only")
    parser.add_argument("--no-artifact", action="store_true", help="skip the 1M-item artifact")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the job's (1,024)")
    parser.add_argument(
        "--loss",
        default=None,
        help="default: the job's (auto: for GMF on the CPU these runs use, the full softmax up to "
        f"{CPU_FULL_SOFTMAX_MAX_ITEMS:,} items and the sampled one above; on a GPU the full softmax "
        f"up to {FULL_SOFTMAX_MAX_ITEMS:,})",
    )
    parser.add_argument(
        "--epoch-limit",
        type=float,
        default=900.0,
        help="seconds; an epoch still running then is stopped and its time estimated from its rate",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per child process")
    parser.add_argument(
        "--child", choices=("train", "build-artifact", "load-artifact"), help=argparse.SUPPRESS
    )
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child_main(args)
        return

    names = [name.strip() for name in args.sizes.split(",") if name.strip()]
    unknown = [name for name in names if name not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; known: {', '.join(SIZES)}")
    print(f"machine: {platform.machine()}, {platform.system()}, python {platform.python_version()}")
    if args.job:
        jobs = []
        for name in names:
            size = SIZES[name]
            data_dir = ensure_data(size, args.data_dir)
            _progress(
                f"[{name}] recsys train with its defaults, {args.job_epochs} epoch(s), in a fresh process"
            )
            job = run_job(size, data_dir, args.data_dir / name / "job", args.job_epochs, args.timeout)
            jobs.append(job)
            phases = ", ".join(f"{k} {v:.0f} s" for k, v in job["phases"].items())
            verdict = (
                ""
                if name != "10m"
                else f" (target 600 s: {'HOLDS' if job['total_seconds'] <= 600 else 'FAILS'})"
            )
            print(
                f"{name}: {job['total_seconds']:.0f} s in all{verdict}: {phases}; loss {job['loss']}, "
                f"samples/s {job['samples_per_second']}, validation users {job['validation_users']}, "
                f"val ndcg@10 {job['ndcg@10']:.4f}, peak RSS {_mib(job['peak_rss_bytes'])} MiB"
            )
        args.data_dir.mkdir(parents=True, exist_ok=True)
        (args.data_dir / "jobs.json").write_text(json.dumps(jobs, indent=1))
        return
    rows: list[dict[str, Any]] = []
    for name in names:
        size = SIZES[name]
        data_dir = ensure_data(size, args.data_dir)
        argv = ["--child", "train", "--data", str(data_dir)]
        argv += ["--no-epoch"] if args.no_epoch else []
        argv += ["--batch-size", str(args.batch_size)] if args.batch_size else []
        argv += ["--loss", args.loss] if args.loss else []
        argv += ["--epoch-limit", str(args.epoch_limit)]
        _progress(f"[{name}] load, encode{'' if args.no_epoch else ' and one epoch'} in a fresh process")
        row = {"size": name, "rows": size.interactions, **_run_child(argv, args.timeout)}
        _progress(f"[{name}] {json.dumps(row)}")
        rows.append(row)
    results: dict[str, Any] = {"sizes": rows}
    if rows:
        print_table(rows)
    if not args.no_artifact:
        data_dir = ensure_data(ARTIFACT_SIZE, args.data_dir)
        model_dir = args.data_dir / ARTIFACT_SIZE.name / "model"
        _progress(f"[{ARTIFACT_SIZE.name}] building the artifact in {model_dir}")
        built = _run_child(
            ["--child", "build-artifact", "--data", str(data_dir), "--model-dir", str(model_dir)],
            args.timeout,
        )
        _progress(f"[{ARTIFACT_SIZE.name}] loading it with the serving engine in a fresh process")
        loaded = _run_child(["--child", "load-artifact", "--model-dir", str(model_dir)], args.timeout)
        results["artifact"] = {**built, **loaded}
        print(
            f"artifact of {loaded['items']:,} items and {loaded['users']:,} users "
            f"({_mib(built['artifact_bytes'])} MiB on disk): "
            f"Recommender.load {loaded['load_seconds']:.1f} s (files verified and read in "
            f"{loaded['read_seconds']:.1f} s, then the engine built), "
            f"peak RSS {_mib(loaded['peak_rss_bytes'])} MiB ({_mib(loaded['baseline_rss_bytes'])} MiB before "
            f"loading), first request {loaded['first_request_ms']:.0f} ms"
        )
    args.data_dir.mkdir(parents=True, exist_ok=True)
    (args.data_dir / "scale.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
