"""Tests for recsys.sagemaker.contract: paths, hyperparameters, channels, failure and success files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from recsys.errors import DataError, UserError
from recsys.sagemaker.contract import (
    FAILURE_REASON_LIMIT,
    ContainerPaths,
    ResourceConfig,
    decode_hyperparameter,
    discover_channels,
    read_hyperparameters,
    read_resource_config,
    read_training_contract,
    write_failure,
    write_success,
)


def _write_config(paths: ContainerPaths, name: str, value: Any) -> Path:
    path = paths.input_config_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    return path


def _make_channel(paths: ContainerPaths, name: str) -> Path:
    directory = paths.channel_dir(name)
    directory.mkdir(parents=True)
    return directory


# --- paths ---------------------------------------------------------------------------------


def test_every_path_derives_from_the_base_dir(tmp_path: Path) -> None:
    paths = ContainerPaths.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path)})

    assert paths.base == tmp_path
    assert paths.hyperparameters_file == tmp_path / "input/config/hyperparameters.json"
    assert paths.input_data_config_file == tmp_path / "input/config/inputdataconfig.json"
    assert paths.resource_config_file == tmp_path / "input/config/resourceconfig.json"
    assert paths.channel_dir("train") == tmp_path / "input/data/train"
    assert paths.model_dir == tmp_path / "model"
    assert paths.output_data_dir == tmp_path / "output/data"
    assert paths.failure_file == tmp_path / "output/failure"
    assert paths.success_file == tmp_path / "output/success"
    assert paths.checkpoint_dir == tmp_path / "checkpoints"


@pytest.mark.parametrize("environ", [{}, {"SAGEMAKER_BASE_DIR": ""}, {"SM_MODEL_DIR": "/elsewhere"}])
def test_base_dir_defaults_to_opt_ml(environ: dict[str, str]) -> None:
    paths = ContainerPaths.from_env(environ)

    assert paths.base == Path("/opt/ml")
    assert paths.model_dir == Path("/opt/ml/model")
    assert paths.failure_file == Path("/opt/ml/output/failure")


def test_building_paths_touches_no_disk(tmp_path: Path) -> None:
    paths = ContainerPaths.from_env({"SAGEMAKER_BASE_DIR": str(tmp_path / "base")})

    _ = (paths.model_dir, paths.output_dir, paths.channel_dir("train"))

    assert not (tmp_path / "base").exists()


# --- hyperparameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3", 3),
        ("0.01", 0.01),
        ("1e-3", 0.001),
        ("[64,32]", [64, 32]),
        ("true", True),
        ("false", False),
        ("null", None),
        ("gmf", "gmf"),
        ("128,64", "128,64"),
        ("", ""),
        (5, 5),
    ],
)
def test_decode_hyperparameter(raw: Any, expected: Any) -> None:
    decoded = decode_hyperparameter(raw)

    assert decoded == expected
    assert type(decoded) is type(expected)


def test_read_hyperparameters_decodes_strings_and_drops_sagemaker_names(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    _write_config(
        paths,
        "hyperparameters.json",
        {
            "epochs": "3",
            "learning_rate": "0.01",
            "mlp_layers": "[64,32]",
            "pretrain": "true",
            "model": "gmf",
            "sagemaker_program": "train.py",
            "sagemaker_region": '"us-east-1"',
            "_tuning_objective_metric": "validation:ndcg@10",
        },
    )

    assert read_hyperparameters(paths) == {
        "epochs": 3,
        "learning_rate": 0.01,
        "mlp_layers": [64, 32],
        "pretrain": True,
        "model": "gmf",
    }


def test_absent_hyperparameters_file_means_none(tmp_path: Path) -> None:
    assert read_hyperparameters(ContainerPaths(tmp_path)) == {}


@pytest.mark.parametrize("content", ['{"epochs": "3",', "not json at all"])
def test_invalid_hyperparameters_json_names_the_file(tmp_path: Path, content: str) -> None:
    paths = ContainerPaths(tmp_path)
    path = _write_config(paths, "hyperparameters.json", content)

    with pytest.raises(UserError, match="not valid JSON") as info:
        read_hyperparameters(paths)

    assert str(path) in info.value.message


def test_hyperparameters_must_be_an_object(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    path = _write_config(paths, "hyperparameters.json", ["epochs", "3"])

    with pytest.raises(UserError, match="JSON object, found list") as info:
        read_hyperparameters(paths)

    assert str(path) in info.value.message


# --- resource config -----------------------------------------------------------------------


def test_resource_config_of_a_follower(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    _write_config(
        paths,
        "resourceconfig.json",
        {"current_host": "algo-2", "hosts": ["algo-1", "algo-2", "algo-3"], "network_interface_name": "eth1"},
    )

    resources = read_resource_config(paths)

    assert resources.hosts == ("algo-1", "algo-2", "algo-3")
    assert resources.current_host == "algo-2"
    assert resources.num_hosts == 3
    assert resources.network_interface_name == "eth1"
    assert not resources.is_leader


def test_resource_config_of_the_leader(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    _write_config(paths, "resourceconfig.json", {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]})

    resources = read_resource_config(paths)

    assert resources.is_leader
    assert resources.num_hosts == 2


def test_absent_resource_config_is_a_single_leader_host(tmp_path: Path) -> None:
    resources = read_resource_config(ContainerPaths(tmp_path))

    assert resources == ResourceConfig()
    assert resources.is_leader
    assert resources.num_hosts == 1


def test_invalid_resource_config_names_the_file(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    path = _write_config(paths, "resourceconfig.json", "{hosts: [algo-1]}")

    with pytest.raises(UserError, match="not valid JSON") as info:
        read_resource_config(paths)

    assert str(path) in info.value.message


# --- channels ------------------------------------------------------------------------------


def test_channels_found_on_disk(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    train = _make_channel(paths, "train")
    items = _make_channel(paths, "items")

    assert discover_channels(paths) == {"train": train, "items": items}


def test_missing_train_channel_names_it_and_its_path(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    _make_channel(paths, "validation")

    with pytest.raises(UserError) as info:
        discover_channels(paths)

    assert "'train'" in info.value.message
    assert str(tmp_path / "input" / "data" / "train") in info.value.message


@pytest.mark.parametrize("name", ["train", "validation", "items"])
def test_a_channel_that_is_a_file_is_refused_by_name_not_skipped(tmp_path: Path, name: str) -> None:
    paths = ContainerPaths(tmp_path)
    if name != "train":
        _make_channel(paths, "train")
    paths.channel_dir(name).parent.mkdir(parents=True, exist_ok=True)
    paths.channel_dir(name).write_text("user_id,item_id\nu1,i1\n")

    with pytest.raises(UserError) as info:
        discover_channels(paths)

    assert f"channel '{name}'" in info.value.message
    assert f"{paths.channel_dir(name)} is a file" in info.value.message


def test_declared_channel_missing_on_disk(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    _make_channel(paths, "train")
    _write_config(paths, "inputdataconfig.json", {"train": {}, "validation": {}})

    with pytest.raises(UserError) as info:
        discover_channels(paths)

    assert "'validation'" in info.value.message
    assert str(paths.channel_dir("validation")) in info.value.message


def test_declared_channels_present_on_disk(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    train = _make_channel(paths, "train")
    validation = _make_channel(paths, "validation")
    _write_config(paths, "inputdataconfig.json", {"train": {}, "validation": {}})

    assert discover_channels(paths) == {"train": train, "validation": validation}


def test_unknown_declared_channel_is_named(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    _make_channel(paths, "train")
    _write_config(paths, "inputdataconfig.json", {"train": {}, "testing": {"ContentType": "text/csv"}})

    with pytest.raises(UserError) as info:
        discover_channels(paths)

    assert "'testing'" in info.value.message
    assert "train, validation, items, users" in info.value.message


def test_invalid_input_data_config_names_the_file(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    _make_channel(paths, "train")
    path = _write_config(paths, "inputdataconfig.json", "")

    with pytest.raises(UserError) as info:
        discover_channels(paths)

    assert str(path) in info.value.message


def test_read_training_contract_gathers_everything(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    train = _make_channel(paths, "train")
    _write_config(paths, "hyperparameters.json", {"epochs": "2", "sagemaker_job_name": "x"})
    _write_config(paths, "resourceconfig.json", {"current_host": "algo-1", "hosts": ["algo-1"]})

    contract = read_training_contract(paths)

    assert contract.paths == paths
    assert contract.hyperparameters == {"epochs": 2}
    assert contract.channels == {"train": train}
    assert contract.resources.is_leader


# --- failure and success files -------------------------------------------------------------


def _raised(exc: BaseException) -> BaseException:
    """``exc`` after a real raise, so it carries a traceback."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_user_error_failure_holds_the_message_only(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    exc = _raised(DataError("channel 'train': column 'user_id' not found."))

    text = write_failure(paths, exc)

    assert paths.failure_file.read_text(encoding="utf-8") == text
    assert text == "channel 'train': column 'user_id' not found.\n"
    assert "Traceback" not in text


