"""Tests for recsys.sagemaker.train: the training contract run in-process on real ``/opt/ml`` trees.

Each test lays out a temporary base directory the way SageMaker does and calls ``train``; the
exit code, ``output/failure``, ``output/success`` and ``model/`` are what a job would leave.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsys.artifact import ArtifactError, load_artifact, verify_artifact
from recsys.data.io import write_table
from recsys.data.synthetic import SyntheticData, SyntheticSpec, generate
from recsys.sagemaker.contract import ContainerPaths
from recsys.sagemaker.train import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, train
from tests.conftest import FAST_HYPERPARAMETERS, TreeBuilder

# Smaller than the shared tiny data: for runs that only need to finish.
SMALL_SPEC = SyntheticSpec(num_users=40, num_items=20, mean_interactions_per_user=8, seed=5)
# Few sampled-evaluation negatives: with 20 items, 99 of them would mostly be redraws.
ONE_EPOCH = {**FAST_HYPERPARAMETERS, "epochs": "1", "sampled_eval_negatives": "5"}


@pytest.fixture(scope="module")
def small_data() -> SyntheticData:
    return generate(SMALL_SPEC)


@pytest.fixture
def no_plot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing learning_curves.png (a third of a tiny run); the success test checks the plot."""

    def touch(path: Path, *args: Any) -> None:
        path.touch()

    monkeypatch.setattr("recsys.training.report.plot_learning_curves", touch)
    monkeypatch.setattr("recsys.evaluation.evaluate.draw_charts", lambda report: {})


def _paths(base: Path) -> ContainerPaths:
    return ContainerPaths(base)


def _channel_file(base: Path, channel: str, name: str) -> Path:
    path = base / "input" / "data" / channel / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _read_metrics(base: Path) -> dict[str, Any]:
    return dict(json.loads((base / "output" / "data" / "metrics.json").read_text(encoding="utf-8")))


def _assert_succeeded(base: Path, code: int) -> None:
    paths = _paths(base)
    failure = paths.failure_file.read_text() if paths.failure_file.exists() else ""
    assert code == 0, failure
    assert paths.success_file.exists()
    assert not paths.failure_file.exists()
    assert (paths.model_dir / "manifest.json").exists()


def _assert_failed(base: Path, code: int, expected_code: int) -> str:
    """The job failed the way SageMaker should see it; returns the failure text."""
    paths = _paths(base)
    assert code == expected_code
    assert paths.failure_file.is_file()
    assert not paths.success_file.exists()
    assert not (paths.model_dir / "manifest.json").exists()
    return paths.failure_file.read_text(encoding="utf-8")


# --- a successful job ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData, make_tree: TreeBuilder
) -> tuple[Path, int]:
    """One real job on the tiny data set, shared by the tests that only read its outputs."""
    base = make_tree(tmp_path_factory.mktemp("opt_ml"), tiny_data)
    stale = _paths(base).failure_file
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier attempt failed\n")
    return base, train(_paths(base))


def test_success_writes_success_and_no_failure(trained: tuple[Path, int]) -> None:
    base, code = trained

    _assert_succeeded(base, code)


def test_success_writes_a_complete_artifact(trained: tuple[Path, int], tiny_data: SyntheticData) -> None:
    base, _ = trained
    model_dir = _paths(base).model_dir

    manifest = verify_artifact(model_dir)
    artifact = load_artifact(model_dir)

    assert {
        "model.safetensors",
        "model_config.json",
        "users.json",
        "items.json",
        "metrics.json",
        "encodings.json",
    } <= set(manifest["files"])
    assert not list(model_dir.glob(".staging-*"))
    assert len(artifact.users) == tiny_data.interactions["user_id"].nunique()
    assert len(artifact.items) == len(tiny_data.items)
    assert artifact.model_config.embedding_dim == 8
    assert artifact.model_config.history_length == 10
    assert artifact.train_config["epochs"] == 2


