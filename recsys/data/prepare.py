"""Data preparation: raw interaction logs in, clean training channels out.

The steps, in order, each counted in the report:

1. read: every row of this instance's files, with the user's column names;
2. drop rows with an empty user or item id, or a missing or unparseable timestamp;
3. ``min_rating``: drop rows rated below it;
4. merge duplicates: rows with the same user, item and timestamp (and event type) are one event,
   the highest rating kept;
5. cap the events of a user per time window (``max_events_per_window`` per ``window_seconds``),
   the earliest kept: a bot's thousand clicks a minute stop at the cap;
6. k-core: drop users with fewer than ``min_user_interactions`` and items with fewer than
   ``min_item_interactions``, again and again until neither drops anything (a fixed point);
7. split by time: at a global cut (``validation_from``, ``test_from``) or each user's latest
   ``holdout_last`` events for test and the ``holdout_last`` before them for validation;
   optionally a share of the users (``cold_user_fraction``) held out whole as cold users.

Several instances. With ``ShardedByS3Key`` each instance reads its own files. Rows are then
shuffled by a hash of the user id, so that every user's rows sit on exactly one instance: steps 4,
5, the user side of 6 and 7 are then local. Only the item counts of the k-core need all instances:
each round sums them over instances on a shared item vocabulary (the sorted union of every
instance's item ids), and the rounds stop when no instance dropped a row. ``Peers`` carries those
two collectives; ``SOLO`` is one instance, where they are the identity.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.context import epoch_seconds
from recsys.data.io import list_data_files, read_path
from recsys.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

INTERACTIONS = "interactions"
SPLITS = ("train", "validation", "test")
COLD = "cold"


@dataclass(frozen=True)
class PrepareConfig:
    """The job's settings, resolved once from its arguments."""

    user_column: str = "user_id"
    item_column: str = "item_id"
    timestamp_column: str = "timestamp"
    rating_column: str | None = None
    event_type_column: str | None = None
    # Other columns of the raw logs to keep (context columns such as device, country).
    keep_columns: tuple[str, ...] = ()
    min_rating: float | None = None
    max_events_per_window: int | None = None
    window_seconds: float = 3600.0
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    # Either a global cut (epoch seconds) or each user's latest events.
    validation_from: float | None = None
    test_from: float | None = None
    holdout_last: int = 1
    cold_user_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_user_interactions < 1 or self.min_item_interactions < 1:
            raise ConfigError("min_user_interactions and min_item_interactions must be at least 1")
        if self.max_events_per_window is not None and self.max_events_per_window < 1:
            raise ConfigError("max_events_per_window must be at least 1")
        if not self.window_seconds > 0:
            raise ConfigError(f"window_seconds must be positive; got {self.window_seconds}")
        if self.holdout_last < 0:
            raise ConfigError(f"holdout_last must be 0 or more; got {self.holdout_last}")
        if not 0.0 <= self.cold_user_fraction < 1.0:
            raise ConfigError(f"cold_user_fraction must be in [0, 1); got {self.cold_user_fraction}")
        if (
            self.validation_from is not None
            and self.test_from is not None
            and self.validation_from > self.test_from
        ):
            raise ConfigError("validation_from must not be after test_from")

    @property
    def by_time(self) -> bool:
        """A global cut date (else each user's latest events)."""
        return self.validation_from is not None or self.test_from is not None

    @property
    def raw_columns(self) -> list[str]:
        named = [self.user_column, self.item_column, self.timestamp_column]
        named += [c for c in (self.rating_column, self.event_type_column) if c is not None]
        return named + [c for c in self.keep_columns if c not in named]


