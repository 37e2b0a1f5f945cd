"""Evaluation protocols: full ranking (primary) and the NCF paper's sampled ranking (secondary).

Full ranking scores every item for each evaluated user, removes the items the user already
interacted with in training, and ranks the rest: the protocol that reflects what serving does.
The sampled protocol ranks each held-out item among ``num_negatives`` distinct items the user
never touched, for comparison with the literature (it overstates accuracy, see Krichene & Rendle
2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from recsys.data.device import DeviceInteractions, HeldOut, history_extras, segment_positions
from recsys.data.interactions import IndexedInteractions, subset
from recsys.evaluation import metrics
from recsys.models.ncf import NCF, UserExtras, UserState

ACCURACY_METRICS: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "hr": metrics.hit_rate_at_k,
    "ndcg": metrics.ndcg_at_k,
    "recall": metrics.recall_at_k,
    "precision": metrics.precision_at_k,
    "map": metrics.map_at_k,
    "mrr": metrics.mrr_at_k,
}


def user_inputs(
    data: DeviceInteractions,
    users: Tensor,
    length: int,
    *,
    context: Tensor | None = None,
    context_numeric: Tensor | None = None,
) -> tuple[Tensor, Tensor, UserExtras]:
    """Known users' latest ``length`` events with their gaps and types, and the given context."""
    history, mask, gaps, events = history_extras(data, data.indptr[users], data.indptr[users + 1], length)
    return history, mask, UserExtras(gaps, events, context, context_numeric)


@torch.no_grad()
def _masked_top_k(
    score: Callable[[Tensor], Tensor], train: DeviceInteractions, users: Tensor, k: int, batch_size: int
) -> Tensor:
    """The top ``k`` items of ``score(users)`` [B, N], each user's training items masked out."""
    tops = []
    for chunk in torch.split(users, batch_size):
        logits = score(chunk).float()
        owner, flat = segment_positions(train.indptr, chunk)
        logits[owner, train.items[flat]] = float("-inf")
        tops.append(torch.topk(logits, k, dim=1).indices)
    return torch.cat(tops) if tops else torch.zeros(0, k, dtype=torch.long, device=users.device)


@torch.no_grad()
def encode_held_users(
    model: NCF,
    train: DeviceInteractions,
    users: Tensor,
    history_length: int,
    context: Tensor | None = None,
    context_numeric: Tensor | None = None,
) -> UserState:
    """The user side of ``users`` as the held-out moment sees them: their training histories and
    the context (indexed by user) of the moment asked about."""
    history, mask, extras = user_inputs(
        train,
        users,
        history_length,
        context=context[users] if context is not None else None,
        context_numeric=context_numeric[users] if context_numeric is not None else None,
    )
    return model.encode_users(users, history, mask, extras)


def rank_top_k(
    model: NCF,
    train: DeviceInteractions,
    users: Tensor,
    k: int,
    *,
    history_length: int,
    batch_size: int = 512,
    context: Tensor | None = None,
    context_numeric: Tensor | None = None,
) -> Tensor:
    """The top ``k`` unseen items of each user: [len(users), k] item indices, best first.

    ``context`` [U, C] / ``context_numeric`` [U, Cn], indexed by user, describe the moment asked about."""
    items = model.all_items(users.device)

    def score(chunk: Tensor) -> Tensor:
        return model.score_all(
            encode_held_users(model, train, chunk, history_length, context, context_numeric), items
        )

    return _masked_top_k(score, train, users, k, batch_size)


def popular_top_k(
    item_counts: Tensor, train: DeviceInteractions, users: Tensor, k: int, *, batch_size: int = 512
) -> Tensor:
    """The most-popular baseline: each user's ``k`` most interacted-with unseen items [len(users), k].

    ``item_counts`` [N] are training interactions per item; ties go to the lower item index, so
    the lists are the same on every device and run."""
    num_items = item_counts.shape[0]
    # Counts are whole numbers: subtracting index / N (< 1) orders ties without reordering counts.
    order = item_counts.double() - torch.arange(num_items, device=item_counts.device) / max(num_items, 1)

    def score(chunk: Tensor) -> Tensor:
        return order.expand(chunk.shape[0], num_items).clone()

    return _masked_top_k(score, train, users, k, batch_size)


