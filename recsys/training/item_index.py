"""The approximate item index of a large catalogue, built after the final evaluation: tuned to the
narrowest search breadth whose recall@10 against exact ranking reaches ``min_index_recall`` on a
sample of held-out users, or refused (the endpoint then ranks exactly)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from recsys.config import TrainConfig
from recsys.data.device import DeviceInteractions, HeldOut
from recsys.evaluation.protocols import encode_held_users
from recsys.models.ncf import NCF, UserState
from recsys.models.retrieval import ItemIndex, tune_index

logger = logging.getLogger(__name__)

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
                model, train, sample[start : start + 256], model.config.history_length,
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
