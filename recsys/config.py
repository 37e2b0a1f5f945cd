"""Training configuration: hyperparameters resolved once, at the edge, into a frozen object.

Each hyperparameter is a dataclass field whose metadata carries its documentation and its
check; ``resolve_train_config`` turns the raw (already JSON-decoded) mapping into a
``TrainConfig`` or raises a ``ConfigError`` that names the bad hyperparameter and value.
The README's table of hyperparameters is printed from the same fields (``recsys hyperparameters``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from recsys.errors import ConfigError

ModelName = Literal["gmf", "mlp", "neumf"]
LossName = Literal["auto", "bce", "softmax", "sampled_softmax"]
UserRepresentation = Literal["id", "history", "both"]
FinalFit = Literal["refit", "best_checkpoint"]
DeviceName = Literal["auto", "cpu", "cuda"]
HistoryEncoder = Literal["pool", "attention"]
Retrieval = Literal["auto", "exact", "index"]

# Full softmax scores every item for every positive: above this catalogue size `loss=auto`
# switches to the sampled softmax to keep memory at batch_size x num_negatives.
FULL_SOFTMAX_MAX_ITEMS = 100_000
# On a CPU the full softmax's cost grows with the catalogue much sooner. Measured with
# `python -m benchmarks.train_speed --crossover ...` (GMF, batch 1024, 64 negatives, 2 cores): the
# full softmax takes 1.4x the sampled one's time at 2,000 items, 5.4x at 8,000, 8.5x at 16,000 and
# 12.5x at 32,000. Up to 4,096 items (about 2.5x) the full softmax's better gradients are worth it
# (MovieLens-100K and -1M stay on it); above, `auto` samples.
CPU_FULL_SOFTMAX_MAX_ITEMS = 4_096
# Exact top-k scans the whole item table on every request. At 100,000 items the endpoint's p99
# at 32 connections is 30 ms on 2 cores, at 1,000,000 it is 365 ms (`make bench-serving`): the
# 50 ms target falls between, near 200,000, where `retrieval=auto` starts to build an index.
INDEX_MIN_ITEMS = 200_000


def _param(default: Any, doc: str, check: Callable[[Any], str | None] | None = None) -> Any:
    metadata = {"doc": doc, "check": check}
    if isinstance(default, dict):  # a mutable default: each config gets its own copy
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _range(
    low: float | None = None, high: float | None = None, *, open_low: bool = False
) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if low is not None and (value <= low if open_low else value < low):
            return f"must be {'>' if open_low else '>='} {low}"
        if high is not None and value > high:
            return f"must be <= {high}"
        return None

    return check


def _positive_layers(value: Any) -> str | None:
    if not value or any(v < 1 or v > 8192 for v in value):
        return "must be a non-empty list of layer widths between 1 and 8192"
    return None


def _weights(value: Any) -> str | None:
    for name, weight in value.items():
        if weight < 0:
            return f"must map event types to weights >= 0, but '{name}' has {weight:g}"
    if value and not any(weight > 0 for weight in value.values()):
        return "must give at least one event type a positive weight"
    return None


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of ``recsys train``, with its default."""

    model: ModelName = _param("gmf", "Model: `gmf`, `mlp` or `neumf` (the fusion of both).")
    epochs: int = _param(40, "Maximum number of passes over the training interactions.", _range(1, 10_000))
    batch_size: int = _param(1024, "Positive interactions per step.", _range(1, 1_000_000))
    learning_rate: float = _param(0.003, "Adam learning rate.", _range(0, 10, open_low=True))
    weight_decay: float = _param(0.0, "L2 penalty on the weights (AdamW decoupled decay).", _range(0, 10))
    embedding_dim: int = _param(64, "Size of every embedding (ids, attributes, history).", _range(1, 4096))
    mlp_layers: tuple[int, ...] = _param(
        (128, 64), "Widths of the MLP tower's hidden layers, e.g. `[128,64]` or `128,64`.", _positive_layers
    )
    dropout: float = _param(0.1, "Dropout in the MLP tower and on the pooled history.", _range(0, 0.95))
    num_negatives: int = _param(
        64,
        "Negatives sampled per positive (`bce`) or per batch (`sampled_softmax`).",
        _range(1, 100_000),
    )
    loss: LossName = _param(
        "auto",
        "`bce` (the NCF paper's pointwise loss), `softmax` (full, listwise), `sampled_softmax`, "
        f"or `auto`: `softmax` for `gmf` up to {FULL_SOFTMAX_MAX_ITEMS:,} items on a GPU and "
        f"{CPU_FULL_SOFTMAX_MAX_ITEMS:,} on a CPU, else `sampled_softmax`.",
    )
    user_representation: UserRepresentation = _param(
        "both",
        "How a user is represented: `id` embedding, pooled `history` of recent items, or `both`.",
    )
    history_length: int = _param(50, "Most recent events the history encoder reads.", _range(1, 10_000))
    history_encoder: HistoryEncoder = _param(
        "pool",
        "How the history becomes a vector: `attention` (a causal transformer over the events in order, "
        "with their time gaps and event types; every position is trained to predict the next item) "
        "or `pool` (a recency-weighted mean of the items).",
    )
    attention_blocks: int = _param(2, "`attention` only: transformer blocks.", _range(1, 16))
    attention_heads: int = _param(
        2, "`attention` only: attention heads; must divide `embedding_dim`.", _range(1, 64)
    )
    attention_dropout: float = _param(0.2, "`attention` only: dropout in the transformer.", _range(0, 0.95))
    time_features: bool = _param(
        True,
        "With a time column: the hour of day, day of week and time since the user's previous event "
        "(UTC) of the moment predicted enter the context tower, and the gaps between past events "
        "enter the history encoder.",
    )
    context_columns: tuple[str, ...] = _param(
        (),
        "Columns of the interaction table describing the moment of each event, e.g. `device,country`: "
        "text is categorical, numbers are numeric; a missing or unseen value has its own learnt row.",
        None,
    )
    numeric_context_columns: tuple[str, ...] = _param(
        (),
        "Context columns to read as numbers whatever their type in the files, e.g. `basket_value`: CSV "
        "and TSV hold only text, so their numeric context columns are named here (each must be one "
        "of `context_columns`).",
        None,
    )
    event_type_column: str = _param(
        "event_type", "Column of the event type, e.g. click / cart / purchase (optional column)."
    )
    event_weights: dict[str, float] = _param(
        {},
        'Loss weight of each event type, e.g. `{"purchase": 3, "cart": 2, "click": 1}`; types not named '
        "weigh 1.",
        _weights,
    )
    target_event_types: tuple[str, ...] = _param(
        (),
        "Event types that count as positives to predict (training targets and evaluation), e.g. "
        "`purchase`; default all. Every event still feeds the history.",
        None,
    )
    user_id_dropout: float = _param(
        0.2,
        "Probability of hiding the user id during training, so history alone represents new users well.",
        _range(0, 1),
    )
    patience: int = _param(
        5, "Epochs without a better validation NDCG@10 before stopping early.", _range(1, 10_000)
    )
    final_fit: FinalFit = _param(
        "best_checkpoint",
        "Without a `validation` channel: `best_checkpoint` keeps the best model trained without each "
        "user's latest interaction; `refit` retrains on all data for the best epoch count (twice the time).",
    )
    pretrain: bool = _param(
        False, "NeuMF only: train GMF and MLP first and initialise the fusion from them (NCF paper)."
    )
    seed: int = _param(
        42, "Random seed (data split, initialisation, negative sampling).", _range(0, 2**31 - 1)
    )
    eval_k: int = _param(10, "Cut-off K of the reported ranking metrics.", _range(1, 1000))
    sampled_eval_negatives: int = _param(
        99, "Negatives per held-out item in the NCF paper's sampled protocol.", _range(1, 100_000)
    )
    validation_users: int = _param(
        10_000,
        "Validate (early stopping, the final metrics and report) on a fixed random sample of this many "
        "held-out users, the same every epoch; 0: all of them.",
        _range(0),
    )
    retrieval: Retrieval = _param(
        "auto",
        "How the endpoint finds the top items: `exact` ranks the whole catalogue; `index` ships an "
        "approximate nearest-neighbour index of the GMF item vectors (over-fetched, then ranked exactly); "
        "`auto`: an index from `index_min_items` items on (models with a GMF tower).",
    )
    index_min_items: int = _param(
        INDEX_MIN_ITEMS, "With `retrieval=auto`: the catalogue size from which an index is built.", _range(1)
    )
    min_index_recall: float = _param(
        0.95,
        "The least recall@10 against exact ranking, measured by the job on a sample of users, for the "
        "index to ship; below it the artifact is served exactly.",
        _range(0.0, 1.0),
    )
    min_rating: float | None = _param(
        None, "Only interactions with rating >= this are positives; unset means every row is one."
    )
    user_id_column: str = _param("user_id", "Column of the user id (interactions and users tables).")
    item_id_column: str = _param("item_id", "Column of the item id (interactions and items tables).")
    rating_column: str = _param("rating", "Column of the rating, used with `min_rating` (optional column).")
    timestamp_column: str = _param(
        "timestamp", "Column of the time: epoch seconds or ISO 8601 (optional column)."
    )
    categorical_columns: tuple[str, ...] = _param(
        (), "Attribute columns to treat as categorical (default: detected).", None
    )
    multi_valued_columns: tuple[str, ...] = _param(
        (), "Attribute columns holding several values, e.g. `Action|Comedy` (default: detected).", None
    )
    numeric_columns: tuple[str, ...] = _param(
        (), "Attribute columns to treat as numeric (default: detected).", None
    )
    ignore_columns: tuple[str, ...] = _param((), "Attribute columns not to use.", None)
    multi_value_separator: str = _param("|", "Separator of multi-valued attribute values.")
    device: DeviceName = _param("auto", "`auto` (CUDA when present), `cpu` or `cuda`.")
    amp: bool = _param(True, "Mixed precision on CUDA (ignored on CPU).")
    checkpoint_interval_steps: int = _param(
        1000,
        "Save a checkpoint every this many steps (per process), besides each epoch end and SIGTERM; "
        "0: only those.",
        _range(0, 10**9),
    )

    def resolved_loss(self, num_items: int, *, on_gpu: bool) -> Literal["bce", "softmax", "sampled_softmax"]:
        if self.loss != "auto":
            return self.loss
        # The MLP tower scores each (user, item) pair separately: a full softmax would cost
        # batch x catalogue x width per step, so towers with an MLP always sample.
        limit = FULL_SOFTMAX_MAX_ITEMS if on_gpu else CPU_FULL_SOFTMAX_MAX_ITEMS
        if self.model == "gmf" and num_items <= limit:
            return "softmax"
        return "sampled_softmax"

    def wants_index(self, num_items: int) -> bool:
        """Whether the job builds an item index (``retrieval`` and the catalogue size)."""
        if self.retrieval == "index":
            return True
        return self.retrieval == "auto" and self.model != "mlp" and num_items >= self.index_min_items


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "tuple[int, ...]": "a list of integers",
    "tuple[str, ...]": "a comma-separated list of names",
    "float | None": "a number",
    "dict[str, float]": "an object of numbers",
}


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Turn a decoded hyperparameter into the field's type, or raise naming the value."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(
            f"hyperparameter '{name}' must be {expected}; got {value!r}. "
            f"Run `recsys hyperparameters` for the accepted values."
        )

    if annotation == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise fail("true or false")
    if annotation == "int":
        if isinstance(value, bool):
            raise fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise fail("an integer")
    if annotation in ("float", "float | None"):
        if annotation == "float | None" and (value is None or value == ""):
            return None
        if isinstance(value, str):
            # json.loads rejects ".5" or "1.", so such values arrive as text.
            try:
                number = float(value.strip())
            except ValueError:
                raise fail("a number") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        else:
            number = float(value)
        if not math.isfinite(number):  # NaN would pass every range check below
            raise fail("a finite number")
        return number
    if annotation == "str":
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise fail("a non-empty string")
    if annotation == "dict[str, float]":
        mapping = value
        if isinstance(value, str):
            text = value.strip()
            try:
                mapping = (
                    json.loads(text)
                    if text.startswith("{")
                    else dict(part.split(":", 1) for part in text.split(",") if part.strip())
                )
            except ValueError:
                raise fail('a JSON object of numbers, e.g. {"purchase": 3, "click": 1}') from None
        if not isinstance(mapping, dict):
            raise fail('a JSON object of numbers, e.g. {"purchase": 3, "click": 1}')
        out: dict[str, float] = {}
        for key, weight in mapping.items():
            try:
                number = _coerce(name, "float", weight)
            except ConfigError:
                raise ConfigError(
                    f"hyperparameter '{name}': the weight of event type '{str(key).strip()}' must be a "
                    f"number; got {weight!r}."
                ) from None
            out[str(key).strip()] = number
        return out
    if annotation.startswith("tuple["):
        items: list[Any]
        if isinstance(value, list | tuple):
            items = list(value)
        elif isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            items = [value]
        else:
            raise fail(_TYPE_NAMES[annotation])
        inner = "int" if annotation == "tuple[int, ...]" else "str"
        return tuple(_coerce(name, inner, v) for v in items)
    if annotation.startswith("Literal") or annotation in _LITERALS:
        choices = _LITERALS[annotation]
        text = str(value).lower() if isinstance(value, str) else value
        if text not in choices:
            raise ConfigError(
                f"hyperparameter '{name}' must be one of {', '.join(map(str, choices))}; got {value!r}."
            )
        return text
    raise AssertionError(f"no coercion for {annotation}")  # a field type this module forgot


