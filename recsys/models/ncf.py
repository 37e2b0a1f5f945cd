"""Neural collaborative filtering: GMF, MLP and NeuMF, with attribute and history towers.

Shapes: B = batch of users, M = candidates per user, N = catalogue items, L = history length,
D = embedding size, H = first MLP width.

A user is the sum of up to four parts: an id embedding (row ``num_users`` is the "unknown
user", trained by hiding ids at random), the embeddings of their attribute values, a history
vector (a recency-weighted pool of their latest items, or a causal transformer over their latest
events that reads the item side's own embeddings) and the context of the moment predicted. The
history and the attribute values are what let serving score a new user without retraining. An
item is its id embedding plus its attribute embeddings.

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
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.data.context import NUM_GAP_CODES
from recsys.data.features import FeatureArrays


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
    history_encoder: Literal["pool", "attention"] = "pool"
    attention_blocks: int = 2
    attention_heads: int = 2
    attention_dropout: float = 0.2
    num_event_types: int = 0  # event-type codes including 0 (unknown); 0: no event types
    use_gaps: bool = False  # history events carry the bucketised time since the one before
    context_cardinalities: tuple[int, ...] = ()  # codes per context slot, each including 0 (unknown)
    num_context_numeric: int = 0
    # Training hides attributes, context values and the history's gaps and event types at random
    # with this probability (per user and column), so that each part also works when absent.
    feature_dropout: float = 0.0

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
        if self.history_encoder not in ("pool", "attention"):
            raise ValueError(f"history_encoder must be pool or attention, got {self.history_encoder!r}")
        if self.history_encoder == "attention" and self.embedding_dim % self.attention_heads:
            raise ValueError(
                f"attention_heads ({self.attention_heads}) must divide embedding_dim ({self.embedding_dim})"
            )

    @property
    def has_context(self) -> bool:
        return bool(self.context_cardinalities) or self.num_context_numeric > 0

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
        raw["context_cardinalities"] = tuple(raw.get("context_cardinalities", ()))
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

    def lookup(self, index: Tensor) -> AttributeValues:
        """The stored attribute values of rows ``index`` [B]."""
        categorical = tuple(self._buffer(f"codes_{c}")[index] for c in range(len(self.embeddings)))
        return AttributeValues(categorical, self._buffer("numeric")[index])

    def forward(self, index: Tensor, *, hide: float = 0.0) -> Tensor:
        """index [B] -> [B, D]; with ``hide``, each column of each row is hidden with that probability."""
        return self.embed(self.lookup(index), hide=hide)

    def embed(self, values: AttributeValues, *, hide: float = 0.0) -> Tensor:
        """Attribute values (stored or given by a request) -> [B, D]; code 0 and numeric 0 are missing."""
        out: Tensor | None = None
        for emb, codes in zip(self._tables(), values.categorical, strict=True):
            if hide > 0:
                codes = codes * (torch.rand(codes.shape[0], 1, device=codes.device) >= hide)
            present = (codes > 0).to(emb.weight.dtype)
            pooled = (emb(codes) * present.unsqueeze(-1)).sum(-2) / present.sum(-1, keepdim=True).clamp(min=1)
            out = pooled if out is None else out + pooled
        if self.numeric_proj is not None:
            numeric = values.numeric
            if hide > 0:
                numeric = numeric * (torch.rand(numeric.shape, device=numeric.device) >= hide)
            projected = self.numeric_proj(numeric)
            out = projected if out is None else out + projected
        if out is None:
            raise RuntimeError("AttributeTower called without attribute columns")
        return out


class AttributeValues(NamedTuple):
    """One entity table's attribute values for B rows, encoded as the tower's buffers are."""

    categorical: tuple[Tensor, ...]  # per column [B, W] codes, 0 missing
    numeric: Tensor  # [B, n] standardised, 0 missing


class UserExtras(NamedTuple):
    """What is known about a user besides id and item history; every part is optional.

    A part that is absent (None) uses the learnt "unknown" rows, as a missing value does.
    """

    history_gaps: Tensor | None = None  # [B, L] gap codes of the history events (most recent first)
    history_events: Tensor | None = None  # [B, L] event-type codes of the history events
    context: Tensor | None = None  # [B, C] context codes of the moment predicted
    context_numeric: Tensor | None = None  # [B, Cn] standardised, NaN missing
    attribute_rows: Tensor | None = None  # [B] rows of the user attribute table (default: the ids)
    attributes: AttributeValues | None = None  # given attribute values (they win over the rows)


@dataclass(frozen=True)
class SequenceBatch:
    """Windows of users' event sequences in time order, every position a training target.

    Position 0 holds the start token; position t (1..T-1) holds the t-th event of the window,
    and the output at position t - 1 predicts the event at t - 1 from those before it:
    ``targets[:, t]`` is the item the model must predict after reading positions 0..t.
    """

    users: Tensor  # [W] id rows (hidden ids are num_users)
    attribute_rows: Tensor  # [W] true user rows, for the attribute tower
    tokens: Tensor  # [W, T] item codes (position 0 unused)
    token_gaps: Tensor | None  # [W, T]
    token_events: Tensor | None  # [W, T]
    lengths: Tensor  # [W] valid tokens, the start token included
    targets: Tensor  # [W, T] the item each position predicts
    target_mask: Tensor  # [W, T] bool: a target to learn
    context: Tensor | None  # [W, T, C] codes of each target's moment
    context_numeric: Tensor | None  # [W, T, Cn]
    weights: Tensor | None  # [W, T] loss weight of each target


def _summed(parts: list[Tensor]) -> Tensor:
    """The sum of same-shaped tensors. Serving encodes a request's user in a handful of small
    ops, so one add per extra part beats a stack and a reduction (and one part costs nothing)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


