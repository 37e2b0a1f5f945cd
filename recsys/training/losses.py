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
from torch import Tensor, nn

from recsys.models.ncf import NCF, SequenceBatch, UserState
from recsys.training.batches import Batch

LossKind = Literal["bce", "softmax", "sampled_softmax"]


def sample_negatives(
    loss: LossKind, *, batch_size: int, num_items: int, num_negatives: int, generator: torch.Generator
) -> Tensor | None:
    """The step's negatives, drawn on the device outside the model so that a data-parallel
    wrapper sees only tensors: [B, n] for ``bce``, [n] shared for ``sampled_softmax``."""
    device = generator.device
    if loss == "bce":
        return torch.randint(num_items, (batch_size, num_negatives), device=device, generator=generator)
    if loss == "sampled_softmax":
        return torch.randint(num_items, (num_negatives,), device=device, generator=generator)
    return None


class TrainingObjective(nn.Module):
    """The model and its loss as one module, so that ``DistributedDataParallel`` can wrap it:
    DDP synchronises gradients only for work done inside the wrapped module's ``forward``."""

    def __init__(self, model: NCF, loss: LossKind) -> None:
        super().__init__()
        if loss not in ("bce", "softmax", "sampled_softmax"):
            raise ValueError(f"unknown loss {loss!r}")
        self.model = model
        self.loss = loss

    def forward(self, batch: Batch | SequenceBatch, negatives: Tensor | None) -> Tensor:
        return compute_loss(self.model, batch, loss=self.loss, negatives=negatives)


def batch_targets(model: NCF, batch: Batch | SequenceBatch) -> tuple[UserState, Tensor, Tensor | None]:
    """(user side at each target, the target items, their loss weights) of either kind of batch."""
    if isinstance(batch, SequenceBatch):
        weights = batch.weights[batch.target_mask] if batch.weights is not None else None
        return model.encode_windows(batch), batch.targets[batch.target_mask], weights
    state = model.encode_users(batch.users, batch.history, batch.history_mask, batch.extras)
    return state, batch.positives, batch.weights


def _mean(losses: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return losses.mean()
    # A weighted mean: the weights say how much each event type counts relative to the others.
    return (losses * weights).sum() / weights.sum().clamp(min=1e-6)


def compute_loss(
    model: NCF, batch: Batch | SequenceBatch, *, loss: LossKind, negatives: Tensor | None
) -> Tensor:
    """The loss of one batch (a scalar); ``negatives`` from ``sample_negatives``."""
    if loss not in ("bce", "softmax", "sampled_softmax"):
        raise ValueError(f"unknown loss {loss!r}")
    user_state, positives, weights = batch_targets(model, batch)
    device = positives.device
    if loss == "softmax":
        logits = model.score_all(user_state, model.all_items(device))
        return _mean(F.cross_entropy(logits.float(), positives, reduction="none"), weights)
    if negatives is None:
        raise ValueError(f"loss {loss!r} needs sampled negatives")
    size = positives.shape[0]
    if loss == "bce":
        if negatives.shape[0] != size:  # windows hold a varying number of targets
            negatives = negatives[torch.arange(size, device=device) % negatives.shape[0]]
        candidates = torch.cat([positives.unsqueeze(1), negatives], dim=1)
        logits = model.score_candidates(user_state, model.encode_items(candidates)).float()
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        per_target = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1)
        return _mean(per_target, weights)
    if loss == "sampled_softmax":
        # The negatives are shared by the batch: encode them once and score them as a block,
        # rather than encoding batch x negatives item copies.
        positive_state = model.encode_items(positives.unsqueeze(1))
        positive = model.score_candidates(user_state, positive_state).float()  # [B, 1]
        negative = model.score_all(user_state, model.encode_items(negatives)).float()  # [B, n]
        # A sampled "negative" that is the positive itself would be a contradiction: drop it.
        collision = negatives.unsqueeze(0) == positives.unsqueeze(1)
        logits = torch.cat([positive, negative.masked_fill(collision, float("-inf"))], dim=1)
        targets = torch.zeros(size, dtype=torch.long, device=device)
        return _mean(F.cross_entropy(logits, targets, reduction="none"), weights)
    raise AssertionError("unreachable: the loss was checked above")
