"""A deterministic synthetic data set written as ordinary SageMaker channel files.

The generative model, in order:

- users and items get latent taste vectors (D = ``num_factors``), scaled so that a dot product
  (the *affinity*) has unit variance;
- each item gets 1-3 genres chosen from its latent vector (so genres carry signal), a release
  year (1950-2025, skewed recent) and a price;
- item popularity follows a Zipf-like power law over a random ranking of the items;
- each user's taste drifts linearly along a random direction over their history. The history is
  cut into ``_NUM_PERIODS`` periods; in each period the user picks items without replacement with
  probability proportional to ``popularity * exp(affinity / temperature)`` under the taste of that
  period (Gumbel top-k), so recent items predict the next one better than old ones;
- the number of interactions per user is lognormal around the mean (at least 5);
- ratings 1-5 come from the affinity at the time of the interaction plus user, item and noise
  terms, cut at fixed quantiles so their histogram resembles MovieLens;
- timestamps increase strictly per user; user attributes (age group, country) are noisy
  functions of the user's taste, so they carry a little signal.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``SyntheticSpec.seed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from recsys.data.io import SUPPORTED_EXTENSIONS, write_table

__all__ = [
    "AGE_GROUPS",
    "COUNTRIES",
    "GENRE_NAMES",
    "ITEMS_CHANNEL",
    "MIN_INTERACTIONS_PER_USER",
    "TRAIN_CHANNEL",
    "USERS_CHANNEL",
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
MIN_INTERACTIONS_PER_USER = 5

TRAIN_CHANNEL = "train"
ITEMS_CHANNEL = "items"
USERS_CHANNEL = "users"

# Shape of the generative model; not worth exposing as knobs.
_POPULARITY_EXPONENT = 1.0  # Zipf exponent of item popularity
_TEMPERATURE = 0.5  # lower: choices follow taste more closely
_DRIFT_STRENGTH = 1.5  # length of a user's taste drift over their history, in units of taste norm
_NUM_PERIODS = 8  # taste is re-evaluated this many times along a user's history
_COUNT_SIGMA = 0.6  # lognormal sigma of interactions per user
_GENRE_COUNT_PROBS = (0.45, 0.35, 0.20)  # P(1, 2, 3 genres)
_GENRE_NOISE = 0.5  # Gumbel noise scale in genre assignment
_AGE_GROUP_CDF = (0.18, 0.50, 0.75, 0.90)  # cumulative shares of the first four age groups
_COUNTRY_SHARES = (0.35, 0.12, 0.10, 0.08, 0.10, 0.12, 0.07, 0.06)
_ATTRIBUTE_SIGNAL = 0.6  # weight of taste (vs noise) in user attributes
_RATING_CDF = (0.06, 0.17, 0.44, 0.78)  # cumulative shares of ratings 1-4 (MovieLens-like)
_MEAN_GAP_SECONDS = 86_400.0  # mean time between two interactions of a user
_START_SPREAD_SECONDS = 2 * 365 * 86_400  # users join uniformly over this span
_BLOCK_ELEMENTS = 2_000_000  # users are processed in blocks of about this many (user, item) scores


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


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """The three tables of a synthetic data set.

    ``interactions``: user_id, item_id, rating (int 1-5), timestamp (int seconds), sorted by
    user then time. ``items``: item_id, genres ("A|B"), release_year, price.
    ``users``: user_id, age_group, country.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame


def _make_ids(prefix: str, count: int) -> npt.NDArray[np.object_]:
    """``prefix`` + a 1-based zero-padded number: "u0001"; padding keeps text order numeric."""
    width = max(4, len(str(count)))
    return np.array([f"{prefix}{number:0{width}d}" for number in range(1, count + 1)], dtype=object)


def _standardise(values: FloatArray) -> FloatArray:
    std = float(values.std())
    centred: FloatArray = values - values.mean()
    return centred / (std if std > 0 else 1.0)


def _assign_genres(item_factors: FloatArray, num_genres: int, rng: np.random.Generator) -> list[str]:
    """1-3 genres per item, the ones whose prototype best matches the item's taste vector."""
    num_items, num_factors = item_factors.shape
    prototypes = rng.normal(0.0, num_factors**-0.25, size=(num_genres, num_factors))
    scores = item_factors @ prototypes.T + _GENRE_NOISE * rng.gumbel(size=(num_items, num_genres))
    counts = rng.choice(np.arange(1, len(_GENRE_COUNT_PROBS) + 1), p=_GENRE_COUNT_PROBS, size=num_items)
    counts = np.minimum(counts, num_genres)
    ranked = np.argsort(-scores, axis=1)
    names = GENRE_NAMES[:num_genres]
    return ["|".join(names[g] for g in sorted(ranked[i, : counts[i]])) for i in range(num_items)]


