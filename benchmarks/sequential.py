"""Sequential references for the quality benchmark: SASRec and GRU4Rec, trained with the full softmax.

Both are written here from the papers' descriptions, no code copied:

* SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"): a causal transformer
  over the user's latest items, learnt positions, item embeddings shared between the input and the
  output layer. Trained as "SASRec+" (Klenitskiy & Vasilev 2023, "Turning Dross Into Gold Loss: is
  BERT4Rec really better than SASRec?"): cross-entropy over the whole catalogue at every position,
  instead of the original one-negative binary loss.
* GRU4Rec (Hidasi et al. 2016): one GRU layer over the same sequences, the same output layer, loss
  and training loop.

Training: every position of every window predicts the next item at once; Adam; each epoch one
shuffled pass; after each epoch, validation NDCG@10 (full ranking, seen items excluded) decides
early stopping, and the best epoch's weights are kept. ``tune_sequence_model`` trains one model per
dropout of a small grid and keeps the one with the best validation NDCG@10.

Item index ``i`` (0..N-1, the benchmark's catalogue order) enters a model as token ``i + 1``;
token 0 is padding. Windows are left-padded, so the last column always holds the latest item.

Shapes: B = windows in a batch, L = window length, N = catalogue items, D = hidden size,
P = predicted positions, U = users.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.baselines import full_ranking_metrics

__all__ = [
    "GRU4Rec",
    "SASRec",
    "SequenceFit",
    "SequenceModelConfig",
    "TrainingSettings",
    "TunedReference",
    "build_sequences",
    "fit_sequence_model",
    "left_padded_tokens",
    "score_next_items",
    "training_windows",
    "tune_sequence_model",
]

PAD = 0
IGNORE = -100  # target of a padded position: ``F.cross_entropy`` skips it
Architecture = Literal["sasrec", "gru4rec"]
ARCHITECTURES: tuple[Architecture, ...] = ("sasrec", "gru4rec")


@dataclass(frozen=True)
class SequenceModelConfig:
    """The shape of a reference model; stored beside its weights, enough to rebuild it."""

    architecture: Architecture
    num_items: int
    max_length: int = 200
    hidden_size: int = 64
    num_blocks: int = 2  # SASRec only
    num_heads: int = 1  # SASRec only
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        for name in ("num_items", "max_length", "hidden_size", "num_blocks", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttentionBlock(nn.Module):
    """Pre-LayerNorm -> causal self-attention -> residual -> pre-LayerNorm -> point-wise MLP -> residual."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.projection = nn.Linear(hidden_size, hidden_size)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        # SASRec's point-wise feed-forward network keeps the width D.
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size),
        )
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        """``x`` [B, L, D]; ``attention_mask`` [B, 1, L, L] bool, True where a query may attend a key."""
        batch, length, width = x.shape
        q, k, v = (
            self.qkv(self.attention_norm(x))
            .view(batch, length, 3, self.num_heads, width // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_mask, dropout_p=self.dropout if self.training else 0.0
        )
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        x = x + self.residual_dropout(self.projection(attended))
        out: Tensor = x + self.residual_dropout(self.mlp(self.mlp_norm(x)))
        return out


class SASRec(nn.Module):
    """Causal transformer over left-padded item tokens; logits over the catalogue at every position."""

    def __init__(self, config: SequenceModelConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.item_embeddings = nn.Embedding(config.num_items + 1, width, padding_idx=PAD)
        # Position p of a window of length L is its distance from the window's end: the latest item
        # always has position max_length - 1, whatever the batch's length.
        self.position_embeddings = nn.Embedding(config.max_length, width)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            CausalSelfAttentionBlock(width, config.num_heads, config.dropout)
            for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(width)
        # Small item vectors: with the shared output layer, initial logits are then about unit scale.
        nn.init.normal_(self.item_embeddings.weight, std=width**-0.5)
        nn.init.normal_(self.position_embeddings.weight, std=width**-0.5)
        with torch.no_grad():
            self.item_embeddings.weight[PAD].zero_()

    def encode(self, tokens: Tensor) -> Tensor:
        """``tokens`` [B, L] (0 = padding, left) -> the state after each position [B, L, D]."""
        length = _check_length(tokens, self.config.max_length)
        valid = tokens != PAD
        positions = torch.arange(
            self.config.max_length - length, self.config.max_length, device=tokens.device
        )
        x = self.item_embeddings(tokens) * math.sqrt(self.config.hidden_size) + self.position_embeddings(
            positions
        )
        x = self.input_dropout(x) * valid.unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        # Keys must be real items; each query may also see itself, so a padded query's row is never
        # empty (an all-False row would give NaN). Padded positions are zeroed and never scored.
        itself = torch.eye(length, dtype=torch.bool, device=tokens.device)
        attention_mask = (causal & (valid.unsqueeze(1) | itself)).unsqueeze(1)
        for block in self.blocks:
            x = block(x, attention_mask) * valid.unsqueeze(-1)
        states: Tensor = self.final_norm(x)
        return states

    def item_logits(self, states: Tensor) -> Tensor:
        """States [..., D] -> logits [..., N] against the shared item embeddings (padding row left out)."""
        return states @ self.item_embeddings.weight[1:].T

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits [B, L, N] of the next item after each position."""
        return self.item_logits(self.encode(tokens))


class GRU4Rec(nn.Module):
    """One GRU layer over the same left-padded tokens; the same shared-embedding output layer."""

    def __init__(self, config: SequenceModelConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.item_embeddings = nn.Embedding(config.num_items + 1, width, padding_idx=PAD)
        self.input_dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(width, width, num_layers=1, batch_first=True)
        self.output_dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.item_embeddings.weight, std=width**-0.5)
        with torch.no_grad():
            self.item_embeddings.weight[PAD].zero_()

    def encode(self, tokens: Tensor) -> Tensor:
        """``tokens`` [B, L] (0 = padding, left) -> the GRU state after each position [B, L, D]."""
        length = _check_length(tokens, self.config.max_length)
        valid = tokens != PAD
        lengths = valid.sum(dim=1)
        shift = (length - lengths).unsqueeze(1)  # leading padding of each row
        columns = torch.arange(length, device=tokens.device).unsqueeze(0)
        # The GRU must start at each row's first real item: rotate the rows to left-aligned (the
        # padding moves to the end, after every real item, so it cannot change their states), run
        # the GRU, rotate the states back.
        aligned = tokens.gather(1, (columns + shift) % length)
        states, _ = self.gru(self.input_dropout(self.item_embeddings(aligned)))
        back = ((columns - shift) % length).unsqueeze(-1).expand(-1, -1, states.shape[-1])
        states = states.gather(1, back)
        dropped: Tensor = self.output_dropout(states) * valid.unsqueeze(-1)
        return dropped

    def item_logits(self, states: Tensor) -> Tensor:
        """States [..., D] -> logits [..., N] against the shared item embeddings (padding row left out)."""
        return states @ self.item_embeddings.weight[1:].T

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits [B, L, N] of the next item after each position."""
        return self.item_logits(self.encode(tokens))


SequenceModel = SASRec | GRU4Rec


def build_model(config: SequenceModelConfig) -> SequenceModel:
    return SASRec(config) if config.architecture == "sasrec" else GRU4Rec(config)


def _check_length(tokens: Tensor, max_length: int) -> int:
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
    length = tokens.shape[1]
    if not 1 <= length <= max_length:
        raise ValueError(f"window length must be in [1, {max_length}], got {length}")
    return int(length)


# -- data -------------------------------------------------------------------------------------------


def build_sequences(frame: pd.DataFrame, user_index: pd.Index, item_index: pd.Index) -> list[np.ndarray]:
    """Each indexed user's item indices, oldest first (by ``timestamp``; ties keep ``frame``'s row
    order, as ``benchmarks.movielens.split_last`` does). A user absent from ``frame`` gets an empty
    array. Raises ``ValueError`` naming how many rows hold an id the indexes lack."""
    users = np.asarray(user_index.get_indexer(pd.Index(frame["user_id"].astype(str))), dtype=np.int64)
    items = np.asarray(item_index.get_indexer(pd.Index(frame["item_id"].astype(str))), dtype=np.int64)
    unknown = int(((users < 0) | (items < 0)).sum())
    if unknown:
        raise ValueError(f"{unknown} interactions name a user or item missing from the indexes")
    order = np.lexsort((np.arange(len(frame)), frame["timestamp"].to_numpy(), users))
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(len(user_index) + 1))
    return [items[bounds[u] : bounds[u + 1]] for u in range(len(user_index))]


def training_windows(sequences: Sequence[np.ndarray], max_length: int) -> tuple[Tensor, Tensor]:
    """Next-item training windows, left-padded: input tokens [S, L] and target item indices [S, L]
    (``IGNORE`` where padded), L = ``max_length``.

    A sequence of n items gives n - 1 (item, next item) pairs, cut from the end into windows of at
    most ``max_length`` pairs, so every pair is trained once per epoch; the oldest window of a long
    sequence may be short.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for sequence in sequences:
        for stop in range(len(sequence) - 1, 0, -max_length):
            start = max(0, stop - max_length)
            window_inputs = np.zeros(max_length, dtype=np.int64)
            window_targets = np.full(max_length, IGNORE, dtype=np.int64)
            width = stop - start
            window_inputs[max_length - width :] = sequence[start:stop] + 1
            window_targets[max_length - width :] = sequence[start + 1 : stop + 1]
            inputs.append(window_inputs)
            targets.append(window_targets)
    if not inputs:
        empty = torch.zeros(0, max_length, dtype=torch.long)
        return empty, empty.clone()
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def left_padded_tokens(histories: Sequence[np.ndarray], max_length: int) -> Tensor:
    """Each history's latest ``max_length`` items as tokens [U, L], left-padded; L is the longest
    kept history (at least 1)."""
    length = max(1, min(max_length, max((len(h) for h in histories), default=1)))
    tokens = np.zeros((len(histories), length), dtype=np.int64)
    for row, history in enumerate(histories):
        recent = history[-length:] if len(history) else history
        if len(recent):
            tokens[row, length - len(recent) :] = recent + 1
    return torch.from_numpy(tokens)


@torch.no_grad()
def score_next_items(
    model: SequenceModel, histories: Sequence[np.ndarray], batch_size: int = 256
) -> np.ndarray:
    """Scores [U, N] (logits) of each history's next item. Seen items are not masked here: the
    ranking (``full_ranking_metrics``) masks them, as it does for EASE."""
    model.eval()
    parts = []
    for start in range(0, len(histories), batch_size):
        tokens = left_padded_tokens(histories[start : start + batch_size], model.config.max_length)
        parts.append(model.item_logits(model.encode(tokens)[:, -1]).float().numpy())
    if not parts:
        return np.zeros((0, model.config.num_items), dtype=np.float32)
    return np.concatenate(parts)


# -- training ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSettings:
    """The training loop's settings, shared by both references."""

    max_epochs: int = 200
    patience: int = 8  # epochs without a better validation NDCG@k before stopping
    batch_size: int = 32  # windows per step (about 2,800 predicted positions on MovieLens-100K)
    learning_rate: float = 1e-3
    k: int = 10
    seed: int = 42
    # Wall-clock cap of one fit (None: none): no new epoch starts once it is spent, and the best
    # epoch so far is kept. It bounds the benchmark's time on a slow machine, at the price of a
    # machine-dependent stopping point (recorded as epochs_run).
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_epochs", "patience", "batch_size", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class Validation:
    """What early stopping and tuning look at: each user's input history, their validation items
    (one list per user; empty = not evaluated), and the seen matrix [U, N] that ranking masks."""

    histories: Sequence[np.ndarray]
    relevant: Sequence[Sequence[int]]
    seen: np.ndarray


@dataclass
class SequenceFit:
    """One trained model: its best epoch's weights loaded, and what training cost."""

    model: SequenceModel
    best_epoch: int
    epochs_run: int
    best_validation_ndcg: float
    validation_ndcg: list[float]
    step_seconds: float  # optimiser steps only, as the project's samples_per_second counts them
    wall_seconds: float  # the whole fit: windows, steps, validation, weight copies
    predicted_positions: int  # over all epochs run

    @property
    def samples_per_second(self) -> float:
        return self.predicted_positions / max(self.step_seconds, 1e-9)


def fit_sequence_model(
    config: SequenceModelConfig,
    sequences: Sequence[np.ndarray],
    validation: Validation | None,
    settings: TrainingSettings,
    *,
    epochs: int | None = None,
) -> SequenceFit:
    """Train on ``sequences`` (item indices, oldest first) with the full softmax at every position.

    With ``validation``, NDCG@k is measured after every epoch, training stops after
    ``settings.patience`` epochs without improvement, and the best epoch's weights are returned.
    Without it, exactly ``epochs`` (default ``settings.max_epochs``) epochs are run.
    """
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    inputs, targets = training_windows(sequences, config.max_length)
    if inputs.shape[0] == 0:
        raise ValueError("no sequence has two items: nothing to train on")
    window_lengths = (targets != IGNORE).sum(dim=1)
    positions_per_epoch = int(window_lengths.sum())
    max_epochs = epochs if validation is None and epochs is not None else settings.max_epochs
    curve: list[float] = []
    best_ndcg, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    step_seconds = 0.0
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        step_start = time.perf_counter()
        for batch in _length_bucketed_batches(window_lengths, settings.batch_size, generator):
            batch_inputs, batch_targets = inputs[batch], targets[batch]
            # Drop the columns that are padding in every window of the batch.
            first = int((batch_inputs != PAD).any(dim=0).nonzero()[0])
            batch_inputs, batch_targets = batch_inputs[:, first:], batch_targets[:, first:]
            scored = batch_targets != IGNORE
            states = model.encode(batch_inputs)[scored]  # [P, D]
            loss = F.cross_entropy(model.item_logits(states), batch_targets[scored])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        step_seconds += time.perf_counter() - step_start
        if validation is None:
            continue
        scores = score_next_items(model, validation.histories)
        ndcg = full_ranking_metrics(scores, validation.seen, validation.relevant, settings.k)[
            f"ndcg@{settings.k}"
        ]
        curve.append(ndcg)
        if ndcg > best_ndcg:
            best_ndcg, best_epoch, best_state = ndcg, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience:
            break
        if settings.time_budget_s is not None and time.perf_counter() - started >= settings.time_budget_s:
            break
    if validation is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    model.eval()
    return SequenceFit(
        model=model,
        best_epoch=best_epoch,
        epochs_run=epoch,
        best_validation_ndcg=best_ndcg,
        validation_ndcg=curve,
        step_seconds=step_seconds,
        wall_seconds=time.perf_counter() - started,
        predicted_positions=positions_per_epoch * epoch,
    )


def _length_bucketed_batches(lengths: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch's batches of window indices: windows of similar length together (less padding to
    compute), random within a length bucket, batches in random order."""
    bucket_width = 25
    shuffled = torch.randperm(lengths.shape[0], generator=generator)
    keys = (lengths[shuffled] // bucket_width) * lengths.shape[0] + torch.arange(lengths.shape[0])
    batches = list(torch.split(shuffled[torch.argsort(keys)], batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@dataclass
class TunedReference:
    """The grid's best fit and every grid point's validation figures."""

    best: SequenceFit
    best_dropout: float
    grid: dict[float, SequenceFit] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float:
        """Every grid point's training, validation included: the reference's training time."""
        return sum(fit.wall_seconds for fit in self.grid.values())

    @property
    def samples_per_second(self) -> float:
        positions = sum(fit.predicted_positions for fit in self.grid.values())
        return positions / max(sum(fit.step_seconds for fit in self.grid.values()), 1e-9)

    def summary(self) -> dict[str, object]:
        return {
            "dropout": self.best_dropout,
            "best_epoch": self.best.best_epoch,
            "validation_ndcg@10": self.best.best_validation_ndcg,
            "wall_seconds": self.wall_seconds,
            "samples_per_second": self.samples_per_second,
            "grid": {
                str(dropout): {
                    "validation_ndcg@10": fit.best_validation_ndcg,
                    "best_epoch": fit.best_epoch,
                    "epochs_run": fit.epochs_run,
                    "wall_seconds": fit.wall_seconds,
                    "step_seconds": fit.step_seconds,
                    "samples_per_second": fit.samples_per_second,
                    "validation_curve": fit.validation_ndcg,
                }
                for dropout, fit in self.grid.items()
            },
        }


def tune_sequence_model(
    architecture: Architecture,
    num_items: int,
    sequences: Sequence[np.ndarray],
    validation: Validation,
    settings: TrainingSettings,
    dropouts: Sequence[float] = (0.2, 0.5),
    **shape: int,
) -> TunedReference:
    """One early-stopped fit per dropout; the best validation NDCG@k wins (ties: the first)."""
    if not dropouts:
        raise ValueError("dropouts must hold at least one value")
    grid: dict[float, SequenceFit] = {}
    for dropout in dropouts:
        config = SequenceModelConfig(architecture, num_items, dropout=dropout, **shape)
        grid[dropout] = fit_sequence_model(config, sequences, validation, settings)
    best_dropout = max(grid, key=lambda d: grid[d].best_validation_ndcg)
    return TunedReference(grid[best_dropout], best_dropout, grid)
