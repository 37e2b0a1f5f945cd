"""``recsys aws ...`` end to end against a real AWS API on localhost (moto's server).

Each test runs the command line in-process (``recsys.cli.main``) and reads what reached the API:
the exact request parameters the launcher and the SageMaker SDK handed to boto3, and the state the
server kept. Nothing here talks to AWS.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from recsys.cli import main
from recsys.sagemaker.metric_definitions import METRIC_DEFINITIONS, TUNING_OBJECTIVE
from tests.sagemaker.conftest import (
    ACCOUNT,
    IMAGE_URI,
    REGION,
    REPO_ROOT,
    ROLE_ARN,
    FakeAws,
    Run,
    TrainingRun,
)

# Slow: the launcher against a moto_server subprocess, and a real `recsys train` run (conftest.py).
# The SDK's own model_trainer.py still imports its deprecated sagemaker.train.configs shim.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:sagemaker.train.configs has been moved:DeprecationWarning"),
]

SENT_METRICS = [{"Name": d["Name"], "Regex": d["Regex"]} for d in METRIC_DEFINITIONS]


def _training_args(*extra: str) -> list[str]:
    return ["train", "--image", IMAGE_URI, "--role", ROLE_ARN, "--train", "s3://bucket/train/",
            "--output", "s3://bucket/jobs", *extra]  # fmt: skip


# -- train ---------------------------------------------------------------------------------------------


def test_train_sends_the_exact_training_job(aws: FakeAws, recsys_aws: Run) -> None:
    code, out, err = recsys_aws(
        *_training_args(
            "--validation", "s3://bucket/validation/", "--items", "s3://bucket/items/",
            "-H", "epochs=30", "-H", "learning_rate=0.01", "-H", "mlp_layers=[128,64]",
            "--instance-type", "ml.g5.2xlarge", "--instance-count", "2", "--volume-size", "50",
            "--max-run", "2h", "--spot", "--max-wait", "4h", "--checkpoint-s3", "s3://bucket/ckpt/",
            "--job-name-prefix", "recs", "--no-wait",
        )
    )  # fmt: skip

    assert code == 0, err
    (request,) = aws.sent("CreateTrainingJob")
    job_name = request.pop("TrainingJobName")
    assert re.fullmatch(r"recs-\d{14}", job_name)
    channel = lambda name: {  # noqa: E731
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": f"s3://bucket/{name}/",
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }
    assert request == {
        "AlgorithmSpecification": {
            "TrainingImage": IMAGE_URI,
            "TrainingInputMode": "File",
            "MetricDefinitions": SENT_METRICS,
        },
        "RoleArn": ROLE_ARN,
        "HyperParameters": {"epochs": "30", "learning_rate": "0.01", "mlp_layers": "[128,64]"},
        "InputDataConfig": [channel("train"), channel("validation"), channel("items")],
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/jobs", "CompressionType": "GZIP"},
        "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400},
        "EnableManagedSpotTraining": True,
        "CheckpointConfig": {"S3Uri": "s3://bucket/ckpt/", "LocalPath": "/opt/ml/checkpoints"},
    }
    assert f"training job {job_name}" in out
    assert aws.client("sagemaker").describe_training_job(TrainingJobName=job_name)["RoleArn"] == ROLE_ARN
    assert not aws.sent("DescribeLogStreams"), "--no-wait must not follow the job"
    assert "status:" not in out


def test_train_on_demand_sends_no_spot_settings(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(*_training_args("--no-wait"))

    assert code == 0, err
    (request,) = aws.sent("CreateTrainingJob")
    assert "EnableManagedSpotTraining" not in request
    assert "CheckpointConfig" not in request
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert request["ResourceConfig"] == {
        "InstanceType": "ml.g5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
    }
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["train"]


def test_spot_checkpoints_default_to_a_fresh_prefix_under_the_output(aws: FakeAws, recsys_aws: Run) -> None:
    code, out, err = recsys_aws(*_training_args("--spot", "--max-run", "3h", "--no-wait"))

    assert code == 0, err
    (request,) = aws.sent("CreateTrainingJob")
    checkpoint = request["CheckpointConfig"]["S3Uri"]
    assert re.fullmatch(r"s3://bucket/jobs/checkpoints/recsys-\d{8}-\d{6}/", checkpoint)
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 10800, "MaxWaitTimeInSeconds": 21600}
    assert f"checkpoints: {checkpoint}" in out


def test_train_follows_the_log_and_the_metric_regexes_read_the_kept_model(
    aws: FakeAws, recsys_aws: Run, training_run: TrainingRun
) -> None:
    metrics = training_run.metrics
    # The run stopped early: its last epoch is not the model it kept.
    assert metrics["best_epoch"] < metrics["epochs_run"], "pick hyperparameters that stop early"
    aws.log_lines = training_run.lines

    code, out, err = recsys_aws(*_training_args("-H", "epochs=8"))

    assert code == 0, err
    printed = out.splitlines()
    assert [line for line in printed if line in training_run.lines] == training_run.lines
    # What SageMaker reads: the job's regexes over the job's log.
    definitions = aws.sent("CreateTrainingJob")[0]["AlgorithmSpecification"]["MetricDefinitions"]
    values = {
        d["Name"]: [float(m.group(1)) for line in training_run.lines if (m := re.search(d["Regex"], line))]
        for d in definitions
    }
    assert all(values[d["Name"]] for d in METRIC_DEFINITIONS), values
    assert len(values["train:loss"]) == metrics["epochs_run"]
    # A tuning job's objective is the last value it reads: the kept model's NDCG, not the last epoch's.
    objective = values[TUNING_OBJECTIVE]
    assert objective[-1] == round(metrics["validation"]["ndcg@10"], 4)
    assert objective[metrics["epochs_run"] - 1] != objective[-1]
    assert "status: Completed" in out
    # Read again after the job ended (late lines), from where the first read stopped.
    reads = aws.sent("GetLogEvents")
    assert any("nextToken" in read for read in reads)
    assert all(read["startFromHead"] is True for read in reads)
    job_name = aws.sent("CreateTrainingJob")[0]["TrainingJobName"]
    assert f"model: s3://bucket/jobs/{job_name}/output/model.tar.gz" in out


def test_a_failed_training_job_exits_1_with_its_reason(aws: FakeAws, recsys_aws: Run) -> None:
    aws.patch_response(
        "DescribeTrainingJob", {"TrainingJobStatus": "Failed", "FailureReason": "unknown hyperparameter 'x'"}
    )

    code, _, err = recsys_aws(*_training_args())

    assert code == 1
    assert re.search(r"error: training job recsys-\d+ failed: unknown hyperparameter 'x'", err)
    assert "Traceback" not in err


# -- tune ----------------------------------------------------------------------------------------------


def test_tune_sends_the_exact_tuning_job(aws: FakeAws, recsys_aws: Run) -> None:
    code, out, err = recsys_aws(
        "tune", "--image", IMAGE_URI, "--role", ROLE_ARN, "--train", "s3://bucket/train/",
        "--validation", "s3://bucket/validation/", "--output", "s3://bucket/tuning",
        "-H", "epochs=10", "-H", "learning_rate=0.01",
        "--range", "learning_rate=0.0003:0.03:log", "--range", "embedding_dim=32,64,128",
        "--range", "batch_size=256:4096",
        "--max-jobs", "12", "--max-parallel-jobs", "3", "--strategy", "Random", "--early-stopping",
        "--instance-type", "ml.g4dn.xlarge", "--spot", "--max-run", "1h", "--no-wait",
    )  # fmt: skip

    assert code == 0, err
    (request,) = aws.sent("CreateHyperParameterTuningJob")
    assert re.fullmatch(r"recsys-tune-\d{6}-\d{4}", request.pop("HyperParameterTuningJobName"))
    channel = lambda name: {  # noqa: E731
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": f"s3://bucket/{name}/",
                "S3DataDistributionType": "FullyReplicated",
            }
        },
    }
    assert request == {
        "HyperParameterTuningJobConfig": {
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:ndcg@10"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3},
            "ParameterRanges": {
                "IntegerParameterRanges": [
                    {"Name": "batch_size", "MinValue": "256", "MaxValue": "4096", "ScalingType": "Auto"}
                ],
                "ContinuousParameterRanges": [
                    {
                        "Name": "learning_rate",
                        "MinValue": "0.0003",
                        "MaxValue": "0.03",
                        "ScalingType": "Logarithmic",
                    }
                ],
                "CategoricalParameterRanges": [{"Name": "embedding_dim", "Values": ["32", "64", "128"]}],
            },
            "TrainingJobEarlyStoppingType": "Auto",
        },
        "TrainingJobDefinition": {
            "AlgorithmSpecification": {
                "TrainingImage": IMAGE_URI,
                "TrainingInputMode": "File",
                "MetricDefinitions": SENT_METRICS,
            },
            "RoleArn": ROLE_ARN,
            # The tuned learning_rate leaves the static hyperparameters.
            "StaticHyperParameters": {"epochs": "10"},
            "InputDataConfig": [channel("train"), channel("validation")],
            "OutputDataConfig": {"S3OutputPath": "s3://bucket/tuning", "CompressionType": "GZIP"},
            "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
            # Spot without CheckpointConfig: trials must not resume from each other's checkpoints.
            "EnableManagedSpotTraining": True,
        },
    }
    assert "12 training jobs, 3 at a time" in out


def test_tune_searches_the_documented_default_ranges(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(
        "tune", "--image", IMAGE_URI, "--role", ROLE_ARN, "--train", "s3://bucket/train/",
        "--output", "s3://bucket/tuning", "--no-wait",
    )  # fmt: skip

    assert code == 0, err
    (request,) = aws.sent("CreateHyperParameterTuningJob")
    config = request["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 20, "MaxParallelTrainingJobs": 2}
    assert config["ParameterRanges"] == {
        "ContinuousParameterRanges": [
            {"Name": "learning_rate", "MinValue": "0.0003", "MaxValue": "0.03", "ScalingType": "Logarithmic"},
            {"Name": "weight_decay", "MinValue": "1e-06", "MaxValue": "0.1", "ScalingType": "Logarithmic"},
            {"Name": "user_id_dropout", "MinValue": "0.0", "MaxValue": "0.5", "ScalingType": "Linear"},
        ],
        "CategoricalParameterRanges": [
            {"Name": "embedding_dim", "Values": ["32", "64", "128"]},
            {"Name": "batch_size", "Values": ["512", "1024", "2048"]},
        ],
    }
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("learning_rate", "weight_decay", "user_id_dropout", "embedding_dim", "batch_size"):
        assert f"`{name}`" in readme.split("recsys aws tune", 1)[1], (
            f"README does not document the range of {name}"
        )


def test_tune_follows_the_job_and_names_the_best_training_job(aws: FakeAws, recsys_aws: Run) -> None:
    aws.patch_response(
        "DescribeHyperParameterTuningJob",
        {
            "HyperParameterTuningJobStatus": "Completed",
            "TrainingJobStatusCounters": {
                "Completed": 11,
                "InProgress": 0,
                "Stopped": 0,
                "NonRetryableError": 1,
            },
            "BestTrainingJob": {
                "TrainingJobName": "recsys-tune-261127-1200-007-3f2a",
                "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/recsys-tune-007",
                "TrainingJobStatus": "Completed",
                "CreationTime": datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
                "TunedHyperParameters": {"learning_rate": "0.0041", "embedding_dim": "128"},
                "FinalHyperParameterTuningJobObjectiveMetric": {
                    "MetricName": TUNING_OBJECTIVE,
                    "Value": 0.1307,
                },
            },
        },
    )

    code, out, err = recsys_aws(
        "tune", "--image", IMAGE_URI, "--role", ROLE_ARN, "--train", "s3://bucket/train/",
        "--output", "s3://bucket/tuning", "--max-jobs", "12",
    )  # fmt: skip

    assert code == 0, err
    assert "training jobs: 11 completed, 0 in progress, 0 stopped, 1 failed" in out
    assert "best training job: recsys-tune-261127-1200-007-3f2a (validation:ndcg@10 = 0.1307)" in out
    assert "  embedding_dim = 128\n  learning_rate = 0.0041" in out
    assert "recsys aws deploy --training-job recsys-tune-261127-1200-007-3f2a" in out


# -- deploy, invoke, batch, delete ---------------------------------------------------------------------


def _completed_training_job(recsys_aws: Run) -> str:
    code, out, err = recsys_aws(*_training_args("--no-wait"))
    assert code == 0, err
    match = re.search(r"training job (\S+):", out)
    assert match, out
    return match.group(1)


def test_deploy_from_a_training_job_pins_the_gpu_ami_and_waits_for_in_service(
    aws: FakeAws, recsys_aws: Run
) -> None:
    job = _completed_training_job(recsys_aws)

    code, out, err = recsys_aws(
        "deploy", "--training-job", job, "--name", "recs", "--instance-type", "ml.g4dn.xlarge",
        "--instance-count", "2", "--startup-timeout", "15m", "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=2",
    )  # fmt: skip

    assert code == 0, err
    assert aws.sent("CreateModel") == [
        {
            "ModelName": "recs",
            # The job's role and image: none was given.
            "ExecutionRoleArn": ROLE_ARN,
            "PrimaryContainer": {
                "Image": IMAGE_URI,
                "ModelDataUrl": f"s3://bucket/jobs/{job}/output/model.tar.gz",
                "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
            },
        }
    ]
    assert aws.sent("CreateEndpointConfig") == [
        {
            "EndpointConfigName": "recs",
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "recs",
                    "InstanceType": "ml.g4dn.xlarge",
                    "InitialInstanceCount": 2,
                    "InitialVariantWeight": 1.0,
                    "ContainerStartupHealthCheckTimeoutInSeconds": 900,
                    "InferenceAmiVersion": "al2023-ami-sagemaker-inference-gpu-4-1",
                }
            ],
        }
    ]
    assert aws.sent("CreateEndpoint") == [{"EndpointName": "recs", "EndpointConfigName": "recs"}]
    assert aws.sent("DescribeEndpoint"), "deploy must wait for the endpoint"
    assert "endpoint recs is InService" in out
    assert "bills per instance-hour" in out


def test_deploy_of_model_data_needs_the_image(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(
        "deploy", "--model-data", "s3://bucket/model.tar.gz", "--name", "recs", "--role", ROLE_ARN
    )

    assert code == 1
    assert "--model-data needs --image" in err
    assert not aws.sent("CreateModel")


def test_an_endpoint_that_fails_to_start_is_an_error_with_its_reason(aws: FakeAws, recsys_aws: Run) -> None:
    aws.patch_response(
        "DescribeEndpoint",
        {
            "EndpointStatus": "Failed",
            "FailureReason": "The primary container did not pass the ping health check.",
        },
    )

    code, _, err = recsys_aws(
        "deploy", "--model-data", "s3://bucket/model.tar.gz", "--image", IMAGE_URI, "--role", ROLE_ARN,
        "--name", "recs", "--instance-type", "ml.m5.large",
    )  # fmt: skip

    assert code == 1
    assert "endpoint recs is Failed: The primary container did not pass the ping health check." in err
    assert "recsys aws delete --name recs" in err
    assert "InferenceAmiVersion" not in aws.sent("CreateEndpointConfig")[0]["ProductionVariants"][0]


def test_invoke_sends_the_request_and_prints_the_answer(
    aws: FakeAws, recsys_aws: Run, tmp_path: Path
) -> None:
    answer = '{"predictions": [{"item_ids": ["i0042", "i0007"], "scores": [3.1, 2.4], "kind": "user"}]}'
    aws.queue_endpoint_results([{"Body": answer, "ContentType": "application/json"}])
    lines = tmp_path / "requests.jsonl"
    lines.write_text('{"user_id": "u0001"}\n{"history": ["i0003"]}\n')

    code, out, err = recsys_aws("invoke", "--endpoint", "recs", "--body", '{"user_id": "u0001", "k": 2}')
    code_lines, _, err_lines = recsys_aws("invoke", "--endpoint", "recs", "--file", str(lines))

    assert code == 0, err
    assert out == answer + "\n"
    assert code_lines == 0, err_lines
    first, second = aws.sent("InvokeEndpoint")
    assert first == {
        "EndpointName": "recs",
        "ContentType": "application/json",
        "Accept": "application/json",
        "Body": b'{"user_id": "u0001", "k": 2}',
    }
    assert second["ContentType"] == second["Accept"] == "application/jsonlines"
    assert second["Body"] == lines.read_bytes()


def test_invoke_refuses_malformed_json_before_sending(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws("invoke", "--endpoint", "recs", "--body", '{"user_id": "u0001"')

    assert code == 1
    assert "not valid JSON: Expecting ',' delimiter at line 1 column 20" in err
    assert not aws.sent("InvokeEndpoint")


def test_batch_creates_the_model_and_a_line_split_transform_job(aws: FakeAws, recsys_aws: Run) -> None:
    code, out, err = recsys_aws(
        "batch", "--model", "recs-batch", "--model-data", "s3://bucket/jobs/j/output/model.tar.gz",
        "--image", IMAGE_URI, "--role", ROLE_ARN, "--input", "s3://bucket/requests/",
        "--output", "s3://bucket/predictions/", "--instance-count", "2", "--job-name", "recs-batch-1",
    )  # fmt: skip

    assert code == 0, err
    assert aws.sent("CreateModel")[0]["PrimaryContainer"] == {
        "Image": IMAGE_URI,
        "ModelDataUrl": "s3://bucket/jobs/j/output/model.tar.gz",
    }
    assert aws.sent("CreateTransformJob") == [
        {
            "TransformJobName": "recs-batch-1",
            "ModelName": "recs-batch",
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": 6,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/requests/"}},
                "ContentType": "application/jsonlines",
                "CompressionType": "None",
                "SplitType": "Line",
            },
            "TransformOutput": {
                "S3OutputPath": "s3://bucket/predictions/",
                "Accept": "application/jsonlines",
                "AssembleWith": "Line",
            },
            "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2},
        }
    ]
    assert "transform job recs-batch-1 completed: s3://bucket/predictions/" in out


def test_batch_with_an_existing_model_creates_none(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(
        "batch", "--model", "recs", "--input", "s3://bucket/in/", "--output", "s3://bucket/out/",
        "--content-type", "text/csv", "--single-record", "--no-wait",
    )  # fmt: skip

    assert code == 0, err
    assert not aws.sent("CreateModel")
    (job,) = aws.sent("CreateTransformJob")
    assert job["BatchStrategy"] == "SingleRecord"
    assert job["TransformInput"]["ContentType"] == "text/csv"
    assert re.fullmatch(r"recs-\d{8}-\d{6}", job["TransformJobName"])
    assert not aws.sent("DescribeTransformJob")


def test_delete_removes_all_three_and_tolerates_what_is_already_gone(aws: FakeAws, recsys_aws: Run) -> None:
    deployed, _, err = recsys_aws(
        "deploy", "--model-data", "s3://bucket/model.tar.gz", "--image", IMAGE_URI, "--role", ROLE_ARN,
        "--name", "recs",
    )  # fmt: skip
    assert deployed == 0, err

    first, out_first, err_first = recsys_aws("delete", "--name", "recs")
    again, out_again, err_again = recsys_aws("delete", "--name", "recs")

    assert first == 0, err_first
    assert out_first.splitlines() == [
        "deleted endpoint recs",
        "deleted endpoint config recs",
        "deleted model recs",
    ]
    sagemaker = aws.client("sagemaker")
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert sagemaker.list_models()["Models"] == []
    assert again == 0, err_again
    assert out_again.splitlines() == [
        "endpoint recs: not found (already deleted?)",
        "endpoint config recs: not found (already deleted?)",
        "model recs: not found (already deleted?)",
    ]


# -- push ----------------------------------------------------------------------------------------------

FAKE_DOCKER = """#!/bin/sh
# Records its arguments (one call per line) and what login reads on stdin.
echo "$*" >> "$FAKE_DOCKER_DIR/calls"
case "$1" in
  info)
    if [ -e "$FAKE_DOCKER_DIR/down" ]; then
      echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is it running?" >&2
      exit 1
    fi
    echo 27.5.1 ;;
  image) [ "$3" = "recsys:missing" ] && exit 1 ;;
  login) cat > "$FAKE_DOCKER_DIR/stdin"; echo "Login Succeeded" ;;