def cutoffs(k: int) -> tuple[int, ...]:
    """The cut-offs every evaluation reports: 10 (what early stopping and the baseline comparison
    read) and the job's own ``k``."""
    return tuple(sorted({10, k}))


@dataclass(frozen=True)
class RankingReport:
    """Per-user metric values (for means and standard errors) and the recommendation lists."""

    values: dict[str, Tensor]  # "ndcg@10" -> [U_eval]
    top_items: Tensor  # [U_eval, max k]

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, per_user in self.values.items():
            n = per_user.shape[0]
            out[name] = float(per_user.mean()) if n else 0.0
            out[f"{name}_se"] = float(per_user.std() / math.sqrt(n)) if n > 1 else 0.0
        out["num_users"] = float(next(iter(self.values.values())).shape[0]) if self.values else 0.0
        return out


def _held_out_users(held_out: HeldOut, users: Tensor | None) -> Tensor:
    return torch.nonzero(held_out.counts > 0).squeeze(1) if users is None else users


def report_from_top(
    top: Tensor, held_out: HeldOut, users: Tensor, ks: tuple[int, ...], *, num_items: int
) -> RankingReport:
    """Every accuracy metric at every k of the ranked lists ``top`` [len(users), K] of ``users``."""
    max_k = top.shape[1]
    relevant_indptr = torch.zeros(users.shape[0] + 1, dtype=torch.long, device=users.device)
    relevant_indptr[1:] = torch.cumsum(held_out.counts[users], 0)
    _, flat = segment_positions(held_out.indptr, users)
    hits = metrics.hits_from_topk(top, relevant_indptr, held_out.items[flat], num_items)
    num_relevant = held_out.counts[users]
    values = {
        f"{name}@{k}": fn(hits, num_relevant, min(k, max_k))
        for k in ks
        for name, fn in ACCURACY_METRICS.items()
    }
    return RankingReport(values, top)


def full_ranking(
    model: NCF,
    train: DeviceInteractions,
    held_out: HeldOut,
    ks: tuple[int, ...],
    *,
    history_length: int,
    users: Tensor | None = None,
) -> RankingReport:
    """Every accuracy metric at every k over the users that have held-out items (or over
    ``users``, a subset of them, e.g. one data-parallel rank's share)."""
    users = _held_out_users(held_out, users)
    max_k = min(max(ks), model.config.num_items)
    top = rank_top_k(
        model,
        train,
        users,
        max_k,
        history_length=history_length,
        context=held_out.context,
        context_numeric=held_out.context_numeric,
    )
    return report_from_top(top, held_out, users, ks, num_items=model.config.num_items)


def popular_ranking(
    item_counts: Tensor,
    train: DeviceInteractions,
    held_out: HeldOut,
    ks: tuple[int, ...],
    *,
    users: Tensor | None = None,
) -> RankingReport:
    """``full_ranking`` of the most-popular baseline: the same users, masks and metrics."""
    users = _held_out_users(held_out, users)
    num_items = item_counts.shape[0]
    top = popular_top_k(item_counts, train, users, min(max(ks), num_items))
    return report_from_top(top, held_out, users, ks, num_items=num_items)


@dataclass(frozen=True)
class Comparison:
    """One metric of two rankings of the same users: means and the paired difference."""

    metric: str
    model: float
    baseline: float
    difference: float  # mean over users of (model - baseline)
    difference_se: float  # its standard error (paired: the same users, so per-user noise cancels)

    @property
    def clearly_better(self) -> bool:
        """The model beats the baseline by more than two standard errors of the difference."""
        return self.difference > 2.0 * self.difference_se

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "clearly_better": self.clearly_better}


def compare_rankings(model: RankingReport, baseline: RankingReport, metric: str) -> Comparison:
    """``metric`` of ``model`` against ``baseline``, both computed over the same users in the same order."""
    a, b = model.values[metric].double(), baseline.values[metric].double()
    if a.shape != b.shape:
        raise ValueError(f"the two reports rank different users ({a.shape[0]} vs {b.shape[0]})")
    n = a.shape[0]
    diff = a - b
    return Comparison(
        metric,
        float(a.mean()) if n else 0.0,
        float(b.mean()) if n else 0.0,
        float(diff.mean()) if n else 0.0,
        float(diff.std() / math.sqrt(n)) if n > 1 else 0.0,
    )


