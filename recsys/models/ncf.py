"""Neural collaborative filtering: GMF, MLP and NeuMF, with attribute and history towers.

Shapes: B = batch of users, M = candidates per user, N = catalogue items, L = history length,
D = embedding size, H = first MLP width.

A user is the sum of up to three parts: an id embedding (row ``num_users`` is the "unknown
user", trained by hiding ids at random), their attribute embeddings, and a recency-weighted
pool of their latest items. The pool is what lets serving score a new user from a list of
items without retraining. An item is its id embedding plus its attribute embeddings.

Scoring is split into a user side and an item side so that the item side of every tower can be
computed once for the whole catalogue (``encode_items``) and reused: by full-ranking
evaluation, by the full softmax, and by serving. Every path returns logits.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureSpec:
    """Attribute columns of one entity table: what the towers' shapes depend on."""

    num_rows: int = 0
    categorical: tuple[tuple[int, int], ...] = ()  # (cardinality incl. missing, padded width)
    num_numeric: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.categorical and self.num_numeric == 0


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the model; stored beside the weights."""

    kind: Literal["gmf", "mlp", "neumf"]
    num_users: int
    num_items: int
    embedding_dim: int = 64
    mlp_layers: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    use_user_id: bool = True
    use_history: bool = True
    history_length: int = 50
    item_features: FeatureSpec = FeatureSpec()
    user_features: FeatureSpec = FeatureSpec()

    def __post_init__(self) -> None:
        if self.kind not in ("gmf", "mlp", "neumf"):
            raise ValueError(f"kind must be gmf, mlp or neumf, got {self.kind!r}")
        if self.num_users < 1 or self.num_items < 1:
            raise ValueError(f"need at least one user and item, got {self.num_users}, {self.num_items}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.use_user_id and not self.use_history:
            raise ValueError("a user needs an id embedding, a history, or both")
        if self.kind != "gmf" and not self.mlp_layers:
            raise ValueError("mlp_layers must not be empty for mlp and neumf")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelConfig:
        raw = dict(raw)
        for key in ("item_features", "user_features"):
            spec = raw[key]
            raw[key] = FeatureSpec(
                spec["num_rows"], tuple(tuple(c) for c in spec["categorical"]), spec["num_numeric"]
            )
        raw["mlp_layers"] = tuple(raw["mlp_layers"])
        return cls(**raw)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


class AttributeTower(nn.Module):
    """Sum of an entity's attribute embeddings, looked up from tables held as buffers.

    Multi-valued columns are mean-pooled over their non-padding values.
    """

    def __init__(self, spec: FeatureSpec, dim: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality, dim, padding_idx=0) for cardinality, _ in spec.categorical
        )
        for c, (_, width) in enumerate(spec.categorical):
            self.register_buffer(f"codes_{c}", torch.zeros(spec.num_rows, width, dtype=torch.long))
        self.register_buffer("numeric", torch.zeros(spec.num_rows, spec.num_numeric))
        self.numeric_proj = nn.Linear(spec.num_numeric, dim, bias=False) if spec.num_numeric else None
        for emb in self._tables():
            nn.init.normal_(emb.weight, std=0.01)
            with torch.no_grad():
                emb.weight[0].zero_()

    def _tables(self) -> list[nn.Embedding]:
        return [cast(nn.Embedding, emb) for emb in self.embeddings]

    def _buffer(self, name: str) -> Tensor:
        return cast(Tensor, getattr(self, name))

    def load_arrays(self, categorical: list[Tensor], numeric: Tensor) -> None:
        for c, codes in enumerate(categorical):
            self._buffer(f"codes_{c}").copy_(codes)
        self._buffer("numeric").copy_(numeric)

    def forward(self, index: Tensor) -> Tensor:
        """index [*] -> [*, D]."""
        out: Tensor | None = None
        for c, emb in enumerate(self._tables()):
            codes = self._buffer(f"codes_{c}")[index]  # [*, W]
            present = (codes > 0).to(emb.weight.dtype)
            pooled = (emb(codes) * present.unsqueeze(-1)).sum(-2) / present.sum(-1, keepdim=True).clamp(min=1)
            out = pooled if out is None else out + pooled
        if self.numeric_proj is not None:
            projected = self.numeric_proj(self._buffer("numeric")[index])
            out = projected if out is None else out + projected
        if out is None:
            raise RuntimeError("AttributeTower called without attribute columns")
        return out


class HistoryPool(nn.Module):
    """Recency-weighted mean of the embeddings of a user's latest items.

    Position 0 of the history is the most recent item. Each position has a learnt weight,
    initialised to decay with age, so the model learns how fast old interests fade.
    """

    def __init__(self, num_items: int, dim: int, length: int, dropout: float) -> None:
        super().__init__()
        self.items = nn.Embedding(num_items, dim)
        nn.init.normal_(self.items.weight, std=0.01)
        self.recency_logits = nn.Parameter(-0.05 * torch.arange(length, dtype=torch.float32))
        self.dropout = nn.Dropout(dropout)

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        """history [B, L] item indices (most recent first), mask [B, L] bool -> [B, D]."""
        length = history.shape[1]
        weights = self.recency_logits[:length].exp() * mask.to(self.recency_logits.dtype)  # [B, L]
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-6)
        pooled = torch.einsum("bl,bld->bd", weights, self.items(history))
        return cast(Tensor, self.dropout(pooled))


class EntityEncoder(nn.Module):
    """One embedding space for users and items: id, attributes and (users) history."""

    def __init__(self, config: ModelConfig, dim: int) -> None:
        super().__init__()
        # Row num_users is the unknown user: new users and hidden ids during training.
        self.user_ids = nn.Embedding(config.num_users + 1, dim) if config.use_user_id else None
        self.user_attributes = (
            AttributeTower(config.user_features, dim) if not config.user_features.is_empty else None
        )
        self.history = (
            HistoryPool(config.num_items, dim, config.history_length, config.dropout)
            if config.use_history
            else None
        )
        self.item_ids = nn.Embedding(config.num_items, dim)
        self.item_attributes = (
            AttributeTower(config.item_features, dim) if not config.item_features.is_empty else None
        )
        for emb in (self.user_ids, self.item_ids):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.01)
        self.num_users = config.num_users

    def users(self, users: Tensor, history: Tensor, history_mask: Tensor) -> Tensor:
        """users [B] (num_users = unknown), history [B, L], history_mask [B, L] -> [B, D]."""
        parts: list[Tensor] = []
        if self.user_ids is not None:
            parts.append(self.user_ids(users))
        if self.user_attributes is not None:
            # The unknown user has no attributes; clamp keeps the lookup in range, the mask zeroes it.
            known = (users < self.num_users).unsqueeze(-1)
            attrs = self.user_attributes(users.clamp(max=self.num_users - 1))
            parts.append(attrs * known.to(attrs.dtype))
        if self.history is not None:
            parts.append(self.history(history, history_mask))
        return torch.stack(parts).sum(0)

    def items(self, items: Tensor) -> Tensor:
        """items [*] -> [*, D]."""
        out: Tensor = self.item_ids(items)
        if self.item_attributes is not None:
            out = out + self.item_attributes(items)
        return out


class UserState(NamedTuple):
    """The user side of every tower, for B users."""

    gmf: Tensor | None  # [B, D], already multiplied by the GMF output weights
    mlp: Tensor | None  # [B, H], the user's share of the first MLP layer


class ItemState(NamedTuple):
    """The item side of every tower, for N items (computed once for a catalogue)."""

    gmf: Tensor | None  # [N, D]
    mlp: Tensor | None  # [N, H], the item's share of the first MLP layer, bias included
    bias: Tensor  # [N]


class NCF(nn.Module):
    """GMF, MLP or NeuMF over the encoders above; returns logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embedding_dim
        has_gmf = config.kind in ("gmf", "neumf")
        has_mlp = config.kind in ("mlp", "neumf")
        self.gmf_encoder = EntityEncoder(config, dim) if has_gmf else None
        self.mlp_encoder = EntityEncoder(config, dim) if has_mlp else None
        self.item_bias = nn.Embedding(config.num_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.mlp_user_in: nn.Linear | None = None
        self.mlp_item_in: nn.Linear | None = None
        self.mlp_hidden: nn.Sequential | None = None
        last_mlp = 0
        if has_mlp:
            widths = config.mlp_layers
            # The first layer of MLP([u; i]) is W_u u + W_i i: split, so the item half is cacheable.
            self.mlp_user_in = nn.Linear(dim, widths[0], bias=False)
            self.mlp_item_in = nn.Linear(dim, widths[0])
            layers: list[nn.Module] = []
            for w_in, w_out in itertools.pairwise(widths):
                layers += [nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(w_in, w_out)]
            layers += [nn.ReLU(), nn.Dropout(config.dropout)]
            self.mlp_hidden = nn.Sequential(*layers)
            last_mlp = widths[-1]
        # NeuMF's output layer over [gmf product ; mlp output]; GMF alone is its first D weights.
        self.gmf_out = nn.Parameter(torch.ones(dim) / dim**0.5) if has_gmf else None
        self.mlp_out = nn.Linear(last_mlp, 1, bias=False) if has_mlp else None

    def encode_users(self, users: Tensor, history: Tensor, history_mask: Tensor) -> UserState:
        gmf = mlp = None
        if self.gmf_encoder is not None and self.gmf_out is not None:
            gmf = self.gmf_encoder.users(users, history, history_mask) * self.gmf_out
        if self.mlp_encoder is not None and self.mlp_user_in is not None:
            mlp = self.mlp_user_in(self.mlp_encoder.users(users, history, history_mask))
        return UserState(gmf, mlp)

    def encode_items(self, items: Tensor) -> ItemState:
        gmf = mlp = None
        if self.gmf_encoder is not None:
            gmf = self.gmf_encoder.items(items)
        if self.mlp_encoder is not None and self.mlp_item_in is not None:
            mlp = self.mlp_item_in(self.mlp_encoder.items(items))
        return ItemState(gmf, mlp, self.item_bias(items).squeeze(-1))

    def all_items(self, device: torch.device) -> ItemState:
        return self.encode_items(torch.arange(self.config.num_items, device=device))

    def _mlp_logits(self, user_part: Tensor, item_part: Tensor) -> Tensor:
        if self.mlp_hidden is None or self.mlp_out is None:
            raise RuntimeError(f"a {self.config.kind} model has no MLP tower")
        logits: Tensor = self.mlp_out(self.mlp_hidden(user_part + item_part))
        return logits.squeeze(-1)

    def score_candidates(self, user: UserState, items: ItemState) -> Tensor:
        """Per-user candidates: item state of shape [B, M, *] -> logits [B, M]."""
        logits = items.bias
        if user.gmf is not None and items.gmf is not None:
            logits = logits + torch.einsum("bd,bmd->bm", user.gmf, items.gmf)
        if user.mlp is not None and items.mlp is not None:
            logits = logits + self._mlp_logits(user.mlp.unsqueeze(1), items.mlp)
        return logits

    def score_all(self, user: UserState, items: ItemState, *, chunk: int = 4096) -> Tensor:
        """Every user against a shared item set: item state [N, *] -> logits [B, N].

        GMF is one matrix product; the MLP tower is evaluated per pair, in item chunks to bound memory.
        """
        logits = items.bias.unsqueeze(0)
        if user.gmf is not None and items.gmf is not None:
            # addmm adds the bias inside the product: one pass over a large catalogue, not two.
            logits = torch.addmm(items.bias.to(user.gmf.dtype).unsqueeze(0), user.gmf, items.gmf.T)
        if user.mlp is not None and items.mlp is not None:
            parts = [
                self._mlp_logits(user.mlp.unsqueeze(1), items.mlp[start : start + chunk].unsqueeze(0))
                for start in range(0, items.mlp.shape[0], chunk)
            ]
            logits = logits + torch.cat(parts, dim=1)
        return logits

    def forward(self, users: Tensor, history: Tensor, history_mask: Tensor, candidates: Tensor) -> Tensor:
        """users [B], history [B, L], history_mask [B, L], candidates [B, M] -> logits [B, M]."""
        return self.score_candidates(
            self.encode_users(users, history, history_mask), self.encode_items(candidates)
        )


def build_model(config: ModelConfig) -> NCF:
    return NCF(config)
