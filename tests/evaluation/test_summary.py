"""recsys.evaluation.summary: the model beside the most-popular baseline, in words."""

from __future__ import annotations

from recsys.evaluation.protocols import Comparison
from recsys.evaluation.summary import side_by_side, verdict


def test_side_by_side_lists_each_metric_with_its_standard_error() -> None:
    model = {"ndcg@10": 0.1242, "ndcg@10_se": 0.0084, "hr@10": 0.245, "hr@10_se": 0.013, "gini@10": 0.9}
    popular = {"ndcg@10": 0.0442, "ndcg@10_se": 0.0052, "hr@10": 0.0859, "hr@10_se": 0.0091}

    lines = side_by_side(model, popular, (10,))

    assert lines[0].split() == ["metric", "model", "most-popular"]
    assert lines[1].split() == ["ndcg@10", "0.1242", "±", "0.0084", "0.0442", "±", "0.0052"]
    assert lines[2].split()[0] == "hr@10"
    assert len(lines) == 3  # gini is not an accuracy metric of both


def test_the_verdict_says_clearly_better_only_beyond_two_standard_errors() -> None:
    better = Comparison("ndcg@10", 0.1242, 0.0442, 0.08, 0.007)
    close = Comparison("ndcg@10", 0.073, 0.070, 0.003, 0.005)

    assert better.clearly_better and verdict(better).endswith("clearly better (more than 2 standard errors).")
    assert "2.81x" in verdict(better)
    assert not close.clearly_better
    assert "NOT clearly better than recommending the most-popular items" in verdict(close)
    assert "0.0730 vs 0.0700" in verdict(close)
