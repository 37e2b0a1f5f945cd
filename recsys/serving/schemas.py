"""Request and response schemas of POST /invocations: validation and the OpenAPI page."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from recsys.errors import UserError
from recsys.serving.engine import MAX_K, Query


def _as_id(value: Any) -> Any:
    # Ids are opaque strings, but a client that sends 196 for "196" means the same user.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[str, BeforeValidator(_as_id), Field(min_length=1)]


class Instance(BaseModel):
    """One recommendation request. Give `user_id`, `history`, both, `item_id` alone, or none."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Id | None = Field(None, description="A known user: their seen items are excluded by default.")
    history: list[Id] | None = Field(
        None, description="Item ids the user interacted with, oldest first: a new user, or fresher history."
    )
    item_id: Id | None = Field(
        None, description="With no user or history: the k items most similar to this one."
    )
    k: int = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    exclude_seen: bool = Field(True, description="Leave out items the user (or the history) already has.")
    exclude: list[Id] = Field(default_factory=list, description="Item ids never to return.")
    items: list[Id] | None = Field(None, description="Candidates: score and rank exactly these items.")
    filter: dict[str, Any] | None = Field(
        None,
        description='Item-attribute constraints, e.g. {"genres": ["Comedy"], "release_year": {"min": 1990}}.',
    )

    def to_query(self) -> Query:
        return Query(
            user_id=self.user_id,
            history=tuple(self.history) if self.history is not None else None,
            item_id=self.item_id,
            k=self.k,
            exclude_seen=self.exclude_seen,
            exclude=tuple(self.exclude),
            items=tuple(self.items) if self.items is not None else None,
            filter=self.filter,
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
