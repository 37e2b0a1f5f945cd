"""``recsys prepare`` then ``recsys train`` on what it wrote, as real processes on the CPU (no Docker):
the chain the README walks through, from raw logs with their own column names to a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from recsys.artifact import load_artifact
from recsys.data.io import read_table, write_table
from recsys.data.synthetic import SyntheticData

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_SECONDS = 300


def _recsys(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "recsys", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def test_train_runs_on_the_channels_prepare_writes(tmp_path: Path, tiny_data: SyntheticData) -> None:
    # Raw logs as they arrive: their own column names, ISO times, a duplicate and a row without a user.
    raw = tiny_data.interactions.rename(
        columns={"user_id": "visitor", "item_id": "sku", "timestamp": "ts", "event_type": "action"}
    )
    raw["ts"] = pd.to_datetime(raw["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    raw = pd.concat([raw, raw.iloc[:5], raw.iloc[:1].assign(visitor="")], ignore_index=True)
    write_table(raw, tmp_path / "raw" / "log.csv")
    # The item table names its ids as the logs do; prepare writes it back as item_id.
    write_table(tiny_data.items.rename(columns={"item_id": "sku"}), tmp_path / "raw-items" / "items.csv")
    prepared = tmp_path / "prepared"

    result = _recsys(
        [
            "prepare", "--base-dir", str(prepared), "--interactions", str(tmp_path / "raw"),
            "--items", str(tmp_path / "raw-items"), "--user-column", "visitor", "--item-column", "sku",
            "--timestamp-column", "ts", "--event-type-column", "action", "--rating-column", "rating",
            "--keep-columns", "device", "--min-user-interactions", "3", "--holdout-last", "1",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outputs = prepared / "processing" / "output"
    train_rows = read_table(outputs / "train", channel="train", string_columns=("user_id", "item_id"))
    assert train_rows.num_rows > 0 and {"user_id", "item_id", "timestamp", "device"} <= set(
        train_rows.column_names
    )

    job = tmp_path / "job"
    result = _recsys(
        [
            "train", "--base-dir", str(job), "--train", str(outputs / "train"),
            "--validation", str(outputs / "validation"), "--items", str(outputs / "items"),
            "-H", "epochs=1", "-H", "embedding_dim=8", "-H", "history_length=10",
            "-H", "context_columns=device",
        ]
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (job / "output" / "success").exists()
    artifact = load_artifact(job / "model")
    train_users = set(train_rows.column("user_id").to_pylist())
    assert set(artifact.users.ids) == train_users  # the model's users are prepare's training users
    metrics = json.loads((job / "output" / "data" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epochs_run"] == 1