def _build_items(spec: SyntheticSpec, item_factors: FloatArray, rng: np.random.Generator) -> pd.DataFrame:
    genres = _assign_genres(item_factors, spec.num_genres, rng)
    age_years = np.rint(rng.gamma(shape=2.0, scale=9.0, size=spec.num_items))
    release_years = np.clip(2025 - age_years, 1950, 2025).astype(np.int64)
    # Prices like 4.99, 9.99, 14.99: lognormal around ten.
    prices = np.maximum(np.rint(np.exp(rng.normal(2.3, 0.45, size=spec.num_items))) - 0.01, 0.99)
    return pd.DataFrame(
        {
            "item_id": _make_ids("i", spec.num_items),
            "genres": genres,
            "release_year": release_years,
            "price": np.round(prices, 2),
        }
    )


def _build_users(spec: SyntheticSpec, user_factors: FloatArray, rng: np.random.Generator) -> pd.DataFrame:
    num_users, num_factors = user_factors.shape
    scale = num_factors**-0.25
    age_direction = rng.normal(0.0, scale, size=num_factors)
    age_score = _ATTRIBUTE_SIGNAL * _standardise(user_factors @ age_direction) + np.sqrt(
        1 - _ATTRIBUTE_SIGNAL**2
    ) * rng.normal(size=num_users)
    thresholds = np.quantile(age_score, _AGE_GROUP_CDF)
    age_index = np.searchsorted(thresholds, age_score)

    country_directions = rng.normal(0.0, scale, size=(num_factors, len(COUNTRIES)))
    country_logits = (
        np.log(np.asarray(_COUNTRY_SHARES))
        + _ATTRIBUTE_SIGNAL * _standardise(user_factors @ country_directions)
        + rng.gumbel(size=(num_users, len(COUNTRIES)))
    )
    country_index = country_logits.argmax(axis=1)
    return pd.DataFrame(
        {
            "user_id": _make_ids("u", spec.num_users),
            "age_group": np.asarray(AGE_GROUPS, dtype=object)[age_index],
            "country": np.asarray(COUNTRIES, dtype=object)[country_index],
        }
    )


def _period_quotas(counts: IntArray) -> IntArray:
    """(U, P) number of interactions of each user in each period; rows sum to ``counts``."""
    bounds = np.rint(counts[:, None] * np.arange(_NUM_PERIODS + 1)[None, :] / _NUM_PERIODS).astype(np.int64)
    return np.diff(bounds, axis=1)