class ContextTower(nn.Module):
    """Sum of the embeddings of the moment's context: time codes, categorical and numeric columns.

    Code 0 of each slot is a learnt "unknown" row, and each numeric column has a learnt vector
    used where its value is missing (NaN).
    """

    def __init__(self, cardinalities: tuple[int, ...], num_numeric: int, dim: int) -> None:
        super().__init__()
        self.slots = nn.ModuleList(nn.Embedding(size, dim) for size in cardinalities)
        for emb in self.slots:
            nn.init.normal_(cast(nn.Embedding, emb).weight, std=0.01)
        self.numeric_proj = nn.Linear(num_numeric, dim, bias=False) if num_numeric else None
        self.numeric_unknown = nn.Parameter(torch.zeros(num_numeric, dim)) if num_numeric else None
        self.num_numeric = num_numeric

    def forward(
        self, codes: Tensor | None, numeric: Tensor | None, shape: tuple[int, ...], *, hide: float = 0.0
    ) -> Tensor:
        """codes [*, C] (None: all unknown), numeric [*, Cn] -> [*, D] over leading ``shape``."""
        out: Tensor | None = None
        for c, emb in enumerate(self.slots):
            embedding = cast(nn.Embedding, emb)
            if codes is None:
                part = embedding.weight[0].expand(*shape, -1)
            else:
                slot = codes[..., c]
                if hide > 0:
                    slot = slot * (torch.rand(slot.shape, device=slot.device) >= hide)
                part = embedding(slot)
            out = part if out is None else out + part
        if self.numeric_proj is not None and self.numeric_unknown is not None:
            if numeric is None:
                part = self.numeric_unknown.sum(0).expand(*shape, -1)
            else:
                missing = torch.isnan(numeric)
                if hide > 0:
                    missing = missing | (torch.rand(missing.shape, device=missing.device) < hide)
                values = torch.where(missing, torch.zeros_like(numeric), numeric)
                part = self.numeric_proj(values) + missing.to(values.dtype) @ self.numeric_unknown
            out = part if out is None else out + part
        if out is None:
            raise RuntimeError("ContextTower called without context slots")
        return out


class EventEmbedding(nn.Module):
    """Embeddings of a history event's type and of the gap since the event before it."""

    def __init__(self, num_event_types: int, use_gaps: bool, num_gap_codes: int, dim: int) -> None:
        super().__init__()
        self.events = nn.Embedding(num_event_types, dim) if num_event_types else None
        self.gaps = nn.Embedding(num_gap_codes, dim) if use_gaps else None
        for emb in (self.events, self.gaps):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.01)

    @property
    def is_empty(self) -> bool:
        return self.events is None and self.gaps is None

    def forward(
        self, events: Tensor | None, gaps: Tensor | None, shape: tuple[int, ...], *, hide: float = 0.0
    ) -> Tensor | None:
        """[*, L] codes (None: unknown) -> [*, L, D], or None when the model has neither."""
        out: Tensor | None = None
        for table, codes in ((self.events, events), (self.gaps, gaps)):
            if table is None:
                continue
            if codes is None:
                part = table.weight[0].expand(*shape, -1)
            else:
                if hide > 0:  # per sequence: the model also learns to read a history without them
                    codes = codes * (torch.rand(codes.shape[0], 1, device=codes.device) >= hide)
                part = table(codes)
            out = part if out is None else out + part
        return out


