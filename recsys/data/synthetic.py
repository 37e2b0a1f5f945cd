"""A deterministic synthetic data set written as ordinary SageMaker channel files.

Small (1,000 users, 400 items, ~30,000 events by default), ours, and built so that every kind of
signal a recommender here can use is really in it. The generative model, in order:

- each user gets an age group and a country (fixed shares), then a latent taste vector
  (D = ``num_factors``) that is the sum of an age-group vector, a country vector and a personal
  part (``_AGE_TASTE_SHARE`` and ``_COUNTRY_TASTE_SHARE`` of its variance): users of a group
  share a taste, so a new user described only by attributes can be scored better than by
  popularity. Items get taste vectors too; both are scaled so that a dot product (the
  *affinity*) has unit variance;
- each item gets 1-3 genres chosen from its latent vector (so genres carry signal), a release
  year (1950-2025, skewed recent), a price, and one fixed *successor*: a random other item that
  shares one of its genres (any other item when none does);
- item popularity follows a Zipf-like power law over a random ranking of the items;
- context genres: a random permutation of the genres assigns ``_BOOSTED_PER_CONTEXT`` genres to
  each of night (UTC hours 22-05), the weekend (Saturday, Sunday) and each device ("mobile",
  "desktop", "tv"); an item with one of a context's genres is ``exp(_CONTEXT_BOOST)`` (about 7)
  times as likely to be picked in that context;
- the number of events per user is lognormal around the mean (at least 5, at most the catalogue);
- timestamps (epoch seconds, UTC): each user joins at a uniform time, then events follow in
  sessions (a gap of minutes continues a session, ``_SESSION_CONTINUE`` of the time, else a gap
  of days starts a new one), laid out in *activity time*, which a weekly profile of hour-of-day
  and weekend intensity maps to clock time: events cluster in the evening and at weekends,
  rarely at 4 a.m.; strictly increasing per user;
- each user has their own mix of devices (a Dirichlet draw around 50/30/20 % mobile, desktop,
  tv); each session's device is drawn from it and holds for the session's events;
- each user's taste drifts linearly along a random direction over their history. Events are
  drawn in order: with a probability that depends on the previous event's type
  (``SUCCESSOR_PROBABILITIES``: 0.2 after a click, 0.5 after a cart, 0.9 after a purchase, as a
  purchase leads to its accessory) the next item is the successor of the previous one (when the
  user has not had it yet), else it is picked among the user's
  unseen items with probability proportional to
  ``popularity * exp(affinity / temperature) * context boosts`` under the taste of that moment
  (Gumbel max), so order matters, recent items predict the next one better than old ones, and the
  hour, weekday and device shift the genres;
- ratings 1-5 come from the affinity at the time of the event plus user, item and noise terms,
  cut at fixed quantiles so that their histogram resembles MovieLens;
- event types: the picked item's affinity plus noise, cut at each step's quantiles into 70 %
  "click", 20 % "cart" and 10 % "purchase", so purchases are of the items the user likes most
  (and they make the successor likely next);
- ``_MISSING_DEVICE_SHARE`` of the events lose their device (null in the table; the true
  device still shaped the pick), as real logs do.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``SyntheticSpec.seed``. The
ground truth that tests elsewhere check a model against (successors, boosted genres, per-event
affinity, taste vectors) is kept on ``SyntheticData``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from recsys.channels import CHANNEL_ITEMS, CHANNEL_TRAIN, CHANNEL_USERS
from recsys.data.io import SUPPORTED_EXTENSIONS, write_table

__all__ = [
    "AGE_GROUPS",
    "COUNTRIES",
    "DEVICES",
    "EVENT_TYPES",
    "GENRE_NAMES",
    "MIN_INTERACTIONS_PER_USER",
    "NIGHT_HOURS",
    "SUCCESSOR_PROBABILITIES",
    "WEEKEND_DAYS",
    "WRITTEN_CHANNELS",
    "ScaledSpec",
    "ScaledSummary",
    "SyntheticData",
    "SyntheticSpec",
    "generate",
    "write_channels",
    "write_scaled_channels",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

GENRE_NAMES: tuple[str, ...] = (
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "Musical",
    "Mystery",
    "War",
    "Western",
    "Family",
    "History",
)
AGE_GROUPS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55+")
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "CA")
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tv")
EVENT_TYPES: tuple[str, ...] = ("click", "cart", "purchase")  # in increasing order of affinity
NIGHT_HOURS: frozenset[int] = frozenset({22, 23, 0, 1, 2, 3, 4, 5})  # UTC hours whose genres are boosted
WEEKEND_DAYS: frozenset[int] = frozenset({5, 6})  # Saturday, Sunday (Monday = 0)
MIN_INTERACTIONS_PER_USER = 5
# Chance that the next event is the previous item's successor, by the previous event's type.
SUCCESSOR_PROBABILITIES: Mapping[str, float] = MappingProxyType({"click": 0.2, "cart": 0.5, "purchase": 0.9})

# The training job's channels that write_channels and write_scaled_channels fill under data_dir.
WRITTEN_CHANNELS: tuple[str, ...] = (CHANNEL_TRAIN, CHANNEL_ITEMS, CHANNEL_USERS)

# Shape of the generative model; not worth exposing as knobs.
_POPULARITY_EXPONENT = 1.0  # Zipf exponent of item popularity
_TEMPERATURE = 0.5  # lower: choices follow taste more closely
_DRIFT_STRENGTH = 1.5  # length of a user's taste drift over their history, in units of taste norm
_COUNT_SIGMA = 0.6  # lognormal sigma of interactions per user
_GENRE_COUNT_PROBS = (0.45, 0.35, 0.20)  # P(1, 2, 3 genres)
_GENRE_NOISE = 0.5  # Gumbel noise scale in genre assignment
_AGE_GROUP_CDF = (0.18, 0.50, 0.75, 0.90)  # cumulative shares of the first four age groups
_COUNTRY_SHARES = (0.35, 0.12, 0.10, 0.08, 0.10, 0.12, 0.07, 0.06)
_AGE_TASTE_SHARE = 0.4  # share of a user's taste variance that their age group explains
_COUNTRY_TASTE_SHARE = 0.25  # ... and their country
_RATING_CDF = (0.06, 0.17, 0.44, 0.78)  # cumulative shares of ratings 1-4 (MovieLens-like)
_EVENT_TYPE_CDF = (0.70, 0.90)  # cumulative shares of click, cart (purchase takes the rest)
_EVENT_NOISE = 0.5  # noise added to the affinity before it is cut into event types
_MIN_QUANTILE_SAMPLE = 200  # a step with fewer events reuses the previous step's event-type cut points
_BOOSTED_PER_CONTEXT = 2  # genres boosted by each context (night, weekend, each device)
_CONTEXT_BOOST = 2.0  # log of the pick-probability factor of an item of a boosted genre
_DEVICE_SHARES = (0.5, 0.3, 0.2)  # mean mix of mobile, desktop, tv
_DEVICE_CONCENTRATION = 2.0  # Dirichlet concentration of a user's device mix (lower: more personal)
_MISSING_DEVICE_SHARE = 0.02  # events whose device is not recorded
_MEAN_GAP_SECONDS = 86_400.0  # mean time between two interactions of a user
_SESSION_CONTINUE = 0.6  # chance that the next event continues the session
_SESSION_GAP_SECONDS = 240.0  # mean gap between two events of a session
_START_SPREAD_SECONDS = 2 * 365 * 86_400  # users join uniformly over this span
# Relative activity per UTC hour: quiet before dawn, a peak in the evening; more at weekends.
_HOUR_INTENSITY = (
    0.60, 0.40, 0.25, 0.15, 0.12, 0.12, 0.20, 0.40, 0.60, 0.70, 0.75, 0.80,
    0.90, 0.85, 0.80, 0.80, 0.90, 1.00, 1.20, 1.50, 1.80, 1.90, 1.60, 1.00,
)  # fmt: skip
_WEEKEND_INTENSITY = 1.4
_BLOCK_ELEMENTS = 2_000_000  # users (and items, for successors) are processed in blocks of this many scores
_DAY_SECONDS = 86_400
_TINY = float(np.finfo(np.float64).tiny)
_WEEK_SECONDS = 7 * _DAY_SECONDS
_FIRST_MONDAY = 4 * _DAY_SECONDS  # 1970-01-05 00:00 UTC, the first Monday of the epoch


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes and seed of a synthetic data set."""

    num_users: int = 1000
    num_items: int = 400
    num_factors: int = 8
    mean_interactions_per_user: float = 30.0
    num_genres: int = 12
    seed: int = 0
    start_timestamp: int = 1_600_000_000

    def __post_init__(self) -> None:
        if self.num_users < 1:
            raise ValueError(f"num_users must be at least 1, got {self.num_users}")
        if self.num_items < MIN_INTERACTIONS_PER_USER:
            raise ValueError(
                f"num_items must be at least {MIN_INTERACTIONS_PER_USER} (the minimum interactions "
                f"per user), got {self.num_items}"
            )
        if self.num_factors < 1:
            raise ValueError(f"num_factors must be at least 1, got {self.num_factors}")
        if not self.mean_interactions_per_user >= 1:
            raise ValueError(
                f"mean_interactions_per_user must be at least 1, got {self.mean_interactions_per_user}"
            )
        if not 1 <= self.num_genres <= len(GENRE_NAMES):
            raise ValueError(f"num_genres must be between 1 and {len(GENRE_NAMES)}, got {self.num_genres}")
        if self.start_timestamp < 0:
            raise ValueError(f"start_timestamp must be non-negative, got {self.start_timestamp}")


