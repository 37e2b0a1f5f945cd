"""Request and response schemas of POST /invocations: validation and the OpenAPI page."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from recsys.data.context import epoch_seconds
from recsys.errors import UserError
from recsys.serving.engine import MAX_K, Event, Query


def _as_id(value: Any) -> Any:
    # Ids are opaque strings, but a client that sends 196 for "196" means the same user.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_as_id), Field(min_length=1)]


def _as_event(value: Any) -> Any:
    # A bare item id is an event with nothing else known.
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return {"item_id": value}
    return value


def _as_seconds(value: Any) -> Any:
    return None if value is None else epoch_seconds(value)  # its ValueError names the value


class HistoryEvent(BaseModel):
    """One event of the user's: an item id, and optionally when and what it was."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: Id
    timestamp: Annotated[float | None, BeforeValidator(_as_seconds)] = Field(
        None,
        description="Epoch seconds, or ISO 8601 text (UTC unless it says). Without it: the moment of "
        "the request.",
        json_schema_extra={"type": ["number", "string", "null"]},
    )
    event_type: str | None = Field(None, description="One of the model's event types (click, purchase...).")


ContextValue = str | int | float | bool | None


_EVENT_KEYS = frozenset(HistoryEvent.model_fields)
# Integers beyond 2**53 lose digits as floats: such a timestamp takes the checked path.
_EXACT_FLOAT = 2**53


def _plain_event(entry: Any) -> Event | None:
    """The event of a history entry that needs no conversion beyond a bare id or an int time;
    None for anything else, which pydantic then checks and, if it is wrong, words the error of.

    A fresh-events request carries tens of events, and pydantic's per-event validators (Python
    calls, each of them) cost more than scoring the request; this takes the common entries in
    one pass. It accepts exactly what ``HistoryEvent`` accepts and returns what it returns
    (tests/serving/test_schemas.py compares the two).
    """
    kind = type(entry)
    if kind is str:
        return Event(entry) if entry else None
    if kind is not dict or not entry.keys() <= _EVENT_KEYS:
        return None
    item = entry.get("item_id")
    if type(item) is not str or not item:
        return None
    stamp = entry.get("timestamp")
    if stamp is not None:
        stamp_kind = type(stamp)
        if stamp_kind is float:
            if not math.isfinite(stamp):
                return None
        elif stamp_kind is not int or not -_EXACT_FLOAT <= stamp <= _EXACT_FLOAT:
            return None
        stamp = float(stamp)
    event_type = entry.get("event_type")
    if event_type is not None and type(event_type) is not str:
        return None
    return Event(item, stamp, event_type)


def _history(value: Any, checked: ValidatorFunctionWrapHandler) -> tuple[Event, ...] | None:
    if type(value) is list:
        events = [_plain_event(entry) for entry in value]
        if all(event is not None for event in events):
            return tuple(cast(list[Event], events))
    history = checked(value)
    return None if history is None else tuple(Event(e.item_id, e.timestamp, e.event_type) for e in history)