esac
exit 0
"""


@pytest.fixture()
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``docker`` first on PATH that records its calls in the returned directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_DIR", str(tmp_path))
    return tmp_path


def test_push_creates_the_repository_logs_in_through_stdin_tags_and_pushes(
    aws: FakeAws, recsys_aws: Run, fake_docker: Path
) -> None:
    code, out, err = recsys_aws("push", "--image", "recsys:latest", "--repository", "recsys-test")

    assert code == 0, err
    uri = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/recsys-test:latest"
    assert out.splitlines()[-1] == uri
    registry = aws.client("ecr").describe_repositories(repositoryNames=["recsys-test"])["repositories"][0]
    assert registry["imageScanningConfiguration"] == {"scanOnPush": True}
    token = aws.client("ecr").get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    calls = (fake_docker / "calls").read_text().splitlines()
    assert calls == [
        "info --format {{.ServerVersion}}",
        "image inspect recsys:latest",
        f"login --username {user} --password-stdin {token['proxyEndpoint']}",
        f"tag recsys:latest {uri}",
        f"push {uri}",
    ]
    assert (fake_docker / "stdin").read_text() == password
    assert password not in "\n".join(calls)


def test_push_to_an_existing_repository_keeps_it_and_uses_the_given_tag(
    aws: FakeAws, recsys_aws: Run, fake_docker: Path
) -> None:
    aws.client("ecr").create_repository(repositoryName="recsys")

    code, out, err = recsys_aws("push", "--image", "recsys:latest", "--tag", "2026-11-27")

    assert code == 0, err
    assert not aws.sent("CreateRepository")
    assert out.splitlines()[-1] == f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/recsys:2026-11-27"


def test_push_without_a_docker_engine_says_so_before_touching_aws(
    aws: FakeAws, recsys_aws: Run, fake_docker: Path
) -> None:
    (fake_docker / "down").touch()

    code, _, err = recsys_aws("push")

    assert code == 1
    assert err.splitlines() == [
        "error: no Docker engine answers (Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock. Is it running?): "
        "start Docker (or point DOCKER_HOST at an engine) and retry."
    ]
    assert not [op for _, op, _ in aws.requests if op.startswith(("Create", "Get"))]


def test_push_without_docker_or_the_image(
    aws: FakeAws, recsys_aws: Run, fake_docker: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing_image = recsys_aws("push", "--image", "recsys:missing")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    no_docker = recsys_aws("push")

    assert missing_image[0] == 1
    assert "no local image 'recsys:missing': build it with `make image`" in missing_image[2]
    assert no_docker[0] == 1
    assert "the docker command is not on PATH: install Docker" in no_docker[2]


# -- the region ----------------------------------------------------------------------------------------

PROFILE_REGION = "ap-southeast-2"


@pytest.mark.parametrize(
    ("environ", "in_profile", "flag", "expected"),
    [
        pytest.param({"AWS_REGION": "eu-central-1"}, False, None, "eu-central-1", id="AWS_REGION"),
        pytest.param({"AWS_DEFAULT_REGION": "us-east-2"}, False, None, "us-east-2", id="AWS_DEFAULT_REGION"),
        pytest.param(
            {"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "us-east-2"},
            False,
            None,
            "eu-central-1",
            id="AWS_REGION-over-AWS_DEFAULT_REGION",
        ),
        pytest.param({}, True, None, PROFILE_REGION, id="profile"),
        pytest.param(
            {"AWS_REGION": "eu-central-1"}, True, None, "eu-central-1", id="AWS_REGION-over-profile"
        ),
        pytest.param(
            {"AWS_DEFAULT_REGION": "us-east-2"}, True, None, "us-east-2", id="AWS_DEFAULT_REGION-over-profile"
        ),
        pytest.param(
            {"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "us-east-2"},
            True,
            "sa-east-1",
            "sa-east-1",
            id="--region-over-all",
        ),
    ],
)
def test_push_uses_the_region_of_the_flag_then_aws_region_then_aws_default_region_then_the_profile(
    aws: FakeAws,
    recsys_aws: Run,
    fake_docker: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    environ: dict[str, str],
    in_profile: bool,
    flag: str | None,
    expected: str,
) -> None:
    # The aws fixture has cleared AWS_REGION, AWS_DEFAULT_REGION and AWS_PROFILE: only these count.
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\nregion = {PROFILE_REGION}\n" if in_profile else "")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    code, out, err = recsys_aws("push", region=flag)

    assert code == 0, err
    assert out.splitlines()[-1] == f"{ACCOUNT}.dkr.ecr.{expected}.amazonaws.com/recsys:latest"
    assert aws.session_regions == [expected]
    assert aws.signed_regions == {expected}
    assert aws.client("ecr", expected).describe_repositories()["repositories"]
    assert not aws.client("ecr", REGION).describe_repositories()["repositories"]


def test_train_with_only_aws_region_set_runs_in_that_region(
    aws: FakeAws, recsys_aws: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-central-1")

    code, out, err = recsys_aws(*_training_args("--no-wait"), region=None)

    assert code == 0, err
    (request,) = aws.sent("CreateTrainingJob")
    job_name = request["TrainingJobName"]
    assert (
        f"https://eu-central-1.console.aws.amazon.com/sagemaker/home?region=eu-central-1#/jobs/{job_name}"
        in out
    )
    assert aws.signed_regions == {"eu-central-1"}
    assert aws.client("sagemaker", "eu-central-1").describe_training_job(TrainingJobName=job_name)


def test_make_push_without_region_takes_aws_region(aws: FakeAws, fake_docker: Path) -> None:
    # The README's walkthrough: `export AWS_REGION=...`, then `make push` with no REGION.
    env = {k: v for k, v in os.environ.items() if k not in ("REGION", "PROFILE")}
    env.update(MAKEFLAGS="", AWS_REGION="eu-central-1")

    result = subprocess.run(
        ["make", "-s", "-o", "install", "push", f"VENV={sys.prefix}", "IMAGE=recsys:1.2", "REPOSITORY=recs"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"{ACCOUNT}.dkr.ecr.eu-central-1.amazonaws.com/recs:1.2"
    assert aws.client("ecr", "eu-central-1").describe_repositories(repositoryNames=["recs"])["repositories"]


# -- what goes wrong at the edge -----------------------------------------------------------------------


def test_no_credentials_is_one_line_and_exit_1(
    aws: FakeAws, recsys_aws: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    code, _, err = recsys_aws(*_training_args())

    assert code == 1
    assert err.splitlines() == [
        "error: no AWS credentials found: run `aws configure` (or `aws sso login --profile NAME` and pass "
        "--profile NAME), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    ]
    assert not aws.requests


def test_no_region_names_every_place_it_looked(
    aws: FakeAws, recsys_aws: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "aws-config"
    config.write_text("[profile ci]\noutput = json\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "ci")

    code, _, err = recsys_aws("delete", "--name", "recs", region=None)

    assert code == 1
    assert err.splitlines() == [
        "error: no AWS region configured: none in --region, AWS_REGION, AWS_DEFAULT_REGION or the "
        f"profile 'ci' of {config}. Pass --region (e.g. --region eu-west-1), set AWS_REGION, or add "
        "`region = ...` to that profile."
    ]
    assert not aws.requests


def test_an_unknown_profile_is_named(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws("delete", "--name", "recs", "--profile", "nope")

    assert code == 1
    assert "The config profile (nope) could not be found" in err
    assert "aws configure list-profiles" in err


def test_no_role_is_refused_before_any_request(aws: FakeAws, recsys_aws: Run) -> None:
    args = [a for a in _training_args() if a not in ("--role", ROLE_ARN)]

    code, _, err = recsys_aws(*args)

    assert code == 1
    assert (
        "no SageMaker execution role: pass --role arn:aws:iam::ACCOUNT:role/NAME or set RECSYS_SAGEMAKER_ROLE"
        in err
    )
    assert not aws.sent("CreateTrainingJob")


def test_the_role_may_come_from_the_environment(
    aws: FakeAws, recsys_aws: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_SAGEMAKER_ROLE", ROLE_ARN)
    args = [a for a in _training_args("--no-wait") if a not in ("--role", ROLE_ARN)]

    code, _, err = recsys_aws(*args)

    assert code == 0, err
    assert aws.sent("CreateTrainingJob")[0]["RoleArn"] == ROLE_ARN


def test_a_role_the_sdk_finds_unusable_is_explained(aws: FakeAws, recsys_aws: Run) -> None:
    aws.role_allowed = False

    code, _, err = recsys_aws(*_training_args())

    assert code == 1
    assert f"error: train: the execution role {ROLE_ARN} cannot be used: IAM role '{ROLE_ARN}'" in err
    assert "Missing permissions:" in err
    assert "Pass a usable role with --role or RECSYS_SAGEMAKER_ROLE" in err
    assert len(err.splitlines()) == 1
    assert not aws.sent("CreateTrainingJob")


def test_bad_hyperparameters_are_refused_before_any_request(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(*_training_args("-H", "learning_rat=0.1"))

    assert code == 1
    assert "unknown hyperparameter(s): 'learning_rat' (did you mean 'learning_rate'?)" in err
    assert not aws.requests


def test_access_denied_names_the_call_and_the_permissions_section(aws: FakeAws, recsys_aws: Run) -> None:
    aws.deny("CreateTrainingJob", "User: arn:aws:iam::123456789012:user/dev is not authorized")

    code, _, err = recsys_aws(*_training_args())

    assert code == 1
    assert err.splitlines() == [
        "error: train: CreateTrainingJob failed: AccessDeniedException: "
        "User: arn:aws:iam::123456789012:user/dev is not authorized. "
        "The caller lacks a permission: see the README section 'IAM permissions'."
    ]


def test_a_real_process_without_credentials_prints_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )

    result = subprocess.run(
        [sys.executable, "-m", "recsys", "aws", "delete", "--name", "recs", "--region", REGION],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 1
    assert result.stderr.startswith("error: no AWS credentials found")
    assert "Traceback" not in result.stderr


def test_the_cli_never_imports_boto3_or_the_sdk_until_an_aws_command_runs() -> None:
    probe = (
        "import sys\n"
        "from recsys.cli import build_parser\n"
        "build_parser().parse_args(['aws', 'train', '--image', 'i', '--train', 's3://b/t'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'sagemaker'}))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=True
    )

    assert result.stdout.strip() == "[]"


def test_without_the_aws_extra_the_command_says_what_to_install(
    recsys_aws: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_sdk(name: str, *args: Any) -> Any:
        return None if name == "sagemaker" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_sdk)

    code, _, err = recsys_aws("delete", "--name", "recs")

    assert code == 1
    assert "needs the aws extra (sagemaker missing): pip install 'recsys[aws]'" in err


def test_tune_refuses_more_parallel_jobs_than_jobs(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(
        "tune", "--image", IMAGE_URI, "--role", ROLE_ARN, "--train", "s3://bucket/train/",
        "--output", "s3://bucket/t", "--max-jobs", "2", "--max-parallel-jobs", "4",
    )  # fmt: skip

    assert code == 1
    assert "--max-parallel-jobs (4) exceeds --max-jobs (2)" in err


def test_spot_options_without_spot_are_refused(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(*_training_args("--max-wait", "3h"))

    assert code == 1
    assert "add --spot" in err


def test_max_wait_below_max_run_is_refused(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(*_training_args("--spot", "--max-run", "3h", "--max-wait", "2h"))

    assert code == 1
    assert "--max-wait (7200 s) must be at least --max-run (10800 s)" in err


# -- usage errors --------------------------------------------------------------------------------------

_TRAIN = ("train", "--image", IMAGE_URI, "--train", "s3://bucket/train/")
_TUNE = ("tune", "--image", IMAGE_URI, "--train", "s3://bucket/train/", "--output", "s3://bucket/t")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            (*_TRAIN, "--output", "not-an-s3-uri"),
            "--output: expected an S3 URI such as s3://bucket/prefix/; got 'not-an-s3-uri'",
            id="s3-uri",
        ),
        pytest.param(
            ("batch", "--model", "m", "--input", "bucket/in", "--output", "s3://bucket/out/"),
            "--input: expected an S3 URI such as s3://bucket/prefix/; got 'bucket/in'",
            id="batch-s3-uri",
        ),
        pytest.param(
            (*_TRAIN, "--max-run", "soon"),
            "--max-run: expected a duration such as 3600, 90m, 2h or 1d; got 'soon'",
            id="duration",
        ),
        pytest.param(
            (*_TRAIN, "--instance-count", "0"),
            "--instance-count: expected at least 1; got 0",
            id="positive-int",
        ),
        pytest.param(
            (*_TUNE, "--max-jobs", "many"),
            "--max-jobs: expected a whole number; got 'many'",
            id="whole-number",
        ),
        pytest.param(
            (*_TRAIN, "-H", "epochs"),
            "--hyperparameter/-H: expected NAME=VALUE; got 'epochs'",
            id="key-value",
        ),
        pytest.param(
            ("deploy", "--name", "e", "--model-data", "s3://bucket/model.tar.gz", "--env", "=1"),
            "--env: expected NAME=VALUE; got '=1'",
            id="env-key-value",
        ),
        pytest.param((*_TUNE, "--strategy", "Greedy"), "--strategy: invalid choice: 'Greedy'", id="choice"),
        pytest.param(
            ("train", "--train", "s3://bucket/train/"),
            "the following arguments are required: --image",
            id="missing-option",
        ),
        pytest.param(
            ("tune", "--image", IMAGE_URI, "--train", "s3://bucket/train/"),
            "the following arguments are required: --output",
            id="tune-missing-output",
        ),
        pytest.param(
            ("invoke", "--endpoint", "e"),
            "one of the arguments --body --file is required",
            id="missing-group",
        ),
        pytest.param(
            ("delete", "--name", "e", "--kep-model"),
            "unrecognized arguments: --kep-model",
            id="unknown-option",
        ),
    ],
)
def test_usage_errors_are_one_line_naming_the_option_and_exit_1(
    aws: FakeAws, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["aws", *args, "--region", REGION])

    out, err = capsys.readouterr()
    assert exited.value.code == 1
    (line,) = err.splitlines()
    assert line.startswith(f"error: {message}")
    assert "usage:" not in out + err
    assert not aws.requests


def test_train_without_output_says_it_is_needed_unless_local(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(*_TRAIN, "--role", ROLE_ARN)

    assert code == 1
    assert err.splitlines() == [
        "error: --output is required unless --local: the S3 prefix where SageMaker writes model.tar.gz."
    ]
    assert not aws.requests


def _help(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["aws", *args, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width


def test_help_shows_output_required_for_tune_and_unless_local_for_train(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tune, train, aws = _help(capsys, "tune"), _help(capsys, "train"), _help(capsys)

    tune_usage = tune.split(" options:")[0]
    assert "--output S3_URI" in tune_usage and "[--output S3_URI]" not in tune_usage
    assert "--output S3_URI S3 prefix for model.tar.gz and output.tar.gz (required)" in tune
    assert "--output S3_URI S3 prefix for model.tar.gz and output.tar.gz (required unless --local)" in train
    assert "AWS region (default: AWS_REGION, then AWS_DEFAULT_REGION, then the profile's region)" in train
    assert "COMMAND" in aws


def test_help_lists_the_aws_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "recsys", "aws", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0
    for command in ("push", "train", "tune", "deploy", "invoke", "batch", "delete"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), command


def test_make_push_runs_the_launcher_with_the_make_variables(aws: FakeAws, fake_docker: Path) -> None:
    env = dict(os.environ, MAKEFLAGS="")

    result = subprocess.run(
        # -o install: use this interpreter's environment as it is, never reinstall it here.
        ["make", "-s", "-o", "install", "push", f"VENV={sys.prefix}", "IMAGE=recsys:1.2",
         "REPOSITORY=recs-make", f"REGION={REGION}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    uri = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/recs-make:1.2"
    assert result.stdout.splitlines()[-1] == uri
    assert f"push {uri}" in (fake_docker / "calls").read_text().splitlines()
    assert aws.client("ecr").describe_repositories(repositoryNames=["recs-make"])["repositories"]


def test_the_log_reader_prefixes_each_instance_and_reads_only_new_lines(aws: FakeAws) -> None:
    import boto3

    from recsys.aws.jobs import TRAINING_LOG_GROUP, TrainingLogReader

    logs = boto3.Session(region_name=REGION).client("logs")
    logs.create_log_group(logGroupName=TRAINING_LOG_GROUP)
    streams = {host: f"job-1/{host}-1700000000" for host in ("algo-1", "algo-2")}
    for stream in streams.values():
        logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream)
    # Another job's stream whose name starts like this one's must not be read.
    logs.create_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName="job-10/algo-1-1700000000")

    def put(host: str, *lines: str) -> None:
        stream = streams.get(host, host)
        # CloudWatch drops events older than 14 days: stamp them now.
        now = int(time.time() * 1000)
        events = [{"timestamp": now + i, "message": line} for i, line in enumerate(lines)]
        logs.put_log_events(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream, logEvents=events)

    put("algo-1", "epoch=1 train_loss=5.1", "epoch=2 train_loss=4.9")
    put("algo-2", "rank 1 ready")
    put("job-10/algo-1-1700000000", "not this job")
    reader = TrainingLogReader(logs, "job-1")

    first = reader.read_new()
    put("algo-2", "rank 1 done")
    second = reader.read_new()

    assert first == [
        "[algo-1] epoch=1 train_loss=5.1",
        "[algo-1] epoch=2 train_loss=4.9",
        "[algo-2] rank 1 ready",
    ]
    assert second == ["[algo-2] rank 1 done"]
    assert reader.read_new() == []


def test_local_mode_refuses_spot_and_s3_channels_before_docker(recsys_aws: Run, tmp_path: Path) -> None:
    spot = recsys_aws("train", "--local", str(tmp_path / "job"), "--image", "recsys:latest",
                      "--train", str(tmp_path), "--spot", region=None)  # fmt: skip
    s3 = recsys_aws("train", "--local", str(tmp_path / "job"), "--image", "recsys:latest",
                    "--train", "s3://bucket/train/", region=None)  # fmt: skip

    assert spot[0] == 1
    assert "--spot has no meaning with --local" in spot[2]
    assert s3[0] == 1
    assert "with --local, channel 'train' must be a local directory; got s3://bucket/train/" in s3[2]
    assert not (tmp_path / "job").exists()
