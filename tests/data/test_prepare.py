"""The prepare job's steps on raw logs written to a real /opt/ml/processing tree, one instance or two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.data.io import read_table, write_table
from recsys.data.prepare import SOLO, PrepareConfig, digest, k_core
from recsys.errors import DataError
from recsys.sagemaker.contract import ProcessingPaths
from recsys.sagemaker.process import run_prepare
from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400.0
START = 1_700_000_000.0


def _tree(base: Path, parts: dict[str, pd.DataFrame]) -> ProcessingPaths:
    paths = ProcessingPaths(base)
    for name, frame in parts.items():
        write_table(frame, paths.input_dir("interactions") / name)
    return paths


def _out(paths: ProcessingPaths, name: str) -> pd.DataFrame:
    table = read_table(paths.output_dir(name), channel=name, string_columns=("user_id", "item_id"))
    frame: pd.DataFrame = table.to_pandas()
    return frame


def _report(paths: ProcessingPaths) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((paths.output_dir("report") / "data_report.json").read_text())
    return report


def _steps(paths: ProcessingPaths) -> dict[str, int]:
    return {s["step"]: s["rows"] for s in _report(paths)["steps"]}


def test_each_cleaning_step_drops_what_it_names_and_counts_it(tmp_path: Path) -> None:
    rows = [
        ("u1", "a", START, 5.0),
        ("u1", "a", START, 3.0),  # a duplicate: merged, the higher rating kept
        ("", "a", START + 1, 5.0),  # empty user id
        ("u1", " ", START + 2, 5.0),  # blank item id
        ("u1", "b", "not a time", 5.0),  # unreadable timestamp
        ("u1", "c", START + 3, 1.0),  # below min_rating
        ("u1", "d", "2023-11-14T22:13:24Z", 4.0),  # ISO 8601 is a time too
    ]
    # A bot: 30 events within one hour, capped at 5.
    rows += [("bot", f"x{i % 3}", START + 10 * i, 5.0) for i in range(30)]
    raw = pd.DataFrame(rows, columns=["who", "what", "when", "stars"]).astype({"when": str})
    paths = _tree(tmp_path, {"log.csv": raw})
    config = PrepareConfig(
        user_column="who",
        item_column="what",
        timestamp_column="when",
        rating_column="stars",
        min_rating=2,
        max_events_per_window=5,
        window_seconds=3600,
        holdout_last=0,
    )

    assert run_prepare(paths, config, {}) == 0

    steps = _steps(paths)
    assert steps["read"] == 37
    assert steps["dropped: empty user or item id"] == 2
    assert steps["dropped: missing or unreadable timestamp"] == 1
    assert steps["rating >= 2"] == 33
    assert steps["duplicates merged"] == 32
    assert steps["at most 5 per user per 3600 s"] == 7
    train = _out(paths, "train")
    mine = train[train["user_id"] == "u1"].sort_values("timestamp")
    assert list(mine["item_id"]) == ["a", "d"] and list(mine["rating"]) == [5.0, 4.0]
    assert mine["timestamp"].iloc[1] == 1_700_000_004.0
    bot = train[train["user_id"] == "bot"]
    assert sorted(bot["timestamp"]) == [START + 10 * i for i in range(5)]  # the earliest five
    for chart in ("user_activity.png", "item_popularity.png", "events_over_time.png"):
        assert (paths.output_dir("report") / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_k_core_iterates_to_a_fixed_point() -> None:
    # Each drop uncovers the next: item z (1 user) goes, then user w (left with q alone), then
    # item q (left with s alone), then user s (left with x alone); x keeps u and t.
    rows = pd.DataFrame(
        [
            ("u", "x", 1.0),
            ("u", "y", 2.0),
            ("t", "x", 1.0),
            ("t", "y", 2.0),
            ("w", "q", 1.0),
            ("w", "z", 2.0),
            ("s", "q", 3.0),
            ("s", "x", 4.0),
        ],
        columns=["user_id", "item_id", "timestamp"],
    )
    kept, rounds, vocabulary, counts = k_core(
        rows, PrepareConfig(min_user_interactions=2, min_item_interactions=2), SOLO
    )

    user_counts = kept["user_id"].value_counts()
    item_counts = kept["item_id"].value_counts()
    assert (user_counts >= 2).all() and (item_counts >= 2).all()
    assert set(kept["user_id"]) == {"u", "t"} and set(kept["item_id"]) == {"x", "y"}
    assert rounds == 5  # four that drop, one that finds nothing to drop
    assert dict(zip(vocabulary, counts, strict=True)) == {"q": 0, "x": 2, "y": 2, "z": 0}


def _history_log(users: int = 40, per_user: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        for e in range(per_user):
            rows.append(
                (
                    f"u{u:03d}",
                    f"i{int(rng.integers(30)):02d}",
                    START + u * 100 + e * DAY,
                    float(rng.integers(1, 6)),
                )
            )
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])


def test_a_per_user_split_holds_out_each_users_latest_events(tmp_path: Path) -> None:
    log = _history_log()
    paths = _tree(tmp_path, {"log.parquet": log})
    assert run_prepare(paths, PrepareConfig(holdout_last=2, rating_column="rating"), {}) == 0

    train, validation, test = (_out(paths, n) for n in ("train", "validation", "test"))
    for user, events in pd.concat([train, validation, test]).groupby("user_id"):
        times = sorted(events["timestamp"])
        assert sorted(test.loc[test["user_id"] == user, "timestamp"]) == times[-2:]
        assert sorted(validation.loc[validation["user_id"] == user, "timestamp"]) == times[-4:-2]
        assert train.loc[train["user_id"] == user, "timestamp"].max() < min(times[-4:])
    assert _report(paths)["splits"] == {"test": len(test), "validation": len(validation), "train": len(train)}


def test_a_global_cut_splits_by_date_and_cold_users_are_held_out_whole(tmp_path: Path) -> None:
    log = _history_log()
    paths = _tree(tmp_path, {"log.csv": log})
    cut_validation, cut_test = START + 8 * DAY, START + 10 * DAY
    config = PrepareConfig(validation_from=cut_validation, test_from=cut_test, cold_user_fraction=0.25)
    assert run_prepare(paths, config, {}) == 0

    train, validation, test, cold = (_out(paths, n) for n in ("train", "validation", "test", "cold"))
    assert train["timestamp"].max() < cut_validation <= validation["timestamp"].min()
    assert validation["timestamp"].max() < cut_test <= test["timestamp"].min()
    cold_users = set(cold["user_id"])
    assert 4 <= len(cold_users) <= 20  # a quarter of 40, by hash
    assert not cold_users & set(pd.concat([train, validation, test])["user_id"])
    assert len(cold) == 12 * len(cold_users)  # every event of a cold user


def test_bad_input_exits_1_with_a_message_naming_the_file_and_column(tmp_path: Path) -> None:
    paths = _tree(tmp_path, {"log.csv": _history_log().rename(columns={"item_id": "movie"})})
    assert run_prepare(paths, PrepareConfig(), {}) == 1
    message = paths.message_file.read_text()
    assert "log.csv" in message and "'item_id'" in message and "movie" in message

    paths = _tree(tmp_path / "tiny", {"log.csv": _history_log(users=3, per_user=2)})
    assert run_prepare(paths, PrepareConfig(min_user_interactions=5), {}) == 1
    assert "no interactions are left" in paths.message_file.read_text()


def _start(paths: ProcessingPaths, settings: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "recsys", "prepare", "--base-dir", str(paths.base), *settings],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run_two_instances(
    base: Path, shards: list[dict[str, pd.DataFrame]], settings: list[str]
) -> tuple[list[ProcessingPaths], list[str]]:
    """Two real processes on loopback, as two instances of a ShardedByS3Key job given ``shards``
    (an instance given no file gets no input directory); their trees and their outputs."""
    hosts = ["localhost", "127.0.0.1"]
    trees = [_tree(base / host, parts) for host, parts in zip(hosts, shards, strict=True)]
    for host, paths in zip(hosts, trees, strict=True):
        paths.config_dir.mkdir(parents=True)
        paths.resource_config_file.write_text(json.dumps({"current_host": host, "hosts": hosts}))
        inputs = [{"InputName": "interactions", "S3Input": {"S3DataDistributionType": "ShardedByS3Key"}}]
        paths.job_config_file.write_text(json.dumps({"ProcessingInputs": inputs}))
    env = {**os.environ, "RECSYS_MASTER_PORT": str(free_port())}
    processes = [_start(paths, settings, env) for paths in trees]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for process in processes:  # a hung peer must not outlive the test
            if process.poll() is None:
                process.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs
    return trees, outputs


def _run_one_instance(paths: ProcessingPaths, settings: list[str]) -> None:
    solo = _start(paths, settings, dict(os.environ))
    assert solo.wait(timeout=300) == 0, solo.communicate()[0]


@pytest.mark.slow  # two `recsys prepare` subprocesses over gloo
def test_two_instances_on_sharded_files_give_what_one_instance_gives(tmp_path: Path) -> None:
    """Each instance reads half of the files (ShardedByS3Key); users span both halves, so the
    shuffle by user and the k-core's global item counts are what make the result the same."""
    log = _history_log(users=60, per_user=10)
    log = pd.concat([log, log.iloc[::7]])  # duplicates, some of them across the shards
    shards = [log.iloc[i::4] for i in range(4)]
    settings = [
        "--min-user-interactions",
        "4",
        "--min-item-interactions",
        "12",
        "--holdout-last",
        "1",
        "--rating-column",
        "rating",
        "--min-rating",
        "2",
    ]

    single = _tree(tmp_path / "single", {f"part-{i}.csv": s for i, s in enumerate(shards)})
    halves = [{f"part-{i}.csv": shards[i] for i in range(r, 4, 2)} for r in range(2)]
    trees, _ = _run_two_instances(tmp_path, halves, settings)
    _run_one_instance(single, settings)

    for split in ("train", "validation", "test"):
        two = pd.concat([_out(paths, split) for paths in trees], ignore_index=True)
        one = _out(single, split)
        assert len(one) > 0 and digest(two) == digest(one), split
    # Each instance wrote its own part; only the first wrote the report, with global counts.
    assert [sorted(p.name for p in t.output_dir("train").iterdir()) for t in trees] == [
        ["part-00000.parquet"],
        ["part-00001.parquet"],
    ]
    assert not any(trees[1].output_dir("report").iterdir())  # there, but empty
    assert _report(trees[0])["steps"] == _report(single)["steps"]
    assert _report(trees[0])["instances"] == 2
    # The histograms are global too: the time bins span every instance's rows, counts are summed.
    for histogram in ("time_histogram", "activity_histogram", "popularity_histogram"):
        assert _report(trees[0])[histogram] == _report(single)[histogram], histogram