def drop_repeats(held_out: IndexedInteractions, seen: IndexedInteractions) -> tuple[IndexedInteractions, int]:
    """``held_out`` without the (user, item) pairs that ``seen`` already holds, and how many those were.

    Full ranking never ranks an item the user has in training, so such a pair is a miss whatever
    the model does: counted, it only lowers every accuracy metric by the share of such rows."""
    width = np.int64(max(held_out.num_items, seen.num_items, 1))
    held_keys = held_out.users.astype(np.int64) * width + held_out.items
    seen_keys = seen.users.astype(np.int64) * width + seen.items
    fresh = ~np.isin(held_keys, seen_keys)
    repeats = int(fresh.size - fresh.sum())
    if not repeats:
        return held_out, 0
    kept = subset(held_out, fresh)
    return kept, repeats


@dataclass(frozen=True)
class KnownPairs:
    """Every (user, item) pair a user touched, as sorted distinct keys ``user * num_items + item``."""

    keys: Tensor  # [K] int64
    # Each key minus its position among its user's keys: with the user's items k_0 < k_1 < ...,
    # user * num_items + k_i - i, which never decreases, so these are sorted too.
    shifted: Tensor  # [K] int64
    num_items: int

    @classmethod
    def of(cls, train: DeviceInteractions, held_out: HeldOut, num_items: int) -> KnownPairs:
        """The pairs of ``train`` and ``held_out``: what a sampled negative must never be."""
        device = held_out.items.device
        owners = torch.repeat_interleave(
            torch.arange(held_out.counts.shape[0], device=device), held_out.counts
        )
        keys = torch.unique(
            torch.cat([train.users.long() * num_items + train.items, owners * num_items + held_out.items]),
            sorted=True,
        )
        run_start = torch.searchsorted(keys, torch.div(keys, num_items, rounding_mode="floor") * num_items)
        shifted = keys - (torch.arange(keys.shape[0], device=device) - run_start)
        return cls(keys, shifted, num_items)