class CausalBlock(nn.Module):
    """A pre-norm transformer block whose position t attends to positions 0..t only."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attention = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm_attention(x)).view(batch, length, 3, self.heads, -1).unbind(2)
        attended = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        x = x + self.dropout(self.out(attended.transpose(1, 2).reshape(batch, length, dim)))
        return cast(Tensor, x + self.dropout(self.ffn(self.norm_ffn(x))))


class HistoryAttention(nn.Module):
    """A causal transformer over the start token and the user's latest events, oldest first.

    Padding sits only after a sequence's valid tokens, so the causal mask alone keeps every
    valid position from seeing it: no key mask, and the fused attention kernels apply.
    """

    def __init__(self, dim: int, length: int, blocks: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.randn(dim) * 0.01)
        self.positions = nn.Embedding(length + 1, dim)
        nn.init.normal_(self.positions.weight, std=0.01)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        # A layer-normed vector has norm sqrt(dim), a hundred times the id and item embeddings at
        # their initialisation: started at that scale it drowns the user's id and attributes,
        # and training stalls at popularity. Started at unit norm, every part of the user counts.
        nn.init.constant_(self.norm.weight, dim**-0.5)
        self.dropout = nn.Dropout(dropout)
        self.length = length

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens [B, T, D] (position 0 is overwritten by the start token), lengths [B] -> [B, T, D]."""
        steps = tokens.shape[1]
        position = torch.arange(steps, device=tokens.device)
        valid = (position.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        x = torch.where(position.view(1, -1, 1) == 0, self.start.to(tokens.dtype), tokens)
        x = self.dropout((x + self.positions(position)) * valid)
        for block in self.blocks:
            x = block(x)
        return cast(Tensor, self.norm(x))


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

    def forward(self, history: Tensor, mask: Tensor, extra: Tensor | None = None) -> Tensor:
        """history [B, L] item indices (most recent first), mask [B, L] bool, extra [B, L, D]
        (event and gap embeddings added to each item) -> [B, D]."""
        length = history.shape[1]
        weights = self.recency_logits[:length].exp() * mask.to(self.recency_logits.dtype)  # [B, L]
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-6)
        vectors = self.items(history)
        if extra is not None:
            vectors = vectors + extra
        pooled = torch.bmm(weights.unsqueeze(1), vectors).squeeze(1)
        return cast(Tensor, self.dropout(pooled)) if self.training else pooled


