"""Hosting and Batch Transform through boto3: models, endpoint configs, endpoints, invocations and
clean-up, with requests built by pure ``build_*_request`` functions that tests compare with the API's
exact shapes."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from recsys.aws.common import Echo, aws_errors
from recsys.errors import UserError
from recsys.serving.codecs import MEDIA_TYPES

# The endpoint's own media types, for Batch Transform, invoke and the public API's examples.
JSON = MEDIA_TYPES["json"]
JSON_LINES = MEDIA_TYPES["jsonlines"]
CSV = MEDIA_TYPES["csv"]


# PyPI's torch 2.13 is built for CUDA 13, which needs NVIDIA driver 580: the only inference AMI
# that has it. SageMaker's default GPU AMIs (driver 470/535/550) would leave torch without CUDA.
DEFAULT_GPU_INFERENCE_AMI = "al2023-ami-sagemaker-inference-gpu-4-1"


# `recsys serve` answers /ping in about 2 s on the bundled model; a million-item artifact loads in
# tens of seconds, and the GPU image is pulled before the clock starts. Ten minutes leaves room.
DEFAULT_STARTUP_HEALTH_CHECK_SECONDS = 600


@dataclass(frozen=True)
class ModelSpec:
    """A SageMaker model: the image plus a ``model.tar.gz`` of the artifact."""

    name: str
    image_uri: str
    model_data_url: str
    role_arn: str
    environment: Mapping[str, str] = field(default_factory=dict)
    # A multi-model endpoint: ``model_data_url`` is an S3 prefix of model.tar.gz files, each
    # loaded on its first request that names it (TargetModel).
    multi_model: bool = False


# Serverless inference's memory sizes (MB), and what it cannot do (README: "Serverless").
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 200
# Application Auto Scaling's names for an endpoint variant's instance count.
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
INVOCATIONS_METRIC = "SageMakerVariantInvocationsPerInstance"
# Per instance per minute. Measured on a 2-core machine the server answers ~4,000 plain requests a
# second at 1,682 items; 1,000 a minute leaves room for larger catalogues and fresh events.
DEFAULT_TARGET_INVOCATIONS = 1000.0
VARIANT = "AllTraffic"


@dataclass(frozen=True)
class AutoscalingSpec:
    """Target tracking on invocations per instance (per minute), between two instance counts."""

    min_instances: int
    max_instances: int
    target_invocations: float
    scale_in_cooldown_seconds: int = 300
    scale_out_cooldown_seconds: int = 60


@dataclass(frozen=True)
class ServerlessSpec:
    memory_mb: int
    max_concurrency: int = 20


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    startup_health_check_seconds: int = DEFAULT_STARTUP_HEALTH_CHECK_SECONDS
    inference_ami_version: str | None = None  # None: DEFAULT_GPU_INFERENCE_AMI on GPU types
    autoscaling: AutoscalingSpec | None = None
    serverless: ServerlessSpec | None = None

    def __post_init__(self) -> None:
        if self.serverless is not None:
            if self.autoscaling is not None:
                raise UserError("a serverless endpoint scales itself: leave out --min/--max-instances.")
            if self.serverless.memory_mb not in SERVERLESS_MEMORY_MB:
                sizes = ", ".join(map(str, SERVERLESS_MEMORY_MB))
                raise UserError(
                    f"--serverless takes a memory size in MB, one of {sizes}; "
                    f"got {self.serverless.memory_mb}."
                )
            if not 1 <= self.serverless.max_concurrency <= SERVERLESS_MAX_CONCURRENCY:
                raise UserError(f"--max-concurrency must be between 1 and {SERVERLESS_MAX_CONCURRENCY}.")
        scaling = self.autoscaling
        if scaling is not None:
            if not 1 <= scaling.min_instances <= scaling.max_instances:
                raise UserError(
                    f"--min-instances ({scaling.min_instances}) must be at least 1 and at most "
                    f"--max-instances ({scaling.max_instances})."
                )
            if not scaling.min_instances <= self.instance_count <= scaling.max_instances:
                raise UserError(
                    f"--instance-count ({self.instance_count}) must lie between --min-instances and "
                    "--max-instances."
                )
            if not scaling.target_invocations > 0:
                raise UserError(
                    "--target-invocations must be positive (invocations per instance per minute)."
                )


@dataclass(frozen=True)
class TransformSpec:
    job_name: str
    model_name: str
    input_s3_uri: str
    output_s3_uri: str
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    content_type: str = JSON_LINES
    # MultiRecord: the server scores a mini-batch of lines in one pass and answers line for line.
    single_record: bool = False
    max_payload_mb: int = 6
    join_input: bool = False


def is_gpu_instance_type(instance_type: str) -> bool:
    """ml.g* and ml.p* carry NVIDIA GPUs (ml.g4dn, ml.g5, ml.g6, ml.p4d, ml.p5, ...)."""
    return re.match(r"ml\.[gp]\d", instance_type) is not None


def inference_ami_version(endpoint: EndpointSpec) -> str | None:
    if endpoint.inference_ami_version is not None:
        return endpoint.inference_ami_version
    return DEFAULT_GPU_INFERENCE_AMI if is_gpu_instance_type(endpoint.instance_type) else None


def build_create_model_request(model: ModelSpec) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": model.image_uri, "ModelDataUrl": model.model_data_url}
    if model.multi_model:
        container["Mode"] = "MultiModel"
    if model.environment:
        container["Environment"] = dict(model.environment)
    return {
        "ModelName": model.name,
        "ExecutionRoleArn": model.role_arn,
        "PrimaryContainer": container,
    }


def build_create_endpoint_config_request(endpoint: EndpointSpec, model_name: str) -> dict[str, Any]:
    if endpoint.serverless is not None:
        serverless = {
            "VariantName": VARIANT,
            "ModelName": model_name,
            "ServerlessConfig": {
                "MemorySizeInMB": endpoint.serverless.memory_mb,
                "MaxConcurrency": endpoint.serverless.max_concurrency,
            },
        }
        return {"EndpointConfigName": endpoint.name, "ProductionVariants": [serverless]}
    variant: dict[str, Any] = {
        "VariantName": VARIANT,
        "ModelName": model_name,
        "InstanceType": endpoint.instance_type,
        "InitialInstanceCount": endpoint.instance_count,
        "InitialVariantWeight": 1.0,
        "ContainerStartupHealthCheckTimeoutInSeconds": endpoint.startup_health_check_seconds,
    }
    ami = inference_ami_version(endpoint)
    if ami is not None:
        variant["InferenceAmiVersion"] = ami
    return {"EndpointConfigName": endpoint.name, "ProductionVariants": [variant]}


def build_create_endpoint_request(endpoint: EndpointSpec) -> dict[str, Any]:
    return {"EndpointName": endpoint.name, "EndpointConfigName": endpoint.name}


def scaling_resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{VARIANT}"


def build_register_scalable_target_request(endpoint: EndpointSpec) -> dict[str, Any]:
    assert endpoint.autoscaling is not None
    return {
        "ServiceNamespace": "sagemaker",
        "ResourceId": scaling_resource_id(endpoint.name),
        "ScalableDimension": SCALABLE_DIMENSION,
        "MinCapacity": endpoint.autoscaling.min_instances,
        "MaxCapacity": endpoint.autoscaling.max_instances,
    }


def build_put_scaling_policy_request(endpoint: EndpointSpec) -> dict[str, Any]:
    scaling = endpoint.autoscaling
    assert scaling is not None
    return {
        "PolicyName": f"{endpoint.name}-invocations-per-instance",
        "ServiceNamespace": "sagemaker",
        "ResourceId": scaling_resource_id(endpoint.name),
        "ScalableDimension": SCALABLE_DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(scaling.target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": INVOCATIONS_METRIC},
            "ScaleInCooldown": scaling.scale_in_cooldown_seconds,
            "ScaleOutCooldown": scaling.scale_out_cooldown_seconds,
        },
    }


def build_create_transform_job_request(spec: TransformSpec) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TransformJobName": spec.job_name,
        "ModelName": spec.model_name,
        "BatchStrategy": "SingleRecord" if spec.single_record else "MultiRecord",
        "MaxPayloadInMB": spec.max_payload_mb,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": spec.input_s3_uri}},
            "ContentType": spec.content_type,
            "CompressionType": "None",
            "SplitType": "Line",
        },
        "TransformOutput": {
            "S3OutputPath": spec.output_s3_uri,
            "Accept": spec.content_type,
            "AssembleWith": "Line",
        },
        "TransformResources": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count},
    }
    if spec.join_input:
        request["DataProcessing"] = {"JoinSource": "Input"}
    return request


def model_source_from_training_job(session: Any, job_name: str) -> tuple[str, str, str]:
    """``(model_data_url, image_uri, role_arn)`` of a completed training job."""
    with aws_errors(f"training job {job_name}"):
        job = session.client("sagemaker").describe_training_job(TrainingJobName=job_name)
    if job["TrainingJobStatus"] != "Completed":
        raise UserError(
            f"training job {job_name} is {job['TrainingJobStatus']}, not Completed: no model yet."
        )
    return (
        str(job["ModelArtifacts"]["S3ModelArtifacts"]),
        str(job["AlgorithmSpecification"]["TrainingImage"]),
        str(job["RoleArn"]),
    )


def deploy(
    session: Any,
    model: ModelSpec,
    endpoint: EndpointSpec,
    echo: Echo,
    *,
    wait: bool = True,
    poll_seconds: int = 30,
) -> None:
    """Model, endpoint config and endpoint, all named ``endpoint.name``; waits until InService."""
    with aws_errors(f"deploy {endpoint.name}"):
        sagemaker = session.client("sagemaker")
        sagemaker.create_model(**build_create_model_request(model))
        echo(f"created model {model.name}")
        try:
            sagemaker.create_endpoint_config(**build_create_endpoint_config_request(endpoint, model.name))
            echo(f"created endpoint config {endpoint.name}")
            sagemaker.create_endpoint(**build_create_endpoint_request(endpoint))
        except Exception:
            echo(f"clean up what was created: recsys aws delete --name {endpoint.name}")
            raise
        if endpoint.serverless is not None:
            echo(
                f"creating serverless endpoint {endpoint.name} ({endpoint.serverless.memory_mb} MB, up to "
                f"{endpoint.serverless.max_concurrency} concurrent requests); it bills per request and "
                "compute-second, nothing while idle"
            )
        else:
            echo(
                f"creating endpoint {endpoint.name} ({endpoint.instance_count} x {endpoint.instance_type}); "
                f"it bills per instance-hour until `recsys aws delete --name {endpoint.name}`"
            )
        if not wait:
            return
        from botocore.exceptions import WaiterError

        try:
            sagemaker.get_waiter("endpoint_in_service").wait(
                EndpointName=endpoint.name,
                # Creation takes 5 to 15 minutes; an hour covers a slow GPU image pull.
                WaiterConfig={"Delay": poll_seconds, "MaxAttempts": max(1, 3600 // max(poll_seconds, 1))},
            )
        except WaiterError as exc:
            described = sagemaker.describe_endpoint(EndpointName=endpoint.name)
            raise UserError(
                f"endpoint {endpoint.name} is {described['EndpointStatus']}: "
                f"{described.get('FailureReason', exc)}. Delete it with `recsys aws delete --name "
                f"{endpoint.name}` (a failed endpoint bills nothing, its model and config remain)."
            ) from exc
    echo(f"endpoint {endpoint.name} is InService")
    if endpoint.autoscaling is not None:
        scale(session, endpoint, echo)


def scale(session: Any, endpoint: EndpointSpec, echo: Echo) -> None:
    """Register the InService endpoint's variant with Application Auto Scaling and track a target
    of invocations per instance."""
    scaling = endpoint.autoscaling
    assert scaling is not None
    with aws_errors(f"autoscaling {endpoint.name}"):
        autoscaling = session.client("application-autoscaling")
        autoscaling.register_scalable_target(**build_register_scalable_target_request(endpoint))
        autoscaling.put_scaling_policy(**build_put_scaling_policy_request(endpoint))
    echo(
        f"autoscaling {endpoint.name}: {scaling.min_instances} to {scaling.max_instances} instances, "
        f"target {scaling.target_invocations:g} invocations per instance per minute"
    )


def invoke(
    session: Any,
    endpoint_name: str,
    body: bytes,
    *,
    content_type: str,
    accept: str,
    target_model: str | None = None,
) -> bytes:
    """One request to the endpoint's /invocations (on a multi-model endpoint, to ``target_model``,
    a model.tar.gz under its prefix); the container's 4xx comes back as an error."""
    with aws_errors(f"invoke {endpoint_name}"):
        runtime = session.client("sagemaker-runtime")
        target = {"TargetModel": target_model} if target_model is not None else {}
        try:
            response = runtime.invoke_endpoint(
                EndpointName=endpoint_name, ContentType=content_type, Accept=accept, Body=body, **target
            )
        except runtime.exceptions.ModelError as exc:
            status = exc.response.get("OriginalStatusCode", "an error")
            message = exc.response.get("OriginalMessage") or exc.response["Error"].get("Message", "")
            raise UserError(f"the endpoint answered {status}: {message}") from exc
    return bytes(response["Body"].read())


