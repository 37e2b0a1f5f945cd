"""The ranking engine: a loaded artifact with the item side of every tower computed once.

A request batch is scored in one pass over the precomputed catalogue state (for GMF one matrix
product); seen, excluded and filtered-out items are masked, and the top k taken with ``topk``,
never a sort of the catalogue.

Shapes: B = queries in a batch, N = catalogue items, L = history length, D = embedding size.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from recsys.artifact import Artifact, load_artifact
from recsys.data.context import (
    RowEncoding,
    epoch_seconds,
    gap_codes,
    hour_codes,
    previous_gaps,
    standardise,
    weekday_codes,
)
from recsys.data.device import history_positions, segment_positions
from recsys.data.features import encode_values
from recsys.errors import UserError
from recsys.models.ncf import NCF, AttributeValues, ItemState, UserExtras, UserState
from recsys.models.retrieval import MAX_FETCH, OVERFETCH, ItemIndex, query_vectors, score_fetched

logger = logging.getLogger(__name__)

MAX_K = 1000
# Known users' vectors are precomputed at load up to this size (256 MB is 1,000,000 users at D=64).
USER_CACHE_MAX_BYTES = 256 * 2**20
# Items whose vectors are computed together at load.
ITEM_CHUNK = 65_536
QueryKind = Literal["user", "history", "similar", "popular"]


HistoryMode = Literal["merge", "replace"]
# The context key that sets the moment of a request (the time features' clock).
TIMESTAMP_KEY = "timestamp"


class Event(NamedTuple):
    """One event of a request's history: an item, and optionally when and of what type.

    A named tuple, not a frozen dataclass: a request may carry hundreds of events, and a frozen
    dataclass's constructor costs several times more per event."""

    item_id: str
    timestamp: float | None = None  # epoch seconds; None: the request's moment
    event_type: str | None = None


_EVENTS = itertools.repeat(Event)  # tuple.__new__(Event, fields) is Event(*fields) without a Python frame


class EventLog(Sequence[Event]):
    """A request's history as three columns: item ids, times, event types.

    What validation reads from a JSON list of events and what the engine's merge works on are
    columns; a tuple per event in between cost more than the merge itself at 50 events a request.
    The log is the sequence of its events: iterating or indexing it gives events, and it
    equals the tuple of the same events. A column of None only is stored as None.
    """

    __slots__ = ("event_types", "item_ids", "timestamps")

    def __init__(
        self,
        item_ids: tuple[str, ...],
        timestamps: tuple[float | None, ...] | None = None,
        event_types: tuple[str | None, ...] | None = None,
    ) -> None:
        self.item_ids = item_ids
        self.timestamps = timestamps  # None: no event gives one
        self.event_types = event_types  # None: no event gives one

    @classmethod
    def of(cls, history: Sequence[str | Event]) -> EventLog:
        """The log of a history of item ids and events."""
        if isinstance(history, EventLog):
            return history
        entries = [Event(e) if isinstance(e, str) else e for e in history]
        if not entries:
            return cls(())
        ids, stamps, types = zip(*entries, strict=True)
        return cls(
            ids,
            stamps if stamps.count(None) != len(stamps) else None,
            types if types.count(None) != len(types) else None,
        )

    def _columns(self) -> Iterator[tuple[str, float | None, str | None]]:
        count = len(self.item_ids)
        stamps = self.timestamps if self.timestamps is not None else (None,) * count
        types = self.event_types if self.event_types is not None else (None,) * count
        return zip(self.item_ids, stamps, types, strict=True)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __iter__(self) -> Iterator[Event]:
        return map(tuple.__new__, _EVENTS, self._columns())

    @overload
    def __getitem__(self, index: int) -> Event: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Event, ...]: ...

    def __getitem__(self, index: int | slice) -> Event | tuple[Event, ...]:
        return tuple(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EventLog | tuple):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"EventLog({tuple(self)!r})"


History = tuple[str | Event, ...] | EventLog


@dataclass(frozen=True)
class Query:
    """One instance of a request, already type-checked."""

    user_id: str | None = None
    history: History | None = None  # oldest first
    item_id: str | None = None
    k: int | None = None  # None: every candidate of ``items``, else 10
    exclude_seen: bool | None = None  # None: True, except when ranking candidates (``items``)
    exclude: tuple[str, ...] = ()
    items: tuple[str, ...] | None = None
    filter: Mapping[str, Any] | None = None
    history_mode: HistoryMode = "merge"  # a known user's fresh events: merged with the stored ones
    context: Mapping[str, Any] | None = None  # context columns, and "timestamp"
    user_attributes: Mapping[str, Any] | None = None
    exclude_event_types: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """How many items to return: ``k``, or every candidate."""
        if self.k is not None:
            return self.k
        return len(self.items) if self.items is not None else DEFAULT_K

    @property
    def excludes_seen(self) -> bool:
        return self.exclude_seen if self.exclude_seen is not None else self.items is None


DEFAULT_K = 10
# A new user's stored items, times and event codes.
_NO_EVENTS = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
# From this many rows with a history (or attributes) in one pass, their user sides are built
# together (_user_sides), below it one by one (_user_side): measured on 50-event requests, the
# batch's fixed cost (about 75 us of numpy calls) is repaid from 5 rows on.
BATCHED_SIDES_FROM = 5
_STORED_FRESH = np.array([False, True])


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    kind: QueryKind
    fallback: bool = False
    unknown_user: bool = False
    unknown_items: list[str] = field(default_factory=list)
    stored_events: int | None = None  # events of the stored history the answer used
    fresh_events: int | None = None  # events of the request's history the answer used
    unknown_context: dict[str, str] = field(default_factory=dict)  # values scored as "unknown"
    unknown_attributes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item_ids": self.item_ids, "scores": self.scores, "kind": self.kind}
        if self.fallback:
            out["fallback"] = True
        if self.unknown_user:
            out["unknown_user"] = True
        if self.unknown_items:
            out["unknown_items"] = self.unknown_items
        if self.stored_events is not None:
            out["stored_events"] = self.stored_events
        if self.fresh_events is not None:
            out["fresh_events"] = self.fresh_events
        if self.unknown_context:
            out["unknown_context"] = self.unknown_context
        if self.unknown_attributes:
            out["unknown_attributes"] = self.unknown_attributes
        return out


@dataclass
class _UserSide:
    """A query's user side built one by one: its fresh events merged (or not) with the stored."""

    history: np.ndarray  # [<=L] item indices, most recent first
    gaps: np.ndarray  # [<=L] gap codes
    events: np.ndarray  # [<=L] event-type codes
    last_time: float  # the latest event's time (NaN unknown): "since last event" of the moment
    seen: np.ndarray  # items to leave out beyond the stored ones (the fresh, or by event type)
    stored: int
    fresh: int
    attributes: tuple[list[np.ndarray], np.ndarray] | None  # [1, W] codes per column, [1, F]
    unknown_attributes: dict[str, str]