class Peers(Protocol):
    """What instances of one job share: an exchange of bytes and a sum of arrays."""

    rank: int
    world: int

    def exchange(self, outgoing: Sequence[bytes]) -> list[bytes]:
        """Send ``outgoing[r]`` to instance r; what each instance sent to this one, by rank."""
        ...

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of an int64 or float64 array over every instance."""
        ...


@dataclass
class _Solo:
    rank: int = 0
    world: int = 1

    def exchange(self, outgoing: Sequence[bytes]) -> list[bytes]:
        return list(outgoing)

    def sum(self, values: np.ndarray) -> np.ndarray:
        return values


SOLO: Peers = _Solo()


@dataclass
class PrepareReport:
    """Counts before and after each step (summed over instances), and the shapes of the result."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    kcore_rounds: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    users: int = 0
    items: int = 0
    files: int = 0
    instances: int = 1
    activity_histogram: dict[str, list[float]] = field(default_factory=dict)
    popularity_histogram: dict[str, list[float]] = field(default_factory=dict)
    time_histogram: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prepared:
    report: PrepareReport
    items: np.ndarray  # every kept item id, the same on every instance
    users: np.ndarray  # the kept users of this instance (each user is on one instance)


# -- one file at a time ---------------------------------------------------------------------------


def _text(values: pd.Series) -> pd.Series:
    """Ids as stripped text; None where empty or missing."""
    text = values.astype("string").str.strip()
    return text.where(text.str.len() > 0)


def _seconds(values: pd.Series) -> pd.Series:
    """Epoch seconds of a column of numbers, datetimes or text; NaN where it cannot be read."""
    if pd.api.types.is_datetime64_any_dtype(values):
        # Whatever the unit (Parquet's are often micro- or milliseconds): a difference in seconds.
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values
        return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().astype("float64")
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        seconds = values.astype("float64")
        return seconds.where(np.isfinite(seconds))

    def one(value: Any) -> float:
        try:
            return epoch_seconds(value)
        except (ValueError, TypeError):
            return math.nan

    return values.map(one, na_action="ignore").astype("float64")


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64")


def read_raw(files: Sequence[Path], config: PrepareConfig, counts: dict[str, int]) -> pd.DataFrame:
    """This instance's rows, with bad ones dropped and counted; columns renamed to the standard."""
    frames = []
    for path in files:
        table = read_path(
            path,
            channel=INTERACTIONS,
            string_columns=(config.user_column, config.item_column),
            allow_empty=True,
        )
        missing = [c for c in config.raw_columns if c not in table.column_names]
        if missing and table.num_rows:
            raise DataError(
                f"{path}: no column {missing[0]!r} (columns: {', '.join(table.column_names)}); name "
                "the raw columns with --user-column, --item-column, --timestamp-column and the like."
            )
        if not table.num_rows:
            continue
        raw = table.select(config.raw_columns).to_pandas()
        frame = pd.DataFrame(
            {
                "user_id": _text(raw[config.user_column]),
                "item_id": _text(raw[config.item_column]),
                "timestamp": _seconds(raw[config.timestamp_column]),
            }
        )
        if config.rating_column is not None:
            frame["rating"] = _numbers(raw[config.rating_column])
        if config.event_type_column is not None:
            frame["event_type"] = _text(raw[config.event_type_column])
        for column in config.keep_columns:
            if column not in frame:
                frame[column] = raw[column]
        frames.append(frame)
    if not frames:
        return _empty(config)
    rows = pd.concat(frames, ignore_index=True)
    counts["read"] = len(rows)
    no_id = rows["user_id"].isna() | rows["item_id"].isna()
    counts["dropped: empty user or item id"] = int(no_id.sum())
    bad_time = ~no_id & rows["timestamp"].isna()
    counts["dropped: missing or unreadable timestamp"] = int(bad_time.sum())
    return rows[~(no_id | bad_time)].reset_index(drop=True)


def _empty(config: PrepareConfig) -> pd.DataFrame:
    columns: dict[str, Any] = {
        "user_id": pd.Series([], dtype="string"),
        "item_id": pd.Series([], dtype="string"),
        "timestamp": pd.Series([], dtype="float64"),
    }
    if config.rating_column is not None:
        columns["rating"] = pd.Series([], dtype="float64")
    if config.event_type_column is not None:
        columns["event_type"] = pd.Series([], dtype="string")
    for column in config.keep_columns:
        columns.setdefault(column, pd.Series([], dtype="object"))
    return pd.DataFrame(columns)