def _empty_ints() -> IntArray:
    return np.zeros(0, dtype=np.int64)


def _empty_floats() -> FloatArray:
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """The three tables of a synthetic data set, and the ground truth that generated them.

    ``interactions``: user_id, item_id, rating (int 1-5), timestamp (int epoch seconds, UTC,
    strictly increasing per user), event_type ("click", "cart", "purchase"), device ("mobile",
    "desktop", "tv", or None where not recorded); sorted by user then time.
    ``items``: item_id, genres ("A|B"), release_year, price. ``users``: user_id, age_group, country.

    The ground truth (empty when a caller builds ``SyntheticData`` from its own tables); items and
    users are indexed by their row in ``items`` and ``users``:

    - ``successor``: [N] the item index that follows each item (``SUCCESSOR_PROBABILITIES``);
    - ``hour_genres``: 24 tuples, the genre names boosted at each UTC hour (night hours' genres);
    - ``weekday_genres``: 7 tuples (Monday = 0), the genre names boosted on each day (weekend's);
    - ``device_genres``: device -> the genre names it boosts;
    - ``affinity``: [len(interactions)] the user's taste (at that time) dot the item's vector;
    - ``user_factors`` [U, D] (mean taste; drift aside) and ``item_factors`` [N, D].
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    successor: IntArray = field(default_factory=_empty_ints)
    hour_genres: tuple[tuple[str, ...], ...] = ()
    weekday_genres: tuple[tuple[str, ...], ...] = ()
    device_genres: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    affinity: FloatArray = field(default_factory=_empty_floats)
    user_factors: FloatArray = field(default_factory=_empty_floats)
    item_factors: FloatArray = field(default_factory=_empty_floats)


def _make_ids(prefix: str, count: int) -> npt.NDArray[np.object_]:
    """``prefix`` + a 1-based zero-padded number: "u0001"; padding keeps text order numeric."""
    width = max(4, len(str(count)))
    return np.array([f"{prefix}{number:0{width}d}" for number in range(1, count + 1)], dtype=object)


def _assign_genres(item_factors: FloatArray, num_genres: int, rng: np.random.Generator) -> BoolArray:
    """[N, G] membership: 1-3 genres per item, those whose prototype best matches its taste vector."""
    num_items, num_factors = item_factors.shape
    prototypes = rng.normal(0.0, num_factors**-0.25, size=(num_genres, num_factors))
    scores = item_factors @ prototypes.T + _GENRE_NOISE * rng.gumbel(size=(num_items, num_genres))
    counts = rng.choice(np.arange(1, len(_GENRE_COUNT_PROBS) + 1), p=_GENRE_COUNT_PROBS, size=num_items)
    counts = np.minimum(counts, num_genres)
    ranks = np.argsort(np.argsort(-scores, axis=1), axis=1)
    membership: BoolArray = ranks < counts[:, None]
    return membership


def _genre_strings(membership: BoolArray) -> list[str]:
    names = GENRE_NAMES[: membership.shape[1]]
    return ["|".join(names[g] for g in np.flatnonzero(row)) for row in membership]


def _assign_successors(membership: BoolArray, rng: np.random.Generator) -> IntArray:
    """[N] a random other item per item, one sharing a genre where any does."""
    num_items = membership.shape[0]
    as_float = membership.astype(np.float64)
    successor = np.empty(num_items, dtype=np.int64)
    block = max(1, _BLOCK_ELEMENTS // num_items)
    for start in range(0, num_items, block):
        stop = min(start + block, num_items)
        # Uniform keys in [0, 1), plus one for a shared genre: the argmax is a uniform shared-genre item.
        keys = rng.random((stop - start, num_items)) + (as_float[start:stop] @ as_float.T > 0)
        keys[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        successor[start:stop] = keys.argmax(axis=1)
    return successor


def _build_items(spec: SyntheticSpec, membership: BoolArray, rng: np.random.Generator) -> pd.DataFrame:
    age_years = np.rint(rng.gamma(shape=2.0, scale=9.0, size=spec.num_items))
    release_years = np.clip(2025 - age_years, 1950, 2025).astype(np.int64)
    # Prices like 4.99, 9.99, 14.99: lognormal around ten.
    prices = np.maximum(np.rint(np.exp(rng.normal(2.3, 0.45, size=spec.num_items))) - 0.01, 0.99)
    return pd.DataFrame(
        {
            "item_id": _make_ids("i", spec.num_items),
            "genres": _genre_strings(membership),
            "release_year": release_years,
            "price": np.round(prices, 2),
        }
    )


def _build_users(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[pd.DataFrame, FloatArray]:
    """The users table and [U, D] taste vectors: age-group and country vectors plus a personal part."""
    num_users, num_factors = spec.num_users, spec.num_factors
    scale = num_factors**-0.25
    age_shares = np.diff(np.concatenate(([0.0], _AGE_GROUP_CDF, [1.0])))
    age_index = rng.choice(len(AGE_GROUPS), size=num_users, p=age_shares)
    country_index = rng.choice(len(COUNTRIES), size=num_users, p=_COUNTRY_SHARES)
    age_taste = rng.normal(0.0, scale, size=(len(AGE_GROUPS), num_factors))
    country_taste = rng.normal(0.0, scale, size=(len(COUNTRIES), num_factors))
    personal = rng.normal(0.0, scale, size=(num_users, num_factors))
    personal_share = 1.0 - _AGE_TASTE_SHARE - _COUNTRY_TASTE_SHARE
    user_factors = (
        np.sqrt(_AGE_TASTE_SHARE) * age_taste[age_index]
        + np.sqrt(_COUNTRY_TASTE_SHARE) * country_taste[country_index]
        + np.sqrt(personal_share) * personal
    )
    users = pd.DataFrame(
        {
            "user_id": _make_ids("u", num_users),
            "age_group": np.asarray(AGE_GROUPS, dtype=object)[age_index],
            "country": np.asarray(COUNTRIES, dtype=object)[country_index],
        }
    )
    return users, user_factors


def _weekly_activity() -> tuple[FloatArray, FloatArray]:
    """(seconds into the week, activity time elapsed) at each hour edge of a Monday-based week.

    Activity runs at the hour's intensity, normalised so that a week of activity time is a week.
    """
    weekend = np.isin(np.arange(7), sorted(WEEKEND_DAYS))
    hourly = np.tile(np.asarray(_HOUR_INTENSITY), 7) * np.repeat(
        np.where(weekend, _WEEKEND_INTENSITY, 1.0), 24
    )
    hourly *= hourly.size / hourly.sum()
    edges = np.arange(hourly.size + 1, dtype=np.float64) * 3600.0
    activity = np.concatenate(([0.0], np.cumsum(hourly) * 3600.0))
    return edges, activity


def _clock_to_activity(seconds: FloatArray, edges: FloatArray, activity: FloatArray) -> FloatArray:
    weeks, into_week = np.divmod(seconds - _FIRST_MONDAY, _WEEK_SECONDS)
    out: FloatArray = weeks * _WEEK_SECONDS + np.interp(into_week, edges, activity)
    return out


def _activity_to_clock(activity_time: FloatArray, edges: FloatArray, activity: FloatArray) -> FloatArray:
    weeks, into_week = np.divmod(activity_time, _WEEK_SECONDS)
    out: FloatArray = _FIRST_MONDAY + weeks * _WEEK_SECONDS + np.interp(into_week, activity, edges)
    return out


def _build_timeline(
    spec: SyntheticSpec, user_index: IntArray, first_row: IntArray, rng: np.random.Generator
) -> tuple[IntArray, BoolArray]:
    """Per event (rows grouped by user, in order): int timestamps, and whether it starts a session."""
    size = user_index.size
    new_session = rng.random(size) >= _SESSION_CONTINUE
    new_session[first_row] = True
    session_mean = (_MEAN_GAP_SECONDS - _SESSION_CONTINUE * _SESSION_GAP_SECONDS) / (1 - _SESSION_CONTINUE)
    gaps = rng.exponential(np.where(new_session, session_mean, _SESSION_GAP_SECONDS))
    gaps[first_row] = 0.0
    elapsed = np.cumsum(gaps)
    edges, activity = _weekly_activity()
    join_times = spec.start_timestamp + rng.integers(0, _START_SPREAD_SECONDS, size=spec.num_users)
    start = _clock_to_activity(join_times.astype(np.float64), edges, activity)
    clock = _activity_to_clock(start[user_index] + elapsed - elapsed[first_row][user_index], edges, activity)
    clock = np.maximum(clock, join_times[user_index])  # the round trip may lose a rounding error
    # Whole seconds, then at least one second apart: a running maximum of (time - position) per
    # user (users offset far apart so that one running maximum serves all of them).
    position = np.arange(size) - first_row[user_index]
    offset = user_index * (1 << 40)
    lifted = np.maximum.accumulate(np.floor(clock).astype(np.int64) - position + offset)
    timestamps: IntArray = lifted - offset + position
    return timestamps, new_session


def _context_genres(num_genres: int, rng: np.random.Generator) -> list[IntArray]:
    """Boosted genre indices of each context (night, weekend, then each device), disjoint while
    there are genres enough, wrapping around the permutation when there are not."""
    order = rng.permutation(num_genres)
    num_contexts = 2 + len(DEVICES)
    slots = np.arange(num_contexts * _BOOSTED_PER_CONTEXT).reshape(num_contexts, _BOOSTED_PER_CONTEXT)
    return [np.unique(order[row % num_genres]) for row in slots]


def _sample_events(
    user_factors: FloatArray,
    drift: FloatArray,
    item_factors: FloatArray,
    successor: IntArray,
    context_logits: FloatArray,
    event_context: IntArray,
    history_time: FloatArray,
    counts: IntArray,
    first_row: IntArray,
    rng: np.random.Generator,
) -> tuple[IntArray, IntArray, FloatArray]:
    """[P] the item, event-type class and affinity of each event (rows grouped by user, in time
    order), drawn step by step.

    ``context_logits`` [K, N] holds the log popularity plus the context boosts of each item in
    each of K combinations of contexts, ``event_context`` [P] the combination of each event.
    Users are processed in blocks; within a block, step t draws every user's t-th event at once.
    """
    num_users, num_items = user_factors.shape[0], item_factors.shape[0]
    items_out = np.empty(history_time.size, dtype=np.int64)
    events_out = np.empty(history_time.size, dtype=np.int64)
    affinity_out = np.empty(history_time.size, dtype=np.float64)
    follow_probability = np.asarray([SUCCESSOR_PROBABILITIES[name] for name in EVENT_TYPES])
    cut_points: FloatArray | None = None
    block_size = max(1, _BLOCK_ELEMENTS // num_items)
    scaled_items = item_factors.T / _TEMPERATURE
    for start in range(0, num_users, block_size):
        stop = min(start + block_size, num_users)
        chosen = np.zeros((stop - start, num_items), dtype=bool)
        block_counts = counts[start:stop]
        for step in range(int(block_counts.max())):
            local = np.flatnonzero(block_counts > step)
            users = local + start
            rows = first_row[users] + step
            taste = user_factors[users] + history_time[rows, None] * drift[users]
            # einsum, not @: products this small run 10-20x faster outside BLAS and its threads.
            logits = np.einsum("ad,dn->an", taste, scaled_items)
            logits += context_logits[event_context[rows]]
            weights = np.exp(logits, out=logits)
            weights[chosen[local]] = 0.0
            # Exponential race: the largest of w_i / E_i (E_i ~ Exp(1)) is item i with
            # probability w_i / sum(w) (the Gumbel-max trick without the logarithms); seen items
            # have weight zero and never win while an unseen one is left.
            race = rng.standard_exponential(size=weights.shape)
            race += _TINY  # an exact zero draw must not make 0 / 0
            picked = np.argmax(np.divide(weights, race, out=race), axis=1)
            if step > 0:
                follower = successor[items_out[rows - 1]]
                chance = follow_probability[events_out[rows - 1]]
                follow = (rng.random(local.size) < chance) & ~chosen[local, follower]
                picked = np.where(follow, follower, picked)
            chosen[local, picked] = True
            items_out[rows] = picked
            affinity = np.einsum("ad,ad->a", taste, item_factors[picked])
            affinity_out[rows] = affinity
            noisy = affinity + rng.normal(0.0, _EVENT_NOISE, size=local.size)
            if cut_points is None or local.size >= _MIN_QUANTILE_SAMPLE:
                cut_points = np.quantile(noisy, _EVENT_TYPE_CDF)
            events_out[rows] = np.searchsorted(cut_points, noisy)
    return items_out, events_out, affinity_out


def _cut_at_quantiles(scores: FloatArray, cdf: tuple[float, ...]) -> IntArray:
    """0-based class of each score, cutting ``scores`` at the fixed quantiles ``cdf``."""
    thresholds = np.quantile(scores, cdf)
    return np.searchsorted(thresholds, scores).astype(np.int64)


def generate(spec: SyntheticSpec | None = None) -> SyntheticData:
    """Generate the data set of ``spec`` (the default spec when None); same spec, same data."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(spec.seed)
    num_users, num_items, num_factors = spec.num_users, spec.num_items, spec.num_factors

    # Entries of scale D^-1/4 give dot products (affinities) of unit variance.
    scale = num_factors**-0.25
    users, user_factors = _build_users(spec, rng)
    item_factors = rng.normal(0.0, scale, size=(num_items, num_factors))
    drift = _DRIFT_STRENGTH * rng.normal(0.0, scale, size=(num_users, num_factors))
    membership = _assign_genres(item_factors, spec.num_genres, rng)
    items = _build_items(spec, membership, rng)
    successor = _assign_successors(membership, rng)

    popularity_rank = rng.permutation(num_items)
    log_popularity = -_POPULARITY_EXPONENT * np.log1p(popularity_rank).astype(np.float64)

    # Contexts: night, weekend, mobile, desktop, tv; [C, N] whether an item has a boosted genre.
    boosted = _context_genres(spec.num_genres, rng)
    item_in_context = np.stack([membership[:, genres].any(axis=1) for genres in boosted]).astype(np.float64)

    mu = np.log(spec.mean_interactions_per_user) - _COUNT_SIGMA**2 / 2  # lognormal with that mean
    counts = np.clip(
        np.rint(rng.lognormal(mu, _COUNT_SIGMA, size=num_users)), MIN_INTERACTIONS_PER_USER, num_items
    ).astype(np.int64)
    user_index = np.repeat(np.arange(num_users), counts)
    first_row = np.concatenate(([0], np.cumsum(counts)[:-1]))
    size = user_index.size

    timestamps, new_session = _build_timeline(spec, user_index, first_row, rng)
    hours = (timestamps // 3600) % 24
    weekdays = (timestamps // _DAY_SECONDS + 3) % 7  # 1970-01-01 was a Thursday
    # Each session's device, from the user's own mix, holds for the session.
    device_mix = rng.dirichlet(_DEVICE_CONCENTRATION * np.asarray(_DEVICE_SHARES), size=num_users)
    session_device = (rng.random(size)[:, None] > np.cumsum(device_mix, axis=1)[user_index]).sum(axis=1)
    session_start = np.maximum.accumulate(np.where(new_session, np.arange(size), 0))
    device = np.minimum(session_device[session_start], len(DEVICES) - 1)
    # The 2 x 2 x 3 combinations of (night, weekend, device): [K, C] which contexts hold in each,
    # [K, N] the pick logits' popularity and context terms, [P] each event's combination.
    night_flags, weekend_flags, device_codes = np.meshgrid(
        [0, 1], [0, 1], np.arange(len(DEVICES)), indexing="ij"
    )
    combinations = np.zeros((night_flags.size, 2 + len(DEVICES)))
    combinations[:, 0], combinations[:, 1] = night_flags.ravel(), weekend_flags.ravel()
    combinations[np.arange(night_flags.size), 2 + device_codes.ravel()] = 1.0
    context_logits = log_popularity + _CONTEXT_BOOST * (combinations @ item_in_context)
    is_night = np.isin(hours, sorted(NIGHT_HOURS)).astype(np.int64)
    is_weekend = np.isin(weekdays, sorted(WEEKEND_DAYS)).astype(np.int64)
    event_context = (is_night * 2 + is_weekend) * len(DEVICES) + device

    # Position of each event in its user's history, as a time in (-0.5, 0.5).
    position = np.arange(size) - first_row[user_index]
    history_time = (position + 0.5) / counts[user_index] - 0.5
    item_index, event_class, affinity = _sample_events(
        user_factors,
        drift,
        item_factors,
        successor,
        context_logits,
        event_context,
        history_time,
        counts,
        first_row,
        rng,
    )

    user_bias = rng.normal(0.0, 0.4, size=num_users)
    item_bias = rng.normal(0.0, 0.4, size=num_items)
    rating_scores = affinity + user_bias[user_index] + item_bias[item_index] + rng.normal(0.0, 0.5, size=size)
    ratings = _cut_at_quantiles(rating_scores, _RATING_CDF) + 1
    devices = np.asarray(DEVICES, dtype=object)[device]
    devices[rng.random(size) < _MISSING_DEVICE_SHARE] = None

    interactions = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[user_index],
            "item_id": items["item_id"].to_numpy()[item_index],
            "rating": ratings,
            "timestamp": timestamps,
            "event_type": np.asarray(EVENT_TYPES, dtype=object)[event_class],
            "device": devices,
        }
    )
    genre_names = GENRE_NAMES[: spec.num_genres]
    night, weekend, *by_device = (tuple(genre_names[g] for g in genres) for genres in boosted)
    logger.info(
        "synthetic data: %d users, %d items, %d interactions (seed %d)",
        num_users,
        num_items,
        len(interactions),
        spec.seed,
    )
    return SyntheticData(
        interactions=interactions,
        items=items,
        users=users,
        successor=successor,
        hour_genres=tuple(night if hour in NIGHT_HOURS else () for hour in range(24)),
        weekday_genres=tuple(weekend if day in WEEKEND_DAYS else () for day in range(7)),
        device_genres=MappingProxyType(dict(zip(DEVICES, by_device, strict=True))),
        affinity=affinity,
        user_factors=user_factors,
        item_factors=item_factors,
    )


