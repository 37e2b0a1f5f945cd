"""What a job trains from its hyperparameters: the model's shape (sizes from the data's vocabularies
and encodings), a fresh or NeuMF-pretrained model, and the loop's settings."""

from __future__ import annotations

import logging

import torch

from recsys.config import ModelName, TrainConfig
from recsys.data.device import DeviceInteractions, HeldOut
from recsys.data.features import feature_cardinalities
from recsys.data.prepared import PreparedData
from recsys.models.ncf import NCF, FeatureSpec, ModelConfig
from recsys.training.loop import FitSettings, RunContext, fit

logger = logging.getLogger(__name__)


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


def build_model(
    config: TrainConfig, data: PreparedData, device: torch.device, kind: ModelName | None = None
) -> NCF:
    """A fresh model for ``data`` (seeded by ``config.seed``), its attribute tables loaded."""
    torch.manual_seed(config.seed)
    model = NCF(build_model_config(config, data, kind))
    model.load_attributes(data.item_arrays, data.user_arrays)
    return model.to(device)


def pretrained_neumf(
    config: TrainConfig,
    data: PreparedData,
    settings: FitSettings,
    train: DeviceInteractions,
    held: HeldOut | None,
    device: torch.device,
    run: RunContext,
) -> NCF:
    """The NCF paper's recipe: train GMF and MLP alone, then start NeuMF from both."""
    parts: dict[str, NCF] = {}
    kinds: tuple[ModelName, ...] = ("gmf", "mlp")
    for kind in kinds:
        logger.info("pretraining %s for NeuMF", kind)
        parts[kind] = build_model(config, data, device, kind)
        fit(parts[kind], train, held, settings, device=device, prefix=f"pretrain_{kind}_epoch", run=run)
    model = build_model(config, data, device)
    model.fuse_pretrained(parts["gmf"], parts["mlp"])
    return model


def fit_settings(config: TrainConfig, *, num_items: int, device: torch.device) -> FitSettings:
    """The loop's settings from the job's hyperparameters (the loss resolved for the catalogue)."""
    return FitSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        loss=config.resolved_loss(num_items, on_gpu=device.type == "cuda"),
        num_negatives=config.num_negatives,
        user_id_dropout=config.user_id_dropout if config.user_representation == "both" else 0.0,
        patience=config.patience,
        amp=config.amp,
        seed=config.seed,
        eval_k=config.eval_k,
    )
