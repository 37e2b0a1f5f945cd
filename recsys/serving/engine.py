"""The ranking engine: a loaded artifact, with the item side of every tower computed once.

A request batch is scored with one pass over the precomputed catalogue state; seen and
excluded items are masked and the top k taken with ``topk`` (no sort of the catalogue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recsys.models.ncf import NCF, ItemState
from recsys.training.artifact import Artifact, load_artifact


@dataclass(frozen=True)
class Recommendation:
    item_ids: list[str]
    scores: list[float]
    unknown_history_items: list[str]


class Recommender:
    """Top-k recommendations for known users or for a history of item ids."""

    def __init__(self, artifact: Artifact, device: torch.device) -> None:
        self.artifact = artifact
        self.device = device
        self.model: NCF = artifact.build_model(device)
        with torch.no_grad():
            self.items: ItemState = self.model.all_items(device)
        self.history_length = self.model.config.history_length
        self.num_users = self.model.config.num_users
        self.num_items = self.model.config.num_items

    @classmethod
    def load(cls, model_dir: Path, device: torch.device | None = None) -> Recommender:
        return cls(load_artifact(model_dir), device or torch.device("cpu"))

    def seen_items(self, user: int) -> np.ndarray:
        start, end = self.artifact.seen_indptr[user], self.artifact.seen_indptr[user + 1]
        return self.artifact.seen_items[start:end].astype(np.int64)

    @torch.no_grad()
    def recommend(
        self,
        user_ids: Sequence[str | None],
        histories: Sequence[Sequence[str] | None],
        k: int,
        *,
        exclude_seen: bool = True,
    ) -> list[Recommendation]:
        """One recommendation list per request; a ``history`` replaces a known user's stored one."""
        size = len(user_ids)
        users = torch.full((size,), self.num_users, dtype=torch.long)
        history = torch.zeros(size, self.history_length, dtype=torch.long)
        mask = torch.zeros(size, self.history_length, dtype=torch.bool)
        exclusions: list[np.ndarray] = []
        unknown: list[list[str]] = []
        for row, (user_id, items) in enumerate(zip(user_ids, histories, strict=True)):
            user = self.artifact.users.get(user_id) if user_id is not None else -1
            seen = self.seen_items(user) if user >= 0 else np.zeros(0, dtype=np.int64)
            if user >= 0:
                users[row] = user
            missing: list[str] = []
            if items is not None:
                indices = self.artifact.items.lookup(list(items))
                missing = [i for i, x in zip(items, indices, strict=True) if x < 0]
                given = indices[indices >= 0]
                seen = np.union1d(seen, given)
                sequence = given
            else:
                sequence = self.seen_items(user) if user >= 0 else np.zeros(0, dtype=np.int64)
            recent = sequence[::-1][: self.history_length].copy()  # most recent first
            history[row, : len(recent)] = torch.from_numpy(recent)
            mask[row, : len(recent)] = True
            exclusions.append(seen if exclude_seen else np.zeros(0, dtype=np.int64))
            unknown.append(missing)
        users, history, mask = users.to(self.device), history.to(self.device), mask.to(self.device)
        logits = self.model.score_all(self.model.encode_users(users, history, mask), self.items).float()
        for row, excluded in enumerate(exclusions):
            if len(excluded):
                logits[row, torch.from_numpy(excluded).to(self.device)] = float("-inf")
        top = torch.topk(logits, min(k, self.num_items), dim=1)
        results = []
        for row in range(size):
            finite = torch.isfinite(top.values[row])
            indices = top.indices[row][finite].cpu().numpy()
            results.append(
                Recommendation(
                    [self.artifact.items.ids[i] for i in indices],
                    top.values[row][finite].cpu().tolist(),
                    unknown[row],
                )
            )
        return results