def test_success_writes_the_report(trained: tuple[Path, int]) -> None:
    base, _ = trained
    out = _paths(base).output_data_dir

    metrics = _read_metrics(base)
    curves = json.loads((out / "learning_curves.json").read_text())

    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metrics["epochs_run"] == len(curves["epochs"]) == 2
    assert 1 <= metrics["best_epoch"] <= 2
    assert metrics["validation_source"] == "latest interaction per user"
    # The default keeps the best checkpoint: no refit pass.
    assert metrics["final_fit"] == "best_checkpoint"
    assert curves["refit_epochs"] == []
    assert 0.0 <= metrics["validation"]["ndcg@10"] <= 1.0
    assert metrics == json.loads((_paths(base).model_dir / "metrics.json").read_text())


# --- bad input: exit 1 and a failure file that names the problem -----------------------------

CaseBuilder = Callable[[Path, SyntheticData, TreeBuilder], list[str]]


def _missing_train_channel(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base)
    (base / "input" / "data" / "validation").mkdir(parents=True)
    return ["'train'", str(base / "input" / "data" / "train")]


def _empty_train_directory(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base)
    directory = base / "input" / "data" / "train"
    directory.mkdir(parents=True)
    return ["'train'", str(directory), "no data file"]


def _header_only_csv(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base)
    _channel_file(base, "train", "interactions.csv").write_text("user_id,item_id,rating,timestamp\n")
    return ["'train'", str(base / "input" / "data" / "train"), "no rows"]


def _garbage_parquet(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base)
    path = _channel_file(base, "train", "part-0000.parquet")
    path.write_bytes(bytes(range(256)) * 4)
    return [str(path), "Parquet"]


def _unsupported_extension(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base)
    path = _channel_file(base, "train", "interactions.xlsx")
    path.write_bytes(b"PK\x03\x04 not really a spreadsheet")
    return [str(path), "unsupported extension", ".csv"]


def _missing_user_column(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base)
    _channel_file(base, "train", "a.csv").write_text("customer,item_id\nc1,i1\nc1,i2\nc2,i1\n")
    return ["'user_id'", "customer", "user_id_column"]


def _missing_item_column(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base)
    _channel_file(base, "train", "a.csv").write_text("user_id,product\nu1,p1\nu1,p2\nu2,p1\n")
    return ["'item_id'", "product", "item_id_column"]


def _unknown_hyperparameter(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base, data, hyperparameters={**FAST_HYPERPARAMETERS, "epoch": "3"})
    return ["'epoch'", "did you mean 'epochs'"]


def _negative_epochs(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base, data, hyperparameters={**FAST_HYPERPARAMETERS, "epochs": "-1"})
    return ["'epochs'", "-1", ">= 1"]


def _min_rating_without_rating_column(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base, hyperparameters={**FAST_HYPERPARAMETERS, "min_rating": "4"})
    frame = data.interactions[["user_id", "item_id", "timestamp"]]
    write_table(frame, _channel_file(base, "train", "interactions.csv"))
    return ["min_rating", "'rating'", "rating_column"]


def _bad_timestamp(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base)
    _channel_file(base, "train", "a.csv").write_text(
        "user_id,item_id,timestamp\nu1,i1,2024-01-05T10:00:00Z\nu1,i2,yesterday\nu2,i1,1700000000\n"
    )
    return ["'timestamp'", "'yesterday'"]