# -- across instances ------------------------------------------------------------------------------


def _to_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def _from_bytes(data: bytes) -> pd.DataFrame:
    frame: pd.DataFrame = pq.read_table(io.BytesIO(data)).to_pandas()
    return frame


def owner_of(users: pd.Series, world: int) -> np.ndarray:
    """The instance that owns each user: a stable hash of the id (the same on every machine)."""
    if world == 1:
        return np.zeros(len(users), dtype=np.int64)
    hashed = pd.util.hash_pandas_object(users.astype("string"), index=False).to_numpy()
    return (hashed % np.uint64(world)).astype(np.int64)


def shuffle_by_user(rows: pd.DataFrame, peers: Peers) -> pd.DataFrame:
    """Every user's rows on the one instance that owns the user."""
    if peers.world == 1:
        return rows
    owner = owner_of(rows["user_id"], peers.world)
    outgoing = [_to_bytes(rows[owner == r]) for r in range(peers.world)]
    received = [_from_bytes(part) for part in peers.exchange(outgoing)]
    return pd.concat(received, ignore_index=True)


def shared_vocabulary(values: pd.Series, peers: Peers) -> np.ndarray:
    """The sorted union of every instance's ``values``: the same array on each instance."""
    mine = np.unique(values.to_numpy(dtype=object).astype(str))
    if peers.world == 1:
        return mine
    payload = _to_bytes(pd.DataFrame({"id": mine}))
    everyone = [
        _from_bytes(part)["id"].to_numpy(dtype=object).astype(str)
        for part in peers.exchange([payload] * peers.world)
    ]
    return np.unique(np.concatenate(everyone))


# -- the steps -------------------------------------------------------------------------------------


