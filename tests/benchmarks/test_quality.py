"""The cold-user protocol's requests: what a client in the present would send."""

from __future__ import annotations

import pandas as pd

from benchmarks.quality import cold_requests, format_validation_markdown
from recsys.serving.engine import Event
from recsys.serving.schemas import parse_instances


def test_cold_requests_carry_each_users_events_in_time_order_and_the_moment_they_return() -> None:
    history = pd.DataFrame(
        {
            "user_id": ["7", "7", "9", "7"],
            "item_id": ["b", "a", "c", "d"],
            "timestamp": [20.0, 10.0, 5.0, 20.0],
        }
    )
    judged = pd.DataFrame({"user_id": ["7", "7"], "item_id": ["x", "y"], "timestamp": [40.0, 30.0]})

    requests = cold_requests(history, judged, ["7", "9"], k=10)

    assert requests[0] == {
        "history": [
            {"item_id": "a", "timestamp": 10.0},
            {"item_id": "b", "timestamp": 20.0},  # a tie keeps the table's row order
            {"item_id": "d", "timestamp": 20.0},
        ],
        "k": 10,
        "context": {"timestamp": 30.0},
    }
    assert requests[1] == {"history": [{"item_id": "c", "timestamp": 5.0}], "k": 10}  # nothing judged
    first, _ = parse_instances(requests)
    assert first.history == (Event("a", 10.0), Event("b", 20.0), Event("d", 20.0))


def test_the_validation_table_shows_each_rows_validation_figures_and_epochs() -> None:
    result = {
        "models": {
            "EASE": {"ndcg@10": 0.0878, "ndcg@10_se": 0.007, "hr@10": 0.176},
            "recsys default": {"ndcg@10": 0.1534, "ndcg@10_se": 0.0099, "hr@10": 0.2778},
        },
        "training": {"recsys default": {"wall_seconds": 101.6, "epochs_run": 23, "best_epoch": 18}},
    }

    lines = format_validation_markdown(result).splitlines()

    assert lines[0] == "| model | val NDCG@10 | val HR@10 | best epoch (of) | train s |"
    assert lines[2] == "| EASE | 0.0878 ± 0.0070 | 0.1760 | n/a | n/a |"
    assert lines[3] == "| recsys default | 0.1534 ± 0.0099 | 0.2778 | 18 (23) | 102 |"