@pytest.mark.slow  # two `recsys prepare` subprocesses over gloo
def test_an_instance_given_no_file_takes_part_with_zero_rows(tmp_path: Path) -> None:
    """Two instances and one file: ShardedByS3Key gives the second instance nothing (here not
    even its input directory). It must not stop, or the first would wait on it for gloo's
    timeout; it joins with zero rows, receives its users' rows in the shuffle and the job
    gives what one instance gives."""
    log = _history_log(users=30, per_user=8)
    settings = ["--min-item-interactions", "3", "--rating-column", "rating"]

    trees, outputs = _run_two_instances(tmp_path, [{"log.csv": log}, {}], settings)
    single = _tree(tmp_path / "single", {"log.csv": log})
    _run_one_instance(single, settings)

    assert not trees[1].input_dir("interactions").exists()
    assert "instance 2 of 2 got no file" in outputs[1]
    for split in ("train", "validation", "test"):
        parts = [_out(paths, split) for paths in trees]
        assert all(len(part) > 0 for part in parts), split  # users were shuffled to both
        assert digest(pd.concat(parts, ignore_index=True)) == digest(_out(single, split)), split
    report = _report(trees[0])
    assert report["files"] == 1 and report["instances"] == 2
    assert report["steps"] == _report(single)["steps"]


