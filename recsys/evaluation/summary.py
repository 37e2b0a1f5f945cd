"""Plain-text summaries of an evaluation, for logs and the command line: the model beside the
most-popular baseline, and whether it is clearly better than that baseline."""

from __future__ import annotations

from collections.abc import Mapping

from recsys.evaluation.protocols import Comparison

# The accuracy metrics shown beside the baseline's (every metric stays in metrics.json).
SIDE_BY_SIDE = ("ndcg", "hr", "recall", "precision", "map", "mrr")
BASELINE_NAME = "most-popular"


def side_by_side(model: Mapping[str, float], baseline: Mapping[str, float], ks: tuple[int, ...]) -> list[str]:
    """Lines of a table: each accuracy metric at each k, model and baseline, with standard errors."""
    rows = [(f"{name}@{k}", name, k) for k in ks for name in SIDE_BY_SIDE]
    lines = [f"{'metric':<14}{'model':>18}{BASELINE_NAME:>18}"]
    for label, _, _ in rows:
        if label not in model or label not in baseline:
            continue
        lines.append(f"{label:<14}{_with_se(model, label):>18}{_with_se(baseline, label):>18}")
    return lines


def _with_se(values: Mapping[str, float], name: str) -> str:
    se = values.get(f"{name}_se")
    return f"{values[name]:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def verdict(comparison: Comparison) -> str:
    """One sentence: the model against the baseline on one metric, and what that means."""
    ratio = f", {comparison.model / comparison.baseline:.2f}x" if comparison.baseline > 0 else ""
    head = (
        f"model vs {BASELINE_NAME} on {comparison.metric.upper()}: {comparison.model:.4f} vs "
        f"{comparison.baseline:.4f} (difference {comparison.difference:+.4f} ± "
        f"{comparison.difference_se:.4f}{ratio})"
    )
    if comparison.clearly_better:
        return f"{head}: clearly better (more than 2 standard errors)."
    return (
        f"{head}: NOT clearly better than recommending the {BASELINE_NAME} items (within 2 "
        "standard errors, or below). The model may have learnt little from this data: check that "
        "the data has enough interactions per user, try more epochs or another learning_rate, and "
        "compare on a larger validation set before serving it."
    )
