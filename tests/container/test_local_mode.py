"""SageMaker SDK v3 local mode against the real CPU image, through ``recsys aws train --local``.

``ModelTrainer(training_mode=Mode.LOCAL_CONTAINER)`` writes a compose file and runs the image with
docker compose as SageMaker would run it (``/opt/ml/input/config`` written by the SDK, channels
mounted under ``/opt/ml/input/data``). Needs a Docker engine and docker compose (conftest.py says
when these skip), and the aws extra. No AWS credentials are involved.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from recsys.cli import main
from recsys.data.synthetic import SyntheticSpec, generate, write_channels
from recsys.serving.engine import Query, Recommender
from tests.container.conftest import skip_or_fail

# Slow: Docker containers. The SDK's own model_trainer.py still imports its deprecated
# sagemaker.train.configs shim.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:sagemaker.train.configs has been moved:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def compose(docker_engine: None) -> None:
    pytest.importorskip("sagemaker.train", reason="SDK local mode needs the aws extra (make install)")
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    if plugin.returncode != 0 and shutil.which("docker-compose") is None:
        skip_or_fail("SDK local mode needs docker compose (the compose plugin or docker-compose)")


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    write_channels(generate(SyntheticSpec(num_users=150, num_items=60, mean_interactions_per_user=12)), data)
    return data


def _compose_containers(root: Path) -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project.working_dir={root}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return listed.stdout.split()


def test_local_mode_trains_in_the_image_and_writes_a_model_that_serves(
    cpu_image: str, compose: None, channels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "local-job"

    code = main(
        ["aws", "train", "--local", str(root), "--image", cpu_image,
         "--train", str(channels / "train"), "--items", str(channels / "items"),
         "-H", "epochs=2", "-H", "embedding_dim=8", "-H", "history_length=10"]
    )  # fmt: skip
    out, err = capsys.readouterr()

    assert code == 0, out[-3000:] + err[-3000:]
    # The container's own log, streamed by docker compose: the training ran in the image.
    assert "epoch=2 train_loss=" in out
    assert f"model: {root / 'model'}" in out
    recommender = Recommender.load(root / "model")
    (result,) = recommender.recommend([Query(user_id="u0001", k=3)])
    assert len(result.item_ids) == 3
    # The items channel reached the container: its attributes are in the artifact.
    assert (root / "model" / "item_features.json").exists()
    assert _compose_containers(root.resolve()) == []


def test_local_mode_reports_the_failure_the_job_wrote(
    cpu_image: str, compose: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-train"
    empty.mkdir()

    code = main(
        ["aws", "train", "--local", str(tmp_path / "job"), "--image", cpu_image, "--train", str(empty)]
    )
    _, err = capsys.readouterr()

    assert code == 1
    assert err.startswith("error: local training failed: ")
    assert "channel 'train'" in err  # output/failure's text, not the SDK's "Failed to run: docker-compose"
    assert "Traceback" not in err


def test_sdk_local_mode_alone_runs_the_image_without_train(
    cpu_image: str, compose: None, channels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Why the launcher gives local mode a child image whose command is ``train``: SDK v3 runs the
    image with no command, so it prints its usage, exits 0, and the SDK calls that a success.
    When this fails, the SDK passes ``train`` itself and the child image can go."""
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    from recsys.aws.images import DockerCli

    root = tmp_path / "bare"
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=cpu_image,
        local_container_root=str(root),
        compute=Compute(instance_type="local", instance_count=1),
        base_job_name="bare",
    )
    try:
        trainer.train(
            input_data_config=[InputData(channel_name="train", data_source=str(channels / "train"))]
        )
    finally:
        subprocess.run(
            [*DockerCli().compose(), "-f", str(root / "docker-compose.yaml"), "down"],
            capture_output=True,
            timeout=300,
        )
    out = capsys.readouterr().out

    assert "usage: docker run IMAGE train" in out
    assert not (root / "model" / "manifest.json").exists()