def start_transform(session: Any, spec: TransformSpec, echo: Echo, *, model: ModelSpec | None = None) -> None:
    """A Batch Transform job over ``spec.input_s3_uri`` (one request per line); creates the model first
    when ``model`` is given."""
    with aws_errors(f"batch {spec.job_name}"):
        sagemaker = session.client("sagemaker")
        if model is not None:
            sagemaker.create_model(**build_create_model_request(model))
            echo(f"created model {model.name}")
        sagemaker.create_transform_job(**build_create_transform_job_request(spec))
    echo(f"created transform job {spec.job_name} ({spec.instance_count} x {spec.instance_type})")


def wait_for_transform(session: Any, job_name: str, echo: Echo, *, poll_seconds: int = 30) -> dict[str, Any]:
    from botocore.exceptions import WaiterError

    with aws_errors(f"batch {job_name}"):
        sagemaker = session.client("sagemaker")
        # A Failed job also ends the waiter (as an error): the description below says why.
        with suppress(WaiterError):
            sagemaker.get_waiter("transform_job_completed_or_stopped").wait(
                TransformJobName=job_name,
                WaiterConfig={"Delay": poll_seconds, "MaxAttempts": max(1, 6 * 3600 // max(poll_seconds, 1))},
            )
        job = sagemaker.describe_transform_job(TransformJobName=job_name)
    if job["TransformJobStatus"] != "Completed":
        raise UserError(
            f"transform job {job_name} is {job['TransformJobStatus']}: {job.get('FailureReason', '')}".rstrip(
                ": "
            )
        )
    echo(f"transform job {job_name} completed: {job['TransformOutput']['S3OutputPath']}")
    return dict(job)


def _is_missing(exc: Any) -> bool:
    error = exc.response.get("Error", {})
    return bool(
        error.get("Code") in ("ValidationException", "ResourceNotFound")
        and "could not find" in str(error.get("Message", "")).lower()
    )


def delete_endpoint_resources(session: Any, name: str, echo: Echo, *, keep_model: bool = False) -> None:
    """Delete the endpoint, endpoint config and model named ``name``; a missing one is reported, not
    an error, so that a half-finished deploy can always be cleaned up."""
    from botocore.exceptions import ClientError

    with aws_errors(f"delete {name}"):
        sagemaker = session.client("sagemaker")
        autoscaling = session.client("application-autoscaling")
        # A scalable target outlives its endpoint unless removed: it would scale a later endpoint
        # of the same name. None registered is the common case, not an error.
        try:
            registered = autoscaling.describe_scalable_targets(
                ServiceNamespace="sagemaker",
                ResourceIds=[scaling_resource_id(name)],
                ScalableDimension=SCALABLE_DIMENSION,
            )["ScalableTargets"]
        except ClientError as exc:  # no application-autoscaling permissions: nothing this tool made
            echo(f"autoscaling of {name}: not checked ({exc.response['Error'].get('Code', 'error')})")
            registered = []
        if registered:
            autoscaling.deregister_scalable_target(
                ServiceNamespace="sagemaker",
                ResourceId=scaling_resource_id(name),
                ScalableDimension=SCALABLE_DIMENSION,
            )
            echo(f"deregistered autoscaling of {name}")
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("endpoint", lambda: sagemaker.delete_endpoint(EndpointName=name)),
            ("endpoint config", lambda: sagemaker.delete_endpoint_config(EndpointConfigName=name)),
        ]
        if not keep_model:
            steps.append(("model", lambda: sagemaker.delete_model(ModelName=name)))
        for kind, call in steps:
            try:
                call()
            except ClientError as exc:
                if not _is_missing(exc):
                    raise
                echo(f"{kind} {name}: not found (already deleted?)")
            else:
                echo(f"deleted {kind} {name}")
