"""Losses over the model's logits, with negatives sampled on the device.

- ``bce``: the NCF paper's pointwise loss, each positive against its own uniform negatives.
- ``sampled_softmax``: listwise; each positive against one set of uniform negatives shared by
  the batch (uniform sampling needs no logQ correction).
- ``softmax``: listwise over the whole catalogue.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.models.ncf import NCF
from recsys.training.batches import Batch

LossKind = Literal["bce", "softmax", "sampled_softmax"]


def compute_loss(
    model: NCF,
    batch: Batch,
    *,
    loss: LossKind,
    num_negatives: int,
    generator: torch.Generator,
) -> Tensor:
    device = batch.positives.device
    num_items = model.config.num_items
    user_state = model.encode_users(batch.users, batch.history, batch.history_mask)
    if loss == "softmax":
        logits = model.score_all(user_state, model.all_items(device))
        return F.cross_entropy(logits.float(), batch.positives)
    size = batch.positives.shape[0]
    if loss == "bce":
        negatives = torch.randint(num_items, (size, num_negatives), device=device, generator=generator)
        candidates = torch.cat([batch.positives.unsqueeze(1), negatives], dim=1)
        logits = model.score_candidates(user_state, model.encode_items(candidates)).float()
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)
    if loss == "sampled_softmax":
        shared = torch.randint(num_items, (num_negatives,), device=device, generator=generator)
        # The negatives are shared by the batch: encode them once and score them as a block,
        # rather than encoding batch x negatives item copies.
        positive_state = model.encode_items(batch.positives.unsqueeze(1))
        positive = model.score_candidates(user_state, positive_state).float()  # [B, 1]
        negative = model.score_all(user_state, model.encode_items(shared)).float()  # [B, n]
        # A sampled "negative" that is the positive itself would be a contradiction: drop it.
        collision = shared.unsqueeze(0) == batch.positives.unsqueeze(1)
        logits = torch.cat([positive, negative.masked_fill(collision, float("-inf"))], dim=1)
        return F.cross_entropy(logits, torch.zeros(size, dtype=torch.long, device=device))
    raise ValueError(f"unknown loss {loss!r}")
