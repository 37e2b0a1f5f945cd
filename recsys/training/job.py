"""One training job, start to finish: tables -> clean data -> fit -> evaluate -> artifact -> report.

Everything arrives as explicit, typed arguments (paths of channels, a ``TrainConfig``, a device):
only ``recsys.sagemaker`` knows where those come from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from recsys.config import ModelName, TrainConfig, config_to_json
from recsys.data.context import RowEncoding, time_context
from recsys.data.features import (
    FeatureArrays,
    FeatureDeclaration,
    FeatureEncoding,
    column_names,
    empty_arrays,
    encode_attributes,
    feature_cardinalities,
    label_columns,
    multi_hot,
)
from recsys.data.interactions import (
    IndexedInteractions,
    InteractionColumns,
    combine,
    fit_row_encoding,
    index_encoded,
    read_interactions,
    split_last_out,
    subset,
)
from recsys.data.io import list_data_files, read_table
from recsys.data.vocab import Vocabulary
from recsys.errors import DataError
from recsys.evaluation.protocols import (
    Comparison,
    HeldOut,
    RankingReport,
    beyond_accuracy,
    compare_rankings,
    drop_repeats,
    encode_held_users,
    full_ranking,
    popular_ranking,
    sampled_ranking,
)
from recsys.evaluation.summary import side_by_side, verdict
from recsys.models.ncf import NCF, FeatureSpec, ModelConfig, UserState
from recsys.models.retrieval import ItemIndex, tune_index
from recsys.training.artifact import Artifact, save_artifact, sha256_file
from recsys.training.batches import DeviceInteractions, RowArrays, row_arrays
from recsys.training.checkpoints import Checkpointer, StopRequest
from recsys.training.distributed import SINGLE_PROCESS, DistContext, barrier
from recsys.training.loop import EpochRecord, FitResult, FitSettings, fit
from recsys.training.report import build_evaluation_report, report_details, write_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Channels:
    """Directories of the job's input channels; only ``train`` is required."""

    train: Path
    validation: Path | None = None
    items: Path | None = None
    users: Path | None = None


@dataclass(frozen=True)
class PreparedData:
    users: Vocabulary
    items: Vocabulary
    interactions: IndexedInteractions  # every training interaction
    validation: IndexedInteractions | None  # from the validation channel
    item_encoding: FeatureEncoding
    item_arrays: FeatureArrays
    user_encoding: FeatureEncoding
    user_arrays: FeatureArrays
    fingerprint: dict[str, Any]
    item_labels: pa.Table | None = None  # text the model does not use (titles), for display
    row_encoding: RowEncoding = field(default_factory=RowEncoding.empty)  # event types, context columns
    has_timestamps: bool = False  # the interactions' times are real ones, not their order in the files


@dataclass(frozen=True)
class TrainingOutcome:
    metrics: dict[str, Any]
    artifact: Artifact | None  # None on every data-parallel rank but 0, which alone writes it


