"""Request validation: what a JSON instance may carry, and the 400 that names a bad field."""

from __future__ import annotations

import random
from typing import Annotated, Any, cast

import pytest
from pydantic import BeforeValidator, TypeAdapter, ValidationError, ValidatorFunctionWrapHandler

from recsys.errors import UserError
from recsys.serving.engine import Event, EventLog
from recsys.serving.schemas import (
    HistoryEvent,
    _as_event,
    _history,
    _plain_event,
    _plain_events,
    parse_instances,
)


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


def _checked_history(entries: list[Any]) -> tuple[Event, ...] | str:
    """What pydantic's own validation of the history field makes of ``entries``, or its error."""
    adapter = TypeAdapter(list[Annotated[HistoryEvent, BeforeValidator(_as_event)]])
    try:
        return tuple(Event(e.item_id, e.timestamp, e.event_type) for e in adapter.validate_python(entries))
    except ValidationError:
        return "error"


def _served_history(entries: list[Any]) -> tuple[Event, ...] | str:
    """What the server makes of ``entries``: its events (the log's, read back one by one)."""
    try:
        (query,) = parse_instances([{"history": entries}])
    except UserError:
        return "error"
    assert isinstance(query.history, EventLog)
    return tuple(query.history)


def _typed(history: tuple[Event, ...] | str) -> object:
    """A history with each value's type beside it: 3 == 3.0, but a time must come out a float."""
    if isinstance(history, str):
        return history
    return [tuple((value, type(value)) for value in event) for event in history]


# Every kind of value a JSON body can put in each place, the edge cases included.
_VALUES: list[Any] = [
    "i1",
    "",
    " ",
    7,
    0,
    -3,
    True,
    False,
    None,
    1.5,
    1_764_700_000,
    1_764_700_000.25,
    2**53,
    2**53 + 1,
    -(2**60),
    10**400,
    float("nan"),
    float("inf"),
    "2025-12-02T18:26:40Z",
    "1764700000",
    "soon",
    "click",
    [],
    {},
    ["i1"],
    {"item_id": "i1"},
]


def test_the_history_fast_path_accepts_and_returns_exactly_what_pydantic_does() -> None:
    rng = random.Random(0)
    cases: list[Any] = list(_VALUES)
    keys = ["item_id", "timestamp", "event_type", "when"]
    for _ in range(3000):
        chosen = rng.sample(keys, rng.randint(0, 3))
        cases.append({key: rng.choice(_VALUES) for key in chosen})
    for entry in cases:
        assert _typed(_served_history([entry])) == _typed(_checked_history([entry])), entry
    # Whole lists: one bad entry among good ones sends the list down the checked path.
    for _ in range(300):
        entries = rng.sample(cases, 4)
        assert _typed(_served_history(entries)) == _typed(_checked_history(entries)), entries
    # Lists of one kind (all ids, all objects) take the column-by-column path: the same answers.
    strings = [case for case in cases if isinstance(case, str)]
    objects = [case for case in cases if isinstance(case, dict)]
    good = [case for case in objects if _plain_event(case) is not None]
    for _ in range(600):
        pool = rng.choice([strings, objects, good, good])
        entries = rng.sample(pool, rng.randint(1, 6))
        assert _typed(_served_history(entries)) == _typed(_checked_history(entries)), entries


def test_common_history_entries_never_reach_pydantics_per_event_validators() -> None:
    def refuse(value: Any, outer_location: str | int | None = None) -> Any:
        raise AssertionError(f"the checked path was taken for {value!r}")

    entries = ["i1", {"item_id": "i2"}, {"item_id": "i3", "timestamp": 1_764_700_000, "event_type": "click"}]
    assert _history(entries, cast(ValidatorFunctionWrapHandler, refuse)) == (
        Event("i1"),
        Event("i2"),
        Event("i3", 1_764_700_000.0, "click"),
    )
    assert _history(["i1", "i2"], cast(ValidatorFunctionWrapHandler, refuse)) == (Event("i1"), Event("i2"))
    objects = [
        {"item_id": "i2", "timestamp": 1_764_700_000.5},
        {"item_id": "i3"},
        {"item_id": "i4", "timestamp": 1_764_700_001, "event_type": "click"},
    ]
    assert _history(objects, cast(ValidatorFunctionWrapHandler, refuse)) == (
        Event("i2", 1_764_700_000.5),
        Event("i3"),
        Event("i4", 1_764_700_001.0, "click"),
    )


def test_an_event_log_is_the_sequence_of_its_events() -> None:
    events = (Event("i1"), Event("i2", 5.0), Event("i3", None, "click"))
    log = EventLog.of(events)

    assert (log.item_ids, log.timestamps, log.event_types) == (
        ("i1", "i2", "i3"),
        (None, 5.0, None),
        (None, None, "click"),
    )
    assert log == events and events == log and log == EventLog.of(list(events))
    assert tuple(log) == events and len(log) == 3 and log[1] == events[1] and log[1:] == events[1:]
    assert hash(log) == hash(events)
    assert log != (Event("i1"),) and log != ["i1", "i2", "i3"]
    # Bare ids are events with nothing else known; a column nobody gives is not kept.
    bare = EventLog.of(["i1", "i2"])
    assert bare == (Event("i1"), Event("i2")) and bare.timestamps is None and bare.event_types is None
    assert EventLog.of([]) == () and not EventLog.of([])


def test_a_list_of_common_events_is_kept_as_columns() -> None:
    objects = [{"item_id": "i2", "timestamp": 1_764_700_000}, {"item_id": "i3", "timestamp": 1.5}]

    log = _plain_events(objects)

    assert log is not None
    assert log.item_ids == ("i2", "i3") and log.timestamps == (1_764_700_000.0, 1.5)
    assert log.timestamps is not None and type(log.timestamps[0]) is float and log.event_types is None
