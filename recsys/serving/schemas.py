"""Request and response schemas of POST /invocations: validation and the OpenAPI page."""

from __future__ import annotations

import math
from itertools import repeat
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)

from recsys.data.context import epoch_seconds
from recsys.errors import UserError
from recsys.sagemaker.contract import MAX_PAYLOAD_ENV, MODEL_MEMORY_ENV
from recsys.serving.engine import MAX_K, TIMESTAMP_KEY, Event, EventLog, Query, Recommender

# What the validators below accept, as JSON Schema: the OpenAPI page must promise no more and no
# less than the server takes, or a client generated from it sends what we refuse.
_ID_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]}
# epoch_seconds takes a number, a finite number written as text, or ISO 8601 text. The pattern
# bounds the digits (at most 10**100 times 10**99) so that every text it admits is finite.
_NUMERIC_TEXT = r"^\s*[-+]?([0-9]{1,100}\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]{1,2})?\s*$"
_MOMENT_SCHEMAS: list[dict[str, Any]] = [
    {"type": "number"},
    {"type": "string", "format": "date-time"},
    {"type": "string", "pattern": _NUMERIC_TEXT},
]
_CONTEXT_VALUE_SCHEMA: dict[str, Any] = {"type": ["string", "number", "boolean", "null"]}
_NUMBER_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}


def _as_id(value: Any) -> Any:
    # Ids are opaque strings, but a client that sends 196 for "196" means the same user.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_as_id), Field(min_length=1), WithJsonSchema(_ID_SCHEMA)]


def _as_whole(value: Any) -> Any:
    # JSON Schema's "integer" takes 5.0 (JSON has one number type), so the server takes it too.
    if type(value) is float and value.is_integer():
        return int(value)
    return value


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
    timestamp: Annotated[
        float | None,
        BeforeValidator(_as_seconds),
        WithJsonSchema({"anyOf": [*_MOMENT_SCHEMAS, {"type": "null"}]}),
    ] = Field(
        None,
        description="Epoch seconds, or ISO 8601 text (UTC unless it says). Without it: the moment of "
        "the request.",
    )
    event_type: str | None = Field(None, description="One of the model's event types (click, purchase...).")


ContextValue = str | int | float | bool | None


def _checked_context(context: dict[str, ContextValue] | None) -> dict[str, ContextValue] | None:
    # The engine reads the moment only for personal queries: checked here, a bad timestamp is a
    # 400 whichever way the instance is answered (a popular fallback too), as the schema says.
    if context is not None and TIMESTAMP_KEY in context:
        epoch_seconds(context[TIMESTAMP_KEY])  # its ValueError names the value
    return context


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


_NONE = type(None)
_STAMP_KINDS = frozenset((float, int, _NONE))
_TYPE_KINDS = frozenset((str, _NONE))


def _plain_events(value: list[Any]) -> EventLog | None:
    """``_plain_event`` over a whole list of bare ids, or of event objects, column by column: C-level
    passes (``map``, ``set``) instead of a Python call per event, and the columns kept as they are
    (an ``EventLog``) rather than a tuple made per event. None unless every entry is one that
    ``_plain_event`` takes, so that the caller falls back to it (or to pydantic)."""
    kinds = set(map(type, value))
    if kinds == {str}:
        return EventLog(tuple(value)) if "" not in value else None
    if kinds != {dict}:
        return None
    keys = set().union(*value)
    if not _EVENT_KEYS.issuperset(keys):
        return None
    items: tuple[Any, ...] = tuple(map(dict.get, value, repeat("item_id")))
    if set(map(type, items)) != {str} or "" in items:
        return None
    stamps: tuple[Any, ...] | None = None
    if "timestamp" in keys:  # a column no event names is all None: not read at all
        stamps = tuple(map(dict.get, value, repeat("timestamp")))
        stamp_kinds = set(map(type, stamps))
        if not stamp_kinds <= _STAMP_KINDS:
            return None
        numbers = stamps if _NONE not in stamp_kinds else [t for t in stamps if t is not None]
        if int in stamp_kinds:
            whole = numbers if stamp_kinds == {int} else [t for t in numbers if type(t) is int]
            if min(whole) < -_EXACT_FLOAT or max(whole) > _EXACT_FLOAT:
                return None
        if float in stamp_kinds and not all(map(math.isfinite, numbers)):
            return None
        if stamp_kinds == {int}:
            stamps = tuple(map(float, stamps))
        elif int in stamp_kinds:
            stamps = tuple(None if t is None else float(t) for t in stamps)
        elif stamp_kinds == {_NONE}:
            stamps = None
    types: tuple[Any, ...] | None = None
    if "event_type" in keys:
        types = tuple(map(dict.get, value, repeat("event_type")))
        type_kinds = set(map(type, types))
        if not type_kinds <= _TYPE_KINDS:
            return None
        if type_kinds == {_NONE}:
            types = None
    return EventLog(items, stamps, types)


