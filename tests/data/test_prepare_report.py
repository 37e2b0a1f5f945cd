"""The prepare job's data report: its histograms against the rows it kept, and its files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recsys.data.prepare import PrepareConfig
from recsys.data.prepare_report import CHARTS, REPORT_JSON, REPORT_MARKDOWN
from recsys.sagemaker.process import run_prepare
from tests.data.test_prepare import START, _history_log, _out, _report, _tree


def test_the_histograms_count_the_kept_rows_and_the_time_range_covers_them(tmp_path: Path) -> None:
    log = _history_log(users=40, per_user=12)
    # Steps that drop rows, so that "kept" differs from "read": a rating floor and a k-core.
    config = PrepareConfig(rating_column="rating", min_rating=2, min_item_interactions=15, holdout_last=1)
    paths = _tree(tmp_path, {"log.csv": log})
    assert run_prepare(paths, config, {}) == 0

    report = _report(paths)
    kept = pd.concat([_out(paths, name) for name in ("train", "validation", "test")], ignore_index=True)
    assert 0 < len(kept) < len(log)
    assert report["steps"][-1]["rows"] == len(kept) == sum(report["splits"].values())

    time = report["time_histogram"]
    assert sum(time["counts"]) == len(kept)
    assert len(time["edges"]) == len(time["counts"]) + 1
    assert time["edges"] == sorted(time["edges"])
    assert time["edges"][0] <= kept["timestamp"].min() and kept["timestamp"].max() <= time["edges"][-1]
    assert time["edges"][0] == kept["timestamp"].min() >= START  # the range is the data's, not wider
    # One count per user and per item, whatever the bins.
    assert sum(report["activity_histogram"]["counts"]) == report["users"] == kept["user_id"].nunique()
    assert sum(report["popularity_histogram"]["counts"]) == report["items"] == kept["item_id"].nunique()


def test_the_report_writes_its_json_markdown_and_charts_with_every_steps_count(tmp_path: Path) -> None:
    log = _history_log(users=40, per_user=12)
    log.loc[::50, "user_id"] = ""  # rows the "empty id" step drops
    paths = _tree(tmp_path, {"log.csv": log})
    config = PrepareConfig(rating_column="rating", min_rating=3, min_user_interactions=5)
    assert run_prepare(paths, config, {}) == 0

    directory = paths.output_dir("report")
    assert sorted(p.name for p in directory.iterdir()) == sorted([REPORT_JSON, REPORT_MARKDOWN, *CHARTS])
    report = _report(paths)
    steps = {s["step"]: s["rows"] for s in report["steps"]}
    assert steps["read"] == len(log)
    assert steps["dropped: empty user or item id"] == len(log.iloc[::50]) > 0
    assert steps["read"] > steps["rating >= 3"] > steps["k-core (users >= 5, items >= 1)"] > 0

    markdown = (directory / REPORT_MARKDOWN).read_text(encoding="utf-8").splitlines()
    for step, rows in steps.items():
        assert f"| {step} | {rows:,} |" in markdown, step
    for split, rows in report["splits"].items():
        assert f"| {split} | {rows:,} |" in markdown, split
    assert f"{report['users']:,} users and {report['items']:,} items kept" in "\n".join(markdown)
    for chart in CHARTS:
        assert f"![{chart}]({chart})" in markdown
        assert (directory / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
