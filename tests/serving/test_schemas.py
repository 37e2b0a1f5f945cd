"""Request validation: what a JSON instance may carry, and the 400 that names a bad field."""

from __future__ import annotations

from typing import Any

import pytest

from recsys.errors import UserError
from recsys.serving.engine import Event
from recsys.serving.schemas import parse_instances


def test_history_entries_are_ids_or_events_with_a_time_in_either_form() -> None:
    (query,) = parse_instances(
        [
            {
                "user_id": 196,
                "history": [
                    "i1",
                    7,
                    {"item_id": "i2", "timestamp": 1_764_700_000},
                    {"item_id": "i3", "timestamp": "2025-12-02T18:26:40Z", "event_type": "cart"},
                    {"item_id": "i4", "timestamp": "2025-12-02T18:26:40"},  # no zone: UTC
                    {"item_id": "i5", "timestamp": "2025-12-02T19:26:40+01:00"},
                ],
                "history_mode": "replace",
                "context": {"device": "tv", "timestamp": "2026-12-02T20:00:00Z"},
                "user_attributes": {"age_group": "25-34", "age": 31},
                "exclude_event_types": ["purchase"],
            }
        ]
    )

    assert query.user_id == "196"
    assert query.history == (
        Event("i1"),
        Event("7"),
        Event("i2", 1_764_700_000.0),
        Event("i3", 1_764_700_000.0, "cart"),
        Event("i4", 1_764_700_000.0),
        Event("i5", 1_764_700_000.0),
    )
    assert query.history_mode == "replace"
    assert query.context == {"device": "tv", "timestamp": "2026-12-02T20:00:00Z"}
    assert query.user_attributes == {"age_group": "25-34", "age": 31}
    assert query.exclude_event_types == ("purchase",)
    assert query.k is None and query.size == 10 and query.excludes_seen


def test_candidates_default_to_all_of_them_and_keep_seen_ones() -> None:
    (query,) = parse_instances([{"user_id": "u1", "items": ["a", "b", "c"]}])
    assert query.size == 3 and not query.excludes_seen
    (asked,) = parse_instances([{"user_id": "u1", "items": ["a", "b", "c"], "exclude_seen": True, "k": 2}])
    assert asked.size == 2 and asked.excludes_seen


@pytest.mark.parametrize(
    ("instance", "named"),
    [
        ({"history": [{"item_id": "i1", "when": 3}]}, ["instance 0", "history.0.when", "Extra inputs"]),
        ({"history": [{"item_id": "i1", "timestamp": "soon"}]}, ["history.0.timestamp", "'soon'"]),
        ({"history": [{"timestamp": 3}]}, ["history.0.item_id", "Field required"]),
        ({"history": [{"item_id": "i1", "timestamp": True}]}, ["history.0.timestamp"]),
        ({"history": [["i1"]]}, ["history.0"]),
        ({"history_mode": "append"}, ["history_mode", "'merge' or 'replace'"]),
        ({"context": {"device": ["tv"]}}, ["context.device"]),
        ({"user_attributes": "25-34"}, ["user_attributes", "valid dictionary"]),
        ({"exclude_event_types": "purchase"}, ["exclude_event_types", "valid list"]),
        ({"items": [f"i{n}" for n in range(1001)]}, ["items", "at most 1000"]),
        ({"age_group": "25-34"}, ["age_group", "Extra inputs"]),
    ],
)
def test_a_bad_field_is_a_400_that_names_it(instance: dict[str, Any], named: list[str]) -> None:
    with pytest.raises(UserError) as caught:
        parse_instances([instance])

    assert caught.value.status_code == 400
    for part in named:
        assert part in str(caught.value)