@dataclass(frozen=True)
class Resilience:
    """Where checkpoints go and what asks training to stop (SIGTERM); both optional."""

    checkpoint_dir: Path | None = None
    stop: StopRequest | None = None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("hyperparameter device=cuda, but no CUDA device is visible to this container.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _fingerprint(channels: Channels, counts: dict[str, int]) -> dict[str, Any]:
    """SHA-256 and size of every input file, so a model can be traced to the exact data."""
    out: dict[str, Any] = {"channels": {}, "rows": counts}
    for name in ("train", "validation", "items", "users"):
        directory = getattr(channels, name)
        if directory is None:
            continue
        files = []
        for path in list_data_files(directory):
            files.append(
                {
                    "file": str(path.relative_to(directory)),
                    "bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            )
        out["channels"][name] = files
    combined = hashlib.sha256(repr(sorted(out["channels"].items())).encode()).hexdigest()
    out["sha256"] = combined
    return out


def _encode(
    table: pa.Table | None,
    id_column: str,
    vocabulary: Vocabulary,
    declaration: FeatureDeclaration,
    channel: str,
) -> tuple[FeatureEncoding, FeatureArrays]:
    """An attribute channel's encoding, or an empty one when the channel is absent."""
    if table is None:
        return FeatureEncoding.empty(id_column), empty_arrays(len(vocabulary))
    return encode_attributes(
        table, id_column=id_column, vocabulary=vocabulary, declaration=declaration, channel=channel
    )


def prepare_data(channels: Channels, config: TrainConfig) -> PreparedData:
    """Read, clean and index every channel.

    The interaction channels are streamed in record batches and held as int32 codes, so memory
    grows with the interactions' arrays (16 bytes a row), not with their text.
    """
    columns = InteractionColumns(
        config.user_id_column,
        config.item_id_column,
        config.rating_column,
        config.timestamp_column,
        config.event_type_column,
        config.context_columns,
    )
    train = read_interactions(channels.train, columns, channel="train", min_rating=config.min_rating)
    has_timestamps = train.has_timestamp
    row_encoding = fit_row_encoding(
        train, columns, time_features=config.time_features and train.has_timestamp
    )
    check_event_settings(config, row_encoding)
    declaration = FeatureDeclaration(
        config.categorical_columns,
        config.multi_valued_columns,
        config.numeric_columns,
        config.ignore_columns,
        config.multi_value_separator,
    )
    item_table = (
        read_table(channels.items, channel="items", string_columns=(config.item_id_column,))
        if channels.items
        else None
    )
    item_ids = train.item_ids()
    if item_table is not None and config.item_id_column in item_table.column_names:
        # Items with attributes but no interactions stay in the catalogue: their attributes
        # alone give them a score, so they can be recommended from day one.
        item_ids = pa.chunked_array([item_ids, *item_table.column(config.item_id_column).chunks])
    users = Vocabulary.from_arrow(train.user_ids())
    items = Vocabulary.from_arrow(item_ids)
    interactions, _ = index_encoded(train, users, items, row_encoding)
    del train
    user_table = (
        read_table(channels.users, channel="users", string_columns=(config.user_id_column,))
        if channels.users is not None
        else None
    )
    item_encoding, item_arrays = _encode(item_table, config.item_id_column, items, declaration, "items")
    user_encoding, user_arrays = _encode(user_table, config.user_id_column, users, declaration, "users")
    validation = None
    if channels.validation is not None:
        held = read_interactions(
            channels.validation, columns, channel="validation", min_rating=config.min_rating
        )
        validation, dropped = index_encoded(held, users, items, row_encoding)
        if dropped:
            logger.warning(
                "channel 'validation': %d of %d interactions name a user or item absent from 'train' "
                "and are not evaluated",
                dropped,
                validation.num_interactions + dropped,
            )
        if validation.num_interactions == 0:
            raise DataError(
                "channel 'validation': none of its interactions has both a user and an item seen in "
                "'train', so nothing can be evaluated. Check that both channels use the same ids."
            )
        if not (has_timestamps and held.has_timestamp) and validation.num_interactions:
            # Without times in both, the validation channel comes after training, as it should
            # (its "times" are row numbers, which would otherwise interleave with train's).
            has_timestamps = False
            offset = (
                float(interactions.timestamps.max(initial=0.0)) + 1.0 - float(validation.timestamps.min())
            )
            validation = replace(validation, timestamps=validation.timestamps + offset)
    counts = {"train": interactions.num_interactions, "users": len(users), "items": len(items)}
    labels = (
        label_columns(
            item_table, id_column=config.item_id_column, vocabulary=items, used=column_names(item_encoding)
        )
        if item_table is not None
        else None
    )
    return PreparedData(
        users,
        items,
        interactions,
        validation,
        item_encoding,
        item_arrays,
        user_encoding,
        user_arrays,
        _fingerprint(channels, counts),
        labels,
        row_encoding,
        has_timestamps,
    )


def check_event_settings(config: TrainConfig, encoding: RowEncoding) -> None:
    """event_weights and target_event_types must name event types the data has."""
    named = {"event_weights": tuple(config.event_weights), "target_event_types": config.target_event_types}
    for setting, types in named.items():
        if not types:
            continue
        if encoding.event_column is None:
            raise DataError(
                f"hyperparameter {setting} names event types ({', '.join(types)}), but channel 'train' "
                f"has no event type column '{config.event_type_column}'. Add the column or set "
                f"event_type_column to the column that holds the event types."
            )
        unknown = [t for t in types if t not in encoding.event_types]
        if unknown:
            raise DataError(
                f"hyperparameter {setting} names the event type(s) {', '.join(map(repr, unknown))}, which "
                f"column '{encoding.event_column}' of channel 'train' never has; its event types are: "
                f"{', '.join(encoding.event_types)}."
            )


def event_code_arrays(
    config: TrainConfig, encoding: RowEncoding
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(loss weight, is a target) per event code, or None where every event is alike."""
    if encoding.event_column is None:
        return None, None
    weights = None
    if config.event_weights:
        weights = np.ones(encoding.num_event_codes, dtype=np.float32)
        for name, weight in config.event_weights.items():
            weights[encoding.event_code(name)] = weight
    targets = None
    if config.target_event_types:
        targets = np.zeros(encoding.num_event_codes, dtype=bool)
        for name in config.target_event_types:
            targets[encoding.event_code(name)] = True
    return weights, targets


def training_rows(config: TrainConfig, data: PreparedData, interactions: IndexedInteractions) -> RowArrays:
    weights, targets = event_code_arrays(config, data.row_encoding)
    return row_arrays(
        interactions,
        data.row_encoding,
        use_gaps=data.row_encoding.time_features,
        event_weights=weights,
        target_codes=targets,
    )


def only_targets(config: TrainConfig, data: PreparedData, held: IndexedInteractions) -> IndexedInteractions:
    """Held-out interactions of the target event types only (all of them without any)."""
    _, targets = event_code_arrays(config, data.row_encoding)
    if targets is None or held.events is None:
        return held
    return subset(held, targets[held.events])


def sample_validation_users(held: IndexedInteractions, limit: int, seed: int) -> IndexedInteractions:
    """``held`` restricted to ``limit`` of its users, drawn once with ``seed`` (all when 0 or fewer).

    A full-ranking pass costs users x items: at 200,000 held-out users it dwarfs an epoch. A fixed
    sample keeps every epoch's figures comparable (early stopping compares them) and its standard
    errors say how precise they are."""
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    if limit <= 0 or len(users) <= limit:
        return held
    chosen = np.zeros(held.num_users, dtype=bool)
    chosen[np.random.default_rng(seed).choice(users, size=limit, replace=False)] = True
    return subset(held, chosen[held.users])


def query_context(
    held: IndexedInteractions, seen: IndexedInteractions, encoding: RowEncoding
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The context of the moment each user is asked about: their first held-out event's.

    Its time since the user's previous event is measured from their latest ``seen`` one."""
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    first = held.indptr[:-1][users]
    cardinalities = encoding.context_cardinalities
    codes = None
    if cardinalities:
        codes = np.zeros((held.num_users, len(cardinalities)), dtype=np.int64)
        parts = []
        if encoding.time_features:
            stamps = held.timestamps[first]
            counts = np.diff(seen.indptr)[users]
            last = (
                seen.timestamps[np.maximum(seen.indptr[1:][users] - 1, 0)] if len(seen.timestamps) else stamps
            )
            gaps = np.where(counts > 0, stamps - last, np.nan)
            parts.append(time_context(stamps, gaps))
        if held.context is not None:
            parts.append(held.context[first])
        if parts:
            codes[users] = np.concatenate(parts, axis=1)
    numeric = None
    if encoding.numeric and held.context_numeric is not None:
        numeric = np.full((held.num_users, len(encoding.numeric)), np.nan, dtype=np.float32)
        numeric[users] = held.context_numeric[first]
    return codes, numeric


def build_model_config(config: TrainConfig, data: PreparedData, kind: ModelName | None = None) -> ModelConfig:
    return ModelConfig(
        kind=kind or config.model,
        num_users=len(data.users),
        num_items=len(data.items),
        embedding_dim=config.embedding_dim,
        mlp_layers=config.mlp_layers,
        dropout=config.dropout,
        use_user_id=config.user_representation in ("id", "both"),
        use_history=config.user_representation in ("history", "both"),
        history_length=config.history_length,
        history_encoder=config.history_encoder,
        attention_blocks=config.attention_blocks,
        attention_heads=config.attention_heads,
        attention_dropout=config.attention_dropout,
        num_event_types=data.row_encoding.num_event_codes,
        use_gaps=data.row_encoding.time_features,
        context_cardinalities=data.row_encoding.context_cardinalities,
        num_context_numeric=len(data.row_encoding.numeric),
        feature_dropout=config.user_id_dropout if config.user_representation == "both" else 0.0,
        item_features=FeatureSpec(
            len(data.items), feature_cardinalities(data.item_encoding), len(data.item_encoding.numeric)
        ),
        user_features=FeatureSpec(
            len(data.users), feature_cardinalities(data.user_encoding), len(data.user_encoding.numeric)
        ),
    )


def new_model(model_config: ModelConfig, data: PreparedData, seed: int, device: torch.device) -> NCF:
    torch.manual_seed(seed)
    model = NCF(model_config)
    model.load_attributes(
        (
            [torch.from_numpy(a) for a in data.item_arrays.categorical],
            torch.from_numpy(data.item_arrays.numeric),
        ),
        (
            [torch.from_numpy(a) for a in data.user_arrays.categorical],
            torch.from_numpy(data.user_arrays.numeric),
        ),
    )
    return model.to(device)


def held_out_tensors(
    data: IndexedInteractions,
    device: torch.device,
    context: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> HeldOut:
    codes, numeric = context
    return HeldOut(
        torch.from_numpy(data.indptr).to(device),
        torch.from_numpy(data.items).to(device),
        torch.from_numpy(codes).to(device) if codes is not None else None,
        torch.from_numpy(numeric).to(device) if numeric is not None else None,
    )


@dataclass(frozen=True)
class _FitContext:
    """What every ``fit`` call of one job shares: processes, checkpoints, stop request."""

    ctx: DistContext
    checkpointer: Checkpointer | None
    stop: StopRequest | None


def _pretrained_neumf(
    config: TrainConfig,
    data: PreparedData,
    settings: FitSettings,
    train: DeviceInteractions,
    held: HeldOut | None,
    device: torch.device,
    run: _FitContext,
) -> NCF:
    """The NCF paper's recipe: train GMF and MLP alone, then start NeuMF from both."""
    parts: dict[str, NCF] = {}
    kinds: tuple[ModelName, ...] = ("gmf", "mlp")
    for kind in kinds:
        logger.info("pretraining %s for NeuMF", kind)
        part = new_model(build_model_config(config, data, kind), data, config.seed, device)
        fit(
            part,
            train,
            held,
            settings,
            device=device,
            prefix=f"pretrain_{kind}_epoch",
            ctx=run.ctx,
            checkpointer=run.checkpointer,
            stop=run.stop,
        )
        parts[kind] = part
    model = new_model(build_model_config(config, data), data, config.seed, device)
    gmf, mlp = parts["gmf"], parts["mlp"]
    with torch.no_grad():
        for name in ("gmf_encoder",):
            getattr(model, name).load_state_dict(getattr(gmf, name).state_dict())
        for name in ("mlp_encoder", "mlp_user_in", "mlp_item_in", "mlp_hidden"):
            getattr(model, name).load_state_dict(getattr(mlp, name).state_dict())
        # alpha = 0.5 weighting of the two pretrained output layers, as in the paper.
        model.get_parameter("gmf_out").copy_(0.5 * gmf.get_parameter("gmf_out"))
        model.get_parameter("mlp_out.weight").copy_(0.5 * mlp.get_parameter("mlp_out.weight"))
        model.item_bias.weight.copy_(0.5 * (gmf.item_bias.weight + mlp.item_bias.weight))
    return model


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics on held-out data, beside the most-popular baseline's on the same users."""

    metrics: dict[str, float]  # every metric of the model: full ranking (with SEs), sampled, beyond accuracy
    most_popular: dict[str, float]  # full-ranking metrics of the most-popular baseline
    comparison: Comparison  # NDCG@10 of the two, paired over users
    ks: tuple[int, ...]  # the cut-offs of the accuracy metrics
    k: int  # the cut-off of the beyond-accuracy metrics (eval_k, at most the catalogue)
    # Per-user values and lists of both, over ``users`` in the same order: the report's segments.
    model_ranking: RankingReport
    popular_ranking: RankingReport
    users: torch.Tensor  # [U_eval] the evaluated users

    def to_json(self) -> dict[str, Any]:
        return {
            "most_popular": self.most_popular,
            "vs_most_popular": {**self.comparison.to_json(), "verdict": verdict(self.comparison)},
        }


def evaluate_model(
    model: NCF,
    train: DeviceInteractions,
    held: HeldOut,
    config: TrainConfig,
    *,
    item_popularity: torch.Tensor,
    item_counts: torch.Tensor,
    item_features: torch.Tensor | None,
    device: torch.device,
) -> Evaluation:
    """Every metric (full ranking with standard errors, sampled, beyond accuracy), and the
    most-popular baseline ranked by ``item_counts`` over the same users with the same masks."""
    model.eval()
    ks = tuple(sorted({10, config.eval_k}))
    users = torch.nonzero(held.counts > 0).squeeze(1)
    report = full_ranking(model, train, held, ks, history_length=config.history_length, users=users)
    out = report.summary()
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    out.update(
        sampled_ranking(
            model,
            train,
            held,
            config.eval_k,
            num_negatives=config.sampled_eval_negatives,
            history_length=config.history_length,
            generator=generator,
        )
    )
    k = min(config.eval_k, report.top_items.shape[1])

    def lists_properties(ranking: RankingReport) -> dict[str, float]:
        return beyond_accuracy(
            ranking.top_items,
            num_items=model.config.num_items,
            item_popularity=item_popularity,
            num_users=train.num_users,
            item_features=item_features,
            k=k,
        )

    out.update(lists_properties(report))
    popular = popular_ranking(item_counts, train, held, ks, users=users)
    baseline = {**popular.summary(), **lists_properties(popular)}
    comparison = compare_rankings(report, popular, "ndcg@10")
    return Evaluation(out, baseline, comparison, ks, k, report, popular, users)


def log_evaluation(evaluation: Evaluation, *, title: str) -> list[str]:
    """Log the model beside the most-popular baseline; return the warnings (also logged)."""
    logger.info("%s", title)
    for line in side_by_side(evaluation.metrics, evaluation.most_popular, evaluation.ks):
        logger.info("  %s", line)
    message = verdict(evaluation.comparison)
    if evaluation.comparison.clearly_better:
        logger.info("%s", message)
        return []
    logger.warning("%s", message)
    return [message]


def drop_validation_repeats(
    held: IndexedInteractions, seen: IndexedInteractions, *, channel: str
) -> IndexedInteractions:
    """Held-out pairs the user already has in training can never be recommended: drop them, say so."""
    kept, repeats = drop_repeats(held, seen)
    if repeats:
        logger.warning(
            "channel '%s': %d of %d interactions repeat an item the user already has in 'train'; full "
            "ranking never recommends those, so they are not evaluated",
            channel,
            repeats,
            held.num_interactions,
        )
    if kept.num_interactions == 0:
        raise DataError(
            f"channel '{channel}': every one of its {held.num_interactions} interactions is a user-item "
            "pair already in 'train', and full ranking never recommends an item the user already has, "
            "so nothing can be evaluated. Is it the training data again? Pass interactions that come "
            "after the training ones."
        )
    return kept


# Users whose exact and indexed top 10 the job compares: a standard error of recall@10 near 0.95
# of about 0.005 (per-user recall varies by ~0.15).
INDEX_RECALL_USERS = 1_000


def build_item_index(
    model: NCF,
    train: DeviceInteractions,
    held: HeldOut,
    users: torch.Tensor,
    config: TrainConfig,
) -> tuple[ItemIndex | None, dict[str, Any]]:
    """The catalogue's index and its report, or why there is none (``retrieval`` and the size)."""
    num_items = model.config.num_items
    if not config.wants_index(num_items):
        reason = (
            "retrieval=exact"
            if config.retrieval == "exact"
            else "model 'mlp' has no GMF vectors to index"
            if config.model == "mlp"
            else f"{num_items:,} items, under index_min_items ({config.index_min_items:,})"
        )
        return None, {"kind": "exact", "reason": reason}
    generator = torch.Generator().manual_seed(config.seed)
    sample = users[torch.randperm(len(users), generator=generator)[:INDEX_RECALL_USERS].to(users.device)]
    model.eval()
    with torch.inference_mode():
        states = [
            encode_held_users(
                model, train, sample[start : start + 256], config.history_length,
                held.context, held.context_numeric,
            )
            for start in range(0, len(sample), 256)
        ]  # fmt: skip
        joined = UserState(
            *(torch.cat([getattr(s, name) for s in states]) if getattr(states[0], name) is not None else None
              for name in UserState._fields)
        )  # fmt: skip
        index, report = tune_index(
            model, model.all_items(sample.device), joined, min_recall=config.min_index_recall
        )
    outcome = report.to_json()
    if index is None:
        logger.warning(
            "the item index is refused: recall@10 %.4f at best (search breadths %s) is under "
            "min_index_recall %.2f; the endpoint will rank all %d items exactly",
            report.recall_at_10, ", ".join(report.recall_by_breadth), config.min_index_recall, num_items,
        )  # fmt: skip
    else:
        logger.info(
            "item index: HNSW over %d GMF vectors built in %.1f s (%.0f MiB); recall@10 %.4f against exact "
            "ranking on %d users at search breadth %d",
            num_items, report.build_seconds, report.index_bytes / 2**20, report.recall_at_10,
            report.sample_users, report.search_breadth,
        )  # fmt: skip
    return index, outcome


def build_artifact(model: NCF, data: PreparedData, config: TrainConfig, metrics: dict[str, Any]) -> Artifact:
    """The self-describing artifact of ``model``: weights, vocabularies, features, what each user saw."""
    # Served histories and exclusions hold everything the job saw, the validation channel too:
    # an endpoint must not recommend, as new, what the user did last week.
    seen = data.interactions if data.validation is None else combine(data.interactions, data.validation)
    return Artifact(
        model_config=model.config,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        users=data.users,
        items=data.items,
        item_encoding=data.item_encoding,
        item_arrays=data.item_arrays,
        user_encoding=data.user_encoding,
        user_arrays=data.user_arrays,
        seen_indptr=seen.indptr,
        seen_items=seen.items,
        item_popularity=np.bincount(seen.items, minlength=len(data.items)),
        train_config=config_to_json(config),
        metrics=metrics,
        fingerprint=data.fingerprint,
        item_labels=data.item_labels,
        seen_timestamps=seen.timestamps if data.has_timestamps else None,
        seen_events=seen.events,
        # Serving encodes a request's event types and context with the codes training used.
        feature_encodings={"rows": data.row_encoding.to_json()},
    )


def fit_settings(config: TrainConfig, *, num_items: int, device: torch.device) -> FitSettings:
    """The loop's settings from the job's hyperparameters (the loss resolved for the catalogue)."""
    return FitSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        loss=config.resolved_loss(num_items, on_gpu=device.type == "cuda"),
        num_negatives=config.num_negatives,
        history_length=config.history_length,
        user_id_dropout=config.user_id_dropout if config.user_representation == "both" else 0.0,
        patience=config.patience,
        amp=config.amp,
        seed=config.seed,
        eval_k=config.eval_k,
    )


def _identity(config: TrainConfig, data: PreparedData) -> str:
    """What a checkpoint must have been written for to be resumed: this configuration and data."""
    # The checkpoint cadence does not change what is trained.
    settings = {k: v for k, v in config_to_json(config).items() if k != "checkpoint_interval_steps"}
    text = json.dumps(settings, sort_keys=True) + str(data.fingerprint["sha256"])
    return hashlib.sha256(text.encode()).hexdigest()


def run_training(
    channels: Channels,
    config: TrainConfig,
    *,
    model_dir: Path,
    output_data_dir: Path,
    ctx: DistContext = SINGLE_PROCESS,
    resilience: Resilience | None = None,
) -> TrainingOutcome:
    """Train, evaluate and save. With several processes (``ctx``), each trains on its shard and
    only rank 0 evaluates and writes ``model_dir`` and ``output_data_dir``."""
    started = time.perf_counter()
    device = ctx.device_for(resolve_device(config.device))
    data = prepare_data(channels, config)
    logger.info(
        "data: %d users, %d items, %d interactions; item attributes: %s; user attributes: %s; device: %s",
        len(data.users),
        len(data.items),
        data.interactions.num_interactions,
        ", ".join(column_names(data.item_encoding)) or "none",
        ", ".join(column_names(data.user_encoding)) or "none",
        device,
    )
    settings = fit_settings(config, num_items=len(data.items), device=device)
    loss = settings.loss
    if data.validation is not None:
        fit_data = data.interactions
        held_data = drop_validation_repeats(data.validation, fit_data, channel="validation")
    else:
        fit_data, held_data = split_last_out(data.interactions)
        if held_data.num_interactions == 0:
            raise DataError(
                "channel 'train': no user has two or more interactions, so none can be held out for "
                "validation. Provide a 'validation' channel or more interactions per user."
            )
        logger.info(
            "no validation channel: holding out the latest interaction of %d users",
            held_data.num_interactions,
        )
    resilience = resilience or Resilience()
    run = _FitContext(
        ctx,
        Checkpointer(
            resilience.checkpoint_dir,
            ctx=ctx,
            identity=_identity(config, data),
            interval_steps=config.checkpoint_interval_steps,
        )
        if resilience.checkpoint_dir is not None
        else None,
        resilience.stop,
    )
    held_data = only_targets(config, data, held_data)
    if held_data.num_interactions == 0:
        raise DataError(
            "no held-out interaction has one of the target_event_types "
            f"({', '.join(config.target_event_types)}), so nothing can be validated. "
            "Widen target_event_types or provide a validation channel with them."
        )
    held_users_total = int((np.diff(held_data.indptr) > 0).sum())
    held_data = sample_validation_users(held_data, config.validation_users, config.seed)
    held_users = int((np.diff(held_data.indptr) > 0).sum())
    if held_users < held_users_total:
        logger.info(
            "validating on a fixed sample of %d of the %d held-out users (validation_users)",
            held_users,
            held_users_total,
        )
    train_device = DeviceInteractions.from_indexed(fit_data, device, training_rows(config, data, fit_data))
    held = held_out_tensors(held_data, device, query_context(held_data, fit_data, data.row_encoding))
    if config.model == "neumf" and config.pretrain:
        model = _pretrained_neumf(config, data, settings, train_device, held, device, run)
    else:
        model = new_model(build_model_config(config, data), data, config.seed, device)
    result: FitResult = fit(
        model,
        train_device,
        held,
        settings,
        device=device,
        ctx=ctx,
        checkpointer=run.checkpointer,
        stop=run.stop,
    )
    refit_records: list[EpochRecord] = []
    final_model = model
    if data.validation is None and config.final_fit == "refit":
        # The held-out interactions are each user's most recent: refitting on them too lets the
        # served model use the freshest signal. The epoch count comes from early stopping.
        if ctx.is_main:
            logger.info(
                "refitting on all %d interactions for %d epochs",
                data.interactions.num_interactions,
                result.best_epoch,
            )
        all_device = DeviceInteractions.from_indexed(
            data.interactions, device, training_rows(config, data, data.interactions)
        )
        final_model = new_model(build_model_config(config, data), data, config.seed, device)
        refit = fit(
            final_model,
            all_device,
            None,
            settings,
            device=device,
            epochs=result.best_epoch,
            prefix="refit_epoch",
            ctx=ctx,
            checkpointer=run.checkpointer,
            stop=run.stop,
        )
        refit_records = refit.records
    if not ctx.is_main:
        # Rank 0 evaluates and writes alone; the others wait so that the job ends together.
        barrier(ctx)
        return TrainingOutcome({"best_epoch": result.best_epoch}, None)
    popularity = np.bincount(fit_data.items, minlength=len(data.items))
    features = multi_hot(data.item_encoding, data.item_arrays)
    evaluation = evaluate_model(
        model,
        train_device,
        held,
        config,
        item_popularity=torch.from_numpy(popularity / max(len(data.users), 1)).float().to(device),
        item_counts=torch.from_numpy(popularity).to(device),
        item_features=torch.from_numpy(features).to(device) if features is not None else None,
        device=device,
    )
    validation_metrics = evaluation.metrics
    # The line SageMaker's metric definitions read last: the kept model's values.
    logger.info(
        "best epoch %d: %s",
        result.best_epoch,
        " ".join(
            f"val_{k}={v:.4f}"
            for k, v in validation_metrics.items()
            if not k.endswith("_se") and k != "num_users"
        ),
    )
    source = "the validation channel" if data.validation is not None else "each user's latest interaction"
    warnings = log_evaluation(
        evaluation,
        title=f"validation on {int(validation_metrics['num_users'])} users ({source}"
        + (f"; a fixed sample of {held_users_total:,}" if held_users < held_users_total else "")
        + "), "
        f"best epoch {result.best_epoch}:",
    )
    records: list[EpochRecord] = list(result.records)
    final_model.eval()
    item_index, retrieval = build_item_index(final_model, train_device, held, evaluation.users, config)
    if retrieval.get("refused"):
        warnings.append(
            f"the item index was refused (recall@10 {retrieval['recall@10']:.4f} < min_index_recall "
            f"{config.min_index_recall}); the endpoint ranks the whole catalogue exactly"
        )
    metrics: dict[str, Any] = {
        "validation": validation_metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": len(records),
        "stopped_early": result.stopped_early,
        "loss": loss,
        "final_fit": "refit" if refit_records else "best_checkpoint",
        "validation_source": "channel" if data.validation is not None else "latest interaction per user",
        # Which users the validation figures are about: all the held-out ones, or a fixed sample.
        "validation_users": {
            "evaluated": held_users,
            "held_out": held_users_total,
            "sampled": held_users < held_users_total,
            "seed": config.seed,
        },
        "device": str(device),
        "training_seconds": round(time.perf_counter() - started, 2),
        **evaluation.to_json(),
        "retrieval": retrieval,
        "warnings": warnings,
    }
    if data.validation is not None:
        metrics["validation_repeats_dropped"] = data.validation.num_interactions - held_data.num_interactions
    artifact = build_artifact(final_model, data, config, metrics)
    artifact.item_index, artifact.retrieval = item_index, retrieval
    save_artifact(artifact, model_dir)
    report = build_evaluation_report(
        evaluation,
        train_device,
        popularity,
        title="recsys evaluation report: validation",
        source=f"Validation of the kept model (best epoch {result.best_epoch}) on {source}, beside "
        "the most-popular baseline computed in the same job.",
        details=report_details(config, model.config, device=device, num_training_users=len(data.users)),
        notes=warnings,
        records=records,
        refit_records=refit_records,
        best_epoch=result.best_epoch,
    )
    write_report(output_data_dir, metrics, records, refit_records, config.eval_k, evaluation_report=report)
    barrier(ctx)
    return TrainingOutcome(metrics, artifact)
