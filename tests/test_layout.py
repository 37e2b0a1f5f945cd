"""The package as the image holds it: without ``recsys.aws`` (see .dockerignore), every container
command still imports and runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a fresh interpreter imports torch and the whole container side
def test_the_container_side_needs_nothing_from_the_launcher(tmp_path: Path) -> None:
    ignored = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "recsys/aws" in ignored
    skipped = shutil.ignore_patterns("__pycache__", "aws")
    shutil.copytree(REPO_ROOT / "recsys", tmp_path / "recsys", ignore=skipped)
    assert not (tmp_path / "recsys" / "aws").exists()
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # This checkout's editable install would still find recsys.aws here: drop its finder, so that
    # the copy alone is what imports, as in the image.
    alone = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
    # The modules of train, serve and prepare, and the CLI that dispatches them.
    code = alone + (
        "import importlib.util, recsys, recsys.cli, recsys.serving.app, recsys.serving.server, "
        "recsys.sagemaker.train, recsys.sagemaker.process, recsys.data.peers\n"
        f"assert recsys.__file__.startswith({str(tmp_path)!r}), recsys.__file__\n"
        "assert importlib.util.find_spec('recsys.aws') is None\n"
        "assert not any(name.startswith('recsys.aws') for name in sys.modules)\n"
        "parser = recsys.cli.build_parser()\n"
        "commands = parser._subparsers._group_actions[0].choices\n"
        "assert {'train', 'serve', 'prepare'} <= set(commands) and 'aws' not in commands, sorted(commands)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)


def test_the_launcher_is_split_by_service_and_the_container_code_never_imports_it() -> None:
    assert sorted(p.stem for p in (REPO_ROOT / "recsys" / "aws").glob("*.py")) == [
        "__init__",
        "api",
        "api_handler",
        "cli",
        "common",
        "hosting",
        "images",
        "jobs",
        "processing",
    ]
    assert not (REPO_ROOT / "recsys" / "sagemaker" / "launcher.py").exists()
    for path in (REPO_ROOT / "recsys").rglob("*.py"):
        inside = path.relative_to(REPO_ROOT / "recsys").parts
        if inside[0] == "aws" or inside == ("cli.py",):  # the CLI adds the aws commands when present
            continue
        assert "recsys.aws" not in path.read_text(), path


def test_the_image_says_it_can_host_many_models() -> None:
    from recsys.sagemaker.contract import MULTI_MODEL_LABEL

    assert f"LABEL {MULTI_MODEL_LABEL}" in (REPO_ROOT / "Dockerfile").read_text().splitlines()