def _history(value: Any, checked: ValidatorFunctionWrapHandler) -> EventLog | None:
    if type(value) is list:
        plain = _plain_events(value)
        if plain is not None:
            return plain
        events = [_plain_event(entry) for entry in value]
        if all(event is not None for event in events):
            return EventLog.of(cast(list[Event], events))
    history = checked(value)
    if history is None:
        return None
    return EventLog.of([Event(e.item_id, e.timestamp, e.event_type) for e in history])


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
    k: (
        Annotated[
            int,
            BeforeValidator(_as_whole),
            Field(ge=1, le=MAX_K),
            WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_K}),
        ]
        | None
    ) = Field(None, description="How many items to return: 10, or every candidate of `items`.")
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
    context: Annotated[dict[str, ContextValue] | None, AfterValidator(_checked_context)] = Field(
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
            history=cast(EventLog | None, self.history),  # _history made it one
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

    model_config = ConfigDict(extra="forbid")

    instances: list[Instance] = Field(min_length=1)


class ErrorBody(BaseModel):
    """Every error's body, whatever the status: a message for the person who sent the request."""

    model_config = ConfigDict(extra="forbid")

    error: str


# The statuses the endpoint answers besides 200, and when.
ERROR_STATUSES: dict[int, str] = {
    400: "The request is malformed or names something the model does not have; the message says what.",
    404: "Not served here: /invocations on a multi-model endpoint (POST /models/<name>/invoke), a "
    "model that is not loaded, or the /models API on a single-model endpoint.",
    406: "No media type in Accept can be answered (application/json, application/jsonlines, text/csv).",
    413: f"The body is over the endpoint's limit ({MAX_PAYLOAD_ENV}).",
    415: "The Content-Type is not one of application/json, application/jsonlines, text/csv.",
    500: "An internal error; its details are in the endpoint's logs only.",
    503: "The model is not loaded yet: retry once /ping answers 200.",
    504: "Scoring took longer than the endpoint's timeout: send fewer instances.",
    409: "A model of that name is loaded already.",
    507: f"The model is larger than the endpoint's memory budget ({MODEL_MEMORY_ENV}).",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` entries: each status with the ``{"error": ...}`` body."""
    return {status: {"model": ErrorBody, "description": ERROR_STATUSES[status]} for status in statuses}


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


def request_json_schema(
    max_instances: int | None = None, recommender: Recommender | None = None
) -> dict[str, Any]:
    """The JSON schema of a JSON request body, self-contained for the OpenAPI page.

    The body is ``{"instances": [...]}``, a bare list of instances, or one bare instance (what
    ``codecs.decode_instances`` reads), holding 1 to ``max_instances`` instances. With the
    ``recommender``, the schema names what its model knows (filterable attributes and their values,
    context keys, user attribute columns, event types): the server refuses any other with a 400,
    so a schema without them would call such requests valid.

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

    envelope: dict[str, Any] = inline(schema)
    instances = envelope["properties"]["instances"]
    instance: dict[str, Any] = instances["items"]
    # A history entry may be a bare item id (_as_event), which pydantic's schema does not show.
    history = instance["properties"]["history"]["anyOf"][0]
    history["items"] = {"anyOf": [*_ID_SCHEMA["anyOf"], history["items"]]}
    # Bounds of the decoders, not of pydantic: at least one instance, at most the endpoint's limit.
    if max_instances is not None:
        instances["maxItems"] = max_instances
    if recommender is not None:
        _describe_model(instance, recommender)
    listed = {"type": "array", "items": instance, "minItems": 1, **_only("maxItems", instances)}
    return {
        "title": "InvocationRequest",
        "description": '{"instances": [...]}, a list of instances, or one instance.',
        "anyOf": [envelope, listed, instance],
    }


def _only(key: str, node: dict[str, Any]) -> dict[str, Any]:
    return {key: node[key]} if key in node else {}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _describe_model(instance: dict[str, Any], recommender: Recommender) -> None:
    """Narrow an instance's schema to what ``recommender``'s model accepts (in place)."""
    properties = instance["properties"]

    def narrowed(name: str, schema: dict[str, Any]) -> None:
        # The field's description stays; its type is the model's.
        description = properties[name].get("description")
        properties[name] = {**schema, **({"description": description} if description else {})}

    # filter: each attribute by its kind (Recommender.filter_mask).
    attributes: dict[str, Any] = {}
    for name, attribute in recommender.attributes.items():
        if attribute.values is not None:
            value = {"type": "string", "enum": sorted(attribute.values)}
            attributes[name] = {"anyOf": [value, {"type": "array", "items": value, "minItems": 1}]}
        else:
            bounds = {
                "type": "object",
                "properties": {"min": _NUMBER_OR_NULL, "max": _NUMBER_OR_NULL},
                "additionalProperties": False,
                # Either bound, or both; not neither.
                "anyOf": [
                    {"required": [bound], "properties": {bound: {"type": "number"}}}
                    for bound in ("min", "max")
                ],
            }
            attributes[name] = {"anyOf": [{"type": "number"}, bounds]}
    narrowed(
        "filter",
        _nullable({"type": "object", "properties": attributes, "additionalProperties": False}),
    )
    # context: the declared columns (any value of a categorical one: unknown ones are scored as
    # unknown), and the moment.
    rows = recommender.rows
    context: dict[str, Any] = {column: _CONTEXT_VALUE_SCHEMA for column, _ in rows.categorical}
    context.update({column.name: _NUMBER_OR_NULL for column in rows.numeric})
    context[TIMESTAMP_KEY] = {"anyOf": _MOMENT_SCHEMAS}
    narrowed("context", _nullable({"type": "object", "properties": context, "additionalProperties": False}))
    # user_attributes: the users table's columns; none at all when the model had no users table.
    encoding = recommender.artifact.user_encoding
    columns: dict[str, Any] = {c.name: _CONTEXT_VALUE_SCHEMA for c in encoding.categorical}
    columns.update({c.name: _NUMBER_OR_NULL for c in encoding.numeric})
    if recommender.model.config.user_features.is_empty:
        columns = {}
    narrowed(
        "user_attributes",
        _nullable({"type": "object", "properties": columns, "additionalProperties": False}),
    )
    # Event types: the model's, in a history's events and in exclude_event_types.
    typed = rows.event_column is not None
    event_type: dict[str, Any] = {"type": "string", "enum": list(rows.event_types)} if typed else {}
    history = properties["history"]["anyOf"][0]["items"]["anyOf"][-1]
    history["properties"]["event_type"] = {
        **(_nullable(event_type) if typed else {"type": "null"}),
        "description": history["properties"]["event_type"].get("description", ""),
    }
    excluded = properties["exclude_event_types"]
    if typed and recommender.seen_event_codes is not None:
        excluded["items"] = event_type
        # exclude_event_types and "exclude_seen": true contradict each other (a 400).
        instance["not"] = {
            "required": ["exclude_event_types", "exclude_seen"],
            "properties": {"exclude_event_types": {"minItems": 1}, "exclude_seen": {"const": True}},
        }
    else:
        excluded["maxItems"] = 0


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
