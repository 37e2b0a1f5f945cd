"""The evaluation report a person reads: ``report.json`` (every number) and ``report.html`` (one file).

Three steps, each usable alone:

- ``build_report(inputs)``: a pure function from arrays (per-user metric values of the model and of
  the most-popular baseline, each user's training-history length, item popularity, the
  recommendation lists, epoch records) to a JSON-ready dict.
- ``draw_charts(report)``: PNG bytes of the report's charts, drawn from that dict alone.
- ``render_html(report, charts)``: the page as a string; the charts are embedded as base64 data
  URIs and the styling is inline, so the file opens anywhere without a network or JavaScript.

Shapes: U = evaluated users, K = length of each recommendation list, N = catalogue items.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.evaluation.summary import BASELINE_NAME, SIDE_BY_SIDE

__all__ = [
    "ACTIVITY_BUCKETS",
    "REPORT_HTML",
    "REPORT_JSON",
    "ReportInputs",
    "activity_segments",
    "build_report",
    "draw_charts",
    "popularity_deciles",
    "popularity_percentiles",
    "render_html",
    "write_report_files",
]

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
SCHEMA_VERSION = 1

# Users with at most this many training interactions are the "few interactions" segment: where
# collaborative filtering has least to go on.
FEW_INTERACTIONS = 4
# Training interactions per user, inclusive bounds (None: no upper bound).
ACTIVITY_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (1, FEW_INTERACTIONS),
    (FEW_INTERACTIONS + 1, 19),
    (20, 99),
    (100, None),
)
SEGMENT_METRICS = ("ndcg", "hr")
NUM_DECILES = 10

_BEYOND_ACCURACY = {
    "coverage": "share of the catalogue recommended to at least one user (higher: more of it is used)",
    "gini": "inequality of how often items are recommended (0: all equally, towards 1: a few items)",
    "novelty": "mean self-information -log2(p) of recommended items, in bits (higher: less popular)",
    "diversity": "mean pairwise cosine distance of item attributes within a list (higher: more varied)",
}


@dataclass(frozen=True)
class ReportInputs:
    """Everything a report is built from; arrays are host (numpy) arrays over the same U users."""

    title: str
    source: str  # what the held-out data is, in words
    ks: tuple[int, ...]  # cut-offs of the accuracy metrics
    k: int  # the cut-off of the segments, the popularity chart and the beyond-accuracy metrics
    model_metrics: Mapping[str, float]  # means, "<name>_se", sampled and beyond-accuracy values
    baseline_metrics: Mapping[str, float]  # the same for most-popular (no sampled ones)
    comparison: Mapping[str, Any]  # the paired model-vs-baseline comparison, with its verdict
    model_values: Mapping[str, np.ndarray]  # "ndcg@10" -> [U] per-user values
    baseline_values: Mapping[str, np.ndarray]  # the same users in the same order
    history_lengths: np.ndarray  # [U] training interactions of each evaluated user
    item_counts: np.ndarray  # [N] training interactions of each item
    model_top: np.ndarray  # [U, K] item indices, best first
    baseline_top: np.ndarray  # [U, K]
    epochs: Sequence[Mapping[str, Any]] = ()  # one dict per epoch (EpochRecord fields)
    refit_epochs: Sequence[Mapping[str, Any]] = ()
    best_epoch: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # shown as "name: value" lines
    notes: Sequence[str] = ()  # warnings a reader should see first


def _mean_se(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and standard error (unbiased std / sqrt(n), as ``RankingReport.summary``); None when empty."""
    n = values.shape[0]
    if n == 0:
        return None, None
    se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return float(np.mean(values)), se


