"""recsys.sagemaker.layout: a local training tree laid out from a user's own paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.errors import UserError
from recsys.sagemaker.contract import ContainerPaths, read_training_contract
from recsys.sagemaker.layout import LocalJob, lay_out_job


def _file(path: Path, text: str = "user_id,item_id\nu1,i1\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_contract_reads_the_laid_out_tree(tmp_path: Path) -> None:
    a = _file(tmp_path / "mine" / "a.csv")
    b = _file(tmp_path / "other" / "a.csv")  # the same name from another directory
    hidden = _file(tmp_path / "mine" / "_export.parquet")  # a name the channel readers would skip
    paths = ContainerPaths(tmp_path / "tree")

    lay_out_job(paths, LocalJob({"train": [a, b, hidden]}, {"epochs": "3", "mlp_layers": "[64,32]"}))

    names = sorted(p.name for p in paths.channel_dir("train").iterdir())
    assert names == ["2-a.csv", "a.csv", "part-export.parquet"]
    assert {p.resolve() for p in paths.channel_dir("train").iterdir()} == {a, b, hidden}
    contract = read_training_contract(paths)
    assert set(contract.channels) == {"train"}
    assert contract.hyperparameters == {"epochs": 3, "mlp_layers": [64, 32]}  # decoded as SageMaker's strings
    declared = json.loads(paths.input_data_config_file.read_text())
    assert declared == {"train": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}}


def test_a_channel_directory_named_as_itself_is_used_in_place(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path / "tree")
    own = _file(paths.channel_dir("train") / "interactions.csv")

    lay_out_job(paths, LocalJob({"train": [paths.channel_dir("train")]}))

    assert own.is_file() and not own.is_symlink()
    assert list(paths.channel_dir("train").iterdir()) == [own]


def test_links_of_an_earlier_layout_are_replaced_and_real_files_never(tmp_path: Path) -> None:
    a, b = _file(tmp_path / "a.csv"), _file(tmp_path / "b.csv")
    paths = ContainerPaths(tmp_path / "tree")
    lay_out_job(paths, LocalJob({"train": [a], "validation": [b]}))

    lay_out_job(paths, LocalJob({"train": [b]}))  # validation dropped, train changed

    assert [p.resolve() for p in paths.channel_dir("train").iterdir()] == [b]
    assert not paths.channel_dir("validation").exists()
    real = _file(paths.channel_dir("users") / "users.csv", "user_id,age\nu1,3\n")
    with pytest.raises(UserError, match="refusing to replace"):
        lay_out_job(paths, LocalJob({"train": [a]}))
    assert real.read_text() == "user_id,age\nu1,3\n"
    assert a.is_file() and b.is_file()


def test_a_link_given_as_a_path_survives_its_own_replacement(tmp_path: Path) -> None:
    a = _file(tmp_path / "a.csv")
    paths = ContainerPaths(tmp_path / "tree")
    lay_out_job(paths, LocalJob({"train": [a]}))

    lay_out_job(paths, LocalJob({"train": [paths.channel_dir("train") / "a.csv"]}))  # the link itself

    assert (paths.channel_dir("train") / "a.csv").resolve() == a


def test_bad_paths_are_user_errors_naming_them(tmp_path: Path) -> None:
    paths = ContainerPaths(tmp_path / "tree")
    with pytest.raises(UserError, match=r"--items: .*nope does not exist"):
        lay_out_job(paths, LocalJob({"train": [_file(tmp_path / "a.csv")], "items": [tmp_path / "nope"]}))
    with pytest.raises(UserError, match="--train PATH"):
        lay_out_job(paths, LocalJob({"items": [_file(tmp_path / "i.csv")]}))
    assert not paths.base.exists()
