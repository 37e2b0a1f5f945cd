"""Processing jobs through boto3: ``recsys aws prepare`` runs ``docker run IMAGE prepare ARGS``.

The raw logs' S3 prefix becomes the ``interactions`` input; each output (train, validation,
test, items, users, report, cold) is uploaded under the output prefix, named as the training job's
channels, so that ``recsys aws train`` takes them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.aws.common import Echo, aws_errors
from recsys.errors import UserError
from recsys.sagemaker.contract import DEFAULT_BASE_DIR, KNOWN_CHANNELS, ProcessingPaths
from recsys.sagemaker.process import ATTRIBUTE_INPUTS, INTERACTIONS_INPUT, output_names

# Where the container sees its inputs and outputs: the contract's paths under /opt/ml.
_CONTAINER = ProcessingPaths(Path(DEFAULT_BASE_DIR))


@dataclass(frozen=True)
class PrepareJobSpec:
    """One Processing job of the image's ``prepare`` command."""

    job_name: str
    image_uri: str
    role_arn: str
    interactions_s3_uri: str
    output_s3_uri: str
    arguments: Sequence[str] = ()  # the job's settings, as `recsys prepare` takes them
    attribute_s3_uris: Mapping[str, str] = field(default_factory=dict)  # items / users
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_seconds: int = 24 * 3600
    cold_users: bool = False

    @property
    def outputs(self) -> list[str]:
        return output_names(cold=self.cold_users, attributes=tuple(self.attribute_s3_uris))

    def output_uri(self, name: str) -> str:
        return f"{self.output_s3_uri.rstrip('/')}/{name}/"


def _input(name: str, uri: str, *, sharded: bool) -> dict[str, Any]:
    return {
        "InputName": name,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": str(_CONTAINER.input_dir(name)),
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            # Several instances split the raw logs by file; attribute tables go to every instance.
            "S3DataDistributionType": "ShardedByS3Key" if sharded else "FullyReplicated",
        },
    }


def build_create_processing_job_request(spec: PrepareJobSpec) -> dict[str, Any]:
    inputs = [_input(INTERACTIONS_INPUT, spec.interactions_s3_uri, sharded=spec.instance_count > 1)]
    inputs += [
        _input(name, spec.attribute_s3_uris[name], sharded=False)
        for name in ATTRIBUTE_INPUTS
        if name in spec.attribute_s3_uris
    ]
    outputs = [
        {
            "OutputName": name,
            "S3Output": {
                "S3Uri": spec.output_uri(name),
                "LocalPath": str(_CONTAINER.output_dir(name)),
                "S3UploadMode": "EndOfJob",
            },
        }
        for name in spec.outputs
    ]
    return {
        "ProcessingJobName": spec.job_name,
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {"Outputs": outputs},
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": spec.instance_count,
                "InstanceType": spec.instance_type,
                "VolumeSizeInGB": spec.volume_size_gb,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_runtime_seconds},
        "AppSpecification": {"ImageUri": spec.image_uri, "ContainerArguments": ["prepare", *spec.arguments]},
        "RoleArn": spec.role_arn,
    }


def start_prepare(session: Any, spec: PrepareJobSpec) -> str:
    with aws_errors(f"prepare {spec.job_name}"):
        session.client("sagemaker").create_processing_job(**build_create_processing_job_request(spec))
    return spec.job_name


def wait_for_prepare(
    session: Any, spec: PrepareJobSpec, echo: Echo, *, poll_seconds: int = 30
) -> dict[str, Any]:
    """Wait for the job; its ExitMessage (the container's ``output/message``) says why it failed."""
    from botocore.exceptions import WaiterError

    name = spec.job_name
    with aws_errors(f"prepare {name}"):
        sagemaker = session.client("sagemaker")
        with suppress(WaiterError):  # Failed also ends the waiter: the description says why
            sagemaker.get_waiter("processing_job_completed_or_stopped").wait(
                ProcessingJobName=name,
                WaiterConfig={
                    "Delay": poll_seconds,
                    "MaxAttempts": max(1, spec.max_runtime_seconds // max(poll_seconds, 1) + 10),
                },
            )
        job = sagemaker.describe_processing_job(ProcessingJobName=name)
    status = job["ProcessingJobStatus"]
    if status != "Completed":
        reason = job.get("ExitMessage") or job.get("FailureReason") or ""
        raise UserError(f"processing job {name} is {status}: {reason}".rstrip(": "))
    echo(f"processing job {name} completed; channels under {spec.output_s3_uri.rstrip('/')}/")
    return dict(job)


def next_training_command(spec: PrepareJobSpec) -> str:
    """The ``recsys aws train`` that reads this job's outputs."""
    # The outputs are named as the channels they feed: every channel a training job reads that
    # this job writes (train and validation, items and users when given), in the channels' order.
    channels = [name for name in KNOWN_CHANNELS if name in spec.outputs]
    flags = " ".join(f"--{name} {spec.output_uri(name)}" for name in channels)
    return f"recsys aws train --image {spec.image_uri} {flags} --output {spec.output_s3_uri.rstrip('/')}/jobs"