def sample_negatives(
    known: KnownPairs, users: Tensor, num_negatives: int, *, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``num_negatives`` distinct items per row that its user never touched: (items, valid), [B, M].

    ``users`` [B] may repeat; each row is drawn on its own, on ``users``' device, as a uniform
    random subset of its user's unseen items (without replacement, never an item of ``known``).

    A user with fewer unseen items than ``num_negatives`` gets every one of them, once; the slots
    left over repeat one of them and are ``False`` in ``valid``, for the caller to mask. A user
    who touched every item has no negative: every slot is invalid (its item is meaningless).
    """
    num_items = known.num_items
    users = users.long()
    start = torch.searchsorted(known.keys, users * num_items)
    unseen = num_items - (torch.searchsorted(known.keys, (users + 1) * num_items) - start)
    ranks, valid = _distinct_ranks(unseen, num_negatives, generator)
    ranks = torch.where(valid, ranks, ranks[:, :1])
    # The r-th unseen item is r plus the number of the user's items at or below it, which is the
    # number of the user's k_i - i <= r: one searchsorted over the shifted keys.
    below = torch.searchsorted(known.shifted, users.unsqueeze(1) * num_items + ranks, right=True)
    items = ranks + below - start.unsqueeze(1)
    return items.clamp(max=num_items - 1), valid


def _distinct_ranks(unseen: Tensor, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` distinct ranks per row, a uniform random subset of [0, unseen): (ranks, valid).

    Where ``unseen < count``, the first ``unseen`` slots hold every rank and the rest are invalid.
    """
    device = unseen.device
    ranks = torch.zeros((unseen.shape[0], count), dtype=torch.long, device=device)
    valid = torch.arange(count, device=device) < unseen.unsqueeze(1)
    # Up to twice as many unseen items as wanted, a random order of all of them is cheap and
    # exact; beyond, redrawing repeats is cheaper, and a slot repeats with probability below 1/2.
    dense = unseen <= 2 * count
    if bool(dense.any()):
        bound = unseen[dense].unsqueeze(1)
        width = max(int(bound.max()), 1)
        # float64 keys: ties (which topk would break by position) are then negligible.
        keys = torch.rand((bound.shape[0], width), generator=generator, device=device, dtype=torch.float64)
        keys = keys.masked_fill(torch.arange(width, device=device) >= bound, 2.0)  # past the end: last
        order = torch.topk(keys, min(count, width), dim=1, largest=False).indices
        ranks[dense] = torch.nn.functional.pad(order, (0, count - order.shape[1]))
    sparse = ~dense
    if bool(sparse.any()):
        bound = unseen[sparse].unsqueeze(1)
        drawn = _uniform_below(bound, count, generator)
        while True:  # a host sync per round: rounds number about log2(count)
            ordered, order = torch.sort(drawn, dim=1)
            again = torch.zeros_like(drawn, dtype=torch.bool)
            again.scatter_(1, order[:, 1:], ordered[:, 1:] == ordered[:, :-1])
            if not bool(again.any()):
                break
            # Redrawn from the whole range, repeats and all: every item stays equally likely.
            drawn = torch.where(again, _uniform_below(bound, count, generator), drawn)
        ranks[sparse] = drawn
    return ranks, valid


def _uniform_below(bound: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """[R, count] integers uniform in [0, bound) per row of ``bound`` [R, 1]."""
    # float64: float32 would leave most integers beyond 2**24 unreachable.
    uniform = torch.rand(
        (bound.shape[0], count), generator=generator, device=bound.device, dtype=torch.float64
    )
    return torch.minimum((uniform * bound).long(), bound - 1)


@torch.no_grad()
def sampled_ranking(
    model: NCF,
    train: DeviceInteractions,
    held_out: HeldOut,
    k: int,
    *,
    num_negatives: int,
    history_length: int,
    generator: torch.Generator,
    batch_size: int = 1024,
) -> dict[str, float]:
    """HR@k and NDCG@k of each held-out item ranked among ``num_negatives`` distinct unseen items.

    The negatives of a held-out row are drawn without replacement from the items its user has
    neither in training nor held out (``sample_negatives``). A user with fewer such items than
    ``num_negatives`` has each held-out item ranked among all of them: the missing negatives are
    masked, so they never outrank it.
    """
    device = held_out.items.device
    num_items = model.config.num_items
    owners = torch.repeat_interleave(torch.arange(held_out.counts.shape[0], device=device), held_out.counts)
    known = KnownPairs.of(train, held_out, num_items)
    hr, ndcg = [], []
    for users, positives in zip(
        torch.split(owners, batch_size), torch.split(held_out.items, batch_size), strict=True
    ):
        negatives, valid = sample_negatives(known, users, num_negatives, generator=generator)
        # A user with no unseen item at all: any candidate will do, every one is masked.
        negatives = torch.where(valid.any(1, keepdim=True), negatives, positives.unsqueeze(1))
        history, mask, extras = user_inputs(
            train,
            users,
            history_length,
            context=held_out.context[users] if held_out.context is not None else None,
            context_numeric=held_out.context_numeric[users] if held_out.context_numeric is not None else None,
        )
        candidates = torch.cat([positives.unsqueeze(1), negatives], dim=1)
        logits = model(users, history, mask, candidates, extras).float()
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(~valid, float("-inf"))], dim=1)
        rank = (logits[:, 1:] > logits[:, :1]).sum(1)
        hr.append((rank < k).float())
        ndcg.append(torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2.0), 0.0))
    hr_all = torch.cat(hr) if hr else torch.zeros(0)
    ndcg_all = torch.cat(ndcg) if ndcg else torch.zeros(0)
    n = max(hr_all.shape[0], 1)
    return {
        f"sampled_hr@{k}": float(hr_all.mean()) if hr_all.numel() else 0.0,
        f"sampled_ndcg@{k}": float(ndcg_all.mean()) if ndcg_all.numel() else 0.0,
        f"sampled_hr@{k}_se": float(hr_all.std() / math.sqrt(n)) if hr_all.numel() > 1 else 0.0,
    }


def beyond_accuracy(
    top_items: Tensor,
    *,
    num_items: int,
    item_popularity: Tensor,
    num_users: int,
    item_features: Tensor | None,
    k: int,
) -> dict[str, float]:
    """Catalogue coverage, Gini index, novelty and (with item attributes) intra-list diversity at k."""
    lists = top_items[:, :k]
    out = {
        f"coverage@{k}": metrics.catalog_coverage(lists, num_items),
        f"gini@{k}": metrics.gini_index(lists, num_items),
        f"novelty@{k}": metrics.novelty(lists, item_popularity, min_probability=1.0 / max(num_users, 1)),
    }
    if item_features is not None:
        out[f"diversity@{k}"] = metrics.intra_list_diversity(lists, item_features)
    return out
