"""MovieLens-100K for the benchmarks: fetched from the recbole==1.2.1 wheel, never committed.

The wheel ships the data set under ``recbole/dataset_example/ml-100k/``; its licence forbids
redistribution, so it is downloaded into a cache folder on demand.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

WHEEL = "recbole==1.2.1"
PREFIX = "recbole/dataset_example/ml-100k/"
CACHE = Path(__file__).resolve().parent / ".cache"


def fetch(cache: Path = CACHE) -> Path:
    """The folder holding ml-100k.{inter,item,user}, downloading the wheel once."""
    target = cache / "ml-100k"
    if (target / "ml-100k.inter").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(cache)],
        check=True,
    )
    wheel = next(cache.glob("recbole-1.2.1-*.whl"))
    target.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
            (target / name).write_bytes(archive.read(PREFIX + name))
    return target


@dataclass(frozen=True)
class MovieLens:
    interactions: pd.DataFrame  # user_id, item_id, rating, timestamp
    items: pd.DataFrame  # item_id, genres, release_year
    users: pd.DataFrame  # user_id, age, gender, occupation


def load(folder: Path) -> MovieLens:
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t", dtype=str)
    inter.columns = ["user_id", "item_id", "rating", "timestamp"]
    inter["rating"] = inter["rating"].astype(float)
    inter["timestamp"] = inter["timestamp"].astype(float).astype(np.int64)
    items = pd.read_csv(folder / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items.columns = ["item_id", "title", "release_year", "genres"]
    items["genres"] = items["genres"].str.split().str.join("|")
    items["release_year"] = pd.to_numeric(items["release_year"], errors="coerce")
    users = pd.read_csv(folder / "ml-100k.user", sep="\t", dtype=str)
    users.columns = ["user_id", "age", "gender", "occupation", "zip_code"]
    users["age"] = users["age"].astype(int)
    return MovieLens(
        inter, items[["item_id", "genres", "release_year"]], users[["user_id", "age", "gender", "occupation"]]
    )


def split_last(interactions: pd.DataFrame, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's latest ``n`` interactions (by time, ties by row order) form the test set.

    Users with ``n`` or fewer interactions keep everything in training.
    """
    ordered = interactions.reset_index(drop=True)
    ordered["_row"] = np.arange(len(ordered))
    ordered = ordered.sort_values(["user_id", "timestamp", "_row"], kind="stable")
    rank_from_end = ordered.groupby("user_id").cumcount(ascending=False)
    size = ordered.groupby("user_id")["item_id"].transform("size")
    test_mask = (rank_from_end < n) & (size > n)
    train = ordered[~test_mask].drop(columns="_row")
    test = ordered[test_mask].drop(columns="_row")
    return train.reset_index(drop=True), test.reset_index(drop=True)