def _validation_with_unknown_ids(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    build_tree(base, data)
    ghosts = pd.DataFrame({"user_id": ["ghost1", "ghost2"], "item_id": ["i0001", "nothing"]})
    write_table(ghosts, _channel_file(base, "validation", "held_out.csv"))
    return ["'validation'", "'train'"]


def _event_weights(base: Path, data: SyntheticData, build_tree: TreeBuilder, weights: str) -> None:
    build_tree(base, data, hyperparameters={**FAST_HYPERPARAMETERS, "event_weights": weights})


def _event_weight_of_an_unknown_event_type(
    base: Path, data: SyntheticData, build_tree: TreeBuilder
) -> list[str]:
    _event_weights(base, data, build_tree, '{"purchase": 3, "refund": 2}')
    return ["event_weights", "'refund'", "column 'event_type'", "cart, click, purchase"]


def _negative_event_weight(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    _event_weights(base, data, build_tree, '{"purchase": -1, "click": 1}')
    return ["event_weights", "'purchase'", "-1"]


def _event_weight_not_a_number(base: Path, data: SyntheticData, build_tree: TreeBuilder) -> list[str]:
    _event_weights(base, data, build_tree, '{"purchase": "lots"}')
    return ["event_weights", "'purchase'", "must be a number", "'lots'"]


def _event_weights_without_the_event_type_column(
    base: Path, data: SyntheticData, build_tree: TreeBuilder
) -> list[str]:
    # The types are in a column of another name, and event_type_column does not say so.
    renamed = data.interactions.rename(columns={"event_type": "action"})
    build_tree(
        base,
        data,
        train=renamed,
        hyperparameters={**FAST_HYPERPARAMETERS, "event_weights": '{"purchase": 3}'},
    )
    return ["event_weights", "purchase", "no event type column 'event_type'", "event_type_column"]


BAD_INPUTS: dict[str, CaseBuilder] = {
    "missing train channel": _missing_train_channel,
    "empty train directory": _empty_train_directory,
    "header-only csv": _header_only_csv,
    "garbage parquet": _garbage_parquet,
    "unsupported extension": _unsupported_extension,
    "missing user id column": _missing_user_column,
    "missing item id column": _missing_item_column,
    "unknown hyperparameter": _unknown_hyperparameter,
    "negative epochs": _negative_epochs,
    "min_rating without rating column": _min_rating_without_rating_column,
    "bad timestamp": _bad_timestamp,
    "validation ids all unknown": _validation_with_unknown_ids,
    "event weight of an event type the data never has": _event_weight_of_an_unknown_event_type,
    "negative event weight": _negative_event_weight,
    "event weight not a number": _event_weight_not_a_number,
    "event weights without the event type column": _event_weights_without_the_event_type_column,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_a_user_error_that_names_the_problem(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder, case: str
) -> None:
    expected = BAD_INPUTS[case](tmp_path, small_data, make_tree)

    text = _assert_failed(tmp_path, train(_paths(tmp_path)), EXIT_USER_ERROR)

    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in failure text {text!r}"
    assert "Traceback" not in text
    assert len(text) <= 1024, "the whole message should fit in SageMaker's FailureReason"


def test_invalid_hyperparameters_json_is_a_user_error(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    make_tree(tmp_path, small_data)
    config_file = tmp_path / "input" / "config" / "hyperparameters.json"
    config_file.write_text('{"epochs": "2",')

    text = _assert_failed(tmp_path, train(_paths(tmp_path)), EXIT_USER_ERROR)

    assert str(config_file) in text


# --- data variants that must train ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl", "csv.gz", "jsonl.gz"])
@pytest.mark.usefixtures("no_plot")
def test_every_channel_format_trains(
    tmp_path: Path, make_tree: TreeBuilder, small_data: SyntheticData, fmt: str
) -> None:
    make_tree(tmp_path, small_data, fmt=fmt, hyperparameters=ONE_EPOCH)

    _assert_succeeded(tmp_path, train(_paths(tmp_path)))

    artifact = load_artifact(_paths(tmp_path).model_dir)
    assert len(artifact.items) == len(small_data.items)
    assert len(artifact.users) == len(small_data.users)
    assert len(artifact.seen_items) == len(small_data.interactions)
    assert artifact.fingerprint["channels"]["train"][0]["file"] == f"interactions.{fmt}"
    # The items and users channels were read: their attributes became features.
    assert artifact.item_encoding.categorical or artifact.item_encoding.numeric
    assert artifact.user_encoding.categorical or artifact.user_encoding.numeric


def _split_latest(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(everything but each user's latest interaction, the latest ones)."""
    ordered = interactions.sort_values(["user_id", "timestamp"])
    latest = ordered.groupby("user_id").tail(1)
    return ordered.drop(latest.index), latest


@pytest.mark.usefixtures("no_plot")
def test_validation_channel_is_used(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    rest, latest = _split_latest(small_data.interactions)
    make_tree(tmp_path, small_data, train=rest, hyperparameters={**ONE_EPOCH, "epochs": "2"})
    write_table(latest, _channel_file(tmp_path, "validation", "held_out.csv"))

    _assert_succeeded(tmp_path, train(_paths(tmp_path)))

    metrics = _read_metrics(tmp_path)
    assert metrics["validation_source"] == "channel"
    assert metrics["final_fit"] == "best_checkpoint"
    assert metrics["validation"]["num_users"] == latest["user_id"].nunique()
    artifact = load_artifact(_paths(tmp_path).model_dir)
    # Served state is everything the job saw: the validation pairs are seen too (never recommended
    # as new), though they were never training positives (num_users above counts them held out).
    both = pd.concat([rest, latest]).drop_duplicates(["user_id", "item_id"])
    assert len(artifact.seen_items) == len(both)
    assert artifact.seen_timestamps is not None and artifact.seen_events is not None
    assert "validation" in artifact.fingerprint["channels"]


@pytest.mark.usefixtures("no_plot")
def test_a_renamed_event_type_column_trains_with_weights_and_targets(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    # The generator's carts and purchases are rare (no user's latest interaction is one); cycling
    # click, cart, purchase over the rows leaves many users whose latest is a target to validate.
    types = np.array(["click", "cart", "purchase"])[np.arange(len(small_data.interactions)) % 3]
    renamed = small_data.interactions.drop(columns="event_type").assign(action=types)
    hyperparameters = {
        **ONE_EPOCH,
        "event_type_column": "action",
        "event_weights": '{"purchase": 3, "cart": 2}',
        "target_event_types": "cart,purchase",
    }
    make_tree(tmp_path, small_data, train=renamed, hyperparameters=hyperparameters)

    _assert_succeeded(tmp_path, train(_paths(tmp_path)))

    artifact = load_artifact(_paths(tmp_path).model_dir)
    rows = artifact.feature_encodings["rows"]
    assert rows["event_column"] == "action"
    assert rows["event_types"] == ["cart", "click", "purchase"]
    # The column was read as event types, not as a context column, and every event kept its type.
    assert rows["categorical"] == []
    assert artifact.model_config.num_event_types == 4
    assert artifact.seen_events is not None and set(artifact.seen_events.tolist()) == {1, 2, 3}
    # Validation judges only the target types: the users whose latest interaction is a cart or a purchase.
    assert artifact.train_config["target_event_types"] == ["cart", "purchase"]
    assert _read_metrics(tmp_path)["validation"]["num_users"] < renamed["user_id"].nunique()


@pytest.mark.usefixtures("no_plot")
def test_duplicate_pairs_are_merged(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    interactions = small_data.interactions
    repeated = pd.concat([interactions, interactions.assign(timestamp=interactions["timestamp"] + 60)])
    make_tree(tmp_path, small_data, train=repeated, hyperparameters=ONE_EPOCH)

    _assert_succeeded(tmp_path, train(_paths(tmp_path)))

    artifact = load_artifact(_paths(tmp_path).model_dir)
    unique_pairs = len(interactions.drop_duplicates(["user_id", "item_id"]))
    assert len(repeated) == 2 * unique_pairs
    assert artifact.seen_indptr[-1] == len(artifact.seen_items) == unique_pairs
    assert int(artifact.item_popularity.sum()) == unique_pairs
    assert artifact.fingerprint["rows"]["train"] == unique_pairs


def _seen_ids(artifact: Any, user_id: str) -> list[str]:
    user = artifact.users.get(user_id)
    start, end = artifact.seen_indptr[user], artifact.seen_indptr[user + 1]
    return [artifact.items.ids[i] for i in artifact.seen_items[start:end]]


@pytest.mark.usefixtures("no_plot")
def test_iso_8601_timestamps_order_each_history(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    interactions = small_data.interactions
    instants = pd.to_datetime(interactions["timestamp"], unit="s", utc=True)
    # Half the rows in UTC ("Z"), half at +01:00: the same instants, written differently.
    utc_text = instants.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    plus_one = (instants + pd.Timedelta(hours=1)).dt.strftime("%Y-%m-%dT%H:%M:%S+01:00")
    odd = np.arange(len(interactions)) % 2 == 1
    shuffled = (
        interactions.assign(timestamp=np.where(odd, plus_one, utc_text))
        .sample(frac=1.0, random_state=0)
        .reset_index(drop=True)
    )
    make_tree(tmp_path, small_data, train=shuffled, hyperparameters=ONE_EPOCH)

    _assert_succeeded(tmp_path, train(_paths(tmp_path)))

    artifact = load_artifact(_paths(tmp_path).model_dir)
    for user_id, rows in interactions.groupby("user_id"):
        expected = rows.sort_values("timestamp")["item_id"].tolist()
        assert _seen_ids(artifact, str(user_id)) == expected


@pytest.mark.usefixtures("no_plot")
def test_min_rating_keeps_only_high_ratings(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    hyperparameters = {**ONE_EPOCH, "min_rating": "4"}
    make_tree(tmp_path, small_data, hyperparameters=hyperparameters)

    _assert_succeeded(tmp_path, train(_paths(tmp_path)))

    artifact = load_artifact(_paths(tmp_path).model_dir)
    liked = small_data.interactions[small_data.interactions["rating"] >= 4]
    assert 0 < len(liked) < len(small_data.interactions)
    assert len(artifact.seen_items) == len(liked)
    assert set(artifact.users.ids) == set(liked["user_id"])
    assert artifact.train_config["min_rating"] == 4.0


def test_a_multi_host_job_whose_hosts_never_resolve_fails_with_a_clear_message(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    make_tree(tmp_path, small_data)
    resource_config = tmp_path / "input" / "config" / "resourceconfig.json"
    # .invalid is reserved (RFC 2606): it never resolves.
    hosts = ["algo-1.recsys.invalid", "algo-2.recsys.invalid"]
    resource_config.write_text(json.dumps({"current_host": hosts[1], "hosts": hosts}))

    code = train(_paths(tmp_path), {"RECSYS_HOST_WAIT_SECONDS": "0.5"})

    text = _assert_failed(tmp_path, code, EXIT_INTERNAL_ERROR)
    assert "did not resolve" in text and "algo-1.recsys.invalid" in text
    assert not (_paths(tmp_path).model_dir / "manifest.json").exists()


# --- internal errors -----------------------------------------------------------------------


def test_internal_error_exits_2_with_a_traceback(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_run_training(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("index 7 is out of bounds")

    monkeypatch.setattr("recsys.training.job.run_training", broken_run_training)
    make_tree(tmp_path, small_data)

    text = _assert_failed(tmp_path, train(_paths(tmp_path)), EXIT_INTERNAL_ERROR)

    assert text.startswith("internal error: RuntimeError: index 7 is out of bounds")
    assert "Traceback (most recent call last)" in text
    assert "broken_run_training" in text


def test_failed_artifact_write_leaves_no_manifest_and_no_staging(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recsys.artifact as artifact_module

    real_write_json = artifact_module._write_json

    def failing_write_json(path: Path, value: Any) -> None:
        if path.name == "metrics.json":
            raise OSError(28, "No space left on device")
        real_write_json(path, value)

    monkeypatch.setattr(artifact_module, "_write_json", failing_write_json)
    make_tree(tmp_path, small_data, hyperparameters=ONE_EPOCH)
    model_dir = _paths(tmp_path).model_dir
    model_dir.mkdir(parents=True)
    (model_dir / "manifest.json").write_text('{"format": 1, "files": {}}')  # from an earlier job

    # A full disk is the job's to fix (more storage), not our bug: a user error naming the directory.
    text = _assert_failed(tmp_path, train(_paths(tmp_path)), EXIT_USER_ERROR)

    assert f"no space left on device at {model_dir}" in text
    assert not list(model_dir.glob(".staging-*"))
    with pytest.raises(ArtifactError, match="incomplete"):
        verify_artifact(model_dir)


# --- is the model better than the most popular items? -----------------------------------------


def test_the_report_puts_most_popular_beside_the_model(trained: tuple[Path, int]) -> None:
    base, _ = trained
    metrics = _read_metrics(base)

    popular, versus = metrics["most_popular"], metrics["vs_most_popular"]
    assert 0.0 <= popular["ndcg@10"] <= 1.0 and "hr@10_se" in popular
    assert popular["num_users"] == metrics["validation"]["num_users"]
    assert versus["metric"] == "ndcg@10"
    assert versus["model"] == pytest.approx(metrics["validation"]["ndcg@10"])
    assert versus["baseline"] == pytest.approx(popular["ndcg@10"])
    assert versus["difference"] == pytest.approx(versus["model"] - versus["baseline"], abs=1e-9)
    assert versus["clearly_better"] == (versus["difference"] > 2 * versus["difference_se"])
    assert ("NOT clearly better" in versus["verdict"]) != versus["clearly_better"]
    assert metrics["warnings"] == ([] if versus["clearly_better"] else [versus["verdict"]])


def _popularity_driven(num_users: int = 300, num_items: int = 100, seed: int = 3) -> pd.DataFrame:
    """Every user has seen one of five blockbusters among random items, and their latest item is
    another blockbuster: most-popular gets it right for everyone; a model that learnt nothing cannot."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        earlier = rng.choice(np.arange(5, num_items), size=6, replace=False)
        first, latest = rng.choice(5, size=2, replace=False)
        for t, item in enumerate([first, *earlier, latest]):
            rows.append((f"u{user:04d}", f"i{item:04d}", float(t)))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


@pytest.mark.usefixtures("no_plot")
def test_a_model_no_better_than_most_popular_is_flagged_in_the_log_and_metrics(
    tmp_path: Path, make_tree: TreeBuilder, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path, hyperparameters={**ONE_EPOCH, "learning_rate": "1e-7", "user_id_dropout": "0"})
    write_table(_popularity_driven(), _channel_file(tmp_path, "train", "interactions.csv"))

    with caplog.at_level("INFO", logger="recsys"):
        _assert_succeeded(tmp_path, train(_paths(tmp_path)))

    metrics = _read_metrics(tmp_path)
    assert metrics["most_popular"]["hr@10"] > 0.9
    assert metrics["vs_most_popular"]["clearly_better"] is False
    assert len(metrics["warnings"]) == 1 and "NOT clearly better" in metrics["warnings"][0]
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "NOT clearly better" in r.message]
    assert len(warned) == 1
    table = [r.message for r in caplog.records if "most-popular" in r.message and "metric" in r.message]
    assert table, "the side-by-side table is missing from the log"
    assert (
        json.loads((_paths(tmp_path).model_dir / "metrics.json").read_text())["warnings"]
        == metrics["warnings"]
    )


# --- a validation channel that repeats training pairs -------------------------------------------


@pytest.mark.usefixtures("no_plot")
def test_validation_rows_already_in_train_are_dropped_and_counted(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    rest, latest = _split_latest(small_data.interactions)
    repeats = rest.groupby("user_id").head(1)  # one training pair of every user, again
    make_tree(tmp_path, small_data, train=rest, hyperparameters=ONE_EPOCH)
    write_table(pd.concat([latest, repeats]), _channel_file(tmp_path, "validation", "held_out.csv"))

    _assert_succeeded(tmp_path, train(_paths(tmp_path)))

    metrics = _read_metrics(tmp_path)
    assert metrics["validation_repeats_dropped"] == len(repeats)
    assert metrics["validation"]["num_users"] == latest["user_id"].nunique()


def test_a_validation_channel_that_is_the_training_data_is_a_clear_error(
    tmp_path: Path, small_data: SyntheticData, make_tree: TreeBuilder
) -> None:
    make_tree(tmp_path, small_data, hyperparameters=ONE_EPOCH)
    write_table(small_data.interactions, _channel_file(tmp_path, "validation", "again.csv"))

    failure = _assert_failed(tmp_path, train(_paths(tmp_path)), EXIT_USER_ERROR)

    assert "channel 'validation'" in failure
    assert "already in 'train'" in failure
