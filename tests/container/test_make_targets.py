"""The Makefile's Docker targets against a real engine: `make local-train`.

conftest.py builds the image once per session and says when these skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.container.conftest import ROOT, docker_user, make_env


def make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=make_env(),
    )


# --- make local-train -------------------------------------------------------------------------------


def test_local_train_writes_the_tree_as_the_calling_user(cpu_image: str, tmp_path: Path) -> None:
    tree = tmp_path / "opt_ml"

    result = make("local-train", f"IMAGE={cpu_image}", f"LOCAL_ML={tree}")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"--user {docker_user()}" in result.stdout
    written = [tree / "input" / "data", *(tree / "model").iterdir(), tree / "output" / "success"]
    assert all(path.stat().st_uid == os.getuid() for path in written)
    shutil.rmtree(tree)  # what `make run` and `make local-train` do first, as this user