def _bucket_label(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else (str(low) if low == high else f"{low}-{high}")


def activity_segments(
    history_lengths: np.ndarray,
    model_values: Mapping[str, np.ndarray],
    baseline_values: Mapping[str, np.ndarray],
    metric_names: Sequence[str],
    buckets: Sequence[tuple[int, int | None]] = ACTIVITY_BUCKETS,
) -> list[dict[str, Any]]:
    """One row per activity bucket: its users, and each metric's mean ± SE for model and baseline.

    Every bucket is listed, an empty one with ``num_users`` 0 and null metrics, so reports of
    different data sets line up. Users below the first bucket (no training history) get a row of
    their own only when there are some.
    """
    lengths = np.asarray(history_lengths, dtype=np.int64)
    total = lengths.shape[0]
    rows: list[tuple[str, int, int | None, np.ndarray]] = []
    first = buckets[0][0]
    below = lengths < first
    if below.any():
        rows.append((_bucket_label(0, first - 1), 0, first - 1, below))
    for low, high in buckets:
        inside = (lengths >= low) & (lengths <= (high if high is not None else np.iinfo(np.int64).max))
        rows.append((_bucket_label(low, high), low, high, inside))
    out = []
    for label, low, high, inside in rows:
        count = int(inside.sum())
        metrics: dict[str, dict[str, float | None]] = {}
        for name in metric_names:
            model_mean, model_se = _mean_se(np.asarray(model_values[name])[inside])
            base_mean, base_se = _mean_se(np.asarray(baseline_values[name])[inside])
            metrics[name] = {
                "model": model_mean,
                "model_se": model_se,
                "most_popular": base_mean,
                "most_popular_se": base_se,
            }
        out.append(
            {
                "label": label,
                "min_interactions": low,
                "max_interactions": high,
                "num_users": count,
                "share_of_users": count / total if total else 0.0,
                "few_interactions": high is not None and high <= FEW_INTERACTIONS,
                "metrics": metrics,
            }
        )
    return out


def popularity_percentiles(item_counts: np.ndarray) -> np.ndarray:
    """Each item's popularity percentile in [0, 1): the share of the catalogue less popular than it,
    items of equal popularity counted half (mid-ranks), so ties never split arbitrarily. [N] float64."""
    counts = np.asarray(item_counts)
    n = counts.shape[0]
    if n == 0:
        return np.zeros(0)
    ordered = np.sort(counts)
    less = np.searchsorted(ordered, counts, side="left")
    equal = np.searchsorted(ordered, counts, side="right") - less
    percentile: np.ndarray = (less + 0.5 * (equal - 1)) / n
    return percentile


def popularity_deciles(
    item_counts: np.ndarray, model_top: np.ndarray, baseline_top: np.ndarray
) -> dict[str, Any]:
    """Where recommendations fall on the catalogue's popularity scale.

    Items are put in ten deciles of popularity percentile (decile 10: the most popular tenth).
    For each decile: its share of the catalogue's items, of the training interactions, of the
    model's recommendation slots and of the baseline's. A model without popularity bias would
    recommend each decile about as often as it holds items; the baseline puts everything in the top.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    percentile = popularity_percentiles(counts)
    decile = np.minimum((percentile * NUM_DECILES).astype(np.int64), NUM_DECILES - 1)
    num_items = counts.shape[0]

    def share(weights: np.ndarray) -> list[float]:
        total = float(weights.sum())
        sums = np.bincount(decile, weights=weights, minlength=NUM_DECILES)
        return [float(s / total) if total > 0 else 0.0 for s in sums]

    def slots(top: np.ndarray) -> np.ndarray:
        return np.bincount(np.asarray(top, dtype=np.int64).ravel(), minlength=num_items).astype(np.float64)

    def mean_percentile(weights: np.ndarray) -> float | None:
        total = float(weights.sum())
        return float((percentile * weights).sum() / total) if total > 0 else None

    model_slots, baseline_slots = slots(model_top), slots(baseline_top)
    items = share(np.ones(num_items))
    interactions = share(counts)
    model = share(model_slots)
    baseline = share(baseline_slots)
    rows = [
        {
            "decile": d + 1,
            "label": f"{d * 10}-{(d + 1) * 10}%",
            "share_of_items": items[d],
            "share_of_training_interactions": interactions[d],
            "share_of_model_recommendations": model[d],
            "share_of_most_popular_recommendations": baseline[d],
        }
        for d in range(NUM_DECILES)
    ]
    return {
        "deciles": rows,
        "mean_percentile": {
            "catalogue": mean_percentile(np.ones(num_items)),
            "training_interactions": mean_percentile(counts),
            "model_recommendations": mean_percentile(model_slots),
            "most_popular_recommendations": mean_percentile(baseline_slots),
        },
    }


def _beyond_accuracy_rows(inputs: ReportInputs) -> list[dict[str, Any]]:
    """Coverage, Gini, novelty (and diversity, with item attributes) of both lists, at ``k``."""
    rows = []
    for name, description in _BEYOND_ACCURACY.items():
        key = f"{name}@{inputs.k}"
        model, baseline = inputs.model_metrics.get(key), inputs.baseline_metrics.get(key)
        if model is None and baseline is None:
            continue
        rows.append({"name": key, "model": model, "most_popular": baseline, "description": description})
    return rows


def _metric_rows(inputs: ReportInputs) -> list[dict[str, Any]]:
    rows = []
    for k in inputs.ks:
        for name in SIDE_BY_SIDE:
            key = f"{name}@{k}"
            if key not in inputs.model_metrics:
                continue
            rows.append(
                {
                    "name": key,
                    "protocol": "full ranking",
                    "model": inputs.model_metrics[key],
                    "model_se": inputs.model_metrics.get(f"{key}_se"),
                    "most_popular": inputs.baseline_metrics.get(key),
                    "most_popular_se": inputs.baseline_metrics.get(f"{key}_se"),
                }
            )
    for key in sorted(inputs.model_metrics):
        if key.startswith("sampled_") and not key.endswith("_se"):
            rows.append(
                {
                    "name": key,
                    "protocol": "sampled",
                    "model": inputs.model_metrics[key],
                    "model_se": inputs.model_metrics.get(f"{key}_se"),
                    "most_popular": None,
                    "most_popular_se": None,
                }
            )
    return rows


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def build_report(inputs: ReportInputs) -> dict[str, Any]:
    """The report as a JSON-ready dict; ``render_html`` and ``draw_charts`` read nothing else."""
    k = inputs.k
    segment_names = [f"{name}@{k}" for name in SEGMENT_METRICS if f"{name}@{k}" in inputs.model_values]
    segments = activity_segments(
        inputs.history_lengths, inputs.model_values, inputs.baseline_values, segment_names
    )
    few = [row for row in segments if row["few_interactions"] and row["min_interactions"] > 0]
    report = {
        "schema_version": SCHEMA_VERSION,
        "title": inputs.title,
        "source": inputs.source,
        "details": dict(inputs.details),
        "k": k,
        "ks": list(inputs.ks),
        "num_users": int(inputs.history_lengths.shape[0]),
        "num_items": int(inputs.item_counts.shape[0]),
        "baseline": BASELINE_NAME,
        "comparison": dict(inputs.comparison),
        "metrics": _metric_rows(inputs),
        "beyond_accuracy": _beyond_accuracy_rows(inputs),
        "segments": {
            "by": "training interactions per user",
            "metric_names": segment_names,
            "few_interactions_max": FEW_INTERACTIONS,
            "few_interactions_users": sum(row["num_users"] for row in few),
            "rows": segments,
        },
        "popularity": {
            "k": k,
            **popularity_deciles(inputs.item_counts, inputs.model_top[:, :k], inputs.baseline_top[:, :k]),
        },
        "learning_curves": {
            "epochs": [dict(e) for e in inputs.epochs],
            "refit_epochs": [dict(e) for e in inputs.refit_epochs],
            "best_epoch": inputs.best_epoch,
        }
        if inputs.epochs
        else None,
        # The verdict heads the page already: a warning that only repeats it is not listed again.
        "notes": [note for note in inputs.notes if note != inputs.comparison.get("verdict")],
    }
    return dict(_finite(report))


# --- charts -----------------------------------------------------------------------------------

# One palette for every chart: the model, the baseline, then the data's own distribution.
_MODEL_COLOUR, _BASELINE_COLOUR, _DATA_COLOUR, _ITEMS_COLOUR = "#1f6fb2", "#e0852b", "#8a8a8a", "#333333"


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _popularity_chart(popularity: Mapping[str, Any]) -> bytes:
    # matplotlib's object API without pyplot: no global backend or figure state is touched.
    from matplotlib.figure import Figure

    deciles = popularity["deciles"]
    x = np.arange(len(deciles))
    fig = Figure(figsize=(10, 4.2))
    ax = fig.add_subplot()
    width = 0.27
    series = (
        ("share_of_training_interactions", "training interactions", _DATA_COLOUR, -width),
        ("share_of_model_recommendations", "model", _MODEL_COLOUR, 0.0),
        ("share_of_most_popular_recommendations", BASELINE_NAME, _BASELINE_COLOUR, width),
    )
    for key, label, colour, offset in series:
        ax.bar(x + offset, [100 * d[key] for d in deciles], width, label=label, color=colour)
    ax.step(
        np.append(x, x[-1] + 1) - 0.5,
        [100 * d["share_of_items"] for d in deciles] + [100 * deciles[-1]["share_of_items"]],
        where="post",
        color=_ITEMS_COLOUR,
        linestyle="--",
        linewidth=1.2,
        label="catalogue items",
    )
    ax.set_xticks(x, [d["label"] for d in deciles])
    ax.set_xlabel("item popularity percentile in training (right: most popular)")
    ax.set_ylabel("share (%)")
    ax.set_title(f"Where the top-{popularity['k']} recommendations fall on the popularity scale")
    # Below the axes: inside, it would cover the bars or the catalogue line, whichever is high.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=4, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return _png(fig)


def _segments_chart(segments: Mapping[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    name = segments["metric_names"][0]
    rows = [row for row in segments["rows"] if row["num_users"] > 0]
    x = np.arange(len(rows))
    fig = Figure(figsize=(10, 3.8))
    ax = fig.add_subplot()
    width = 0.38
    for who, label, colour, offset in (
        ("model", "model", _MODEL_COLOUR, -width / 2),
        ("most_popular", BASELINE_NAME, _BASELINE_COLOUR, width / 2),
    ):
        means = [row["metrics"][name][who] for row in rows]
        errors = [2 * row["metrics"][name][f"{who}_se"] for row in rows]
        ax.bar(x + offset, means, width, yerr=errors, capsize=4, label=label, color=colour)
    ax.set_xticks(x, [f"{row['label']}\n({row['num_users']} users)" for row in rows])
    ax.set_xlabel("training interactions per user")
    ax.set_ylabel(name)
    ax.set_title(f"{name} by user activity (error bars: ± 2 standard errors)")
    ax.legend(loc="upper left", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return _png(fig)


def draw_charts(report: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG bytes of the popularity chart and, when there are users, the segments chart."""
    charts = {"popularity": _popularity_chart(report["popularity"])}
    if report["segments"]["metric_names"] and any(r["num_users"] for r in report["segments"]["rows"]):
        charts["segments"] = _segments_chart(report["segments"])
    return charts


# --- HTML ---------------------------------------------------------------------------------------

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: #222;
  margin: 0 auto; max-width: 1080px; padding: 24px 32px 48px; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
p.source { color: #555; margin-top: 0; }
dl.details { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; color: #444; }
dl.details dt { font-weight: 600; } dl.details dd { margin: 0; }
.verdict { padding: 10px 14px; border-radius: 4px; border-left: 5px solid; }
.verdict.better { background: #eef7ee; border-color: #3c8d3c; }
.verdict.not-better { background: #fdf3e6; border-color: #d9822b; }
ul.notes li { color: #8a4b00; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.93em; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; white-space: normal; color: #555; }
thead tr.group th { background: #fff; border-bottom: 1px solid #ccc; text-align: center; }
thead th { background: #f3f5f7; border-bottom: 2px solid #ccc; }
tbody tr:nth-child(even) { background: #fafafa; }
td { font-variant-numeric: tabular-nums; }
td.model { color: #1f6fb2; } td.baseline { color: #b5601b; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
p.missing, p.hint { color: #777; font-style: italic; }
footer { margin-top: 3em; color: #777; font-size: 0.85em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _with_se(mean: float | None, se: float | None) -> str:
    """``0.1234 ± 0.0056``: the spelling the tests read back, and the one ``summary`` prints."""
    if mean is None:
        return "—"
    return f"{mean:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f}%"


def _table(
    table_id: str,
    header: Sequence[str],
    rows: Sequence[Sequence[tuple[str, str]]],
    *,
    groups: Sequence[tuple[str, int]] = (),
    text_columns: Sequence[int] = (),
) -> str:
    """A table; each cell is (css class, already-escaped text). ``groups``: an upper header row of
    (label, columns spanned); ``text_columns``: header positions aligned as prose, not numbers."""

    def head_cell(position: int, label: str) -> str:
        return (
            f'<th class="text">{_esc(label)}</th>' if position in text_columns else f"<th>{_esc(label)}</th>"
        )

    def cell(cls: str, text: str) -> str:
        return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"

    upper = ""
    if groups:
        spans = "".join(f'<th colspan="{span}">{_esc(label)}</th>' for label, span in groups)
        upper = f'<tr class="group">{spans}</tr>'
    head = "".join(head_cell(i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(cls, text) for cls, text in row) + "</tr>" for row in rows)
    return f'<table id="{_esc(table_id)}"><thead>{upper}<tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _image(charts: Mapping[str, bytes], name: str, alt: str) -> str:
    data = charts.get(name, b"")
    if not data:
        return f'<p class="missing">({_esc(alt)}: chart not drawn)</p>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img id="chart-{_esc(name)}" alt="{_esc(alt)}" src="data:image/png;base64,{encoded}">'


def _summary_section(report: Mapping[str, Any]) -> str:
    comparison = report["comparison"]
    better = bool(comparison.get("clearly_better"))
    parts = [
        f'<p class="verdict {"better" if better else "not-better"}">{_esc(comparison.get("verdict", ""))}</p>'
    ]
    if report["notes"]:
        parts.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in report["notes"]) + "</ul>")
    details = {
        "users evaluated": report["num_users"],
        "catalogue items": report["num_items"],
        "cut-off k": report["k"],
        **report["details"],
    }
    parts.append(
        '<dl class="details">'
        + "".join(f"<dt>{_esc(name)}</dt><dd>{_esc(value)}</dd>" for name, value in details.items())
        + "</dl>"
    )
    return "<h2>Summary</h2>" + "".join(parts)


def _metrics_section(report: Mapping[str, Any]) -> str:
    rows = [
        [
            ("", _esc(row["name"])),
            ("", _esc(row["protocol"])),
            ("model", _esc(_with_se(row["model"], row["model_se"]))),
            ("baseline", _esc(_with_se(row["most_popular"], row["most_popular_se"]))),
        ]
        for row in report["metrics"]
    ]
    return (
        f"<h2>Accuracy: the model beside {_esc(report['baseline'])}</h2>"
        '<p class="hint">Mean over evaluated users ± standard error. Full ranking ranks every item the '
        "user has not interacted with in training; the sampled protocol ranks each held-out item among "
        f"a few random ones (it overstates accuracy). {_esc(report['baseline'])} is computed alongside, "
        "over the same users, with the same masks.</p>"
        + _table("metrics", ["metric", "protocol", "model", report["baseline"]], rows)
    )


def _beyond_section(report: Mapping[str, Any]) -> str:
    rows = [
        [
            ("", _esc(row["name"])),
            ("model", _esc(_number(row["model"]))),
            ("baseline", _esc(_number(row["most_popular"]))),
            ("text", _esc(row["description"])),
        ]
        for row in report["beyond_accuracy"]
    ]
    return "<h2>Coverage, Gini and novelty</h2>" + _table(
        "beyond-accuracy",
        ["metric", "model", report["baseline"], "what it measures"],
        rows,
        text_columns=(3,),
    )


def _segments_section(report: Mapping[str, Any], charts: Mapping[str, bytes]) -> str:
    segments = report["segments"]
    names = segments["metric_names"]
    header = ["training interactions", "users", "share"]
    for _ in names:
        header += ["model", report["baseline"]]
    groups = [("", 3), *((name, 2) for name in names)]
    rows = []
    for row in segments["rows"]:
        label = row["label"] + (" (few interactions)" if row["few_interactions"] else "")
        cells = [("", _esc(label)), ("", _esc(row["num_users"])), ("", _esc(_percent(row["share_of_users"])))]
        for name in names:
            values = row["metrics"][name]
            cells.append(("model", _esc(_with_se(values["model"], values["model_se"]))))
            cells.append(("baseline", _esc(_with_se(values["most_popular"], values["most_popular_se"]))))
        rows.append(cells)
    total = report["num_users"]
    few = segments["few_interactions_users"]
    share = f" ({100 * few / total:.1f}% of them)" if total else ""
    return (
        "<h2>By user activity</h2>"
        f'<p class="hint">Users grouped by their number of training interactions. {few} of {total} '
        f"evaluated users{share} have at most {segments['few_interactions_max']}: the users a recommender "
        "knows least about.</p>"
        + _table("segments", header, rows, groups=groups)
        + _image(charts, "segments", "metric by user activity, model and baseline")
    )


def _popularity_section(report: Mapping[str, Any], charts: Mapping[str, bytes]) -> str:
    popularity = report["popularity"]
    baseline = report["baseline"]
    rows = [
        [
            ("", _esc(d["label"])),
            ("", _esc(_percent(d["share_of_items"]))),
            ("", _esc(_percent(d["share_of_training_interactions"]))),
            ("model", _esc(_percent(d["share_of_model_recommendations"]))),
            ("baseline", _esc(_percent(d["share_of_most_popular_recommendations"]))),
        ]
        for d in popularity["deciles"]
    ]
    means = popularity["mean_percentile"]
    summary = (
        f"Mean popularity percentile of recommended items: model {_percent(means['model_recommendations'])}, "
        f"{baseline} {_percent(means['most_popular_recommendations'])}; of training interactions "
        f"{_percent(means['training_interactions'])}; of catalogue items {_percent(means['catalogue'])}."
    )
    return (
        "<h2>Popularity bias</h2>"
        f'<p class="hint">Items in ten groups by training popularity (percentile, ties at their mid-rank); '
        "for each, its share of the catalogue, of the training interactions, and of the "
        f"top-{popularity['k']} recommendation slots. {_esc(summary)}</p>"
        + _image(charts, "popularity", "share of recommendations per popularity decile")
        + _table(
            "popularity",
            ["popularity percentile", "items", "training interactions", "model", baseline],
            rows,
        )
    )


def _curves_section(report: Mapping[str, Any], charts: Mapping[str, bytes]) -> str:
    curves = report["learning_curves"]
    if curves is None:
        return (
            "<h2>Learning curves</h2>"
            '<p class="missing">Not part of this evaluation: a saved model does not carry them; the '
            "training job's report (output/data/report.html, learning_curves.json) has them.</p>"
        )
    # The plotted metrics only: every metric per epoch would not fit a page (learning_curves.json has them).
    wanted = {f"{m}@{k}" for m in ("ndcg", "hr") for k in (10, report["k"])}
    names = sorted({name for e in curves["epochs"] for name in e.get("validation", {})} & wanted)
    header = ["epoch", "training loss", *[f"validation {n}" for n in names], "seconds"]
    rows = []
    for phase, epochs in (("", curves["epochs"]), ("refit ", curves["refit_epochs"])):
        for e in epochs:
            best = " (best)" if not phase and e["epoch"] == curves["best_epoch"] else ""
            cells = [("", _esc(f"{phase}{e['epoch']}{best}")), ("", _esc(_number(e["train_loss"])))]
            cells += [("", _esc(_number(e.get("validation", {}).get(n)))) for n in names]
            cells.append(("", _esc(_number(e.get("seconds"), 1))))
            rows.append(cells)
    return (
        "<h2>Learning curves</h2>"
        + _image(charts, "learning_curves", "training loss and validation metrics per epoch")
        + _table("epochs", header, rows)
    )


def render_html(report: Mapping[str, Any], charts: Mapping[str, bytes]) -> str:
    """The report as one self-contained HTML page: every text escaped, charts as data URIs."""
    title = _esc(report["title"])
    body = "".join(
        [
            f"<h1>{title}</h1>",
            f'<p class="source">{_esc(report["source"])}</p>',
            _summary_section(report),
            _metrics_section(report),
            _beyond_section(report),
            _segments_section(report, charts),
            _popularity_section(report, charts),
            _curves_section(report, charts),
            f"<footer>Every number on this page is in {REPORT_JSON}, next to this file.</footer>",
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>{body}</body></html>\n"
    )


def write_report_files(
    directory: Path, report: Mapping[str, Any], charts: Mapping[str, bytes]
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / REPORT_JSON, directory / REPORT_HTML
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False), encoding="utf-8")
    html_path.write_text(render_html(report, charts), encoding="utf-8")
    return json_path, html_path
