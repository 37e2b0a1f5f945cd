"""Training throughput: samples/s of the training loop per model and loss, on a device.

Prints, for each configuration, samples/s (epochs after the first, which pays for warm-up),
peak accelerator memory, and the ratio to the same configuration on the CPU measured in the
same run (the baseline). On a CUDA host it also compares AMP on and off.

    python -m benchmarks.train_speed                 # CPU only, small
    python -m benchmarks.train_speed --users 100000 --items 20000 --per-user 50   # GPU host
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from recsys.data.device import DeviceInteractions
from recsys.data.interactions import IndexedInteractions
from recsys.models.ncf import NCF, ModelConfig
from recsys.training.loop import FitSettings, fit


def synthetic(num_users: int, num_items: int, per_user: int, seed: int = 0) -> IndexedInteractions:
    """Power-law item popularity, ``per_user`` interactions per user on average."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    popularity /= popularity.sum()
    counts = rng.poisson(per_user, size=num_users).clip(min=2)
    users = np.repeat(np.arange(num_users), counts)
    items = rng.choice(num_items, size=users.shape[0], p=popularity)
    return IndexedInteractions.from_pairs(users, items, num_users, num_items)


def measure(
    data: IndexedInteractions,
    kind: str,
    loss: str,
    device: torch.device,
    *,
    epochs: int,
    amp: bool,
    batch_size: int,
) -> dict[str, float]:
    config = ModelConfig(
        kind=kind,
        num_users=data.num_users,
        num_items=data.num_items,  # type: ignore[arg-type]
        embedding_dim=64,
        mlp_layers=(128, 64),
        history_length=50,
    )
    torch.manual_seed(0)
    model = NCF(config).to(device)
    settings = FitSettings(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=0.003,
        weight_decay=0.0,
        loss=loss,  # type: ignore[arg-type]
        num_negatives=64,
        user_id_dropout=0.2,
        patience=5,
        amp=amp,
        seed=0,
        eval_k=10,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train = DeviceInteractions.from_indexed(data, device)
    started = time.perf_counter()
    result = fit(model, train, None, settings, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    steady = result.records[1:] or result.records
    rate = float(np.mean([r.samples_per_second for r in steady]))
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"samples_per_second": rate, "wall_seconds": wall, "peak_mib": peak}


def crossover(sizes: list[int], users: int, per_user: int, batch_size: int, epochs: int) -> None:
    """GMF samples/s with the full and the sampled softmax at each catalogue size, on the CPU:
    where ``loss=auto`` should stop using the full one there (the loop alone, no validation)."""
    print(f"{'items':>9} {'softmax/s':>11} {'sampled/s':>11} {'full / sampled time':>20}")
    rows = []
    for items in sizes:
        data = synthetic(users, items, per_user)
        full, sampled = (
            measure(data, "gmf", loss, torch.device("cpu"), epochs=epochs, amp=False, batch_size=batch_size)
            for loss in ("softmax", "sampled_softmax")
        )
        slower = sampled["samples_per_second"] / full["samples_per_second"]
        print(
            f"{items:9,} {full['samples_per_second']:11,.0f} {sampled['samples_per_second']:11,.0f} "
            f"{slower:19.2f}x"
        )
        rows.append(
            {"items": items, "softmax": full, "sampled_softmax": sampled, "full_over_sampled_time": slower}
        )
    print(json.dumps(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--crossover",
        help="comma-separated catalogue sizes: the full against the sampled softmax on the CPU at each",
    )
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--per-user", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cpu-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.crossover:
        sizes = [int(x.replace("_", "")) for x in args.crossover.split(",")]
        crossover(sizes, args.users, args.per_user, args.batch_size, args.cpu_epochs)
        return
    data = synthetic(args.users, args.items, args.per_user)
    print(
        f"data: {data.num_users} users, {data.num_items} items, {data.num_interactions} interactions; "
        f"batch {args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    cases = [("gmf", "softmax"), ("gmf", "sampled_softmax"), ("neumf", "sampled_softmax"), ("gmf", "bce")]
    results = []
    has_cuda = torch.cuda.is_available()
    if has_cuda:
        print(f"cuda: {torch.cuda.get_device_name(0)}")
    print(f"{'model':6} {'loss':16} {'device':10} {'samples/s':>12} {'vs cpu':>8} {'peak MiB':>9}")
    for kind, loss in cases:
        cpu = measure(
            data,
            kind,
            loss,
            torch.device("cpu"),
            epochs=args.cpu_epochs,
            amp=False,
            batch_size=args.batch_size,
        )
        rows = [("cpu", cpu)]
        if has_cuda:
            for amp in (False, True):
                rows.append(
                    (
                        f"cuda{'+amp' if amp else ''}",
                        measure(
                            data,
                            kind,
                            loss,
                            torch.device("cuda"),
                            epochs=args.epochs,
                            amp=amp,
                            batch_size=args.batch_size,
                        ),
                    )
                )
        for name, row in rows:
            ratio = row["samples_per_second"] / cpu["samples_per_second"]
            print(
                f"{kind:6} {loss:16} {name:10} {row['samples_per_second']:12.0f} {ratio:8.1f}x "
                f"{row['peak_mib']:9.0f}"
            )
            results.append({"model": kind, "loss": loss, "device": name, **row, "ratio_to_cpu": ratio})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
