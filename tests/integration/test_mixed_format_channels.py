"""A training job whose channels mix every file format, and every way to write a time and an id.

The README promises that a channel may be any mix of CSV, TSV, Parquet and JSON Lines parts, each
optionally gzip-compressed; each part here writes the timestamps, ids and ratings its own way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys.artifact import load_artifact
from recsys.data.io import write_table
from recsys.data.synthetic import SyntheticData, SyntheticSpec, generate
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import train
from tests.conftest import TreeBuilder

pytestmark = pytest.mark.slow  # integration/ is left out of `make test-fast` as a whole

SPEC = SyntheticSpec(num_users=40, num_items=20, mean_interactions_per_user=8, seed=5)
ONE_EPOCH = {
    "epochs": "1",
    "embedding_dim": "8",
    "history_length": "10",
    "sampled_eval_negatives": "5",
    "min_rating": "2",
}


@pytest.fixture
def no_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing learning_curves.png: this test is about reading the channels."""

    def touch(path: Path, *args: Any) -> None:
        path.touch()

    monkeypatch.setattr("recsys.training.report.plot_learning_curves", touch)
    monkeypatch.setattr("recsys.evaluation.evaluate.draw_charts", lambda report: {})


def _number(ids: pd.Series) -> pd.Series:
    """ "u0007" -> 7: ids that can be written as integers in one part and as text in another."""
    return ids.str[1:].astype("int64")


def _iso(seconds: pd.Series, *, offset_hours: int) -> list[str]:
    local = pd.to_datetime(seconds, unit="s", utc=True) + pd.Timedelta(hours=offset_hours)
    suffix = "Z" if offset_hours == 0 else f"+{offset_hours:02d}:00"
    return [f"{text}{suffix}" for text in local.dt.strftime("%Y-%m-%dT%H:%M:%S")]


def _write_train_parts(interactions: pd.DataFrame, channel: Path) -> None:
    users, items = _number(interactions["user_id"]), _number(interactions["item_id"])
    ratings, seconds = interactions["rating"], interactions["timestamp"]
    parts = np.arange(len(interactions)) % 6
    columns: list[dict[str, Any]] = [
        # CSV: int epoch seconds, ids and ratings as text.
        {"user_id": users, "item_id": items, "rating": ratings, "timestamp": seconds},
        # TSV: ISO 8601 at +02:00.
        {"user_id": users, "item_id": items, "rating": ratings, "timestamp": _iso(seconds, offset_hours=2)},
        # Parquet: naive timestamp[ns], int ids, float ratings.
        {
            "user_id": users,
            "item_id": items,
            "rating": ratings.astype("float64"),
            "timestamp": pa.array(seconds * 10**9).cast(pa.timestamp("ns")),
        },
        # JSON Lines: ISO 8601 with Z (pyarrow infers timestamp[s]), int users, ratings as text.
        {
            "user_id": users,
            "item_id": items.astype(str),
            "rating": ratings.astype(str),
            "timestamp": _iso(seconds, offset_hours=0),
        },
        # gzip JSON Lines: float epoch seconds, text users.
        {"user_id": users.astype(str), "item_id": items, "rating": ratings, "timestamp": seconds + 0.0},
        # gzip Parquet: zone-aware timestamp[s], dictionary-encoded users.
        {
            "user_id": pa.array(users.astype(str)).dictionary_encode(),
            "item_id": items,
            "rating": ratings,
            "timestamp": pa.array(seconds).cast(pa.timestamp("s", tz="Europe/Paris")),
        },
    ]
    names = ["a.csv", "b.tsv", "c.parquet", "d.jsonl", "e.jsonl.gz", "f.parquet.gz"]
    for part, (name, part_columns) in enumerate(zip(names, columns, strict=True)):
        rows = parts == part
        table = pa.table(
            {
                key: value.filter(pa.array(rows))
                if isinstance(value, pa.Array)
                else pd.Series(value)[rows].tolist()
                for key, value in part_columns.items()
            }
        )
        write_table(table, channel / name)


def _write_item_parts(items: pd.DataFrame, channel: Path) -> None:
    ids = _number(items["item_id"])
    half = len(items) // 2
    # Parquet: int ids, release_year int64, price double. CSV: text ids, a release_year that is no
    # number, an integer price. int64 and string do not promote: release_year is text everywhere.
    write_table(
        pd.DataFrame(
            {
                "item_id": ids[:half],
                "genres": items["genres"][:half],
                "release_year": items["release_year"][:half],
                "price": items["price"][:half],
            }
        ),
        channel / "items-0.parquet",
    )
    years = items["release_year"][half:].astype(str).tolist()
    years[0] = "unknown"
    write_table(
        pd.DataFrame(
            {
                "item_id": ids[half:].astype(str),
                "genres": items["genres"][half:],
                "release_year": years,
                "price": items["price"][half:].round().astype("int64"),
            }
        ),
        channel / "items-1.csv",
    )


@pytest.mark.usefixtures("no_plot")
def test_a_job_trains_on_mixed_format_train_and_items_channels(
    tmp_path: Path, make_tree: TreeBuilder
) -> None:
    data: SyntheticData = generate(SPEC)
    make_tree(tmp_path, hyperparameters=ONE_EPOCH)
    _write_train_parts(data.interactions, tmp_path / "input" / "data" / "train")
    _write_item_parts(data.items, tmp_path / "input" / "data" / "items")
    paths = ContainerPaths(tmp_path)

    code = train(paths)

    failure = paths.failure_file.read_text() if paths.failure_file.exists() else ""
    assert code == 0, failure
    assert (paths.model_dir / "manifest.json").is_file()
    artifact = load_artifact(paths.model_dir)
    liked = data.interactions[data.interactions["rating"] >= 2]
    # Every part's ids met: 7 as an int, "7" as text and a dictionary entry are one user.
    assert set(artifact.users.ids) == set(_number(liked["user_id"]).astype(str))
    assert set(artifact.items.ids) == set(_number(data.items["item_id"]).astype(str))
    assert len(artifact.seen_items) == len(liked.drop_duplicates(["user_id", "item_id"]))
    numeric = [column.name for column in artifact.item_encoding.numeric]
    categorical = [column.name for column in artifact.item_encoding.categorical]
    assert "price" in numeric  # int64 and double promote
    assert "release_year" not in numeric  # int64 and text do not: read as text
    assert "genres" in categorical