class Instance(BaseModel):
    """One recommendation request. Give `user_id`, `history`, both, `item_id` alone, or none."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Id | None = Field(None, description="A known user: their seen items are excluded by default.")
    history: Annotated[
        list[Annotated[HistoryEvent, BeforeValidator(_as_event)]] | None, WrapValidator(_history)
    ] = Field(
        None,
        description="The user's events, oldest first: item ids, or objects "
        '{"item_id": ..., "timestamp": ..., "event_type": ...}. A new user\'s history, or a known '
        "user's fresh events (merged with the stored ones by time; see history_mode).",
    )
    history_mode: Literal["merge", "replace"] = Field(
        "merge",
        description="merge: a known user's fresh events join their stored ones by time (a repeated "
        "item counts once, at its latest time). replace: the request's history alone.",
    )
    item_id: Id | None = Field(
        None, description="With no user or history: the k items most similar to this one."
    )
    k: int | None = Field(
        None, ge=1, le=MAX_K, description="How many items to return: 10, or every candidate of `items`."
    )
    exclude_seen: bool | None = Field(
        None,
        description="Leave out items the user (or the history) already has: true by default, false "
        "when ranking `items`.",
    )
    exclude_event_types: list[str] = Field(
        default_factory=list,
        description='Leave out only what the user did with these event types (["purchase"]): what '
        "they merely clicked may come back.",
    )
    exclude: list[Id] = Field(default_factory=list, description="Item ids never to return.")
    items: list[Id] | None = Field(
        None,
        max_length=MAX_K,
        description="Candidates: every known one is scored and returned, ranked (seen ones too, "
        "unless exclude_seen); unknown ones are listed in unknown_items.",
    )
    filter: dict[str, Any] | None = Field(
        None,
        description='Item-attribute constraints, e.g. {"genres": ["Comedy"], "release_year": {"min": 1990}}.',
    )
    context: dict[str, ContextValue] | None = Field(
        None,
        description="The moment: the model's context columns (device, country...) and an optional "
        "timestamp (epoch seconds or ISO 8601) for the time features; without one, the server's "
        "clock in UTC. A value training never saw is scored as unknown and listed in unknown_context.",
    )
    user_attributes: dict[str, ContextValue] | None = Field(
        None,
        description="Columns of the users table (age_group, country...): they describe a new user, "
        "and override a known user's stored ones.",
    )

    def to_query(self) -> Query:
        return Query(
            user_id=self.user_id,
            history=cast(tuple[Event, ...] | None, self.history),  # _history made it one
            item_id=self.item_id,
            k=self.k,
            exclude_seen=self.exclude_seen,
            exclude=tuple(self.exclude),
            items=tuple(self.items) if self.items is not None else None,
            filter=self.filter,
            history_mode=self.history_mode,
            context=self.context,
            user_attributes=self.user_attributes,
            exclude_event_types=tuple(self.exclude_event_types),
        )


class InvocationRequest(BaseModel):
    """A JSON request: a list of instances (a bare instance object is accepted too)."""

    instances: list[Instance]


class Prediction(BaseModel):
    item_ids: list[str]
    scores: list[float]
    kind: str = Field(description="user, history, similar or popular")
    fallback: bool = Field(False, description="True when the most popular items were returned instead.")
    unknown_user: bool = Field(False, description="The user_id is not known to the model.")
    unknown_items: list[str] = Field(
        default_factory=list, description="Item ids in the request that were ignored."
    )
    stored_events: int | None = Field(
        None, description="Events of the user's stored history that the answer used."
    )
    fresh_events: int | None = Field(
        None, description="Events of the request's history that the answer used."
    )
    unknown_context: dict[str, str] = Field(
        default_factory=dict, description="Context values training never saw, scored as unknown."
    )
    unknown_attributes: dict[str, str] = Field(
        default_factory=dict, description="User attribute values training never saw, scored as unknown."
    )


class InvocationResponse(BaseModel):
    predictions: list[Prediction]


def request_json_schema() -> dict[str, Any]:
    """The JSON schema of a JSON request body, self-contained for the OpenAPI page.

    Pydantic puts ``Instance`` under ``$defs`` and points at it with ``#/$defs/Instance``; inside the
    OpenAPI document that pointer starts at the document's root, where there is no ``$defs``, so no
    client could resolve it. The definitions are inlined instead (none of them is recursive).
    """
    schema = InvocationRequest.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            resolved = {key: inline(value) for key, value in node.items() if key != "$ref"}
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                resolved = {**inline(definitions[reference.removeprefix("#/$defs/")]), **resolved}
            return resolved
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return dict(inline(schema))


def parse_instances(raw: list[dict[str, Any]]) -> list[Query]:
    """Validate raw instances; the first bad one gives a 400 naming its index and field."""
    queries = []
    for index, item in enumerate(raw):
        try:
            queries.append(Instance.model_validate(item).to_query())
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'instance'}: {error['msg']}"
                for error in exc.errors()[:3]
            )
            raise UserError(f"instance {index}: {problems}.") from None
    return queries