def write_channels(data: SyntheticData, data_dir: Path, *, fmt: str = "csv") -> None:
    """Write ``train/interactions.<fmt>``, ``items/items.<fmt>`` and ``users/users.<fmt>`` under ``data_dir``.

    ``fmt`` is an extension without the dot, such as "csv", "parquet", "jsonl" or "csv.gz".
    """
    if f".{fmt}" not in SUPPORTED_EXTENSIONS:
        supported = ", ".join(ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS)
        raise ValueError(f"fmt must be one of {supported}, got {fmt!r}")
    write_table(data.interactions, data_dir / CHANNEL_TRAIN / f"interactions.{fmt}")
    write_table(data.items, data_dir / CHANNEL_ITEMS / f"items.{fmt}")
    write_table(data.users, data_dir / CHANNEL_USERS / f"users.{fmt}")


# -- the scaled generator ----------------------------------------------------------------------
#
# The bundled generator scores every item for every user (users x items work), which is right for
# a thousand users and impossible for a million. The scaled one keeps its shape at O(interactions)
# cost: power-law item popularity, users whose activity varies (lognormal), a favourite genre per
# user that most of their interactions come from, item and user attributes; every array is
# numpy, and ids become strings only through Arrow, one part file at a time.

_SCALED_ACTIVITY_SIGMA = 1.0  # lognormal sigma of interactions per user
_SCALED_TASTE_SHARE = 0.6  # share of a user's interactions drawn from their favourite genre
_SCALED_MIN_PER_USER = 2  # so that every user can hold out a latest interaction
_SCALED_CHUNK_ROWS = 2_000_000  # users are sampled in chunks of about this many interactions
_SCALED_POPULAR_ROUNDS = 8  # rounds of redrawing repeated items by popularity, then uniformly
_SCALED_RATING_PROBS = (0.06, 0.11, 0.27, 0.34, 0.22)  # MovieLens-like shares of ratings 1-5
_SCALED_FORMATS = ("parquet", "pq", "csv", "tsv", "csv.gz", "tsv.gz")


