"""The launcher's pure parts: request builders, tuning ranges, argument parsing, role resolution."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime

import pytest

from recsys.aws.cli import (
    duration,
    parse_range,
    resolve_region,
    resolve_role,
    s3_uri,
)
from recsys.aws.common import timestamped_name
from recsys.aws.hosting import (
    EndpointSpec,
    ModelSpec,
    TransformSpec,
    build_create_endpoint_config_request,
    build_create_endpoint_request,
    build_create_model_request,
    build_create_transform_job_request,
    is_gpu_instance_type,
)
from recsys.aws.jobs import DEFAULT_TUNING_RANGES, ParameterRange, validate_hyperparameters, validate_ranges
from recsys.config import TrainConfig
from recsys.errors import UserError
from recsys.options import key_value

ROLE = "arn:aws:iam::123456789012:role/SageMakerRecsys"


@pytest.mark.parametrize(
    ("instance_type", "gpu"),
    [
        ("ml.g4dn.xlarge", True),
        ("ml.g5.2xlarge", True),
        ("ml.g6e.12xlarge", True),
        ("ml.p4d.24xlarge", True),
        ("ml.p5.48xlarge", True),
        ("ml.m5.large", False),
        ("ml.c7i.xlarge", False),
        ("ml.inf2.xlarge", False),
    ],
)
def test_gpu_instance_types_are_the_g_and_p_families(instance_type: str, gpu: bool) -> None:
    assert is_gpu_instance_type(instance_type) is gpu


def test_a_gpu_endpoint_config_pins_the_cuda_13_ami_and_the_startup_timeout() -> None:
    request = build_create_endpoint_config_request(
        EndpointSpec(
            "recs", instance_type="ml.g5.xlarge", instance_count=2, startup_health_check_seconds=900
        ),
        "recs-model",
    )

    assert request == {
        "EndpointConfigName": "recs",
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": "recs-model",
                "InstanceType": "ml.g5.xlarge",
                "InitialInstanceCount": 2,
                "InitialVariantWeight": 1.0,
                "ContainerStartupHealthCheckTimeoutInSeconds": 900,
                "InferenceAmiVersion": "al2023-ami-sagemaker-inference-gpu-4-1",
            }
        ],
    }


def test_a_cpu_endpoint_config_names_no_ami_unless_asked() -> None:
    cpu = build_create_endpoint_config_request(EndpointSpec("recs", instance_type="ml.c5.xlarge"), "recs")
    pinned = build_create_endpoint_config_request(
        EndpointSpec(
            "recs",
            instance_type="ml.g4dn.xlarge",
            inference_ami_version="al2-ami-sagemaker-inference-gpu-3-1",
        ),
        "recs",
    )

    assert "InferenceAmiVersion" not in cpu["ProductionVariants"][0]
    assert cpu["ProductionVariants"][0]["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
    assert pinned["ProductionVariants"][0]["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-3-1"


def test_model_and_endpoint_requests() -> None:
    model = ModelSpec(
        "recs", "img:1", "s3://b/job/output/model.tar.gz", ROLE, {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}
    )

    assert build_create_model_request(model) == {
        "ModelName": "recs",
        "ExecutionRoleArn": ROLE,
        "PrimaryContainer": {
            "Image": "img:1",
            "ModelDataUrl": "s3://b/job/output/model.tar.gz",
            "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
        },
    }
    assert (
        "Environment"
        not in build_create_model_request(dataclasses.replace(model, environment={}))["PrimaryContainer"]
    )
    assert build_create_endpoint_request(EndpointSpec("recs")) == {
        "EndpointName": "recs",
        "EndpointConfigName": "recs",
    }


def test_a_transform_job_splits_json_lines_and_assembles_them_line_for_line() -> None:
    spec = TransformSpec(
        "job-1", "recs", "s3://b/in/", "s3://b/out/", instance_type="ml.c5.2xlarge", instance_count=3
    )

    assert build_create_transform_job_request(spec) == {
        "TransformJobName": "job-1",
        "ModelName": "recs",
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}},
            "ContentType": "application/jsonlines",
            "CompressionType": "None",
            "SplitType": "Line",
        },
        "TransformOutput": {
            "S3OutputPath": "s3://b/out/",
            "Accept": "application/jsonlines",
            "AssembleWith": "Line",
        },
        "TransformResources": {"InstanceType": "ml.c5.2xlarge", "InstanceCount": 3},
    }


def test_a_csv_single_record_transform_job_can_join_its_input() -> None:
    request = build_create_transform_job_request(
        TransformSpec(
            "j", "m", "s3://b/in", "s3://b/out", content_type="text/csv", single_record=True, join_input=True
        )
    )

    assert request["BatchStrategy"] == "SingleRecord"
    assert request["TransformInput"]["ContentType"] == request["TransformOutput"]["Accept"] == "text/csv"
    assert request["DataProcessing"] == {"JoinSource": "Input"}


def test_timestamped_names_fit_sagemaker_limit() -> None:
    now = datetime(2026, 11, 27, 9, 5, 1, tzinfo=UTC)

    assert timestamped_name("recs", now) == "recs-20261127-090501"
    long = timestamped_name("x" * 80, now)
    assert len(long) == 63
    assert long.endswith("-20261127-090501")


# -- tuning ranges ------------------------------------------------------------------------------------


def test_parse_range_takes_the_kind_from_the_hyperparameter_type() -> None:
    assert parse_range("learning_rate=0.0003:0.03:log") == ParameterRange(
        "learning_rate", "continuous", low=0.0003, high=0.03, scaling="Logarithmic"
    )
    assert parse_range("batch_size=256:4096") == ParameterRange("batch_size", "integer", low=256, high=4096)
    assert parse_range("dropout=0:0.5:linear").scaling == "Linear"
    assert parse_range("embedding_dim=32,64,128") == ParameterRange(
        "embedding_dim", "categorical", values=("32", "64", "128")
    )
    assert parse_range("loss = softmax, sampled_softmax").values == ("softmax", "sampled_softmax")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learning_rat=0.001:0.1", "did you mean 'learning_rate'"),
        ("model=1:3", "'model' is not numeric"),
        ("learning_rate=0.01", "at least two"),
        ("learning_rate=a:b", "must be numbers"),
        ("learning_rate=0.1:1:cubic", "LOW:HIGH[:log|:linear]"),
        ("learning_rate", "NAME=LOW:HIGH"),
    ],
)
def test_parse_range_rejects_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("|", r"\|")):
        parse_range(text)


def test_the_default_ranges_are_valid_and_name_real_hyperparameters() -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}

    validate_ranges(DEFAULT_TUNING_RANGES, {})
    assert {r.name for r in DEFAULT_TUNING_RANGES} <= names
    assert {r.name for r in DEFAULT_TUNING_RANGES} >= {"learning_rate", "embedding_dim"}


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ((ParameterRange("learning_rate", "continuous", 0.0, 0.1, scaling="Logarithmic"),), "LOW > 0"),
        ((ParameterRange("learning_rate", "continuous", 0.1, 0.01),), "LOW < HIGH"),
        ((ParameterRange("dropout", "continuous", 0.0, 2.0),), "hyperparameter 'dropout' must be <= 0.95"),
        ((ParameterRange("loss", "categorical", values=("softmax", "hinge")),), "'loss' must be one of"),
        ((ParameterRange("embedding_dim", "categorical", values=("8",)),) * 2, "given twice"),
        ((), "at least one"),
    ],
)
def test_validate_ranges_rejects_what_training_would(
    ranges: tuple[ParameterRange, ...], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        validate_ranges(ranges, {})


def test_static_hyperparameters_are_checked_with_each_range() -> None:
    # model=gmf with loss=bce is valid alone; the range values must be valid beside it.
    validate_ranges((ParameterRange("loss", "categorical", values=("bce", "softmax")),), {"model": "gmf"})
    with pytest.raises(UserError, match="unknown hyperparameter"):
        validate_ranges((ParameterRange("embedding_dim", "categorical", values=("8", "16")),), {"epoch": "3"})


def test_hyperparameters_are_validated_as_the_container_will() -> None:
    validate_hyperparameters({"epochs": "3", "mlp_layers": "[64,32]", "pretrain": "true"})
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        validate_hyperparameters({"learning_rat": "0.1"})
    with pytest.raises(UserError, match="'epochs' must be an integer"):
        validate_hyperparameters({"epochs": "three"})


# -- argument types and the role -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600), ("90m", 5400), ("2h", 7200), ("1.5h", 5400), ("1d", 86400)]
)
def test_durations(text: str, seconds: int) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5", "2w", "soon", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_key_values_keep_the_raw_string() -> None:
    assert key_value("mlp_layers=[128,64]") == ("mlp_layers", "[128,64]")
    assert key_value("note=a=b") == ("note", "a=b")
    with pytest.raises(argparse.ArgumentTypeError):
        key_value("epochs")


@pytest.mark.parametrize("text", ["s3://bucket/prefix/", "s3://my.bucket-1", "s3://bucket/a/b.tar.gz"])
def test_s3_uris(text: str) -> None:
    assert s3_uri(text) == text


@pytest.mark.parametrize(
    "text", ["bucket/prefix", "s3:/bucket", "https://bucket.s3.amazonaws.com/x", "s3://B/x"]
)
def test_not_s3_uris(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        s3_uri(text)


def test_the_role_comes_from_the_flag_then_the_environment_then_the_fallback() -> None:
    env_role = "arn:aws:iam::210987654321:role/service-role/FromEnv"
    china = "arn:aws-cn:iam::123456789012:role/Recsys"

    assert resolve_role(argparse.Namespace(role=ROLE), {"RECSYS_SAGEMAKER_ROLE": env_role}) == ROLE
    assert resolve_role(argparse.Namespace(role=None), {"RECSYS_SAGEMAKER_ROLE": env_role}) == env_role
    assert resolve_role(argparse.Namespace(role=None), {}, fallback=china) == china


def test_a_missing_role_says_how_to_pass_one_and_what_it_needs() -> None:
    with pytest.raises(UserError) as missing:
        resolve_role(argparse.Namespace(role=None), {})

    message = str(missing.value)
    assert "--role" in message
    assert "RECSYS_SAGEMAKER_ROLE" in message
    assert "sagemaker.amazonaws.com" in message
    assert "s3:GetObject" in message


@pytest.mark.parametrize(
    ("flag", "environ", "region"),
    [
        ("sa-east-1", {"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "us-east-2"}, "sa-east-1"),
        (None, {"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "us-east-2"}, "eu-central-1"),
        (None, {"AWS_REGION": "", "AWS_DEFAULT_REGION": "us-east-2"}, "us-east-2"),
        (None, {"AWS_REGION": " eu-central-1 "}, "eu-central-1"),
        # None: boto3 then reads the profile's `region` from the config file.
        (None, {"AWS_PROFILE": "ci"}, None),
        ("", {}, None),
    ],
)
def test_the_region_comes_from_the_flag_then_aws_region_then_aws_default_region(
    flag: str | None, environ: dict[str, str], region: str | None
) -> None:
    assert resolve_region(flag, environ) == region


@pytest.mark.parametrize(
    "role", ["SageMakerRecsys", "arn:aws:iam::123:role/x", "arn:aws:iam::123456789012:user/me"]
)
def test_a_role_that_is_not_a_role_arn_is_refused(role: str) -> None:
    with pytest.raises(UserError, match="must be an IAM role ARN"):
        resolve_role(argparse.Namespace(role=role), {})
