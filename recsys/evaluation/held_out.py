"""The held-out side of an evaluation: which interactions are judged (target event types, repeats of
training pairs dropped, a fixed sample of users), the moment each user is asked about, and the
tensors the protocols read."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from recsys.config import TrainConfig
from recsys.data.context import RowEncoding, time_context
from recsys.data.device import HeldOut
from recsys.data.interactions import IndexedInteractions, split_last_out, subset
from recsys.data.prepared import PreparedData, only_targets
from recsys.errors import DataError
from recsys.evaluation.protocols import drop_repeats

logger = logging.getLogger(__name__)


def sample_validation_users(held: IndexedInteractions, limit: int, seed: int) -> IndexedInteractions:
    """``held`` restricted to ``limit`` of its users, drawn once with ``seed`` (all when 0 or fewer).

    A full-ranking pass costs users x items: at 200,000 held-out users it dwarfs an epoch. A fixed
    sample keeps every epoch's figures comparable (early stopping compares them) and its standard
    errors say how precise they are."""
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    if limit <= 0 or len(users) <= limit:
        return held
    chosen = np.zeros(held.num_users, dtype=bool)
    chosen[np.random.default_rng(seed).choice(users, size=limit, replace=False)] = True
    return subset(held, chosen[held.users])


def query_context(
    held: IndexedInteractions, seen: IndexedInteractions, encoding: RowEncoding
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The context of the moment each user is asked about: their first held-out event's.

    Its time since the user's previous event is measured from their latest ``seen`` one."""
    users = np.flatnonzero(np.diff(held.indptr) > 0)
    first = held.indptr[:-1][users]
    cardinalities = encoding.context_cardinalities
    codes = None
    if cardinalities:
        codes = np.zeros((held.num_users, len(cardinalities)), dtype=np.int64)
        parts = []
        if encoding.time_features:
            stamps = held.timestamps[first]
            counts = np.diff(seen.indptr)[users]
            last = (
                seen.timestamps[np.maximum(seen.indptr[1:][users] - 1, 0)] if len(seen.timestamps) else stamps
            )
            gaps = np.where(counts > 0, stamps - last, np.nan)
            parts.append(time_context(stamps, gaps))
        if held.context is not None:
            parts.append(held.context[first])
        if parts:
            codes[users] = np.concatenate(parts, axis=1)
    numeric = None
    if encoding.numeric and held.context_numeric is not None:
        numeric = np.full((held.num_users, len(encoding.numeric)), np.nan, dtype=np.float32)
        numeric[users] = held.context_numeric[first]
    return codes, numeric


def held_out_tensors(
    data: IndexedInteractions,
    device: torch.device,
    context: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> HeldOut:
    codes, numeric = context
    return HeldOut(
        torch.from_numpy(data.indptr).to(device),
        torch.from_numpy(data.items).to(device),
        torch.from_numpy(codes).to(device) if codes is not None else None,
        torch.from_numpy(numeric).to(device) if numeric is not None else None,
    )


def drop_validation_repeats(
    held: IndexedInteractions, seen: IndexedInteractions, *, channel: str
) -> IndexedInteractions:
    """Held-out pairs the user already has in training can never be recommended: drop them, say so."""
    kept, repeats = drop_repeats(held, seen)
    if repeats:
        logger.warning(
            "channel '%s': %d of %d interactions repeat an item the user already has in 'train'; full "
            "ranking never recommends those, so they are not evaluated",
            channel,
            repeats,
            held.num_interactions,
        )
    if kept.num_interactions == 0:
        raise DataError(
            f"channel '{channel}': every one of its {held.num_interactions} interactions is a user-item "
            "pair already in 'train', and full ranking never recommends an item the user already has, "
            "so nothing can be evaluated. Is it the training data again? Pass interactions that come "
            "after the training ones."
        )
    return kept


@dataclass(frozen=True)
class ValidationSplit:
    """What a job fits on and what it validates on, and how the validated users were chosen."""

    fit_data: IndexedInteractions  # the interactions the model is fitted on
    held: IndexedInteractions  # the judged interactions: target event types, a fixed sample of users
    evaluated_users: int  # users with a judged interaction in ``held``
    held_out_users: int  # users with one before the sample was drawn
    from_channel: bool  # the validation channel, or each user's latest interaction
    repeats_dropped: int  # validation-channel pairs already in training, left out


def validation_split(data: PreparedData, config: TrainConfig) -> ValidationSplit:
    """The validation channel, or each user's latest interaction held out of ``data``'s training
    interactions; only the target event types judged, on at most ``validation_users`` users."""
    if data.validation is not None:
        fit_data = data.interactions
        held = drop_validation_repeats(data.validation, fit_data, channel="validation")
        repeats = data.validation.num_interactions - held.num_interactions
    else:
        fit_data, held = split_last_out(data.interactions)
        repeats = 0
        if held.num_interactions == 0:
            raise DataError(
                "channel 'train': no user has two or more interactions, so none can be held out for "
                "validation. Provide a 'validation' channel or more interactions per user."
            )
        logger.info(
            "no validation channel: holding out the latest interaction of %d users", held.num_interactions
        )
    held = only_targets(config, data, held)
    if held.num_interactions == 0:
        raise DataError(
            "no held-out interaction has one of the target_event_types "
            f"({', '.join(config.target_event_types)}), so nothing can be validated. "
            "Widen target_event_types or provide a validation channel with them."
        )
    total = int((np.diff(held.indptr) > 0).sum())
    held = sample_validation_users(held, config.validation_users, config.seed)
    evaluated = int((np.diff(held.indptr) > 0).sum())
    if evaluated < total:
        logger.info(
            "validating on a fixed sample of %d of the %d held-out users (validation_users)", evaluated, total
        )
    return ValidationSplit(fit_data, held, evaluated, total, data.validation is not None, repeats)