@dataclass(frozen=True)
class _BuiltSides:
    """The user sides of a pass's rows that brought fresh events, attributes or event-type
    exclusions, as the user tower reads them: [n, L] arrays, most recent event first."""

    rows: np.ndarray  # [n] the rows (positions in the pass) these are the sides of, ascending
    history: np.ndarray  # [n, L] item indices (0 past a row's length)
    gaps: np.ndarray  # [n, L] gap codes
    events: np.ndarray  # [n, L] event-type codes
    mask: np.ndarray  # [n, L] bool: an event
    last_time: np.ndarray  # [n] each row's latest event's time (NaN unknown)
    seen: np.ndarray  # items to leave out beyond the stored ones, row after row
    seen_end: np.ndarray  # [n] where each row's part of ``seen`` ends
    stored: list[int]
    fresh: list[int]
    attributes: list[tuple[list[np.ndarray], np.ndarray] | None]  # [1, W] codes per column, [1, F]
    unknown_attributes: list[dict[str, str]]
    slot: dict[int, int] = field(init=False)  # row -> its position here

    def __post_init__(self) -> None:
        object.__setattr__(self, "slot", dict(zip(self.rows.tolist(), range(len(self.rows)), strict=True)))

    def seen_of(self, slot: int) -> np.ndarray:
        return self.seen[(self.seen_end[slot - 1] if slot else 0) : self.seen_end[slot]]

    def seen_positions(self, slots: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The rows' seen items in one gather: for each, which of ``slots`` it belongs to and its
        position in ``seen``."""
        picked = np.asarray(slots, dtype=np.int64)
        ends = self.seen_end[picked]
        counts = ends - np.where(picked > 0, self.seen_end[picked - 1], 0)
        gathered_end = np.cumsum(counts)
        owners = np.repeat(np.arange(len(picked)), counts)
        return owners, np.arange(int(gathered_end[-1])) + np.repeat(ends - gathered_end, counts)


@dataclass(frozen=True)
class _Attribute:
    """A filterable item attribute: categorical codes or raw numbers."""

    name: str
    codes: np.ndarray | None  # [N, W] int64, 0 = missing
    values: dict[str, int] | None  # value -> code
    numbers: np.ndarray | None  # [N] float64, NaN = missing


class Recommender:
    """Top-k recommendations for known users, histories, similar items, or the popular fallback."""

    def __init__(self, artifact: Artifact, device: torch.device, *, exact: bool = False) -> None:
        self.artifact = artifact
        self.device = device
        # The approximate index of a large catalogue, unless the host asks for exact ranking.
        self.index: ItemIndex | None = None if exact else artifact.item_index
        if self.index is not None:
            self.index.set_threads(torch.get_num_threads())
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
        raw_rows = artifact.feature_encodings.get("rows")
        self.rows = RowEncoding.from_json(raw_rows) if isinstance(raw_rows, dict) else RowEncoding.empty()
        config = self.model.config
        # Stored times and event types, aligned with seen_items (absent: unknown, code 0).
        self.seen_times = artifact.seen_timestamps
        self.seen_event_codes = (
            artifact.seen_events.astype(np.int64) if artifact.seen_events is not None else None
        )
        indptr = artifact.seen_indptr
        self.seen_counts = np.diff(indptr)
        self.last_time = np.full(self.num_users, np.nan)
        if self.seen_times is not None:
            has_any = np.diff(indptr) > 0
            self.last_time[has_any] = self.seen_times[indptr[1:][has_any] - 1]
        self.seen_gaps: Tensor | None = None
        if config.use_gaps and self.seen_times is not None:
            codes = gap_codes(previous_gaps(self.seen_times, indptr)).astype(np.int64)
            self.seen_gaps = torch.from_numpy(codes).to(device)
        # Every event type each stored pair had (bit c: code c), for exclusion by event type.
        # Without it (an artifact that predates it, or masks too narrow for the model's codes), a
        # pair's latest event stands for all of its events.
        masks = artifact.seen_event_masks
        wide_enough = masks is not None and 8 * masks.dtype.itemsize >= self.rows.num_event_codes
        if masks is not None and not wide_enough:
            logger.warning(
                "seen_event_masks has %d bits for %d event codes: exclude_event_types judges a pair "
                "by its latest event",
                8 * masks.dtype.itemsize,
                self.rows.num_event_codes,
            )
        self.seen_event_masks: np.ndarray | None = masks if wide_enough else None
        self.seen_events: Tensor | None = None
        if config.num_event_types and self.seen_event_codes is not None:
            self.seen_events = torch.from_numpy(self.seen_event_codes).to(device)
        self.context_keys = (*self.rows.context_columns, TIMESTAMP_KEY)
        self._context_key_set = frozenset(self.context_keys)
        # Each categorical context column's value -> code (1 + its first position): a dict lookup
        # per request instead of a search of the column's values.
        self._context_codes = [
            {value: code for code, value in reversed(list(enumerate(values, start=1)))}
            for _, values in self.rows.categorical
        ]
        self._no_sides = self._stacked([], [])  # a pass where no row brought its own user side
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
    def load(cls, model_dir: Path, device: torch.device | None = None, *, exact: bool = False) -> Recommender:
        return cls(load_artifact(model_dir), device or torch.device("cpu"), exact=exact)

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

        def is_number(value: Any, name: str) -> bool:
            try:
                return _is_number(value)
            except OverflowError:  # an int beyond a double's range: neither isfinite nor float take it
                raise UserError(
                    f"filter '{name}': a number beyond the range of a double (over 1.8e308)."
                ) from None

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
                missing = [str(v) for v in wanted if str(v) not in attribute.values]
                if missing:
                    raise UserError(_no_such_value(name, missing[0], attribute.values))
                codes = [attribute.values[str(v)] for v in wanted]
                mask &= np.isin(attribute.codes, codes).any(axis=1)
                continue
            numbers = attribute.numbers
            assert numbers is not None  # an attribute is categorical or numeric
            if isinstance(condition, dict):
                unknown = set(condition) - {"min", "max"}
                bounds = [condition.get("min"), condition.get("max")]
                if (
                    unknown
                    or not all(b is None or is_number(b, name) for b in bounds)
                    or bounds == [None, None]
                ):
                    raise UserError(
                        f'filter \'{name}\': a numeric attribute takes {{"min": x, "max": y}} (either or '
                        f"both) or a number; got {condition!r}."
                    )
                with np.errstate(invalid="ignore"):
                    if bounds[0] is not None:
                        mask &= numbers >= float(bounds[0])
                    if bounds[1] is not None:
                        mask &= numbers <= float(bounds[1])
            elif is_number(condition, name):
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

    @torch.inference_mode()
    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """One recommendation per query, in order. Personal queries share one scoring pass."""
        for query in queries:
            if query.k is not None and not 1 <= query.k <= MAX_K:
                raise UserError(f"k must be between 1 and {MAX_K}; got {query.k}.")
            if query.items is not None and len(query.items) > MAX_K:
                raise UserError(f"items: at most {MAX_K} candidates; got {len(query.items)}.")
            if query.exclude_event_types:
                self._check_event_types(query)
            # Checked for every query, not only where they are read: a request the model cannot
            # read is a 400 whether it is scored personally or answered with the popular fallback.
            if query.context:
                self._check_context(query.context)
            if query.history:
                types = EventLog.of(query.history).event_types
                if types is not None:
                    self._event_codes(types)
        results: list[Recommendation | None] = [None] * len(queries)
        personal: list[int] = []
        for row, query in enumerate(queries):
            if query.item_id is not None and query.user_id is None and query.history is None:
                results[row] = self._similar(query)
            elif (
                (query.user_id is not None and query.user_id in self.artifact.users)
                or (
                    query.history is not None
                    and any(map(self.artifact.items.__contains__, EventLog.of(query.history).item_ids))
                )
                or bool(query.user_attributes)
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
        gathers (or their cached vectors); only rows that bring fresh events, attributes, excludes,
        candidates or filters are touched one by one. Per-query Python work here runs while holding
        the GIL, so it is kept small.
        """
        size = len(queries)
        index = np.fromiter(
            (self.artifact.users.get(q.user_id) if q.user_id is not None else -1 for q in queries),
            dtype=np.int64,
            count=size,
        )
        known = index >= 0
        now = time.time()
        moments = np.full(size, now)
        for row, query in enumerate(queries):
            if query.context is not None and TIMESTAMP_KEY in query.context:
                moments[row] = _moment(query.context[TIMESTAMP_KEY])
        unknown_rows: list[list[str]] = [[] for _ in queries]
        rows = [
            row
            for row, query in enumerate(queries)
            if query.history is not None or query.user_attributes or query.exclude_event_types
        ]
        built = self._user_sides(queries, rows, index, moments, unknown_rows) if rows else self._no_sides
        state = self._base_state(index, known, built)
        unknown_context: list[dict[str, str]] = [{} for _ in queries]
        if self.model.config.has_context:
            last = np.where(known, self.last_time[np.maximum(index, 0)], np.nan)
            last[built.rows] = built.last_time
            codes, numeric = self._moment_codes(queries, moments, last, unknown_context)
            moment = self.model.encode_moment(codes, numeric, size)
            state = UserState(
                *(None if a is None or b is None else a + b for a, b in zip(state, moment, strict=True))
            )
        tops: list[tuple[list[float], list[int]] | None] = [None] * size
        if self.index is not None:
            self._index_tops(queries, state, index, known, built, unknown_rows, tops)
        exact = [row for row in range(size) if tops[row] is None]
        if exact:
            self._exact_tops(queries, state, index, known, built, unknown_rows, exact, tops)
        ids = self.artifact.items.ids
        counts = self.seen_counts
        out = []
        for row, query in enumerate(queries):
            found = tops[row]
            assert found is not None  # every row was ranked, by the index or exactly
            values, indices = found
            # Scores come sorted, so the masked (-inf) items are a tail to cut.
            cut = next((j for j, v in enumerate(values) if v == float("-inf")), len(values))
            kind: QueryKind = "user" if query.history is None else "history"
            slot = built.slot.get(row)
            if slot is not None:
                stored, fresh = built.stored[slot], built.fresh[slot]
            else:
                stored, fresh = (min(int(counts[index[row]]), self.history_length) if known[row] else 0), 0
            out.append(
                Recommendation(
                    [ids[i] for i in indices[:cut]],
                    [round(v, 6) for v in values[:cut]],
                    kind,
                    False,
                    query.user_id is not None and not known[row],
                    unknown_rows[row],
                    stored,
                    fresh,
                    unknown_context[row],
                    built.unknown_attributes[slot] if slot is not None else {},
                )
            )
        return out

    # -- ranking: exact or through the index -------------------------------------------------

    def _extra_seen(self, query: Query, built: _BuiltSides, row: int) -> np.ndarray | None:
        """Items to leave out beyond the stored ones: the fresh events (or those of the excluded
        event types), when the query excludes seen items."""
        slot = built.slot.get(row)
        if slot is not None and (query.excludes_seen or query.exclude_event_types):
            return built.seen_of(slot)
        return None

    def _exact_tops(
        self,
        queries: Sequence[Query],
        state: UserState,
        index: np.ndarray,
        known: np.ndarray,
        built: _BuiltSides,
        unknown_rows: list[list[str]],
        rows: list[int],
        tops: list[tuple[list[float], list[int]] | None],
    ) -> None:
        """Rank the whole catalogue for ``rows``: one [len(rows), N] block of logits."""
        picked = torch.tensor(rows, device=self.device)
        logits = self.model.score_all(
            UserState(*(t[picked] if t is not None else None for t in state)), self.items
        ).float()
        local = np.asarray(rows)
        # Rows that exclude all their stored items: one scatter over the CSR arrays.
        mask_stored = np.fromiter(
            (queries[r].excludes_seen and not queries[r].exclude_event_types for r in rows),
            dtype=bool,
            count=len(rows),
        )
        masked = np.nonzero(known[local] & mask_stored)[0]
        if len(masked):
            users = torch.from_numpy(index[local[masked]]).to(self.device)
            owner, flat = segment_positions(self.seen_indptr, users)
            logits[torch.from_numpy(masked).to(self.device)[owner], self.seen_flat[flat]] = float("-inf")
        # Rows that leave out their fresh items too (or those of excluded event types): from a few
        # rows on, another scatter over the built sides' items, instead of a masking pass per row
        # (whose fixed cost is lower for one or two).
        slots = [
            (position, slot)
            for position, row in enumerate(rows)
            if (slot := built.slot.get(row)) is not None
            and (queries[row].excludes_seen or queries[row].exclude_event_types)
        ]
        if len(slots) < BATCHED_SIDES_FROM:
            for position, slot in slots:
                extra = built.seen_of(slot)
                if len(extra):
                    logits[position].index_fill_(0, torch.from_numpy(extra).to(self.device), float("-inf"))
        else:
            owners, seen = built.seen_positions([slot for _, slot in slots])
            at = np.asarray([position for position, _ in slots], dtype=np.int64)[owners]
            logits[
                torch.from_numpy(at).to(self.device), torch.from_numpy(built.seen[seen]).to(self.device)
            ] = float("-inf")
        no_seen = np.zeros(0, dtype=np.int64)
        for position, row in enumerate(rows):
            query = queries[row]
            if query.exclude or query.items is not None or query.filter:
                self._restrict(logits[position], query, no_seen, unknown_rows[row])
        top_k = min(max(queries[r].size for r in rows), self.num_items)
        top = torch.topk(logits, top_k, dim=1)
        for position, (values, indices) in enumerate(
            zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ):
            size = queries[rows[position]].size
            tops[rows[position]] = (values[:size], indices[:size])

    def _index_tops(
        self,
        queries: Sequence[Query],
        state: UserState,
        index: np.ndarray,
        known: np.ndarray,
        built: _BuiltSides,
        unknown_rows: list[list[str]],
        tops: list[tuple[list[float], list[int]] | None],
    ) -> None:
        """Rank what the index fetches for each row it can serve; rows it cannot stay ``None``.

        A row fetches ``OVERFETCH`` candidates per wanted item plus one per item it rules out
        (seen, excluded), and ``1 / share`` times that under a filter that keeps a share of the
        catalogue. Candidate lists rank only their candidates, exactly; a row that would fetch more
        than ``MAX_FETCH``, or whose fetch leaves fewer than k items standing once its exclusions
        and filter are applied, is ranked exactly instead (the caller does), so exclusions,
        filters and k hold whatever the index returns.
        """
        assert self.index is not None  # the caller checks
        plans: dict[int, tuple[np.ndarray, np.ndarray | None, list[str]]] = {}
        need = 0
        for row, query in enumerate(queries):
            if query.items is not None:
                continue
            unknown: list[str] = []
            parts: list[np.ndarray] = []
            if known[row] and query.excludes_seen and not query.exclude_event_types:
                start, end = self.artifact.seen_indptr[index[row]], self.artifact.seen_indptr[index[row] + 1]
                parts.append(self.artifact.seen_items[start:end].astype(np.int64))
            extra_seen = self._extra_seen(query, built, row)
            if extra_seen is not None:
                parts.append(extra_seen)
            if query.exclude:
                parts.append(self._lookup(query.exclude, unknown))
            blocked = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            allowed = self.filter_mask(query.filter) if query.filter else None
            share = float(allowed.mean()) if allowed is not None else 1.0
            wanted = (OVERFETCH * query.size + len(blocked)) / max(share, 1e-12)
            if share == 0.0 or wanted > MAX_FETCH:
                continue
            plans[row] = (blocked, allowed, unknown)
            need = max(need, math.ceil(wanted))
        if not plans:
            return
        rows = list(plans)
        picked = torch.tensor(rows, device=self.device)
        sub = UserState(*(t[picked] if t is not None else None for t in state))
        fetched = self.index.search(query_vectors(sub), min(need, self.num_items))
        scores, _ = score_fetched(self.model, sub, self.items, fetched)
        for position, row in enumerate(rows):
            blocked, allowed, unknown = plans[row]
            candidates = fetched[position]
            out = candidates < 0
            if len(blocked):
                out |= np.isin(candidates, blocked)
            if allowed is not None:
                out |= ~allowed[np.maximum(candidates, 0)]
            row_scores = scores[position].masked_fill(torch.from_numpy(out).to(scores.device), float("-inf"))
            size = queries[row].size
            if int((~out).sum()) < size:
                continue  # too few survived: ranked exactly
            top = torch.topk(row_scores, size)
            tops[row] = (top.values.tolist(), candidates[top.indices.cpu().numpy()].tolist())
            unknown_rows[row].extend(unknown)

    # -- the user side ----------------------------------------------------------------------

    def _check_event_types(self, query: Query) -> None:
        names = query.exclude_event_types
        if query.exclude_seen:
            raise UserError(
                'exclude_event_types leaves out what the user did of those types only; "exclude_seen": '
                "true would leave out everything they saw. Send one of the two."
            )
        if self.rows.event_column is None or self.seen_event_codes is None:
            raise UserError(
                "exclude_event_types: the model was trained without event types, so it cannot tell "
                "a purchase from a click; use exclude_seen."
            )
        unknown = [n for n in names if n not in self.rows.event_types]
        if unknown:
            raise UserError(
                f"exclude_event_types: unknown event type {unknown[0]!r}; the model's event types: "
                f"{', '.join(self.rows.event_types)}."
            )

    def _stored(self, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A known user's stored items, times (NaN unknown) and event codes, oldest first."""
        start, end = int(self.artifact.seen_indptr[user]), int(self.artifact.seen_indptr[user + 1])
        items = self.artifact.seen_items[start:end].astype(np.int64)
        times = self.seen_times[start:end] if self.seen_times is not None else np.full(end - start, np.nan)
        events = (
            self.seen_event_codes[start:end]
            if self.seen_event_codes is not None
            else np.zeros(end - start, np.int64)
        )
        return items, times, events

    def _stored_of_types(self, user: int, codes: np.ndarray) -> np.ndarray:
        """A user's stored items that had an event of one of ``codes`` at any time (an item bought,
        then clicked, was bought); by their latest event where the artifact has no masks."""
        if user < 0:
            return np.zeros(0, np.int64)
        start, end = int(self.artifact.seen_indptr[user]), int(self.artifact.seen_indptr[user + 1])
        items = self.artifact.seen_items[start:end].astype(np.int64)
        masks = self.seen_event_masks
        if masks is not None:
            wanted = masks.dtype.type(sum(1 << int(code) for code in set(codes.tolist())))
            had = (masks[start:end] & wanted) != 0
        else:
            assert self.seen_event_codes is not None  # _check_event_types refuses a model without
            had = np.isin(self.seen_event_codes[start:end], codes)
        kept: np.ndarray = items[had]
        return kept

    def _user_side(self, query: Query, user: int, moment: float, unknown: list[str]) -> _UserSide:
        """The history, gaps, event types, extra exclusions and attributes of one query, alone."""
        # Column by column, not event by event: a request may carry hundreds of events, and this
        # runs holding the GIL that the event loop needs to read the next requests.
        log = EventLog.of(query.history or ())
        ids = log.item_ids
        found = self.artifact.items.lookup(ids)
        known = found >= 0
        every_known = bool(known.all())
        if not every_known:
            unknown.extend(ids[i] for i in np.flatnonzero(~known))
        new_items = found if every_known else found[known]
        # Times as known (None -> NaN: not given, so gaps are unknown, as in training).
        new_times = _times_of(log)
        new_events = np.zeros(len(ids), np.int64)
        if log.event_types is not None:
            new_events = self._event_codes(log.event_types)
        if not every_known:
            new_times, new_events = new_times[known], new_events[known]
        if user >= 0:
            stored_items, stored_times, stored_events = self._stored(user)
        else:
            stored_items, stored_times, stored_events = _NO_EVENTS
        excluded = query.exclude_event_types
        if excluded:
            codes = np.asarray([self.rows.event_code(n) for n in excluded])
            seen = np.concatenate([self._stored_of_types(user, codes), new_items[np.isin(new_events, codes)]])
        else:
            seen = new_items
        merge = query.history_mode == "merge" and user >= 0
        if merge and len(new_items):
            items = np.concatenate([stored_items, new_items])
            times = np.concatenate([stored_times, new_times])
            events = np.concatenate([stored_events, new_events])
            # By time: unknown stored times first, as the oldest; an event sent without a time
            # happened at the request's moment; ties in order: stored, then fresh as sent.
            keys = times.copy()
            keys[: len(stored_items)][np.isnan(stored_times)] = -np.inf
            keys[len(stored_items) :][np.isnan(new_times)] = moment
            order = np.argsort(keys, kind="stable")
            # A repeated item counts once, at its latest time: the first of the reversed order.
            _, first_in_reverse = np.unique(items[order[::-1]], return_index=True)
            order = order[np.sort(len(order) - 1 - first_in_reverse)]
            items, times, events = items[order], times[order], events[order]
            origin = order  # an index >= len(stored_items) is a fresh event
        elif merge or (query.history is None and user >= 0):
            items, times, events = stored_items, stored_times, stored_events
            origin = np.arange(len(items))
        else:
            items, times, events = new_items, new_times, new_events
            origin = len(stored_items) + np.arange(len(items))
        attributes = self._attribute_values(query.user_attributes, user) if query.user_attributes else None
        start = max(0, len(items) - self.history_length)
        # Seconds since the previous event, for the kept window (the first kept one has one too,
        # unless it is the user's first).
        before = times[max(0, start - 1) :]
        gaps = np.empty(len(before))
        gaps[:1] = np.nan
        np.subtract(before[1:], before[:-1], out=gaps[1:])
        gaps = gaps[1 if start else 0 :]
        stored = int((origin[start:] < len(stored_items)).sum())
        return _UserSide(
            history=items[start:][::-1].copy(),
            gaps=gap_codes(gaps[::-1]).astype(np.int64),
            events=events[start:][::-1].copy(),
            last_time=float(times[-1]) if len(times) else math.nan,
            seen=seen,
            stored=stored,
            fresh=len(items) - start - stored,
            attributes=attributes[:2] if attributes is not None else None,
            unknown_attributes=attributes[2] if attributes is not None else {},
        )

    def _user_sides(
        self,
        queries: Sequence[Query],
        rows: Sequence[int],
        index: np.ndarray,
        moments: np.ndarray,
        unknown: Sequence[list[str]],
    ) -> _BuiltSides:
        """The history, gaps, event types, extra exclusions and attributes of the given rows.

        From BATCHED_SIDES_FROM rows on, built together: each step is one array operation over
        every event of the batch, not one per query, and the result is the [n, L] arrays the user
        tower reads. This runs holding the GIL that the event loop needs to read the next
        requests, and at 32 connections numpy's fixed cost per call, paid per query, was most of a
        50-event request's scoring time. Fewer rows are built one by one (``_user_side``), whose
        fixed cost is lower. Both give the same sides (tests/serving/test_present.py compares a
        batch with each query alone).
        """
        if len(rows) < BATCHED_SIDES_FROM:
            sides = [
                self._user_side(queries[row], int(index[row]), moments[row], unknown[row]) for row in rows
            ]
            return self._stacked(rows, sides)
        count = len(rows)
        users = index[np.asarray(rows, dtype=np.int64)]
        # The request's events, row after row, column by column (the server's are columns already).
        logs = [EventLog.of(queries[row].history or ()) for row in rows]
        sent = np.fromiter((len(log.item_ids) for log in logs), np.int64, count)
        ids: list[str] = list(itertools.chain.from_iterable(log.item_ids for log in logs))
        found: np.ndarray = self.artifact.items.lookup(ids)
        new_row: np.ndarray = np.repeat(np.arange(count), sent)
        new_times: np.ndarray = (
            np.array(  # None -> NaN
                list(
                    itertools.chain.from_iterable(
                        log.timestamps if log.timestamps is not None else (None,) * len(log.item_ids)
                        for log in logs
                    )
                ),
                dtype=np.float64,
            )
            if any(log.timestamps is not None for log in logs)
            else np.full(len(ids), np.nan)
        )
        new_events: np.ndarray = np.zeros(len(ids), np.int64)
        if any(log.event_types is not None for log in logs):
            sent_end = np.cumsum(sent)
            for r, log in enumerate(logs):
                if log.event_types is not None:
                    new_events[sent_end[r] - sent[r] : sent_end[r]] = self._event_codes(log.event_types)
        known_new = found >= 0
        if not known_new.all():
            for position in np.flatnonzero(~known_new):
                unknown[rows[int(new_row[position])]].append(ids[position])
            found, new_times, new_events, new_row = (
                a[known_new] for a in (found, new_times, new_events, new_row)
            )
        new_counts = np.bincount(new_row, minlength=count)
        new_end = np.cumsum(new_counts)

        # Each known user's stored events, gathered from the CSR arrays in one step.
        indptr = self.artifact.seen_indptr
        safe = np.maximum(users, 0)
        starts = np.where(users >= 0, indptr[safe], 0)
        stored_counts = np.where(users >= 0, indptr[safe + 1], 0) - starts
        stored_end = np.cumsum(stored_counts)
        positions = np.arange(int(stored_end[-1])) + np.repeat(
            starts - (stored_end - stored_counts), stored_counts
        )
        stored_row = np.repeat(np.arange(count), stored_counts)
        stored_items = self.artifact.seen_items[positions].astype(np.int64)
        stored_times = (
            self.seen_times[positions] if self.seen_times is not None else np.full(len(positions), np.nan)
        )
        stored_events = (
            self.seen_event_codes[positions]
            if self.seen_event_codes is not None
            else np.zeros(len(positions), np.int64)
        )

        # Which events make each row's sequence. merge (a known user with fresh events): both, by
        # time; a known user without fresh events (or without a history): the stored ones; else
        # (a new user, or history_mode=replace) the request's, as sent.
        merge = np.fromiter((queries[row].history_mode == "merge" for row in rows), bool, count) & (
            users >= 0
        )
        given = np.fromiter((queries[row].history is not None for row in rows), bool, count)
        sort = merge & (new_counts > 0)
        use_stored = sort | (merge & (new_counts == 0)) | (~given & (users >= 0))
        use_new = sort | ~use_stored
        take_stored = use_stored[stored_row]
        take_new = use_new[new_row]
        row_of = np.concatenate([stored_row[take_stored], new_row[take_new]])
        items = np.concatenate([stored_items[take_stored], found[take_new]])
        times = np.concatenate([stored_times[take_stored], new_times[take_new]])
        events = np.concatenate([stored_events[take_stored], new_events[take_new]])
        fresh = np.repeat(_STORED_FRESH, [int(take_stored.sum()), int(take_new.sum())])
        order: np.ndarray | None = None
        if sort.any():
            # By time within a row: unknown stored times first, as the oldest; an event sent
            # without a time happened at the request's moment; ties in order: stored, then fresh
            # as sent. Rows that are not merged keep their order (key 0; the sort is stable).
            stored_keys = np.where(np.isnan(stored_times), -np.inf, stored_times)
            new_keys = np.where(np.isnan(new_times), moments[np.asarray(rows)][new_row], new_times)
            keys = np.concatenate([stored_keys[take_stored], new_keys[take_new]])
            order = _by_row_then_key(row_of, np.where(sort[row_of], keys, 0.0), count)
            order = order[_latest_of_each(row_of[order], items[order], sort, count, self.num_items)]
        elif count > 1:  # rows of stored events, then rows of fresh ones: grouped by row
            order = np.argsort(row_of, kind="stable")
        if order is not None:
            row_of, items, times, events, fresh = (a[order] for a in (row_of, items, times, events, fresh))

        lengths = np.bincount(row_of, minlength=count)
        end = np.cumsum(lengths)
        begin = end - lengths
        # Seconds since the previous event of the same row (the first kept one has one too, unless
        # it is the user's first); then the kept window: the latest history_length events.
        gaps = np.empty_like(times)
        np.subtract(times[1:], times[:-1], out=gaps[1:])
        gaps[begin[lengths > 0]] = np.nan  # gaps[0] among them, if there are events
        window = np.maximum(begin, end - self.history_length)
        fresh_before = np.concatenate([[0], np.cumsum(fresh)])
        kept_fresh = fresh_before[end] - fresh_before[window]
        # The window's events into [n, L], most recent first: position p of row r goes to column
        # end[r] - 1 - p.
        kept = end - window
        kept_end = np.cumsum(kept)
        kept_row = np.repeat(np.arange(count), kept)
        at = np.arange(int(kept_end[-1])) + np.repeat(window - (kept_end - kept), kept)
        column = end[kept_row] - 1 - at
        shape = (count, self.history_length)
        history, gap_matrix, event_matrix = (np.zeros(shape, np.int64) for _ in range(3))
        mask = np.zeros(shape, dtype=bool)
        history[kept_row, column] = items[at]
        gap_matrix[kept_row, column] = gap_codes(gaps[at])
        event_matrix[kept_row, column] = events[at]
        mask[kept_row, column] = True
        last_time = np.full(count, np.nan)
        last_time[lengths > 0] = times[end[lengths > 0] - 1]

        # What to leave out beyond the stored items: the known fresh ones, or, with
        # exclude_event_types, the user's events (stored and fresh) of those types.
        seen, seen_end = found, new_end
        excluding = [r for r, row in enumerate(rows) if queries[row].exclude_event_types]
        if excluding:
            parts = [found[new_end[r] - new_counts[r] : new_end[r]] for r in range(count)]
            for r in excluding:
                codes = np.asarray([self.rows.event_code(n) for n in queries[rows[r]].exclude_event_types])
                new_lo, new_hi = int(new_end[r] - new_counts[r]), int(new_end[r])
                parts[r] = np.concatenate(
                    [
                        self._stored_of_types(int(users[r]), codes),
                        found[new_lo:new_hi][np.isin(new_events[new_lo:new_hi], codes)],
                    ]
                )
            seen, seen_end = np.concatenate(parts), np.cumsum([len(part) for part in parts])
        attributes: list[tuple[list[np.ndarray], np.ndarray] | None] = [None] * count
        unknown_attributes: list[dict[str, str]] = [{} for _ in range(count)]
        for r, row in enumerate(rows):
            given_attributes = queries[row].user_attributes
            if given_attributes:
                categorical, numeric, unknown_attributes[r] = self._attribute_values(
                    given_attributes, int(users[r])
                )
                attributes[r] = (categorical, numeric)
        return _BuiltSides(
            rows=np.asarray(rows, dtype=np.int64),
            history=history,
            gaps=gap_matrix,
            events=event_matrix,
            mask=mask,
            last_time=last_time,
            seen=seen,
            seen_end=seen_end,
            stored=(kept - kept_fresh).tolist(),
            fresh=kept_fresh.tolist(),
            attributes=attributes,
            unknown_attributes=unknown_attributes,
        )

    def _stacked(self, rows: Sequence[int], sides: Sequence[_UserSide]) -> _BuiltSides:
        """Sides built one by one, as the [n, L] arrays the user tower reads."""
        size, length = len(sides), self.history_length
        history = np.zeros((size, length), dtype=np.int64)
        gaps = np.zeros((size, length), dtype=np.int64)
        events = np.zeros((size, length), dtype=np.int64)
        mask = np.zeros((size, length), dtype=bool)
        for row, side in enumerate(sides):
            n = len(side.history)
            history[row, :n], gaps[row, :n], events[row, :n], mask[row, :n] = (
                side.history,
                side.gaps,
                side.events,
                True,
            )
        seen = [side.seen for side in sides]
        counts = np.fromiter(map(len, seen), np.int64, len(seen))
        return _BuiltSides(
            rows=np.asarray(rows, dtype=np.int64),
            history=history,
            gaps=gaps,
            events=events,
            mask=mask,
            last_time=np.array([side.last_time for side in sides], dtype=np.float64),
            seen=seen[0] if len(seen) == 1 else np.concatenate(seen) if seen else np.zeros(0, np.int64),
            seen_end=np.cumsum(counts),
            stored=[side.stored for side in sides],
            fresh=[side.fresh for side in sides],
            attributes=[side.attributes for side in sides],
            unknown_attributes=[side.unknown_attributes for side in sides],
        )

    def _event_codes(self, types: Sequence[str | None]) -> np.ndarray:
        """The event-type codes of a request's events, given their types (0 where none is)."""
        if self.rows.event_column is None:
            position = next(i for i, name in enumerate(types) if name is not None)
            raise UserError(
                f"history[{position}].event_type: the model was trained without event types; "
                "leave event_type out."
            )
        codes = np.array([0 if name is None else self.rows.event_code(name) for name in types])
        for position, (name, code) in enumerate(zip(types, codes, strict=True)):
            if name is not None and code == 0:
                raise UserError(
                    f"history[{position}].event_type: unknown event type {name!r}; the "
                    f"model's event types: {', '.join(self.rows.event_types)}."
                )
        return codes.astype(np.int64)

    def _attribute_values(
        self, given: Mapping[str, Any], user: int
    ) -> tuple[list[np.ndarray], np.ndarray, dict[str, str]]:
        """A user's attribute codes: the stored ones (a known user), overridden by ``given``; and
        the given values that no training row had (scored as unknown)."""
        if self.model.config.user_features.is_empty:
            raise UserError(
                "user_attributes: the model was trained without a users table, so it takes no attributes."
            )
        encoding, arrays = self.artifact.user_encoding, self.artifact.user_arrays
        try:
            values = encode_values(encoding, [dict(given)])
        except ValueError as error:
            raise UserError(f"user_attributes: {error}.") from None
        categorical = []
        for column, codes, stored in zip(
            encoding.categorical, values.categorical, arrays.categorical, strict=True
        ):
            row = stored[user : user + 1].copy() if user >= 0 else np.zeros_like(codes)
            if column.name in given:
                row = codes
            categorical.append(row.astype(np.int64))
        numeric = arrays.numeric[user : user + 1].copy() if user >= 0 else np.zeros_like(values.numeric)
        for f, spec in enumerate(encoding.numeric):
            if spec.name in given:
                numeric[:, f] = values.numeric[:, f]
        return categorical, numeric.astype(np.float32), dict(values.unknown)

    def _base_state(self, index: np.ndarray, known: np.ndarray, built: _BuiltSides) -> UserState:
        """Every row's user side without the moment's context: cached, gathered or built."""
        size = len(index)
        plain = np.ones(size, dtype=bool)
        plain[built.rows] = False
        parts: list[tuple[np.ndarray, UserState]] = []
        rows = np.flatnonzero(plain)
        if len(rows):
            if self.user_cache is not None and known[rows].all():
                # The common case: known users, stored histories: their vectors were computed at load.
                parts.append((rows, self._cached_state(torch.from_numpy(index[rows]).to(self.device))))
            else:
                parts.append((rows, self._encode_stored(index[rows], known[rows])))
        if len(built.rows):
            parts.append((built.rows, self._encode_built(index[built.rows], built)))
        if len(parts) == 1 and len(parts[0][0]) == size:
            return parts[0][1]
        out: list[Tensor | None] = []
        for slot in range(2):
            pieces = [(rows, state[slot]) for rows, state in parts]
            if pieces[0][1] is None:
                out.append(None)
                continue
            first = pieces[0][1]
            assert first is not None
            joined = first.new_empty((size, first.shape[1]))
            for rows, tensor in pieces:
                assert tensor is not None
                joined[torch.from_numpy(rows).to(self.device)] = tensor
            out.append(joined)
        return UserState(out[0], out[1])

    def _encode_stored(self, index: np.ndarray, known: np.ndarray) -> UserState:
        """User vectors from ids and stored histories (with their gaps and event types)."""
        safe = np.where(known, index, 0)
        starts = torch.from_numpy(np.where(known, self.artifact.seen_indptr[safe], 0)).to(self.device)
        ends = torch.from_numpy(np.where(known, self.artifact.seen_indptr[safe + 1], 0)).to(self.device)
        positions, mask = history_positions(starts, ends, self.history_length)
        history = self.seen_flat[positions] * mask
        gaps = self.seen_gaps[positions] * mask if self.seen_gaps is not None else None
        events = self.seen_events[positions] * mask if self.seen_events is not None else None
        users = torch.from_numpy(np.where(known, index, self.num_users)).to(self.device)
        return self.model.encode_users(
            users, history, mask, UserExtras(history_gaps=gaps, history_events=events), with_context=False
        )

    def _encode_built(self, index: np.ndarray, built: _BuiltSides) -> UserState:
        """User vectors of rows whose history or attributes the request gave."""
        attributes = None
        if any(given is not None for given in built.attributes):
            attributes = self._batch_attributes(index, built.attributes)

        def device(array: np.ndarray) -> Tensor:
            return torch.from_numpy(array).to(self.device)

        config = self.model.config
        extras = UserExtras(
            history_gaps=device(built.gaps) if config.use_gaps else None,
            history_events=device(built.events) if config.num_event_types else None,
            attributes=attributes,
        )
        users = device(np.where(index >= 0, index, self.num_users))
        return self.model.encode_users(
            users, device(built.history), device(built.mask), extras, with_context=False
        )

    def _batch_attributes(
        self, index: np.ndarray, given: Sequence[tuple[list[np.ndarray], np.ndarray] | None]
    ) -> AttributeValues:
        arrays = self.artifact.user_arrays
        categorical: list[list[np.ndarray]] = [[] for _ in arrays.categorical]
        numeric: list[np.ndarray] = []
        for user, attributes in zip(index, given, strict=True):
            if attributes is not None:
                codes, values = attributes
            else:
                known = user >= 0
                codes = [
                    stored[user : user + 1] if known else np.zeros((1, stored.shape[1]), np.int64)
                    for stored in arrays.categorical
                ]
                values = (
                    arrays.numeric[user : user + 1]
                    if known
                    else np.zeros((1, arrays.numeric.shape[1]), np.float32)
                )
            for c, column in enumerate(codes):
                categorical[c].append(column.astype(np.int64))
            numeric.append(values.astype(np.float32))
        return AttributeValues(
            tuple(torch.from_numpy(np.concatenate(c)).to(self.device) for c in categorical),
            torch.from_numpy(np.concatenate(numeric)).to(self.device),
        )

    def _moment_codes(
        self,
        queries: Sequence[Query],
        moments: np.ndarray,
        last: np.ndarray,
        unknown: list[dict[str, str]],
    ) -> tuple[Tensor | None, Tensor | None]:
        """The context codes [B, C] and numeric values [B, Cn] of each query's moment.

        Time codes come from the moment (the request's ``timestamp``, else the server's clock, in
        UTC) and its distance from the user's latest event; declared columns from ``context``.
        """
        size = len(queries)
        encoding = self.rows
        slots: list[np.ndarray] = []
        if encoding.time_features:
            slots += [hour_codes(moments), weekday_codes(moments), gap_codes(moments - last)]
        offset = len(slots)
        slots += [np.zeros(size, dtype=np.int32) for _ in encoding.categorical]
        codes = np.stack(slots, axis=1).astype(np.int64) if slots else None
        numeric = (
            np.full((size, len(encoding.numeric)), np.nan, dtype=np.float32) if encoding.numeric else None
        )
        for row, query in enumerate(queries):
            given = query.context
            if not given:
                continue
            for c, (name, _) in enumerate(encoding.categorical):
                value = given.get(name) if name != TIMESTAMP_KEY else None  # keys checked already
                if value is None:
                    continue
                text = f"{value:g}" if isinstance(value, float) else str(value)
                code = self._context_codes[c].get(text)
                if code is None:
                    unknown[row][name] = text
                else:
                    assert codes is not None
                    codes[row, offset + c] = code
            for f, column in enumerate(encoding.numeric):
                value = given.get(column.name) if column.name != TIMESTAMP_KEY else None
                if value is None:
                    continue
                assert numeric is not None
                numeric[row, f] = standardise(np.array([float(value)]), column)[0]

        def device(array: np.ndarray | None) -> Tensor | None:
            return None if array is None else torch.from_numpy(array).to(self.device)

        return device(codes), device(numeric)

    def _check_context(self, context: Mapping[str, Any]) -> None:
        """A request's context may name only the model's context keys, a number for a numeric one."""
        encoding = self.rows
        extra = sorted(context.keys() - self._context_key_set)
        if extra:
            known = ", ".join(self.context_keys)
            raise UserError(f"context: unknown key {extra[0]!r}; the model's context keys: {known}.")
        if TIMESTAMP_KEY in context:
            _moment(context[TIMESTAMP_KEY])
        for column in encoding.numeric:
            value = context.get(column.name)
            if value is not None and not _is_number(value):
                raise UserError(f"context: {column.name!r} is numeric; got {value!r}.")

    def _cached_state(self, users: Tensor) -> UserState:
        assert self.user_cache is not None  # checked by the caller
        gmf, mlp = self.user_cache
        return UserState(gmf[users] if gmf is not None else None, mlp[users] if mlp is not None else None)

    def _build_user_cache(self) -> tuple[Tensor | None, Tensor | None] | None:
        """Every known user's vectors from their stored history, without the moment's context
        (added per request), or None when too large to keep."""
        width = sum(t.shape[1] for t in (self.items.gmf, self.items.mlp) if t is not None)
        if self.num_users * width * 4 > USER_CACHE_MAX_BYTES:
            return None
        parts: list[UserState] = []
        everyone = np.arange(self.num_users)
        for chunk in np.array_split(everyone, max(1, self.num_users // 4096)):
            parts.append(self._encode_stored(chunk, np.ones(len(chunk), dtype=bool)))
        gmf = torch.cat([p.gmf for p in parts if p.gmf is not None]) if parts[0].gmf is not None else None
        mlp = torch.cat([p.mlp for p in parts if p.mlp is not None]) if parts[0].mlp is not None else None
        return gmf, mlp

    def _restrict(self, scores: Tensor, query: Query, seen: np.ndarray, unknown: list[str]) -> Tensor:
        """Mask what the query rules out: seen, excluded, outside the candidates, filtered.

        ``scores`` is a fresh row, masked in place. The seen and excluded items are a short index
        list; a catalogue-wide mask is built only for candidates and filters.
        """
        blocked: list[np.ndarray] = []
        if len(seen):  # the caller passes what to leave out, having applied exclude_seen
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
            seen = self._lookup(EventLog.of(query.history).item_ids, unknown)
            if query.exclude_event_types:
                typed = [
                    e.item_id
                    for e in query.history
                    if isinstance(e, Event) and e.event_type in query.exclude_event_types
                ]
                seen = self._lookup(typed, [])
        if not query.excludes_seen and not query.exclude_event_types:
            seen = seen[:0]
        scores = self._restrict(self.popularity.clone(), query, seen, unknown)
        item_ids, values = self._top(scores, query.size)
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
        item_ids, values = self._top(scores, query.size)
        return Recommendation(item_ids, values, "similar", False, False, unknown)


def _by_row_then_key(rows: np.ndarray, keys: np.ndarray, count: int) -> np.ndarray:
    """``np.lexsort((keys, rows))``: the order by row, then by key, then as given.

    The same two stable sorts lexsort makes, but the second one over rows as 16-bit integers,
    which numpy sorts by radix (a pass's rows are at most 1024): lexsort's general merge sort of
    keys shuffled by the first pass took twice as long for a batch of fresh-event requests."""
    order = np.argsort(keys, kind="stable")
    narrow = rows.astype(np.int16 if count < 2**15 else np.int64)
    return order[np.argsort(narrow[order], kind="stable")]


def _latest_of_each(
    rows: np.ndarray, items: np.ndarray, merged: np.ndarray, count: int, num_items: int
) -> np.ndarray:
    """[P] bool over events ordered by row and time: True for the latest event of each (row,
    item) of a merged row (a repeated item counts once), and for every event of other rows.

    One sort of integers, not a dict over every event: each event's key is its (row, item) pair
    shifted past its own position, so the last of a run of equal pairs is the latest. Events of
    rows that are not merged get a pair of their own, past every real one. A pair is below
    count * num_items + P, and a pass holds count * num_items <= 2**25 (or one row), so the key
    needs well under 63 bits.
    """
    total = len(rows)
    pairs = np.where(merged[rows], rows * num_items + items, count * num_items + np.arange(total))
    shift = max(total.bit_length(), 1)
    keyed = np.sort((pairs << shift) | np.arange(total))
    pair_of = keyed >> shift
    last = np.ones(total, dtype=bool)
    np.not_equal(pair_of[1:], pair_of[:-1], out=last[:-1])
    keep = np.zeros(total, dtype=bool)
    keep[keyed[last] & ((1 << shift) - 1)] = True
    return keep


def _times_of(log: EventLog) -> np.ndarray:
    """[len(log)] the events' times, NaN where not given (gaps are then unknown, as in training)."""
    if log.timestamps is None:
        return np.full(len(log.item_ids), np.nan)
    return np.array(log.timestamps, dtype=np.float64)  # None -> NaN


def _moment(value: Any) -> float:
    try:
        return epoch_seconds(value)
    except ValueError as error:
        raise UserError(f"context.timestamp: {error}.") from None


def _no_such_value(name: str, value: str, values: Mapping[str, int]) -> str:
    """A filter value no item has, named with the closest values that exist."""
    folded = [v for v in values if v.casefold() == value.casefold()]
    close = folded or difflib.get_close_matches(value, list(values), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; it has {len(values)} values"
    return f"filter '{name}': no item has the value {value!r}{hint} (values are case-sensitive)."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
