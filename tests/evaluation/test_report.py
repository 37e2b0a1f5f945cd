"""The evaluation report: its pure parts against hand-computed answers, then the page a real
training job and ``recsys evaluate --report`` write, read back with ``html.parser``."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsys.cli import main
from recsys.data.synthetic import SyntheticData
from recsys.evaluation.report import (
    REPORT_HTML,
    REPORT_JSON,
    activity_segments,
    build_report,
    draw_charts,
    popularity_deciles,
    popularity_percentiles,
    render_html,
    write_report_files,
)
from tests.evaluation.report_pages import PNG_MAGIC, Page, read_page, synthetic_inputs, with_se
from tests.serving.trained_model import trained_tree

BUCKETS = ["1-4", "5-19", "20-99", "100+"]


# --- pure parts, hand-computed ------------------------------------------------------------------


def test_popularity_percentiles_put_ties_at_their_mid_rank() -> None:
    percentile = popularity_percentiles(np.array([0, 10, 0, 5]))

    # Two items tie at the bottom: ranks 0 and 1 of 4, mid-rank 0.5 -> 0.125 each.
    np.testing.assert_allclose(percentile, [0.125, 0.75, 0.125, 0.5])


def test_popularity_deciles_show_the_baseline_in_the_top_decile() -> None:
    counts = np.arange(20)  # item i has i interactions: items 18 and 19 are the top decile
    popular = np.array([[19, 18]] * 3)
    uniform = np.array([[0, 10], [5, 15], [2, 19]])

    out = popularity_deciles(counts, uniform, popular)

    deciles = out["deciles"]
    assert [d["share_of_items"] for d in deciles] == pytest.approx([0.1] * 10)
    assert deciles[-1]["share_of_most_popular_recommendations"] == pytest.approx(1.0)
    assert sum(d["share_of_model_recommendations"] for d in deciles) == pytest.approx(1.0)
    assert deciles[-1]["share_of_training_interactions"] == pytest.approx((18 + 19) / counts.sum())
    assert out["mean_percentile"]["catalogue"] == pytest.approx(0.475)  # (0 + ... + 19) / 20 / 20
    assert out["mean_percentile"]["most_popular_recommendations"] == pytest.approx((0.95 + 0.9) / 2)


def test_activity_segments_give_each_bucket_its_mean_and_standard_error() -> None:
    lengths = np.array([1, 3, 7, 150])
    model = {"ndcg@10": np.array([0.0, 1.0, 0.5, 0.25])}
    baseline = {"ndcg@10": np.array([1.0, 1.0, 0.0, 0.0])}

    rows = activity_segments(lengths, model, baseline, ["ndcg@10"])

    assert [r["label"] for r in rows] == BUCKETS
    assert [r["num_users"] for r in rows] == [2, 1, 0, 1]
    few = rows[0]
    assert few["few_interactions"] and not rows[1]["few_interactions"]
    assert few["metrics"]["ndcg@10"]["model"] == pytest.approx(0.5)
    assert few["metrics"]["ndcg@10"]["model_se"] == pytest.approx(math.sqrt(0.5) / math.sqrt(2))
    assert few["metrics"]["ndcg@10"]["most_popular_se"] == 0.0
    assert rows[1]["metrics"]["ndcg@10"]["model_se"] == 0.0  # one user: no spread to estimate
    assert rows[2]["metrics"]["ndcg@10"]["model"] is None  # an empty bucket is listed, with no value


def test_users_without_history_get_a_segment_only_when_there_are_some() -> None:
    values = {"hr@10": np.array([1.0, 0.0])}

    rows = activity_segments(np.array([0, 2]), values, values, ["hr@10"])

    assert [r["label"] for r in rows] == ["0", *BUCKETS]


# --- the page, from seeded inputs -------------------------------------------------------------


def _assert_self_contained(html_text: str, page: Page) -> None:
    assert "http://" not in html_text and "https://" not in html_text
    assert page.links and all(link.startswith("data:image/png;base64,") for link in page.links)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    for image in page.images:
        assert image["alt"]
        png = base64.b64decode(image["src"].removeprefix("data:image/png;base64,"), validate=True)
        assert png[:8] == PNG_MAGIC and len(png) > 5000


def _assert_matches_json(page: Page, report: dict[str, Any]) -> None:
    """The page's tables say what report.json says, to the digits shown."""
    assert page.title == page.h1 == report["title"]
    metrics = page.tables["metrics"]
    assert metrics.header == ["metric", "protocol", "model", "most-popular"]
    assert metrics.column("metric") == [row["name"] for row in report["metrics"]]
    assert metrics.column("model") == [with_se(r["model"], r["model_se"]) for r in report["metrics"]]
    assert metrics.column("most-popular") == [
        with_se(r["most_popular"], r["most_popular_se"]) for r in report["metrics"]
    ]
    assert any(" ± " in cell for cell in metrics.column("most-popular"))

    segments = page.tables["segments"]
    rows = report["segments"]["rows"]
    assert [r[0].split(" ")[0] for r in segments.rows] == [r["label"] for r in rows]
    assert segments.rows[[r["label"] for r in rows].index("1-4")][0] == "1-4 (few interactions)"
    assert [int(r[1]) for r in segments.rows] == [r["num_users"] for r in rows]
    assert segments.header_rows[0][1:] == report["segments"]["metric_names"]
    first = report["segments"]["metric_names"][0]
    assert [r[3] for r in segments.rows] == [
        with_se(r["metrics"][first]["model"], r["metrics"][first]["model_se"]) for r in rows
    ]
    assert [r[4] for r in segments.rows] == [
        with_se(r["metrics"][first]["most_popular"], r["metrics"][first]["most_popular_se"]) for r in rows
    ]

    beyond = page.tables["beyond-accuracy"]
    k = report["k"]
    assert {f"coverage@{k}", f"gini@{k}", f"novelty@{k}"} <= set(beyond.column("metric"))
    assert beyond.column("most-popular")[0] == f"{report['beyond_accuracy'][0]['most_popular']:.4f}"

    deciles = page.tables["popularity"]
    assert len(deciles.rows) == 10
    assert deciles.column("model") == [
        f"{100 * d['share_of_model_recommendations']:.1f}%" for d in report["popularity"]["deciles"]
    ]