class EntityEncoder(nn.Module):
    """One embedding space for users and items.

    An item is its id and attribute embeddings. A user is the sum of their id embedding, their
    attribute embeddings, the history vector and the context of the moment predicted.
    """

    def __init__(self, config: ModelConfig, dim: int) -> None:
        super().__init__()
        # Row num_users is the unknown user: new users and hidden ids during training.
        self.user_ids = nn.Embedding(config.num_users + 1, dim) if config.use_user_id else None
        self.user_attributes = (
            AttributeTower(config.user_features, dim) if not config.user_features.is_empty else None
        )
        self.history: HistoryPool | None = None
        self.attention: HistoryAttention | None = None
        if config.use_history and config.history_encoder == "pool":
            self.history = HistoryPool(config.num_items, dim, config.history_length, config.dropout)
        elif config.use_history:
            # The sequence encoder reads items through the item side's own embeddings.
            self.attention = HistoryAttention(
                dim,
                config.history_length,
                config.attention_blocks,
                config.attention_heads,
                config.attention_dropout,
            )
        self.event_embedding = (
            EventEmbedding(config.num_event_types, config.use_gaps, NUM_GAP_CODES, dim)
            if config.use_history and (config.num_event_types or config.use_gaps)
            else None
        )
        self.context = (
            ContextTower(config.context_cardinalities, config.num_context_numeric, dim)
            if config.has_context
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
        self.feature_dropout = config.feature_dropout

    def _hide(self) -> float:
        return self.feature_dropout if self.training else 0.0

    def _profile(self, users: Tensor, extras: UserExtras) -> Tensor | None:
        """Id and attribute embeddings [B, D] (None when the model has neither)."""
        parts: list[Tensor] = []
        if self.user_ids is not None:
            parts.append(self.user_ids(users))
        if self.user_attributes is not None:
            if extras.attributes is not None:
                parts.append(self.user_attributes.embed(extras.attributes, hide=self._hide()))
            else:
                rows = extras.attribute_rows if extras.attribute_rows is not None else users
                # The unknown user has no stored attributes: the lookup is clamped, the mask zeroes it.
                known = (rows < self.num_users).unsqueeze(-1)
                attrs = self.user_attributes(rows.clamp(max=self.num_users - 1), hide=self._hide())
                parts.append(attrs * known.to(attrs.dtype))
        return _summed(parts) if parts else None

    def _events(self, events: Tensor | None, gaps: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
        if self.event_embedding is None:
            return None
        return cast(Tensor | None, self.event_embedding(events, gaps, shape, hide=self._hide()))

    def users(
        self,
        users: Tensor,
        history: Tensor,
        history_mask: Tensor,
        extras: UserExtras | None = None,
        *,
        with_context: bool = True,
    ) -> Tensor:
        """users [B] (num_users = unknown), history [B, L] most recent first, mask [B, L] -> [B, D].

        Without ``with_context``, the context term is left out: it is a sum's last term, so serving
        adds ``moment`` of each request to a user vector computed (and cached) without it."""
        extras = extras or UserExtras()
        parts: list[Tensor] = []
        profile = self._profile(users, extras)
        if profile is not None:
            parts.append(profile)
        shape = tuple(history.shape)
        if self.history is not None:
            parts.append(
                self.history(
                    history, history_mask, self._events(extras.history_events, extras.history_gaps, shape)
                )
            )
        elif self.attention is not None:
            parts.append(self._attend_history(history, history_mask, extras))
        if self.context is not None and with_context:
            parts.append(self.moment(extras.context, extras.context_numeric, users.shape[0]))
        return _summed(parts)

    def moment(self, codes: Tensor | None, numeric: Tensor | None, batch: int) -> Tensor:
        """The context term of B user vectors: codes [B, C], numeric [B, Cn] -> [B, D]."""
        assert self.context is not None
        return cast(Tensor, self.context(codes, numeric, (batch,), hide=self._hide()))

    def _attend_history(self, history: Tensor, mask: Tensor, extras: UserExtras) -> Tensor:
        """The output of the start token and the latest L events, in time order, at the last one."""
        assert self.attention is not None
        batch, length = history.shape
        count = mask.sum(1)  # [B]
        steps = torch.arange(length + 1, device=history.device)
        # Token t (1..n) is the history's entry n - t: the oldest kept event first.
        source = (count.unsqueeze(1) - steps.unsqueeze(0)).clamp(min=0, max=length - 1)  # [B, L+1]
        valid = (steps.unsqueeze(0) >= 1) & (steps.unsqueeze(0) <= count.unsqueeze(1))

        def chronological(codes: Tensor | None) -> Tensor | None:
            return None if codes is None else codes.gather(1, source) * valid

        tokens = self.items(chronological(history))  # type: ignore[arg-type]
        extra = self._events(
            chronological(extras.history_events), chronological(extras.history_gaps), (batch, length + 1)
        )
        if extra is not None:
            tokens = tokens + extra
        hidden: Tensor = self.attention(tokens, count + 1)
        return hidden[torch.arange(batch, device=history.device), count]

    def windows(self, batch: SequenceBatch) -> Tensor:
        """The user vector at every target of a ``SequenceBatch``: [number of targets, D]."""
        assert self.attention is not None
        shape = tuple(batch.tokens.shape)
        tokens = self.items(batch.tokens)
        extra = self._events(batch.token_events, batch.token_gaps, shape)
        if extra is not None:
            tokens = tokens + extra
        hidden: Tensor = self.attention(tokens, batch.lengths)  # [W, T, D]
        profile = self._profile(batch.users, UserExtras(attribute_rows=batch.attribute_rows))
        if profile is not None:
            hidden = hidden + profile.unsqueeze(1)
        if self.context is not None:
            hidden = hidden + self.context(batch.context, batch.context_numeric, shape, hide=self._hide())
        return hidden[batch.target_mask]

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

    def encode_users(
        self,
        users: Tensor,
        history: Tensor,
        history_mask: Tensor,
        extras: UserExtras | None = None,
        *,
        with_context: bool = True,
    ) -> UserState:
        gmf = mlp = None
        if self.gmf_encoder is not None and self.gmf_out is not None:
            vectors = self.gmf_encoder.users(users, history, history_mask, extras, with_context=with_context)
            gmf = vectors * self.gmf_out
        if self.mlp_encoder is not None and self.mlp_user_in is not None:
            vectors = self.mlp_encoder.users(users, history, history_mask, extras, with_context=with_context)
            mlp = self.mlp_user_in(vectors)
        return UserState(gmf, mlp)

    def encode_moment(self, codes: Tensor | None, numeric: Tensor | None, batch: int) -> UserState:
        """The context's share of B users' states: added to ``encode_users(..., with_context=False)``
        it gives ``encode_users(...)`` (both user sides are linear in the sum that holds it)."""
        gmf = mlp = None
        if self.gmf_encoder is not None and self.gmf_out is not None:
            gmf = self.gmf_encoder.moment(codes, numeric, batch) * self.gmf_out
        if self.mlp_encoder is not None and self.mlp_user_in is not None:
            mlp = self.mlp_user_in(self.mlp_encoder.moment(codes, numeric, batch))
        return UserState(gmf, mlp)

    def encode_windows(self, batch: SequenceBatch) -> UserState:
        """The user side at every target of ``batch`` (attention models): [number of targets, *]."""
        gmf = mlp = None
        if self.gmf_encoder is not None and self.gmf_out is not None:
            gmf = self.gmf_encoder.windows(batch) * self.gmf_out
        if self.mlp_encoder is not None and self.mlp_user_in is not None:
            mlp = self.mlp_user_in(self.mlp_encoder.windows(batch))
        return UserState(gmf, mlp)

    def load_attributes(self, item: FeatureArrays | None, user: FeatureArrays | None) -> None:
        """Copy the encoded attributes of every item and user (row i for index i) into every tower."""
        for encoder in (self.gmf_encoder, self.mlp_encoder):
            if encoder is None:
                continue
            for tower, arrays in ((encoder.item_attributes, item), (encoder.user_attributes, user)):
                if tower is not None and arrays is not None:
                    tower.load_arrays(
                        [torch.from_numpy(codes) for codes in arrays.categorical],
                        torch.from_numpy(arrays.numeric),
                    )

    @torch.no_grad()
    def fuse_pretrained(self, gmf: NCF, mlp: NCF) -> None:
        """Start this NeuMF from a trained GMF and a trained MLP of the same sizes (the NCF paper's
        pretraining): each tower takes its model's weights, and the output layers and item biases
        are each half of theirs (the paper's alpha = 0.5)."""
        if self.config.kind != "neumf" or gmf.config.kind != "gmf" or mlp.config.kind != "mlp":
            raise ValueError(
                f"fuse_pretrained fuses a gmf and an mlp into a neumf, not {gmf.config.kind} and "
                f"{mlp.config.kind} into {self.config.kind}"
            )
        pairs: list[tuple[nn.Module | None, nn.Module | None]] = [
            (self.gmf_encoder, gmf.gmf_encoder),
            (self.mlp_encoder, mlp.mlp_encoder),
            (self.mlp_user_in, mlp.mlp_user_in),
            (self.mlp_item_in, mlp.mlp_item_in),
            (self.mlp_hidden, mlp.mlp_hidden),
        ]
        for mine, theirs in pairs:
            if mine is None or theirs is None:
                raise ValueError("fuse_pretrained: a tower is missing from one of the models")
            mine.load_state_dict(theirs.state_dict())
        if self.gmf_out is None or gmf.gmf_out is None or self.mlp_out is None or mlp.mlp_out is None:
            raise ValueError("fuse_pretrained: an output layer is missing from one of the models")
        self.gmf_out.copy_(0.5 * gmf.gmf_out)
        self.mlp_out.weight.copy_(0.5 * mlp.mlp_out.weight)
        self.item_bias.weight.copy_(0.5 * (gmf.item_bias.weight + mlp.item_bias.weight))

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

    def forward(
        self,
        users: Tensor,
        history: Tensor,
        history_mask: Tensor,
        candidates: Tensor,
        extras: UserExtras | None = None,
    ) -> Tensor:
        """users [B], history [B, L], history_mask [B, L], candidates [B, M] -> logits [B, M]."""
        return self.score_candidates(
            self.encode_users(users, history, history_mask, extras), self.encode_items(candidates)
        )
