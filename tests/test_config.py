"""Tests for recsys.config: defaults, coercion of SageMaker's strings, and every error message."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from recsys.config import (
    CPU_FULL_SOFTMAX_MAX_ITEMS,
    FULL_SOFTMAX_MAX_ITEMS,
    TrainConfig,
    config_to_json,
    hyperparameter_table,
    resolve_train_config,
)
from recsys.errors import ConfigError, UserError


def test_no_hyperparameters_gives_the_defaults() -> None:
    config = resolve_train_config({})

    assert config == TrainConfig()
    assert config.model == "gmf"
    assert config.epochs == 40
    assert config.learning_rate == 0.003
    assert config.mlp_layers == (128, 64)
    assert config.loss == "auto"
    assert config.min_rating is None
    assert config.pretrain is False
    assert config.amp is True
    assert config.categorical_columns == ()


def test_config_is_frozen() -> None:
    config = resolve_train_config({})

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("epochs", "3", 3),
        ("epochs", " 7 ", 7),
        ("epochs", 3, 3),
        ("epochs", 4.0, 4),
        ("batch_size", "+256", 256),
        ("learning_rate", "0.01", 0.01),
        ("learning_rate", ".5", 0.5),
        ("learning_rate", 1, 1.0),
        ("dropout", 0.25, 0.25),
        ("min_rating", 4, 4.0),
        ("min_rating", "3.5", 3.5),
        ("min_rating", "", None),
        ("min_rating", None, None),
        ("pretrain", "true", True),
        ("pretrain", "false", False),
        ("pretrain", "True", True),
        ("pretrain", True, True),
        ("amp", "0", False),
        ("mlp_layers", "128,64", (128, 64)),
        ("mlp_layers", "128, 64, 32", (128, 64, 32)),
        ("mlp_layers", [128, 64], (128, 64)),
        ("mlp_layers", ["32", "16"], (32, 16)),
        ("mlp_layers", 64, (64,)),
        ("categorical_columns", "genre,country", ("genre", "country")),
        ("categorical_columns", ["genre"], ("genre",)),
        ("ignore_columns", "", ()),
        ("model", "NeuMF", "neumf"),
        ("model", "GMF", "gmf"),
        ("loss", "Sampled_Softmax", "sampled_softmax"),
        ("device", "CPU", "cpu"),
        ("user_id_column", "customer", "customer"),
        ("user_id_column", 7, "7"),
    ],
)
def test_values_are_coerced_to_the_field_type(name: str, raw: Any, expected: Any) -> None:
    value = getattr(resolve_train_config({name: raw}), name)

    assert value == expected
    assert type(value) is type(expected)


def test_several_values_at_once() -> None:
    config = resolve_train_config(
        {"model": "mlp", "epochs": 2, "embedding_dim": "8", "mlp_layers": [16, 8], "seed": 7}
    )

    assert (config.model, config.epochs, config.embedding_dim, config.seed) == ("mlp", 2, 8, 7)
    assert config.mlp_layers == (16, 8)
    assert config.batch_size == TrainConfig().batch_size


def _message(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_train_config(raw)
    assert isinstance(info.value, UserError)
    return info.value.message


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("learning_rat", "learning_rate"), ("epoch", "epochs"), ("embeding_dim", "embedding_dim")],
)
def test_unknown_name_suggests_the_closest(typo: str, suggestion: str) -> None:
    message = _message({typo: "1"})

    assert f"'{typo}'" in message
    assert f"did you mean '{suggestion}'?" in message


def test_unknown_name_without_a_close_match() -> None:
    message = _message({"zzzzqqq": 1})

    assert "'zzzzqqq'" in message
    assert "did you mean" not in message


def test_every_unknown_name_is_listed() -> None:
    message = _message({"epochs": 2, "foo": 1, "bar": 2})

    assert "'foo'" in message
    assert "'bar'" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("epochs", "ten"),
        ("epochs", 2.5),
        ("epochs", True),
        ("epochs", [3]),
        ("learning_rate", "fast"),
        ("learning_rate", True),
        ("learning_rate", [0.1]),
        ("pretrain", "maybe"),
        ("pretrain", 2),
        ("mlp_layers", "128,wide"),
        ("mlp_layers", {"a": 1}),
        ("user_id_column", ""),
        ("user_id_column", None),
        ("min_rating", "high"),
    ],
)
def test_wrong_type_names_the_hyperparameter_and_value(name: str, value: Any) -> None:
    message = _message({name: value})

    assert f"'{name}'" in message
    bad = "wide" if value == "128,wide" else value
    assert repr(bad) in message


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity", float("nan"), float("inf")])
def test_non_finite_numbers_are_rejected(value: Any) -> None:
    message = _message({"learning_rate": value})

    assert "'learning_rate'" in message
    assert "finite" in message


@pytest.mark.parametrize(
    ("name", "value", "bound"),
    [
        ("epochs", 0, ">= 1"),
        ("epochs", -1, ">= 1"),
        ("dropout", 1.5, "<= 0.95"),
        ("dropout", -0.1, ">= 0"),
        ("learning_rate", 0, "> 0"),
        ("eval_k", 0, ">= 1"),
        ("user_id_dropout", 1.01, "<= 1"),
        ("embedding_dim", 5000, "<= 4096"),
        ("mlp_layers", [], "non-empty"),
        ("mlp_layers", [64, 0], "between 1 and 8192"),
    ],
)
def test_out_of_range_names_the_hyperparameter_the_value_and_the_bound(
    name: str, value: Any, bound: str
) -> None:
    message = _message({name: value})

    assert f"'{name}'" in message
    assert f"got {value!r}" in message
    assert bound in message


def test_range_bounds_are_inclusive_where_documented() -> None:
    config = resolve_train_config({"epochs": 1, "dropout": 0.95, "user_id_dropout": 1, "weight_decay": 0})

    assert (config.epochs, config.dropout, config.user_id_dropout, config.weight_decay) == (1, 0.95, 1.0, 0.0)


@pytest.mark.parametrize(
    ("name", "value"), [("model", "svd"), ("loss", "hinge"), ("device", "tpu"), ("final_fit", 3)]
)
def test_bad_choice_lists_the_accepted_values(name: str, value: Any) -> None:
    message = _message({name: value})

    assert f"'{name}'" in message
    assert repr(value) in message
    if name == "model":
        assert "gmf, mlp, neumf" in message


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"rating_column": "t", "timestamp_column": "t"}, ("rating_column", "timestamp_column")),
        ({"user_id_column": "id"}, ()),
        ({"user_id_column": "id", "item_id_column": "id"}, ("user_id_column", "item_id_column")),
    ],
)
def test_columns_must_differ(raw: dict[str, Any], names: tuple[str, ...]) -> None:
    if not names:
        assert resolve_train_config(raw).user_id_column == "id"
        return
    message = _message(raw)

    for name in names:
        assert f"'{name}'" in message


@pytest.mark.parametrize(
    ("model", "loss", "num_items", "on_gpu", "expected"),
    [
        ("gmf", "auto", 60, False, "softmax"),
        ("gmf", "auto", CPU_FULL_SOFTMAX_MAX_ITEMS, False, "softmax"),
        ("gmf", "auto", CPU_FULL_SOFTMAX_MAX_ITEMS + 1, False, "sampled_softmax"),
        ("gmf", "auto", CPU_FULL_SOFTMAX_MAX_ITEMS + 1, True, "softmax"),
        ("gmf", "auto", FULL_SOFTMAX_MAX_ITEMS, True, "softmax"),
        ("gmf", "auto", FULL_SOFTMAX_MAX_ITEMS + 1, True, "sampled_softmax"),
        ("mlp", "auto", 60, True, "sampled_softmax"),
        ("neumf", "auto", 60, False, "sampled_softmax"),
        ("gmf", "bce", 60, False, "bce"),
        ("mlp", "softmax", 60, False, "softmax"),
        ("gmf", "sampled_softmax", 60, True, "sampled_softmax"),
    ],
)
def test_resolved_loss(model: str, loss: str, num_items: int, on_gpu: bool, expected: str) -> None:
    config = resolve_train_config({"model": model, "loss": loss})

    assert config.resolved_loss(num_items, on_gpu=on_gpu) == expected


def test_hyperparameter_table_lists_every_field() -> None:
    table = hyperparameter_table()
    lines = table.splitlines()
    fields = dataclasses.fields(TrainConfig)

    assert lines[0] == "| name | type | default | meaning |"
    assert len(lines) == 2 + len(fields)
    for field, line in zip(fields, lines[2:], strict=True):
        assert line.startswith(f"| `{field.name}` |")
        assert line.count(" | ") >= 3
        assert field.metadata["doc"] in line


def test_hyperparameter_table_shows_defaults_and_choices() -> None:
    rows = {line.split("|")[1].strip(" `"): line for line in hyperparameter_table().splitlines()[2:]}

    assert "`128,64`" in rows["mlp_layers"]
    assert "`(unset)`" in rows["min_rating"]
    assert "`true`" in rows["amp"]
    assert "`40`" in rows["epochs"]
    assert "gmf \\| mlp \\| neumf" in rows["model"]


def test_config_survives_a_json_round_trip() -> None:
    """What ``recsys evaluate`` does with the artifact's train_config.json."""
    config = resolve_train_config({"model": "neumf", "mlp_layers": "32,16", "min_rating": 4})

    saved = json.loads(json.dumps(config_to_json(config)))

    assert resolve_train_config(saved) == config


def test_numeric_context_columns_must_be_context_columns() -> None:
    config = resolve_train_config({"context_columns": "device,basket", "numeric_context_columns": "basket"})
    assert config.numeric_context_columns == ("basket",)
    with pytest.raises(ConfigError, match=r"numeric_context_columns.*'price'.*device, basket"):
        resolve_train_config({"context_columns": "device,basket", "numeric_context_columns": "price"})
