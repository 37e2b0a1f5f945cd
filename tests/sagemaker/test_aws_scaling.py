"""``recsys aws deploy`` autoscaled, serverless or multi-model, and ``invoke --target-model``,
against moto's SageMaker and Application Auto Scaling."""

from __future__ import annotations

import pytest

from tests.sagemaker.conftest import IMAGE_URI, ROLE_ARN, FakeAws, Run

# The launcher against a moto_server subprocess: left out of `make test-fast`.
pytestmark = pytest.mark.slow

MODEL = "s3://bucket/jobs/j/output/model.tar.gz"
RESOURCE = "endpoint/recs/variant/AllTraffic"


def _deploy(*extra: str) -> list[str]:
    return [
        "deploy",
        "--name",
        "recs",
        "--model-data",
        MODEL,
        "--image",
        IMAGE_URI,
        "--role",
        ROLE_ARN,
        *extra,
    ]


def test_an_autoscaled_endpoint_tracks_invocations_per_instance_and_delete_deregisters_it(
    aws: FakeAws, recsys_aws: Run
) -> None:
    code, out, err = recsys_aws(
        *_deploy("--min-instances", "2", "--max-instances", "6", "--target-invocations", "750")
    )

    assert code == 0, err
    assert aws.sent("CreateEndpointConfig")[0]["ProductionVariants"][0]["InitialInstanceCount"] == 2
    scaling = aws.client("application-autoscaling")
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["ScalableDimension"]) == (
        RESOURCE,
        "sagemaker:variant:DesiredInstanceCount",
    )
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    (policy,) = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 750.0
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
    }
    assert "autoscaling recs: 2 to 6 instances, target 750 invocations per instance per minute" in out

    code, out, err = recsys_aws("delete", "--name", "recs")
    assert code == 0, err
    assert "deregistered autoscaling of recs" in out
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--min-instances", "3"], "both --min-instances and --max-instances"),
        (["--min-instances", "4", "--max-instances", "2"], "--min-instances (4)"),
        (["--min-instances", "1", "--max-instances", "2", "--no-wait"], "--no-wait"),
        (
            ["--min-instances", "1", "--max-instances", "2", "--target-invocations", "0"],
            "--target-invocations",
        ),
        (["--serverless", "1500"], "1024, 2048"),
        (["--serverless", "2048", "--min-instances", "1", "--max-instances", "2"], "scales itself"),
    ],
)
def test_bad_scaling_options_are_refused_before_any_request(
    aws: FakeAws, recsys_aws: Run, extra: list[str], named: str
) -> None:
    code, _, err = recsys_aws(*_deploy(*extra))
    assert code == 1 and named in err, err
    assert aws.sent("CreateModel") == []


def test_a_serverless_endpoint_has_a_memory_size_and_no_instances(aws: FakeAws, recsys_aws: Run) -> None:
    code, out, err = recsys_aws(*_deploy("--serverless", "4096", "--max-concurrency", "10"))

    assert code == 0, err
    assert aws.sent("CreateEndpointConfig") == [
        {
            "EndpointConfigName": "recs",
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "recs",
                    "ServerlessConfig": {"MemorySizeInMB": 4096, "MaxConcurrency": 10},
                }
            ],
        }
    ]
    assert "bills per request and compute-second" in out


def test_a_multi_model_endpoint_points_at_a_prefix_and_invoke_names_the_target(
    aws: FakeAws, recsys_aws: Run
) -> None:
    code, _, err = recsys_aws(
        "deploy",
        "--name",
        "recs",
        "--multi-model",
        "s3://bucket/markets",
        "--image",
        IMAGE_URI,
        "--role",
        ROLE_ARN,
    )
    assert code == 0, err
    assert aws.sent("CreateModel")[0]["PrimaryContainer"] == {
        "Image": IMAGE_URI,
        "ModelDataUrl": "s3://bucket/markets/",
        "Mode": "MultiModel",
        "Environment": {"SAGEMAKER_MULTI_MODEL": "true"},
    }

    aws.queue_endpoint_results([{"Body": '{"predictions": []}', "ContentType": "application/json"}])
    code, _, err = recsys_aws("invoke", "--endpoint", "recs", "--target-model", "fr.tar.gz", "--body", "{}")
    assert code == 0, err
    assert aws.sent("InvokeEndpoint")[0]["TargetModel"] == "fr.tar.gz"