@dataclass(frozen=True)
class ScaledSpec:
    """Sizes and seed of a large synthetic data set (``write_scaled_channels``)."""

    num_users: int = 100_000
    num_items: int = 50_000
    num_interactions: int = 1_000_000
    num_genres: int = 12
    seed: int = 0
    start_timestamp: int = 1_600_000_000

    def __post_init__(self) -> None:
        if self.num_users < 1:
            raise ValueError(f"num_users must be at least 1, got {self.num_users}")
        if self.num_items < 2 * _SCALED_MIN_PER_USER:
            raise ValueError(f"num_items must be at least {2 * _SCALED_MIN_PER_USER}, got {self.num_items}")
        if self.num_interactions < _SCALED_MIN_PER_USER * self.num_users:
            raise ValueError(
                f"num_interactions must be at least {_SCALED_MIN_PER_USER} per user "
                f"({_SCALED_MIN_PER_USER * self.num_users}), got {self.num_interactions}"
            )
        # Each user takes at most half the catalogue, so distinct items are always easy to find.
        if self.num_interactions > self.num_users * (self.num_items // 2):
            raise ValueError(
                f"num_interactions must be at most num_users * num_items / 2 "
                f"({self.num_users * (self.num_items // 2)}), got {self.num_interactions}"
            )
        if not 1 <= self.num_genres <= len(GENRE_NAMES):
            raise ValueError(f"num_genres must be between 1 and {len(GENRE_NAMES)}, got {self.num_genres}")
        if self.start_timestamp < 0:
            raise ValueError(f"start_timestamp must be non-negative, got {self.start_timestamp}")


@dataclass(frozen=True)
class ScaledSummary:
    """What ``write_scaled_channels`` wrote."""

    num_interactions: int
    train_files: tuple[Path, ...]
    items_file: Path
    users_file: Path


def _arrow_ids(prefix: str, count: int) -> pa.StringArray:
    """``_make_ids`` as an Arrow array: one string per id, never one per row."""
    width = max(4, len(str(count)))
    return pa.array([f"{prefix}{number:0{width}d}" for number in range(1, count + 1)], type=pa.string())


def _user_counts(spec: ScaledSpec, rng: np.random.Generator) -> IntArray:
    """Interactions per user: at least two, lognormal shares of the rest, summing exactly."""
    weights = rng.lognormal(0.0, _SCALED_ACTIVITY_SIGMA, size=spec.num_users)
    spare = spec.num_interactions - _SCALED_MIN_PER_USER * spec.num_users
    shares = spare * weights / weights.sum()
    counts = _SCALED_MIN_PER_USER + np.floor(shares).astype(np.int64)
    cap = spec.num_items // 2
    np.minimum(counts, cap, out=counts)
    # Hand out what flooring and the cap left over, one interaction per user and round, to users
    # with room, largest remainders first (Hamilton's apportionment).
    by_share = np.argsort(-(shares - np.floor(shares)), kind="stable")
    while (left := spec.num_interactions - int(counts.sum())) > 0:
        open_users = by_share[counts[by_share] < cap][:left]
        counts[open_users] += 1
    out: IntArray = counts
    return out


@dataclass(frozen=True)
class _Catalogue:
    """Item popularity and primary genre, and the tables that sample items from them."""

    primary: IntArray  # [N] each item's main genre
    global_cdf: FloatArray  # [N] cumulative popularity share by item index
    by_genre: IntArray  # [N] item indices grouped by primary genre
    genre_bounds: IntArray  # [G+1] genre g's items are by_genre[bounds[g]:bounds[g+1]]
    genre_cdf: FloatArray  # [N] g + cumulative popularity share within genre g, along by_genre
    genre_mass: FloatArray  # [G] popularity share of each genre

    @classmethod
    def build(cls, spec: ScaledSpec, rng: np.random.Generator) -> _Catalogue:
        popularity = 1.0 / (1.0 + rng.permutation(spec.num_items)) ** _POPULARITY_EXPONENT
        genre_shares = 1.0 / np.sqrt(np.arange(1, spec.num_genres + 1))
        primary = rng.choice(spec.num_genres, size=spec.num_items, p=genre_shares / genre_shares.sum())
        by_genre = np.argsort(primary, kind="stable")
        bounds = np.searchsorted(primary[by_genre], np.arange(spec.num_genres + 1))
        mass = np.bincount(primary, weights=popularity, minlength=spec.num_genres)
        within = popularity[by_genre] / mass[primary[by_genre]]
        cumulative = [np.cumsum(within[bounds[g] : bounds[g + 1]]) for g in range(spec.num_genres)]
        return cls(
            primary=primary,
            global_cdf=np.cumsum(popularity) / popularity.sum(),
            by_genre=by_genre,
            genre_bounds=bounds,
            genre_cdf=np.concatenate(cumulative) + primary[by_genre].astype(np.float64),
            genre_mass=mass / mass.sum(),
        )

    def draw(self, favourite: IntArray, rng: np.random.Generator) -> IntArray:
        """One item per row: from the user's favourite genre (by popularity within it), else overall."""
        draws = rng.random(favourite.size)
        items = np.minimum(np.searchsorted(self.global_cdf, draws, side="right"), self.global_cdf.size - 1)
        in_taste = rng.random(favourite.size) < _SCALED_TASTE_SHARE
        genre = favourite[in_taste]
        position = np.searchsorted(self.genre_cdf, genre + draws[in_taste], side="right")
        # Rounding at a genre's upper edge must not spill into the next genre.
        position = np.clip(position, self.genre_bounds[genre], self.genre_bounds[genre + 1] - 1)
        items[in_taste] = self.by_genre[position]
        return items


def _distinct(keys: IntArray) -> IntArray:
    """Sorted distinct keys; a sort beats np.unique's hash table here by 10x."""
    keys.sort()
    keep = np.empty(keys.size, dtype=bool)
    keep[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    out: IntArray = keys[keep]
    return out


def _sample_interactions(
    spec: ScaledSpec, catalogue: _Catalogue, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
    """(user, item, in the user's favourite genre) per interaction: distinct pairs, users in order."""
    num_users, num_items = spec.num_users, spec.num_items
    # Genres no item has get no fans: a fan's draws would have nowhere to land.
    favourite = rng.choice(spec.num_genres, size=num_users, p=catalogue.genre_mass)
    counts = _user_counts(spec, rng)
    cumulative = np.cumsum(counts)
    cuts = np.searchsorted(cumulative, np.arange(0, spec.num_interactions, _SCALED_CHUNK_ROWS)[1:]) + 1
    bounds = np.unique(np.concatenate(([0], np.minimum(cuts, num_users), [num_users])))
    users_out: list[npt.NDArray[np.int32]] = []
    items_out: list[npt.NDArray[np.int32]] = []
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        wanted = counts[start:stop]
        keys = np.zeros(0, dtype=np.int64)
        need = wanted
        rounds = 0
        while need.any():
            users = np.repeat(np.arange(start, stop, dtype=np.int64), need)
            if rounds < _SCALED_POPULAR_ROUNDS:
                items = catalogue.draw(favourite[users], rng)
            else:
                # A heavy user may have taken most of the items popularity favours: uniform draws
                # land on a free item at least half the time (a user takes at most half the items).
                items = rng.integers(0, num_items, size=users.size)
            # A repeated (user, item) pair is drawn again: the counts are of distinct positives.
            keys = _distinct(np.concatenate([keys, users * num_items + items]))
            need = wanted - np.bincount(keys // num_items - start, minlength=stop - start)
            rounds += 1
        users, items = keys // num_items, keys % num_items
        # np.unique left each user's items sorted by index: shuffle, or index would predict time.
        shuffle = rng.permutation(users.size)
        order = shuffle[np.argsort(users[shuffle], kind="stable")]
        users_out.append(users[order].astype(np.int32))
        items_out.append(items[order].astype(np.int32))
    users_all, items_all = np.concatenate(users_out), np.concatenate(items_out)
    return users_all, items_all, favourite[users_all] == catalogue.primary[items_all]


def _scaled_items(spec: ScaledSpec, catalogue: _Catalogue, rng: np.random.Generator) -> pa.Table:
    """Attributes like the bundled ones; an item's genres always include its primary genre."""
    genre_names = np.asarray(GENRE_NAMES[: spec.num_genres], dtype=object)
    counts = rng.choice(np.arange(1, len(_GENRE_COUNT_PROBS) + 1), p=_GENRE_COUNT_PROBS, size=spec.num_items)
    counts = np.minimum(counts, spec.num_genres)
    scores = rng.random((spec.num_items, spec.num_genres))
    scores[np.arange(spec.num_items), catalogue.primary] = -1.0  # ranked first
    picks = np.argsort(scores, axis=1)
    genres = ["|".join(genre_names[np.sort(picks[i, : counts[i]])]) for i in range(spec.num_items)]
    age_years = np.rint(rng.gamma(shape=2.0, scale=9.0, size=spec.num_items))
    prices = np.maximum(np.rint(np.exp(rng.normal(2.3, 0.45, size=spec.num_items))) - 0.01, 0.99)
    return pa.table(
        {
            "item_id": _arrow_ids("i", spec.num_items),
            "genres": pa.array(genres, type=pa.string()),
            "release_year": np.clip(2025 - age_years, 1950, 2025).astype(np.int64),
            "price": np.round(prices, 2),
        }
    )


def _scaled_users(spec: ScaledSpec, rng: np.random.Generator) -> pa.Table:
    age_shares = np.diff(np.concatenate(([0.0], _AGE_GROUP_CDF, [1.0])))
    return pa.table(
        {
            "user_id": _arrow_ids("u", spec.num_users),
            "age_group": pa.array(AGE_GROUPS).take(rng.choice(len(AGE_GROUPS), spec.num_users, p=age_shares)),
            "country": pa.array(COUNTRIES).take(
                rng.choice(len(COUNTRIES), spec.num_users, p=_COUNTRY_SHARES)
            ),
        }
    )


def write_scaled_channels(
    spec: ScaledSpec, data_dir: Path, *, parts: int = 1, fmt: str = "parquet"
) -> ScaledSummary:
    """Write a large data set as ``train/part-NNNNN.<fmt>`` (``parts`` files) plus ``items``, ``users``.

    The train parts are consecutive time slices, each in time order, as an event log would be
    exported; a user's interactions are spread over them. ``fmt`` is "parquet" or CSV/TSV
    (optionally ".gz"). Same spec, same files.
    """
    if fmt not in _SCALED_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(_SCALED_FORMATS)}, got {fmt!r}")
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    rng = np.random.default_rng(spec.seed)
    catalogue = _Catalogue.build(spec, rng)
    users, items, liked = _sample_interactions(spec, catalogue, rng)
    size = users.size

    first_row = np.searchsorted(users, np.arange(spec.num_users))
    join_times = spec.start_timestamp + rng.integers(0, _START_SPREAD_SECONDS, size=spec.num_users)
    gaps = 1 + np.floor(rng.exponential(_MEAN_GAP_SECONDS, size=size)).astype(np.int64)
    gaps[first_row] = 0
    elapsed = np.cumsum(gaps)
    timestamps = join_times[users] + elapsed - elapsed[first_row][users]
    del gaps, elapsed
    ratings = rng.choice(np.arange(1, 6, dtype=np.int8), size=size, p=_SCALED_RATING_PROBS)
    ratings = np.minimum(ratings + liked, 5).astype(np.int8)  # a favourite genre rates higher
    del liked

    order = np.argsort(timestamps, kind="stable")
    user_ids, item_ids = _arrow_ids("u", spec.num_users), _arrow_ids("i", spec.num_items)
    train_dir = data_dir / CHANNEL_TRAIN
    for old in train_dir.glob("part-*") if train_dir.is_dir() else ():
        old.unlink()  # a smaller rerun must not leave parts of a larger one behind
    files: list[Path] = []
    for part, rows in enumerate(np.array_split(order, parts)):
        path = train_dir / f"part-{part:05d}.{fmt}"
        table = pa.table(
            {
                "user_id": user_ids.take(pa.array(users[rows])),
                "item_id": item_ids.take(pa.array(items[rows])),
                "rating": ratings[rows].astype(np.int64),
                "timestamp": timestamps[rows],
            }
        )
        write_table(table, path)
        files.append(path)
    items_file = data_dir / CHANNEL_ITEMS / f"items.{fmt}"
    users_file = data_dir / CHANNEL_USERS / f"users.{fmt}"
    write_table(_scaled_items(spec, catalogue, rng), items_file)
    write_table(_scaled_users(spec, rng), users_file)
    logger.info(
        "scaled synthetic data: %d users, %d items, %d interactions in %d part(s) (seed %d)",
        spec.num_users,
        spec.num_items,
        size,
        parts,
        spec.seed,
    )
    return ScaledSummary(size, tuple(files), items_file, users_file)
