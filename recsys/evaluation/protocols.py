"""Evaluation protocols: full ranking (primary) and the NCF paper's sampled ranking (secondary).

Full ranking scores every item for each evaluated user, removes the items the user already
interacted with in training, and ranks the rest: the protocol that reflects what serving does.
The sampled protocol ranks each held-out item among ``num_negatives`` items the user never
touched, for comparison with the literature (it overstates accuracy, see Krichene & Rendle 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from recsys.evaluation import metrics
from recsys.models.ncf import NCF
from recsys.training.batches import DeviceInteractions, user_histories

ACCURACY_METRICS: dict[str, Callable[[Tensor, Tensor, int], Tensor]] = {
    "hr": metrics.hit_rate_at_k,
    "ndcg": metrics.ndcg_at_k,
    "recall": metrics.recall_at_k,
    "precision": metrics.precision_at_k,
    "map": metrics.map_at_k,
    "mrr": metrics.mrr_at_k,
}


@dataclass(frozen=True)
class HeldOut:
    """Each user's held-out items as CSR over all users (most users may have none)."""

    indptr: Tensor  # [U+1]
    items: Tensor  # [R]

    @property
    def counts(self) -> Tensor:
        return self.indptr[1:] - self.indptr[:-1]


def segment_positions(indptr: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Flat positions of the CSR segments of ``rows``: (row number in ``rows``, flat position)."""
    starts, counts = indptr[rows], indptr[rows + 1] - indptr[rows]
    owner = torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts
    offset = torch.arange(owner.shape[0], device=rows.device) - first[owner]
    return owner, starts[owner] + offset


@torch.no_grad()
def rank_top_k(
    model: NCF,
    train: DeviceInteractions,
    users: Tensor,
    k: int,
    *,
    history_length: int,
    batch_size: int = 512,
) -> Tensor:
    """The top ``k`` unseen items of each user: [len(users), k] item indices, best first."""
    items = model.all_items(users.device)
    tops = []
    for chunk in torch.split(users, batch_size):
        history, mask = user_histories(train, chunk, history_length)
        logits = model.score_all(model.encode_users(chunk, history, mask), items).float()
        owner, flat = segment_positions(train.indptr, chunk)
        logits[owner, train.items[flat]] = float("-inf")
        tops.append(torch.topk(logits, k, dim=1).indices)
    return torch.cat(tops) if tops else torch.zeros(0, k, dtype=torch.long, device=users.device)


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
    if users is None:
        users = torch.nonzero(held_out.counts > 0).squeeze(1)
    max_k = min(max(ks), model.config.num_items)
    top = rank_top_k(model, train, users, max_k, history_length=history_length)
    relevant_indptr = torch.zeros(users.shape[0] + 1, dtype=torch.long, device=users.device)
    relevant_indptr[1:] = torch.cumsum(held_out.counts[users], 0)
    _, flat = segment_positions(held_out.indptr, users)
    hits = metrics.hits_from_topk(top, relevant_indptr, held_out.items[flat], model.config.num_items)
    num_relevant = held_out.counts[users]
    values = {
        f"{name}@{k}": fn(hits, num_relevant, min(k, max_k))
        for k in ks
        for name, fn in ACCURACY_METRICS.items()
    }
    return RankingReport(values, top)


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
    """HR@k and NDCG@k of each held-out item ranked among ``num_negatives`` unseen items."""
    device = held_out.items.device
    num_items = model.config.num_items
    owners = torch.repeat_interleave(torch.arange(held_out.counts.shape[0], device=device), held_out.counts)
    # Keys of every known (user, item) pair, to reject negatives the user actually touched.
    known = torch.cat([train.users * num_items + train.items, owners * num_items + held_out.items])
    known = torch.sort(known).values
    hr, ndcg = [], []
    for users, positives in zip(
        torch.split(owners, batch_size), torch.split(held_out.items, batch_size), strict=True
    ):
        negatives = torch.randint(
            num_items, (users.shape[0], num_negatives), device=device, generator=generator
        )

        def clashes(negatives: Tensor, users: Tensor = users) -> Tensor:
            keys = users.unsqueeze(1) * num_items + negatives
            found = torch.searchsorted(known, keys).clamp(max=known.shape[0] - 1)
            return known[found] == keys

        clash = clashes(negatives)
        for _ in range(20):  # collisions are rare on real catalogues; a few redraws remove them
            if not bool(clash.any()):
                break
            redraw = torch.randint(num_items, negatives.shape, device=device, generator=generator)
            negatives = torch.where(clash, redraw, negatives)
            clash = clashes(negatives)
        history, mask = user_histories(train, users, history_length)
        candidates = torch.cat([positives.unsqueeze(1), negatives], dim=1)
        logits = model(users, history, mask, candidates).float()
        # On a tiny catalogue some users have fewer unseen items than negatives asked for: a
        # negative the user did touch must not count against the held-out item.
        logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(clash, float("-inf"))], dim=1)
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