def test_an_input_without_files_is_refused_whoever_sees_it(tmp_path: Path) -> None:
    from recsys.data.prepare import instance_files, prepare

    empty = tmp_path / "interactions"
    empty.mkdir()
    # One instance, or every instance seeing the same (replicated) files: each stops alike.
    for world, replicated in ((1, False), (2, True)):
        with pytest.raises(DataError, match="no data files"):
            instance_files(empty, rank=0, world=world, replicated=replicated)
    # A sharded instance past the last file: zero rows, not an error.
    assert instance_files(empty, rank=1, world=2, replicated=False) == []
    assert instance_files(tmp_path / "absent", rank=1, world=2, replicated=False) == []
    # Unless every instance got nothing: prepare's first collective finds no file anywhere.
    with pytest.raises(DataError, match="no data files on any of the 1 instances"):
        prepare([], PrepareConfig(), write=lambda name, rows: None)


def test_the_parsers_input_and_output_names_are_the_data_layers() -> None:
    from recsys.data.prepare import COLD, INTERACTIONS, SPLITS
    from recsys.sagemaker.process import COLD_OUTPUT, INTERACTIONS_INPUT, SPLIT_OUTPUTS

    assert (INTERACTIONS_INPUT, SPLIT_OUTPUTS, COLD_OUTPUT) == (INTERACTIONS, SPLITS, COLD)


def test_parquet_datetimes_of_any_unit_read_as_epoch_seconds(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    moments = [1_700_000_000, 1_700_000_100, 1_700_086_400]
    for unit in ("s", "ms", "us", "ns"):
        stamps = pa.array(
            [m * {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit] for m in moments],
            pa.timestamp(unit, tz="UTC"),
        )
        table = pa.table({"user_id": ["u", "u", "v"], "item_id": ["a", "b", "a"], "timestamp": stamps})
        directory = tmp_path / unit / "processing" / "input" / "interactions"
        directory.mkdir(parents=True)
        pq.write_table(table, directory / "log.parquet")
        paths = ProcessingPaths(tmp_path / unit)
        assert run_prepare(paths, PrepareConfig(holdout_last=0), {}) == 0, unit
        assert sorted(_out(paths, "train")["timestamp"]) == [float(m) for m in moments], unit