def test_user_error_message_leads_within_the_failure_reason_limit(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    message = "hyperparameter 'epochs' must be >= 1; got -1."

    write_failure(paths, _raised(UserError(message)))

    assert paths.failure_file.read_text(encoding="utf-8")[:FAILURE_REASON_LIMIT].startswith(message)


def test_internal_error_failure_holds_the_traceback(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)

    def explode() -> None:
        raise RuntimeError("tensor shapes disagree")

    try:
        explode()
    except RuntimeError as exc:
        text = write_failure(paths, exc)

    written = paths.failure_file.read_text(encoding="utf-8")
    assert written == text
    assert written.startswith("internal error: RuntimeError: tensor shapes disagree")
    assert "Traceback (most recent call last)" in written
    assert "in explode" in written


def test_write_success_removes_a_stale_failure(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    write_failure(paths, _raised(UserError("an earlier attempt failed")))
    assert paths.failure_file.exists()

    write_success(paths)

    assert paths.success_file.exists()
    assert not paths.failure_file.exists()


def test_write_success_creates_the_output_dir(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path / "fresh")

    write_success(paths)

    assert paths.success_file.is_file()


def test_pipe_mode_channel_is_refused_with_what_to_use(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path)
    paths.input_config_dir.mkdir(parents=True)
    paths.channel_dir("train").mkdir(parents=True)
    paths.input_data_config_file.write_text(
        json.dumps({"train": {"TrainingInputMode": "Pipe", "S3DistributionType": "FullyReplicated"}})
    )
    with pytest.raises(UserError, match=r"Pipe input mode.*File or FastFile"):
        discover_channels(paths)