_LITERALS: dict[str, tuple[Any, ...]] = {
    "ModelName": get_args(ModelName),
    "LossName": get_args(LossName),
    "UserRepresentation": get_args(UserRepresentation),
    "FinalFit": get_args(FinalFit),
    "DeviceName": get_args(DeviceName),
    "HistoryEncoder": get_args(HistoryEncoder),
    "Retrieval": get_args(Retrieval),
}


def resolve_train_config(raw: Mapping[str, Any]) -> TrainConfig:
    """Validate decoded hyperparameters into a ``TrainConfig``.

    Unknown names are an error that names them (with the closest known name), because a typo
    that silently trains with the default wastes a whole job.
    """
    fields = _fields()
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        parts = []
        for name in unknown:
            close = difflib.get_close_matches(name, fields, n=1)
            parts.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ConfigError(
            f"unknown hyperparameter(s): {', '.join(parts)}. "
            f"Run `recsys hyperparameters` for the list of accepted names."
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        f = fields[name]
        coerced = _coerce(name, cast(str, f.type), value)
        check = f.metadata.get("check")
        if check is not None and coerced is not None:
            problem = check(coerced)
            if problem:
                raise ConfigError(f"hyperparameter '{name}' {problem}; got {value!r}.")
        values[name] = coerced
    config = TrainConfig(**values)
    if config.rating_column == config.timestamp_column:
        raise ConfigError("hyperparameters 'rating_column' and 'timestamp_column' name the same column.")
    if config.history_encoder == "attention" and config.embedding_dim % config.attention_heads:
        raise ConfigError(
            f"hyperparameter 'attention_heads' ({config.attention_heads}) must divide 'embedding_dim' "
            f"({config.embedding_dim})."
        )
    undeclared = [name for name in config.numeric_context_columns if name not in config.context_columns]
    if undeclared:
        raise ConfigError(
            f"hyperparameter 'numeric_context_columns' names {', '.join(map(repr, undeclared))}, which "
            f"'context_columns' ({', '.join(config.context_columns) or 'none'}) does not: name each "
            "numeric context column in both."
        )
    if config.user_id_column == config.item_id_column:
        raise ConfigError("hyperparameters 'user_id_column' and 'item_id_column' name the same column.")
    if config.retrieval == "index" and config.model == "mlp":
        raise ConfigError(
            "hyperparameter 'retrieval' is 'index', but model 'mlp' has no GMF item vectors for an index "
            "to search; use model 'gmf' or 'neumf', or retrieval 'exact'."
        )
    return config


def hyperparameter_table() -> str:
    """A Markdown table of every hyperparameter, its type, default and meaning."""
    rows = ["| name | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        annotation = cast(str, f.type)
        if annotation in _LITERALS:
            kind = " \\| ".join(str(c) for c in _LITERALS[annotation])
        else:
            kind = _TYPE_NAMES.get(annotation, annotation)
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if isinstance(default, tuple):
            shown = ",".join(map(str, default)) if default else "(none)"
        elif default is None:
            shown = "(unset)"
        elif isinstance(default, dict):
            shown = json.dumps(default) if default else "(none)"
        elif isinstance(default, bool):
            shown = str(default).lower()
        else:
            shown = str(default)
        rows.append(f"| `{f.name}` | {kind} | `{shown}` | {f.metadata['doc']} |")
    return "\n".join(rows)


def config_to_json(config: TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