def _sample_choices(
    user_factors: FloatArray,
    drift: FloatArray,
    item_factors: FloatArray,
    log_popularity: FloatArray,
    counts: IntArray,
    rng: np.random.Generator,
) -> tuple[IntArray, IntArray, IntArray]:
    """Pick each user's items, period by period, without replacement.

    Returns flat (user, item, period) index arrays, one entry per interaction.
    """
    num_users = user_factors.shape[0]
    num_items = item_factors.shape[0]
    quotas = _period_quotas(counts)
    period_times = (np.arange(_NUM_PERIODS) + 0.5) / _NUM_PERIODS - 0.5  # centred: mean taste = user_factors
    block_size = max(1, _BLOCK_ELEMENTS // num_items)
    users_out: list[IntArray] = []
    items_out: list[IntArray] = []
    periods_out: list[IntArray] = []
    for start in range(0, num_users, block_size):
        stop = min(start + block_size, num_users)
        chosen = np.zeros((stop - start, num_items), dtype=bool)
        for period in range(_NUM_PERIODS):
            quota = quotas[start:stop, period]
            max_quota = int(quota.max())
            if max_quota == 0:
                continue
            taste = user_factors[start:stop] + period_times[period] * drift[start:stop]
            # Gumbel top-k: the k largest keys are a sample without replacement, weights exp(logits).
            keys = log_popularity[None, :] + (taste @ item_factors.T) / _TEMPERATURE
            keys += rng.gumbel(size=keys.shape)
            keys[chosen] = -np.inf
            top = np.argpartition(-keys, max_quota - 1, axis=1)[:, :max_quota]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
            # Every user has at least `quota` unchosen items left, so -inf keys are never taken.
            rows, slots = np.nonzero(np.arange(max_quota)[None, :] < quota[:, None])
            picked = top[rows, slots]
            chosen[rows, picked] = True
            users_out.append((rows + start).astype(np.int64))
            items_out.append(picked.astype(np.int64))
            periods_out.append(np.full(rows.size, period, dtype=np.int64))
    return np.concatenate(users_out), np.concatenate(items_out), np.concatenate(periods_out)


def _ratings_from_scores(scores: FloatArray) -> IntArray:
    """Integer ratings 1-5, cutting ``scores`` at fixed quantiles."""
    thresholds = np.quantile(scores, _RATING_CDF)
    return (np.searchsorted(thresholds, scores) + 1).astype(np.int64)


def generate(spec: SyntheticSpec | None = None) -> SyntheticData:
    """Generate the data set of ``spec`` (the default spec when None); same spec, same data."""
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(spec.seed)
    num_users, num_items, num_factors = spec.num_users, spec.num_items, spec.num_factors

    # Entries of scale D^-1/4 give dot products (affinities) of unit variance.
    scale = num_factors**-0.25
    user_factors = rng.normal(0.0, scale, size=(num_users, num_factors))
    item_factors = rng.normal(0.0, scale, size=(num_items, num_factors))
    drift = _DRIFT_STRENGTH * rng.normal(0.0, scale, size=(num_users, num_factors))

    items = _build_items(spec, item_factors, rng)
    users = _build_users(spec, user_factors, rng)

    popularity_rank = rng.permutation(num_items)
    log_popularity = -_POPULARITY_EXPONENT * np.log1p(popularity_rank).astype(np.float64)

    mu = np.log(spec.mean_interactions_per_user) - _COUNT_SIGMA**2 / 2  # lognormal with that mean
    counts = np.clip(
        np.rint(rng.lognormal(mu, _COUNT_SIGMA, size=num_users)), MIN_INTERACTIONS_PER_USER, num_items
    ).astype(np.int64)

    user_index, item_index, period = _sample_choices(
        user_factors, drift, item_factors, log_popularity, counts, rng
    )

    # Time order: by user, by period, and within a period along the drift (items that suit the
    # drifted taste come later), with noise.
    drift_alignment = np.einsum("nd,nd->n", item_factors[item_index], drift[user_index])
    within_period = drift_alignment + rng.normal(0.0, 0.5, size=user_index.size)
    order = np.lexsort((within_period, period, user_index))
    user_index, item_index = user_index[order], item_index[order]

    # Position of each interaction in its user's history, as a time in (-0.5, 0.5).
    first_row = np.concatenate(([0], np.cumsum(counts)[:-1]))
    position = np.arange(user_index.size) - first_row[user_index]
    history_time = (position + 0.5) / counts[user_index] - 0.5

    taste = user_factors[user_index] + history_time[:, None] * drift[user_index]
    affinity = np.einsum("nd,nd->n", taste, item_factors[item_index])
    user_bias = rng.normal(0.0, 0.4, size=num_users)
    item_bias = rng.normal(0.0, 0.4, size=num_items)
    rating_scores = (
        affinity + user_bias[user_index] + item_bias[item_index] + rng.normal(0.0, 0.5, size=affinity.size)
    )
    ratings = _ratings_from_scores(rating_scores)

    # Strictly increasing timestamps: each user joins at a random time, then gaps of >= 1 second.
    join_times = spec.start_timestamp + rng.integers(0, _START_SPREAD_SECONDS, size=num_users)
    gaps = 1 + np.floor(rng.exponential(_MEAN_GAP_SECONDS, size=user_index.size)).astype(np.int64)
    gaps[first_row] = 0
    elapsed = np.cumsum(gaps)
    timestamps = join_times[user_index] + elapsed - elapsed[first_row][user_index]

    interactions = pd.DataFrame(
        {
            "user_id": users["user_id"].to_numpy()[user_index],
            "item_id": items["item_id"].to_numpy()[item_index],
            "rating": ratings,
            "timestamp": timestamps.astype(np.int64),
        }
    )
    logger.info(
        "synthetic data: %d users, %d items, %d interactions (seed %d)",
        num_users,
        num_items,
        len(interactions),
        spec.seed,
    )
    return SyntheticData(interactions=interactions, items=items, users=users)


def write_channels(data: SyntheticData, data_dir: Path, *, fmt: str = "csv") -> None:
    """Write ``train/interactions.<fmt>``, ``items/items.<fmt>`` and ``users/users.<fmt>`` under ``data_dir``.

    ``fmt`` is an extension without the dot, such as "csv", "parquet", "jsonl" or "csv.gz".
    """
    if f".{fmt}" not in SUPPORTED_EXTENSIONS:
        supported = ", ".join(ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS)
        raise ValueError(f"fmt must be one of {supported}, got {fmt!r}")
    write_table(data.interactions, data_dir / TRAIN_CHANNEL / f"interactions.{fmt}")
    write_table(data.items, data_dir / ITEMS_CHANNEL / f"items.{fmt}")
    write_table(data.users, data_dir / USERS_CHANNEL / f"users.{fmt}")


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
    train_dir = data_dir / TRAIN_CHANNEL
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
    items_file = data_dir / ITEMS_CHANNEL / f"items.{fmt}"
    users_file = data_dir / USERS_CHANNEL / f"users.{fmt}"
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