def test_a_report_from_seeded_inputs_renders_every_section(tmp_path: Path) -> None:
    report = build_report(synthetic_inputs())
    charts = draw_charts(report)

    json_path, html_path = write_report_files(
        tmp_path, report, {**charts, "learning_curves": charts["segments"]}
    )

    page = read_page(html_path.read_text(encoding="utf-8"))
    assert json.loads(json_path.read_text(encoding="utf-8")) == report
    _assert_matches_json(page, report)
    _assert_self_contained(html_path.read_text(encoding="utf-8"), page)
    assert {i["id"] for i in page.images} == {"chart-popularity", "chart-segments", "chart-learning_curves"}
    assert page.h2 == [
        "Summary",
        "Accuracy: the model beside most-popular",
        "Coverage, Gini and novelty",
        "By user activity",
        "Popularity bias",
        "Learning curves",
    ]
    assert [r[0] for r in page.tables["epochs"].rows] == ["1", "2", "3 (best)"]
    assert [r["label"] for r in report["segments"]["rows"]] == BUCKETS
    assert all(r["num_users"] == 60 for r in report["segments"]["rows"])


def test_every_text_is_escaped() -> None:
    html_text = render_html(build_report(synthetic_inputs()), {})

    assert "<script>" not in html_text and "<b>" not in html_text
    assert "Report &lt;of&gt; a test &amp; its &quot;quotes&quot;" in html_text
    assert "a note &lt;script&gt;" in html_text
    assert "chart not drawn" in html_text  # no charts given: said so, no broken image


# --- the page a training job and `recsys evaluate --report` write ------------------------------


@pytest.fixture(scope="module")
def job_base(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data)


def _read(directory: Path) -> tuple[dict[str, Any], str, Page]:
    report = json.loads((directory / REPORT_JSON).read_text(encoding="utf-8"))
    html_text = (directory / REPORT_HTML).read_text(encoding="utf-8")
    return report, html_text, read_page(html_text)


def test_the_training_job_writes_the_report(job_base: Path) -> None:
    out = job_base / "output" / "data"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))

    report, html_text, page = _read(out)

    _assert_matches_json(page, report)
    _assert_self_contained(html_text, page)
    # The same job's numbers: the report is metrics.json's validation, not a second evaluation.
    ndcg = next(r for r in report["metrics"] if r["name"] == "ndcg@10")
    assert ndcg["model"] == metrics["validation"]["ndcg@10"]
    assert ndcg["most_popular_se"] == metrics["most_popular"]["ndcg@10_se"]
    assert report["num_users"] == metrics["validation"]["num_users"]
    assert sum(r["num_users"] for r in report["segments"]["rows"]) == report["num_users"]
    assert report["learning_curves"]["best_epoch"] == metrics["best_epoch"]
    assert len(report["learning_curves"]["epochs"]) == metrics["epochs_run"]
    # The learning-curves chart on the page is the PNG written beside it.
    curves = next(i for i in page.images if i["id"] == "chart-learning_curves")
    assert base64.b64decode(curves["src"].split(",", 1)[1]) == (out / "learning_curves.png").read_bytes()


def test_evaluate_writes_the_same_report_for_a_held_out_table(
    job_base: Path, tiny_data: SyntheticData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_file = tmp_path / "test.csv"
    tiny_data.interactions.sort_values("timestamp").groupby("user_id").tail(2).to_csv(test_file, index=False)
    report_dir = tmp_path / "report"

    code = main(
        [
            "evaluate",
            "--model-dir",
            str(job_base / "model"),
            "--test",
            str(test_file),
            "--repeats",
            "count",
            "--report",
            str(report_dir),
            "--json",
        ]
    )

    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert printed["report"] == str(report_dir / REPORT_HTML)
    report, html_text, page = _read(report_dir)
    _assert_matches_json(page, report)
    _assert_self_contained(html_text, page)
    ndcg = next(r for r in report["metrics"] if r["name"] == "ndcg@10")
    assert ndcg["model"] == printed["ndcg@10"] and ndcg["most_popular"] == printed["most_popular"]["ndcg@10"]
    assert report["learning_curves"] is None and "Learning curves" in page.h2
    assert {i["id"] for i in page.images} == {"chart-popularity", "chart-segments"}
