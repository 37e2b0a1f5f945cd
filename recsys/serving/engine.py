"""The ranking engine: a loaded artifact with the item side of every tower computed once.

A request batch is scored in one pass over the precomputed catalogue state (for GMF one matrix
product); seen, excluded and filtered-out items are masked, and the top k taken with ``topk``,
never a sort of the catalogue.

Shapes: B = queries in a batch, N = catalogue items, L = history length, D = embedding size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from recsys.errors import UserError
from recsys.evaluation.protocols import segment_positions
from recsys.models.ncf import NCF, ItemState, UserState
from recsys.training.artifact import Artifact, load_artifact
from recsys.training.batches import gather_history

logger = logging.getLogger(__name__)

MAX_K = 1000
# Known users' vectors are precomputed at load up to this size (256 MB is 1,000,000 users at D=64).
USER_CACHE_MAX_BYTES = 256 * 2**20
# Items whose vectors are computed together at load.
ITEM_CHUNK = 65_536
QueryKind = Literal["user", "history", "similar", "popular"]


@dataclass(frozen=True)
class Query:
    """One instance of a request, already type-checked."""

    user_id: str | None = None
    history: tuple[str, ...] | None = None
    item_id: str | None = None
    k: int = 10
    exclude_seen: bool = True
    exclude: tuple[str, ...] = ()
    items: tuple[str, ...] | None = None
    filter: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    kind: QueryKind
    fallback: bool = False
    unknown_user: bool = False
    unknown_items: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item_ids": self.item_ids, "scores": self.scores, "kind": self.kind}
        if self.fallback:
            out["fallback"] = True
        if self.unknown_user:
            out["unknown_user"] = True
        if self.unknown_items:
            out["unknown_items"] = self.unknown_items
        return out


@dataclass(frozen=True)
class _Attribute:
    """A filterable item attribute: categorical codes or raw numbers."""

    name: str
    codes: np.ndarray | None  # [N, W] int64, 0 = missing
    values: dict[str, int] | None  # value -> code
    numbers: np.ndarray | None  # [N] float64, NaN = missing


class Recommender:
    """Top-k recommendations for known users, histories, similar items, or the popular fallback."""

    def __init__(self, artifact: Artifact, device: torch.device) -> None:
        self.artifact = artifact
        self.device = device
        self.model: NCF = artifact.build_model(device)
        # The module holds its own copy of the weights now; the loaded one would double the
        # memory of a large catalogue (512 MB at 1,000,000 items).
        artifact.state_dict = {}
        with torch.no_grad():
            self.items: ItemState = self._catalogue_state()
            vectors = self.items.gmf if self.items.gmf is not None else self.items.mlp
            assert vectors is not None  # every model kind has at least one item tower
            # Unit vectors make item-to-item similarity one matrix-vector product.
            self.item_unit = torch.nn.functional.normalize(vectors.float(), dim=1)
        self.history_length = self.model.config.history_length
        self.num_users = self.model.config.num_users
        self.num_items = self.model.config.num_items
        self.popularity = torch.from_numpy(artifact.item_popularity.astype(np.float32)).to(device)
        # Known users' items (oldest first, CSR) on the device: their histories and exclusions.
        self.seen_flat = torch.from_numpy(artifact.seen_items.astype(np.int64)).to(device)
        self.seen_indptr = torch.from_numpy(artifact.seen_indptr.astype(np.int64)).to(device)
        self.attributes = self._attributes(artifact)
        with torch.no_grad():
            self.user_cache = self._build_user_cache()

    def _catalogue_state(self) -> ItemState:
        """The item side of every tower for the whole catalogue, computed in chunks: at once, the
        attribute towers' [N, W, D] intermediates of a 1M-item catalogue would take gigabytes."""
        num_items = self.model.config.num_items
        parts = [
            self.model.encode_items(
                torch.arange(start, min(start + ITEM_CHUNK, num_items), device=self.device)
            )
            for start in range(0, num_items, ITEM_CHUNK)
        ]

        def joined(tensors: list[Tensor | None]) -> Tensor | None:
            present = [t for t in tensors if t is not None]
            return torch.cat(present) if present else None

        bias = torch.cat([part.bias for part in parts])
        return ItemState(joined([p.gmf for p in parts]), joined([p.mlp for p in parts]), bias)

    @classmethod
    def load(cls, model_dir: Path, device: torch.device | None = None) -> Recommender:
        return cls(load_artifact(model_dir), device or torch.device("cpu"))

    @staticmethod
    def _attributes(artifact: Artifact) -> dict[str, _Attribute]:
        out: dict[str, _Attribute] = {}
        encoding, arrays = artifact.item_encoding, artifact.item_arrays
        for column, codes in zip(encoding.categorical, arrays.categorical, strict=True):
            values = {v: i + 1 for i, v in enumerate(column.values)}
            out[column.name] = _Attribute(column.name, codes, values, None)
        for j, numeric in enumerate(encoding.numeric):
            out[numeric.name] = _Attribute(numeric.name, None, None, arrays.numeric_raw[:, j])
        return out

    def numeric_attributes(self) -> set[str]:
        """Names of the numeric item attributes (filtered by ranges rather than values)."""
        return {name for name, attribute in self.attributes.items() if attribute.numbers is not None}

    def describe_items(self, item_ids: Sequence[str]) -> list[dict[str, str]]:
        """Each item's attribute values as text, for a person to judge a recommendation by
        (multi-valued ones joined by '|'; missing values left out)."""
        indices = self.artifact.items.lookup(list(item_ids))
        labels = self.artifact.item_labels
        rows = (
            labels.take(pa.array(np.maximum(indices, 0))).to_pylist()
            if labels is not None
            else [{}] * len(indices)
        )
        out: list[dict[str, str]] = []
        for index, row in zip(indices, rows, strict=True):
            # Labels (a title) first: they are what a person recognises an item by.
            described = {name: value for name, value in row.items() if value is not None and index >= 0}
            for name, attribute in self.attributes.items() if index >= 0 else ():
                if attribute.codes is not None and attribute.values is not None:
                    names = list(attribute.values)  # code c is names[c - 1]; 0 is missing
                    values = [names[c - 1] for c in attribute.codes[index] if c > 0]
                    if values:
                        described[name] = "|".join(values)
                elif attribute.numbers is not None and not math.isnan(attribute.numbers[index]):
                    described[name] = f"{attribute.numbers[index]:g}"
            out.append(described)
        return out

    # -- masks -------------------------------------------------------------------------------

    def filter_mask(self, spec: Mapping[str, Any]) -> np.ndarray:
        """[N] bool: items that satisfy every constraint (AND across attributes, OR within one)."""
        mask = np.ones(self.num_items, dtype=bool)
        for name, condition in spec.items():
            attribute = self.attributes.get(name)
            if attribute is None:
                known = ", ".join(sorted(self.attributes)) or "none (the model was trained without items)"
                raise UserError(f"filter: unknown item attribute '{name}'; filterable attributes: {known}.")
            if attribute.codes is not None and attribute.values is not None:
                wanted = condition if isinstance(condition, list) else [condition]
                if not wanted or not all(isinstance(v, str | int | float) for v in wanted):
                    raise UserError(
                        f'filter \'{name}\': give a value or a list of values, e.g. {{"{name}": ["A", "B"]}}.'
                    )
                codes = [attribute.values[str(v)] for v in wanted if str(v) in attribute.values]
                mask &= np.isin(attribute.codes, codes).any(axis=1) if codes else False
                continue
            numbers = attribute.numbers
            assert numbers is not None  # an attribute is categorical or numeric
            if isinstance(condition, dict):
                unknown = set(condition) - {"min", "max"}
                bounds = [condition.get("min"), condition.get("max")]
                if unknown or not all(b is None or _is_number(b) for b in bounds) or bounds == [None, None]:
                    raise UserError(
                        f'filter \'{name}\': a numeric attribute takes {{"min": x, "max": y}} (either or '
                        f"both) or a number; got {condition!r}."
                    )
                with np.errstate(invalid="ignore"):
                    if bounds[0] is not None:
                        mask &= numbers >= float(bounds[0])
                    if bounds[1] is not None:
                        mask &= numbers <= float(bounds[1])
            elif _is_number(condition):
                mask &= numbers == float(condition)
            else:
                raise UserError(
                    f'filter \'{name}\': a numeric attribute takes {{"min": x, "max": y}} or a number; '
                    f"got {condition!r}."
                )
        return mask

    def _lookup(self, ids: Sequence[str], unknown: list[str]) -> np.ndarray:
        indices = self.artifact.items.lookup(list(ids))
        unknown.extend(i for i, x in zip(ids, indices, strict=True) if x < 0)
        return indices[indices >= 0]

    # -- scoring -----------------------------------------------------------------------------

    @torch.no_grad()
    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """One recommendation per query, in order. Personal queries share one scoring pass."""
        for query in queries:
            if not 1 <= query.k <= MAX_K:
                raise UserError(f"k must be between 1 and {MAX_K}; got {query.k}.")
        results: list[Recommendation | None] = [None] * len(queries)
        personal: list[int] = []
        for row, query in enumerate(queries):
            if query.item_id is not None and query.user_id is None and query.history is None:
                results[row] = self._similar(query)
            elif (query.user_id is not None and query.user_id in self.artifact.users) or (
                query.history is not None and any(i in self.artifact.items for i in query.history)
            ):
                personal.append(row)
            else:
                results[row] = self._popular(query)
        # A [B, N] block of logits per pass: bounded so that a large Batch Transform request on a
        # large catalogue does not allocate B x N floats at once.
        chunk = max(1, min(1024, (1 << 25) // self.num_items))
        for start in range(0, len(personal), chunk):
            rows = personal[start : start + chunk]
            for row, result in zip(rows, self._personal([queries[r] for r in rows]), strict=True):
                results[row] = result
        return [r for r in results if r is not None]

    def _personal(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Score a batch of user/history queries together.

        Known users' histories and seen items come from the artifact's CSR arrays in vectorised
        gathers; only rows that bring a history, excludes, candidates or filters are touched one
        by one. Per-query Python work here runs while holding the GIL, so it is kept small.
        """
        size = len(queries)
        index = np.fromiter(
            (self.artifact.users.get(q.user_id) if q.user_id is not None else -1 for q in queries),
            dtype=np.int64,
            count=size,
        )
        known = index >= 0
        unknown_rows: list[list[str]] = [[] for _ in queries]
        given: dict[int, np.ndarray] = {}
        for row, query in enumerate(queries):
            if query.history is not None:
                given[row] = self._lookup(query.history, unknown_rows[row])
        cached = known.copy()
        cached[list(given)] = False
        if self.user_cache is not None and cached.all():
            # The common case: known users, stored histories: their vectors were computed at load.
            state = self._cached_state(torch.from_numpy(index).to(self.device))
        else:
            state = self._encode(index, known, given)
        logits = self.model.score_all(state, self.items).float()
        exclude_seen = np.fromiter((q.exclude_seen for q in queries), dtype=bool, count=size)
        rows = np.nonzero(known & exclude_seen)[0]
        if len(rows):
            owner, flat = segment_positions(self.seen_indptr, torch.from_numpy(index[rows]).to(self.device))
            logits[torch.from_numpy(rows).to(self.device)[owner], self.seen_flat[flat]] = float("-inf")
        for row, query in enumerate(queries):
            extra_seen = given.get(row) if query.exclude_seen else None
            if extra_seen is not None or query.exclude or query.items is not None or query.filter:
                seen = extra_seen if extra_seen is not None else np.zeros(0, dtype=np.int64)
                self._restrict(logits[row], query, seen, unknown_rows[row])
        top_k = min(max(q.k for q in queries), self.num_items)
        top = torch.topk(logits, top_k, dim=1)
        all_values, all_indices = top.values.tolist(), top.indices.tolist()
        ids = self.artifact.items.ids
        out = []
        for row, query in enumerate(queries):
            values, indices = all_values[row][: query.k], all_indices[row][: query.k]
            # Scores come sorted, so the masked (-inf) items are a tail to cut.
            cut = next((j for j, v in enumerate(values) if v == float("-inf")), len(values))
            kind: QueryKind = "user" if query.history is None else "history"
            out.append(
                Recommendation(
                    [ids[i] for i in indices[:cut]],
                    [round(v, 6) for v in values[:cut]],
                    kind,
                    False,
                    query.user_id is not None and not known[row],
                    unknown_rows[row],
                )
            )
        return out

    def _encode(self, index: np.ndarray, known: np.ndarray, given: dict[int, np.ndarray]) -> UserState:
        """User vectors from ids and histories: stored ones, or the ones a query brings."""
        safe = np.where(known, index, 0)
        starts = torch.from_numpy(np.where(known, self.artifact.seen_indptr[safe], 0)).to(self.device)
        ends = torch.from_numpy(np.where(known, self.artifact.seen_indptr[safe + 1], 0)).to(self.device)
        history, mask = gather_history(self.seen_flat, starts, ends, self.history_length)
        for row, sequence in given.items():
            recent = torch.from_numpy(sequence[::-1][: self.history_length].copy())  # most recent first
            history[row] = 0
            mask[row] = False
            history[row, : len(recent)] = recent.to(self.device)
            mask[row, : len(recent)] = True
        users = torch.from_numpy(np.where(known, index, self.num_users)).to(self.device)
        return self.model.encode_users(users, history, mask)

    def _cached_state(self, users: Tensor) -> UserState:
        assert self.user_cache is not None  # checked by the caller
        gmf, mlp = self.user_cache
        return UserState(gmf[users] if gmf is not None else None, mlp[users] if mlp is not None else None)

    def _build_user_cache(self) -> tuple[Tensor | None, Tensor | None] | None:
        """Every known user's vectors from their stored history, or None when too large to keep."""
        width = sum(t.shape[1] for t in (self.items.gmf, self.items.mlp) if t is not None)
        if self.num_users * width * 4 > USER_CACHE_MAX_BYTES:
            return None
        parts: list[UserState] = []
        everyone = np.arange(self.num_users)
        for chunk in np.array_split(everyone, max(1, self.num_users // 4096)):
            parts.append(self._encode(chunk, np.ones(len(chunk), dtype=bool), {}))
        gmf = torch.cat([p.gmf for p in parts if p.gmf is not None]) if parts[0].gmf is not None else None
        mlp = torch.cat([p.mlp for p in parts if p.mlp is not None]) if parts[0].mlp is not None else None
        return gmf, mlp

    def _restrict(self, scores: Tensor, query: Query, seen: np.ndarray, unknown: list[str]) -> Tensor:
        """Mask what the query rules out: seen, excluded, outside the candidates, filtered.

        ``scores`` is a fresh row, masked in place. The seen and excluded items are a short index
        list; a catalogue-wide mask is built only for candidates and filters.
        """
        blocked: list[np.ndarray] = []
        if query.exclude_seen and len(seen):
            blocked.append(seen)
        if query.exclude:
            blocked.append(self._lookup(query.exclude, unknown))
        if blocked:
            indices = torch.from_numpy(np.concatenate(blocked)).to(scores.device)
            scores.index_fill_(0, indices, float("-inf"))
        if query.items is not None or query.filter:
            allowed = np.ones(self.num_items, dtype=bool)
            if query.items is not None:
                allowed[:] = False
                allowed[self._lookup(query.items, unknown)] = True
            if query.filter:
                allowed &= self.filter_mask(query.filter)
            scores.masked_fill_(torch.from_numpy(~allowed).to(scores.device), float("-inf"))
        return scores

    def _top(self, scores: Tensor, k: int) -> tuple[list[str], list[float]]:
        top = torch.topk(scores, min(k, self.num_items))
        keep = torch.isfinite(top.values)
        indices = top.indices[keep].cpu().numpy()
        values = [round(v, 6) for v in top.values[keep].cpu().tolist()]
        ids = self.artifact.items.ids
        return [ids[i] for i in indices], values

    def _popular(self, query: Query) -> Recommendation:
        unknown: list[str] = []
        seen = np.zeros(0, dtype=np.int64)
        if query.history is not None:
            seen = self._lookup(query.history, unknown)
        scores = self._restrict(self.popularity.clone(), query, seen, unknown)
        item_ids, values = self._top(scores, query.k)
        return Recommendation(item_ids, values, "popular", True, query.user_id is not None, unknown)

    def _similar(self, query: Query) -> Recommendation:
        assert query.item_id is not None  # routed here only with an item id
        index = self.artifact.items.get(query.item_id)
        if index < 0:
            fallback = self._popular(query)
            return Recommendation(
                fallback.item_ids,
                fallback.scores,
                "popular",
                True,
                False,
                [query.item_id, *fallback.unknown_items],
            )
        scores = self.item_unit @ self.item_unit[index]
        unknown: list[str] = []
        scores = self._restrict(scores, query, np.zeros(0, dtype=np.int64), unknown)
        # The item itself is never "similar to itself", whatever exclude_seen says.
        scores[index] = float("-inf")
        item_ids, values = self._top(scores, query.k)
        return Recommendation(item_ids, values, "similar", False, False, unknown)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
