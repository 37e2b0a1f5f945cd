"""The data report of a ``prepare`` job: counts per step as JSON and Markdown, three charts as PNG."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
from pathlib import Path
from typing import Any

from recsys.data.prepare import PrepareReport

REPORT_JSON = "data_report.json"
REPORT_MARKDOWN = "data_report.md"
CHARTS = ("user_activity.png", "item_popularity.png", "events_over_time.png")


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _bars(
    histogram: dict[str, list[float]], title: str, xlabel: str, *, log_x: bool, dates: bool = False
) -> bytes:
    # matplotlib's object API without pyplot: no global backend or figure state is touched.
    from matplotlib.figure import Figure

    edges, counts = histogram["edges"], histogram["counts"]
    fig = Figure(figsize=(8, 3.6))
    axes = fig.add_subplot()
    lefts = edges[:-1]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    if dates:
        lefts = [dt.datetime.fromtimestamp(e, dt.UTC) for e in lefts]  # type: ignore[misc]
        widths = [w / 86400.0 for w in widths]  # matplotlib's date unit is the day
    axes.bar(lefts, counts, width=widths, align="edge", color="#1f6fb2", edgecolor="white", linewidth=0.4)
    if log_x:
        axes.set_xscale("log", base=2)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    if dates:
        fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


def write_data_report(report: PrepareReport, directory: Path) -> list[Path]:
    """Write the report's files into ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    path = directory / REPORT_JSON
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    written.append(path)
    charts = {
        CHARTS[0]: _bars(report.activity_histogram, "Events per user", "events (log2 bins)", log_x=True),
        CHARTS[1]: _bars(report.popularity_histogram, "Events per item", "events (log2 bins)", log_x=True),
        CHARTS[2]: _bars(report.time_histogram, "Events over time (UTC)", "time", log_x=False, dates=True),
    }
    for name, png in charts.items():
        (directory / name).write_bytes(png)
        written.append(directory / name)
    lines = [
        "# Data report",
        "",
        f"{report.files:,} file(s) on {report.instances} instance(s); "
        f"{report.users:,} users and {report.items:,} items kept; k-core in {report.kcore_rounds} round(s).",
        "",
        "| step | rows |",
        "|---|---:|",
        *(f"| {step['step']} | {step['rows']:,} |" for step in report.steps),
        "",
        "| split | rows |",
        "|---|---:|",
        *(f"| {name} | {rows:,} |" for name, rows in report.splits.items()),
        "",
        *(f"![{name}]({name})" for name in CHARTS),
        "",
    ]
    path = directory / REPORT_MARKDOWN
    path.write_text("\n".join(lines), encoding="utf-8")
    written.append(path)
    return written