def merge_duplicates(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per user, item, timestamp (and event type); the highest rating kept."""
    keys = ["user_id", "item_id", "timestamp"] + (["event_type"] if "event_type" in rows else [])
    if "rating" in rows:
        rows = rows.sort_values("rating", ascending=False, kind="stable", na_position="last")
    return rows.drop_duplicates(keys, keep="first").sort_index()


def cap_per_window(rows: pd.DataFrame, cap: int, window_seconds: float) -> pd.DataFrame:
    """At most ``cap`` events of each user in each window of ``window_seconds``, the earliest."""
    ordered = rows.sort_values(["user_id", "timestamp"], kind="stable")
    window = np.floor(ordered["timestamp"].to_numpy() / window_seconds)
    rank = ordered.assign(_window=window).groupby(["user_id", "_window"], sort=False).cumcount()
    return ordered[rank.to_numpy() < cap].sort_index()


def k_core(
    rows: pd.DataFrame, config: PrepareConfig, peers: Peers
) -> tuple[pd.DataFrame, int, np.ndarray, np.ndarray]:
    """Users and items with enough interactions, iterated to a fixed point over every instance.

    Users are local (each sits on one instance after the shuffle); item counts are summed over
    instances on the shared vocabulary. Returns the rows, the rounds, the shared item vocabulary
    and its global counts.
    """
    vocabulary = shared_vocabulary(rows["item_id"], peers)
    codes = np.searchsorted(vocabulary, rows["item_id"].to_numpy(dtype=object).astype(str))
    keep = np.ones(len(rows), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        item_counts = peers.sum(np.bincount(codes[keep], minlength=len(vocabulary)).astype(np.int64))
        user_counts = rows["user_id"][keep].value_counts()
        enough_users = rows["user_id"].map(user_counts).fillna(0).to_numpy() >= config.min_user_interactions
        enough_items = item_counts[codes] >= config.min_item_interactions
        still = keep & enough_users & enough_items
        dropped = int(peers.sum(np.array([int((keep & ~still).sum())], dtype=np.int64))[0])
        keep = still
        if dropped == 0:
            break
    final_counts = peers.sum(np.bincount(codes[keep], minlength=len(vocabulary)).astype(np.int64))
    return rows[keep], rounds, vocabulary, final_counts


def _cold_users(users: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """A stable ``fraction`` of the users, the same whichever instance holds them."""
    if fraction <= 0:
        return np.zeros(len(users), dtype=bool)
    salted = users.astype("string") + f"#{seed}"
    unit = pd.util.hash_pandas_object(salted, index=False).to_numpy() / float(2**64)
    return unit < fraction


def split(rows: pd.DataFrame, config: PrepareConfig) -> dict[str, pd.DataFrame]:
    """train / validation / test (and cold) by time: a global cut, or each user's latest events."""
    ordered = rows.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    cold = _cold_users(ordered["user_id"], config.cold_user_fraction, config.seed)
    warm = ordered[~cold]
    out: dict[str, pd.DataFrame] = {}
    if config.by_time:
        stamps = warm["timestamp"].to_numpy()
        test_from = config.test_from if config.test_from is not None else math.inf
        validation_from = config.validation_from if config.validation_from is not None else test_from
        out["train"] = warm[stamps < validation_from]
        out["validation"] = warm[(stamps >= validation_from) & (stamps < test_from)]
        out["test"] = warm[stamps >= test_from]
    else:
        n = config.holdout_last
        from_end = warm.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
        size = warm.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
        # A user keeps at least one training event: holdouts come only from longer histories.
        held = from_end < np.minimum(2 * n, size - 1)
        out["test"] = warm[held & (from_end < n)]
        out["validation"] = warm[held & (from_end >= n)]
        out["train"] = warm[~held]
    if config.cold_user_fraction > 0:
        out[COLD] = ordered[cold]
    return out


def _histogram(values: np.ndarray, edges: np.ndarray, peers: Peers) -> dict[str, list[float]]:
    counts = peers.sum(np.histogram(values, bins=edges)[0].astype(np.int64))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _log_edges(largest: float) -> np.ndarray:
    top = max(1.0, math.ceil(math.log2(max(largest, 1.0))) + 1)
    return np.unique(np.floor(2.0 ** np.arange(0, top + 1)))


def prepare(
    files: Sequence[Path],
    config: PrepareConfig,
    *,
    peers: Peers = SOLO,
    write: Callable[[str, pd.DataFrame], None],
) -> Prepared:
    """Run every step on this instance's ``files``; ``write(channel, rows)`` stores each split."""
    counts: dict[str, int] = {}
    report = PrepareReport(instances=peers.world)
    steps: list[tuple[str, int]] = []

    def total(value: int) -> int:
        return int(peers.sum(np.array([value], dtype=np.int64))[0])

    rows = read_raw(files, config, counts)
    report.files = total(len(files))
    if report.files == 0:  # every instance got an empty shard: all of them stop here, together
        raise DataError(f"input '{INTERACTIONS}': no data files on any of the {peers.world} instances")
    steps.append(("read", total(counts.get("read", 0))))
    for reason in ("dropped: empty user or item id", "dropped: missing or unreadable timestamp"):
        steps.append((reason, total(counts.get(reason, 0))))
    steps.append(("valid rows", total(len(rows))))
    if config.min_rating is not None:
        if "rating" not in rows:
            raise ConfigError("min_rating needs a rating column: pass --rating-column")
        rows = rows[rows["rating"] >= config.min_rating]
        steps.append((f"rating >= {config.min_rating:g}", total(len(rows))))
    rows = shuffle_by_user(rows, peers)
    rows = merge_duplicates(rows)
    steps.append(("duplicates merged", total(len(rows))))
    if config.max_events_per_window is not None:
        rows = cap_per_window(rows, config.max_events_per_window, config.window_seconds)
        steps.append(
            (
                f"at most {config.max_events_per_window} per user per {config.window_seconds:g} s",
                total(len(rows)),
            )
        )
    rows, report.kcore_rounds, vocabulary, item_counts = k_core(rows, config, peers)
    steps.append(
        (
            f"k-core (users >= {config.min_user_interactions}, items >= {config.min_item_interactions})",
            total(len(rows)),
        )
    )
    report.steps = [{"step": name, "rows": value} for name, value in steps]
    if total(len(rows)) == 0:
        raise DataError(
            "no interactions are left after cleaning: "
            + "; ".join(f"{name}: {value:,}" for name, value in steps)
            + ". Lower min_user_interactions / min_item_interactions or check the column names."
        )
    report.users = total(int(rows["user_id"].nunique()))
    report.items = int((item_counts > 0).sum())
    per_user = rows["user_id"].value_counts().to_numpy()
    # The same bins on every instance, and the ones a single instance would draw: the largest
    # count of any instance (a sum of them only bounded it, and could add an empty last bin).
    largest = float(peers.sum(_one_hot(peers, float(per_user.max()) if len(per_user) else 0.0)).max())
    report.activity_histogram = _histogram(per_user, _log_edges(largest), peers)
    popular = item_counts[item_counts > 0]  # global already: the same on every instance
    report.popularity_histogram = _histogram(popular, _log_edges(float(popular.max())), SOLO)
    stamps = rows["timestamp"].to_numpy()
    # The time bins need the global range: every instance's first and last moment.
    lows = peers.sum(_one_hot(peers, float(stamps.min()) if len(stamps) else math.nan))
    highs = peers.sum(_one_hot(peers, float(stamps.max()) if len(stamps) else math.nan))
    start, end = float(np.nanmin(lows)), float(np.nanmax(highs))
    edges = np.linspace(start, end if end > start else start + 1.0, 51)
    report.time_histogram = _histogram(stamps, edges, peers)
    for name, part in split(rows, config).items():
        report.splits[name] = total(len(part))
        write(name, part.reset_index(drop=True))
    users = rows["user_id"].drop_duplicates().to_numpy(dtype=object).astype(str)
    return Prepared(report, items=vocabulary[item_counts > 0], users=users)


def _one_hot(peers: Peers, value: float) -> np.ndarray:
    """A vector with ``value`` at this instance's rank and 0 elsewhere: summed over instances, it
    holds every instance's value (a gather built from a sum)."""
    vector = np.zeros(peers.world, dtype=np.float64)
    vector[peers.rank] = value
    return vector


def digest(frame: pd.DataFrame) -> str:
    """A content hash of a split, independent of row order and of how it was divided into parts."""
    ordered = frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)
    hashed = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def instance_files(directory: Path, *, rank: int, world: int, replicated: bool) -> list[Path]:
    """This instance's share of the input: every file it was given (``ShardedByS3Key``), or, when
    every instance was given every file (``FullyReplicated``), every world-th file from its rank.

    ``ShardedByS3Key`` hands out whole files, so with fewer files than instances some instance
    gets none, and maybe no directory: it has zero rows, as an instance past the last file has in
    the replicated case, and still takes part in every collective (were it to stop, its peers
    would wait for it until gloo's timeout). Only an input that every instance sees empty is an
    error here (one instance, or replicated files: each instance stops at the same point);
    sharded instances that all got nothing stop together in ``prepare``."""
    files = list_data_files(directory) if directory.is_dir() else []
    if not files and (world == 1 or replicated):
        raise DataError(f"input '{INTERACTIONS}': no data files under {directory}")
    if not files:
        logger.warning(
            "instance %d of %d got no file of input '%s' (ShardedByS3Key gave them to the others): "
            "it takes part with zero rows",
            rank + 1,
            world,
            INTERACTIONS,
        )
    return files[rank::world] if replicated and world > 1 else files
