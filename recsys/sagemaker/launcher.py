"""The AWS launcher behind ``recsys aws``: push the image, train, tune, deploy, invoke, batch, delete.

Everything runs against one ``boto3.Session`` that the CLI edge resolves. Training and tuning go
through the SageMaker SDK v3 (``ModelTrainer`` with the image alone, so SageMaker runs
``docker run IMAGE train``; ``HyperparameterTuner``). Hosting, Batch Transform and clean-up call
boto3 directly, with requests built by pure ``build_*_request`` functions that tests compare with
the API's exact shapes. boto3 and the SDK are imported inside functions, so ``recsys --help`` and
the serving image (which does not install them) never import them.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from recsys.config import resolve_train_config
from recsys.errors import UserError
from recsys.sagemaker.contract import (
    DEFAULT_BASE_DIR,
    KNOWN_CHANNELS,
    ContainerPaths,
    decode_hyperparameter,
)
from recsys.sagemaker.metric_definitions import METRIC_DEFINITIONS, TUNING_OBJECTIVE

Echo = Callable[[str], None]
Sleep = Callable[[float], None]

# Where SageMaker syncs CheckpointConfig.S3Uri inside the container: the contract's checkpoint dir.
CHECKPOINT_LOCAL_PATH = str(ContainerPaths(Path(DEFAULT_BASE_DIR)).checkpoint_dir)
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL_JOB_STATES = ("Completed", "Failed", "Stopped")
JSON_LINES = "application/jsonlines"
CSV = "text/csv"
# PyPI's torch 2.13 is built for CUDA 13, which needs NVIDIA driver 580: the only inference AMI
# that has it. SageMaker's default GPU AMIs (driver 470/535/550) would leave torch without CUDA.
DEFAULT_GPU_INFERENCE_AMI = "al2023-ami-sagemaker-inference-gpu-4-1"
# `recsys serve` answers /ping in about 2 s on the bundled model; a million-item artifact loads in
# tens of seconds, and the GPU image is pulled before the clock starts. Ten minutes leaves room.
DEFAULT_STARTUP_HEALTH_CHECK_SECONDS = 600
ROLE_PERMISSIONS_HINT = (
    "The role must trust sagemaker.amazonaws.com and allow s3:GetObject, s3:PutObject and "
    "s3:ListBucket on your bucket, ecr:GetAuthorizationToken, ecr:BatchGetImage and "
    "ecr:GetDownloadUrlForLayer on the repository, and logs:CreateLogStream, logs:PutLogEvents "
    "(README: 'IAM permissions')."
)


# -- what a command asks for, resolved at the CLI edge ----------------------------------------------


@dataclass(frozen=True)
class SpotConfig:
    """Managed spot training: how long to wait for capacity, and where checkpoints survive it."""

    max_wait_seconds: int
    checkpoint_s3_uri: str | None  # None: no checkpoint sync (tuning jobs, see start_tuning)


@dataclass(frozen=True)
class TrainingSpec:
    """One training job of the image: channels, hyperparameters (strings, as SageMaker passes
    them), compute, stopping condition and spot settings."""

    image_uri: str
    role_arn: str
    channels: Mapping[str, str]  # channel name -> S3 prefix (or a local directory in local mode)
    output_s3_uri: str | None  # None only in local mode
    hyperparameters: Mapping[str, str] = field(default_factory=dict)
    instance_type: str = "ml.g5.xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_run_seconds: int = 24 * 3600
    spot: SpotConfig | None = None
    base_job_name: str = "recsys"


ScalingType = Literal["Auto", "Linear", "Logarithmic"]


@dataclass(frozen=True)
class ParameterRange:
    """One tunable hyperparameter: a numeric interval or a list of categorical values."""

    name: str
    kind: Literal["continuous", "integer", "categorical"]
    low: float = 0.0  # numeric kinds only
    high: float = 0.0
    values: tuple[str, ...] = ()  # categorical only
    scaling: ScalingType = "Auto"


@dataclass(frozen=True)
class TuningSpec:
    training: TrainingSpec
    ranges: tuple[ParameterRange, ...]
    max_jobs: int = 20
    max_parallel_jobs: int = 2
    strategy: Literal["Bayesian", "Random", "Hyperband", "Grid"] = "Bayesian"
    early_stopping: bool = False
    base_job_name: str = "recsys-tune"


# The ranges `recsys aws tune` searches when none is given: the knobs that moved validation NDCG
# in the README's ablation, around the defaults.
DEFAULT_TUNING_RANGES: tuple[ParameterRange, ...] = (
    ParameterRange("learning_rate", "continuous", 0.0003, 0.03, scaling="Logarithmic"),
    ParameterRange("weight_decay", "continuous", 1e-6, 0.1, scaling="Logarithmic"),
    ParameterRange("embedding_dim", "categorical", values=("32", "64", "128")),
    ParameterRange("batch_size", "categorical", values=("512", "1024", "2048")),
    ParameterRange("user_id_dropout", "continuous", 0.0, 0.5, scaling="Linear"),
)


@dataclass(frozen=True)
class ModelSpec:
    """A SageMaker model: the image plus a ``model.tar.gz`` of the artifact."""

    name: str
    image_uri: str
    model_data_url: str
    role_arn: str
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    instance_type: str = "ml.m5.large"
    instance_count: int = 1
    startup_health_check_seconds: int = DEFAULT_STARTUP_HEALTH_CHECK_SECONDS
    inference_ami_version: str | None = None  # None: DEFAULT_GPU_INFERENCE_AMI on GPU types


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


@dataclass(frozen=True)
class PushSpec:
    local_image: str
    repository: str
    tag: str


# -- validation of what will be sent ---------------------------------------------------------------


def validate_hyperparameters(hyperparameters: Mapping[str, str]) -> None:
    """Reject, before paying for a job, what the container would reject after starting."""
    resolve_train_config({name: decode_hyperparameter(value) for name, value in hyperparameters.items()})


def validate_ranges(ranges: Sequence[ParameterRange], static: Mapping[str, str]) -> None:
    """Every range names a hyperparameter, is ordered, and its ends are values training accepts."""
    if not ranges:
        raise UserError("a tuning job needs at least one hyperparameter range.")
    names = [r.name for r in ranges]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UserError(f"hyperparameter range(s) given twice: {', '.join(duplicated)}.")
    for r in ranges:
        if r.kind == "categorical":
            if not r.values:
                raise UserError(f"range '{r.name}' has no values.")
            samples = list(r.values)
        else:
            if r.low >= r.high:
                raise UserError(f"range '{r.name}' needs LOW < HIGH; got {r.low}:{r.high}.")
            if r.scaling == "Logarithmic" and r.low <= 0:
                raise UserError(f"range '{r.name}': logarithmic scaling needs LOW > 0; got {r.low}.")
            samples = [_format_number(r.low), _format_number(r.high)]
        for sample in samples:
            validate_hyperparameters({**static, r.name: sample})


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# -- pure request builders (boto3 shapes) ----------------------------------------------------------


def is_gpu_instance_type(instance_type: str) -> bool:
    """ml.g* and ml.p* carry NVIDIA GPUs (ml.g4dn, ml.g5, ml.g6, ml.p4d, ml.p5, ...)."""
    return re.match(r"ml\.[gp]\d", instance_type) is not None


def inference_ami_version(endpoint: EndpointSpec) -> str | None:
    if endpoint.inference_ami_version is not None:
        return endpoint.inference_ami_version
    return DEFAULT_GPU_INFERENCE_AMI if is_gpu_instance_type(endpoint.instance_type) else None


def build_create_model_request(model: ModelSpec) -> dict[str, Any]:
    container: dict[str, Any] = {"Image": model.image_uri, "ModelDataUrl": model.model_data_url}
    if model.environment:
        container["Environment"] = dict(model.environment)
    return {
        "ModelName": model.name,
        "ExecutionRoleArn": model.role_arn,
        "PrimaryContainer": container,
    }


def build_create_endpoint_config_request(endpoint: EndpointSpec, model_name: str) -> dict[str, Any]:
    variant: dict[str, Any] = {
        "VariantName": "AllTraffic",
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


def timestamped_name(base: str, now: datetime | None = None, max_length: int = 63) -> str:
    """``base-YYYYmmdd-HHMMSS``, cut to SageMaker's name limit."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{base[: max_length - len(stamp) - 1]}-{stamp}"


# -- errors from AWS, made readable ----------------------------------------------------------------


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore's exceptions into one-line user errors (exit 1, no traceback)."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ProfileNotFound,
        WaiterError,
    )

    try:
        yield
    except NoCredentialsError as exc:
        raise UserError(no_credentials_message()) from exc
    except NoRegionError as exc:
        raise UserError(no_region_message()) from exc
    except ProfileNotFound as exc:
        raise UserError(f"{exc}: list the profiles with `aws configure list-profiles`.") from exc
    except EndpointConnectionError as exc:
        raise UserError(f"{action}: cannot reach AWS ({exc}). Check the network and the region.") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Error"), error.get("Message", str(exc))
        hint = ""
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            hint = " The caller lacks a permission: see the README section 'IAM permissions'."
        elif code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId"):
            hint = " Refresh the credentials (e.g. `aws sso login`)."
        message = str(message).rstrip(".")
        raise UserError(f"{action}: {exc.operation_name} failed: {code}: {message}.{hint}") from exc
    except WaiterError as exc:
        raise UserError(f"{action}: {exc}") from exc


def no_credentials_message() -> str:
    return (
        "no AWS credentials found: run `aws configure` (or `aws sso login --profile NAME` and pass "
        "--profile NAME), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )


def no_region_message(profile: str = "default", config_file: str = "~/.aws/config") -> str:
    """Every place the launcher looks for a region, in its order (see launcher_cli.resolve_region)."""
    return (
        "no AWS region configured: none in --region, AWS_REGION, AWS_DEFAULT_REGION or the "
        f"profile '{profile}' of {config_file}. Pass --region (e.g. --region eu-west-1), set AWS_REGION, "
        "or add `region = ...` to that profile."
    )


@contextmanager
def sdk_errors(action: str, role_arn: str) -> Iterator[None]:
    """botocore's errors, plus the SDK's check of the execution role (before any job exists)."""
    from sagemaker.core.helper.iam_role_resolver import RoleValidationError

    with aws_errors(action):
        try:
            yield
        except RoleValidationError as exc:
            first_lines = " ".join(str(exc).split("\n\nTo fix this")[0].split())
            raise UserError(
                f"{action}: the execution role {role_arn} cannot be used: {first_lines} "
                f"Pass a usable role with --role or RECSYS_SAGEMAKER_ROLE. {ROLE_PERMISSIONS_HINT}"
            ) from exc


# -- ECR: push the image ---------------------------------------------------------------------------


class DockerCli:
    """The docker command line, for the few things boto3 cannot do: log in, tag, push, build."""

    def __init__(self, executable: str | None = None) -> None:
        found = executable or shutil.which("docker")
        if found is None:
            raise UserError(
                "the docker command is not on PATH: install Docker (https://docs.docker.com/get-docker/) "
                "and retry."
            )
        self.executable = found

    def run(
        self, args: Sequence[str], *, stdin: str | None = None, capture: bool = True, timeout: float = 3600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.executable, *args],
            input=stdin,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
        )

    def require_engine(self) -> None:
        probe = self.run(["info", "--format", "{{.ServerVersion}}"], timeout=60)
        if probe.returncode != 0:
            lines = (probe.stderr or probe.stdout).strip().splitlines()
            detail = lines[-1] if lines else f"docker info exited with {probe.returncode}"
            raise UserError(
                f"no Docker engine answers ({detail}): start Docker (or point DOCKER_HOST at an engine) "
                f"and retry."
            )

    def require_image(self, image: str) -> None:
        if self.run(["image", "inspect", image], timeout=60).returncode != 0:
            raise UserError(f"no local image '{image}': build it with `make image` (or pass --image).")

    def checked(
        self, args: Sequence[str], what: str, *, stdin: str | None = None, capture: bool = True
    ) -> None:
        result = self.run(args, stdin=stdin, capture=capture)
        if result.returncode != 0:
            detail = (result.stderr or "").strip().splitlines()
            raise UserError(
                f"{what} failed (docker exited with {result.returncode})"
                + (f": {detail[-1]}" if detail else ".")
            )

    def compose(self) -> list[str]:
        """The docker compose command, looked up as SDK local mode does: the v2 plugin, else the
        standalone docker-compose."""
        if self.run(["compose", "version"], timeout=60).returncode == 0:
            return [self.executable, "compose"]
        standalone = shutil.which("docker-compose")
        if standalone is None:
            raise UserError(
                "local mode needs docker compose: install the compose plugin (`docker compose`) or "
                "docker-compose."
            )
        return [standalone]

    def with_train_command(self, image: str) -> str:
        """A one-layer child of ``image`` whose default command is ``train``.

        SDK v3 local mode starts the container with no command (its compose service has no
        ``command``), while SageMaker runs ``docker run IMAGE train``; without this the image's
        entry point prints its usage, exits 0, and local mode reports an empty success.
        """
        repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        child = f"{repository}:{tag}-sagemaker-local"
        self.checked(
            ["build", "-q", "-t", child, "-"], f"building {child}", stdin=f'FROM {image}\nCMD ["train"]\n'
        )
        return child


def ensure_repository(ecr: Any, repository: str, echo: Echo) -> str:
    """The repository's URI, creating the repository (scan on push) when it does not exist."""
    try:
        found = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
        return str(found["repositoryUri"])
    except ecr.exceptions.RepositoryNotFoundException:
        created = ecr.create_repository(
            repositoryName=repository, imageScanningConfiguration={"scanOnPush": True}
        )["repository"]
        echo(f"created ECR repository {created['repositoryUri']}")
        return str(created["repositoryUri"])


def push_image(session: Any, spec: PushSpec, docker: DockerCli, echo: Echo) -> str:
    """Tag ``spec.local_image`` as ``<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>`` and
    push it; returns that URI."""
    docker.require_engine()
    docker.require_image(spec.local_image)
    with aws_errors("push"):
        ecr = session.client("ecr")
        repository_uri = ensure_repository(ecr, spec.repository, echo)
        auth = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode("utf-8").split(":", 1)
    # The password goes through stdin: never on a command line that `ps` shows.
    docker.checked(
        ["login", "--username", user, "--password-stdin", auth["proxyEndpoint"]],
        f"docker login to {auth['proxyEndpoint']}",
        stdin=password,
    )
    target = f"{repository_uri}:{spec.tag}"
    docker.checked(["tag", spec.local_image, target], f"docker tag {spec.local_image} {target}")
    echo(f"pushing {target}")
    docker.checked(["push", target], f"docker push {target}", capture=False)
    return target


# -- training and tuning (SageMaker SDK v3) --------------------------------------------------------


def sagemaker_session(boto_session: Any) -> Any:
    from sagemaker.core.helper.session_helper import Session

    return Session(boto_session=boto_session)


def build_model_trainer(spec: TrainingSpec, session: Any | None, *, local_root: Path | None = None) -> Any:
    """The SDK's ``ModelTrainer`` for ``spec``: the image alone, no source code, so the container
    runs its own ``train``; the metric regexes match the lines ``recsys train`` prints."""
    from sagemaker.core.shapes import CheckpointConfig, MetricDefinition
    from sagemaker.core.training.configs import Compute, OutputDataConfig, StoppingCondition
    from sagemaker.train import ModelTrainer
    from sagemaker.train.model_trainer import Mode

    stopping = StoppingCondition(
        max_runtime_in_seconds=spec.max_run_seconds,
        max_wait_time_in_seconds=spec.spot.max_wait_seconds if spec.spot else None,
    )
    compute = Compute(
        instance_type=spec.instance_type,
        instance_count=spec.instance_count,
        volume_size_in_gb=spec.volume_size_gb,
        enable_managed_spot_training=True if spec.spot else None,
    )
    options: dict[str, Any] = {}
    if local_root is not None:
        options.update(training_mode=Mode.LOCAL_CONTAINER, local_container_root=str(local_root))
    else:
        options.update(
            sagemaker_session=session,
            role=spec.role_arn,
            output_data_config=OutputDataConfig(s3_output_path=spec.output_s3_uri),
        )
    if spec.spot is not None and spec.spot.checkpoint_s3_uri is not None:
        options["checkpoint_config"] = CheckpointConfig(
            s3_uri=spec.spot.checkpoint_s3_uri, local_path=CHECKPOINT_LOCAL_PATH
        )
    trainer = ModelTrainer(
        training_image=spec.image_uri,
        base_job_name=spec.base_job_name,
        compute=compute,
        stopping_condition=stopping,
        hyperparameters=dict(spec.hyperparameters),
        **options,
    )
    return trainer.with_metric_definitions(
        [MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in METRIC_DEFINITIONS]
    )


def input_data(spec: TrainingSpec) -> list[Any]:
    from sagemaker.core.training.configs import InputData

    return [
        InputData(channel_name=name, data_source=spec.channels[name])
        for name in KNOWN_CHANNELS
        if name in spec.channels
    ]


def start_training(session: Any, spec: TrainingSpec) -> str:
    """Create the training job and return its name, without waiting (see follow_training_job)."""
    with sdk_errors("train", spec.role_arn):
        trainer = build_model_trainer(spec, sagemaker_session(session))
        # The SDK's own wait(logs=True) reads CloudWatch through a boto3 Session() of its own,
        # which ignores the session's region and profile (NoRegionError with --region): we follow.
        trainer.train(input_data_config=input_data(spec), wait=False, logs=False)
        return str(trainer._latest_training_job.training_job_name)


def _sdk_parameter_range(r: ParameterRange) -> Any:
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter

    if r.kind == "categorical":
        return CategoricalParameter(list(r.values))
    if r.kind == "integer":
        return IntegerParameter(int(r.low), int(r.high), scaling_type=r.scaling)
    return ContinuousParameter(r.low, r.high, scaling_type=r.scaling)


def start_tuning(session: Any, spec: TuningSpec) -> str:
    """Create a tuning job that maximises TUNING_OBJECTIVE; returns its name without waiting.

    Spot is allowed but checkpoints are not synced: the API takes one CheckpointConfig for every
    training job of the tuning job, so one trial could resume from another trial's weights.
    """
    from sagemaker.train.tuner import HyperparameterTuner

    training = spec.training
    if training.spot is not None:
        training = replace(training, spot=replace(training.spot, checkpoint_s3_uri=None))
    with sdk_errors("tune", training.role_arn):
        trainer = build_model_trainer(training, sagemaker_session(session))
        tuner = HyperparameterTuner(
            model_trainer=trainer,
            objective_metric_name=TUNING_OBJECTIVE,
            objective_type="Maximize",
            hyperparameter_ranges={r.name: _sdk_parameter_range(r) for r in spec.ranges},
            metric_definitions=[dict(d) for d in METRIC_DEFINITIONS],
            strategy=spec.strategy,
            max_jobs=spec.max_jobs,
            max_parallel_jobs=spec.max_parallel_jobs,
            early_stopping_type="Auto" if spec.early_stopping else "Off",
            base_tuning_job_name=spec.base_job_name,
        )
        tuner.tune(inputs=input_data(training), wait=False)
        return str(tuner.latest_tuning_job.hyper_parameter_tuning_job_name)


class TrainingLogReader:
    """New CloudWatch lines of a training job's streams (one per instance), oldest first."""

    def __init__(self, logs_client: Any, job_name: str) -> None:
        self.logs = logs_client
        self.job_name = job_name
        self.tokens: dict[str, str | None] = {}

    def _streams(self) -> list[str]:
        try:
            response = self.logs.describe_log_streams(
                logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=f"{self.job_name}/"
            )
        except self.logs.exceptions.ResourceNotFoundException:
            return []  # the group appears with the first job of the account
        return sorted(s["logStreamName"] for s in response.get("logStreams", []))

    def read_new(self) -> list[str]:
        lines: list[str] = []
        streams = self._streams()
        for stream in streams:
            # algo-2-1700000000 -> algo-2: which instance said it, once there are several.
            prefix = f"[{stream.split('/', 1)[1].rsplit('-', 1)[0]}] " if len(streams) > 1 else ""
            token = self.tokens.get(stream)
            while True:
                # GetLogEvents wants startFromHead=true with a nextForwardToken too.
                args: dict[str, Any] = {"nextToken": token} if token else {}
                page = self.logs.get_log_events(
                    logGroupName=TRAINING_LOG_GROUP, logStreamName=stream, startFromHead=True, **args
                )
                lines.extend(prefix + event["message"].rstrip("\n") for event in page["events"])
                if not page["events"] or page.get("nextForwardToken") == token:
                    token = page.get("nextForwardToken", token)
                    break
                token = page["nextForwardToken"]
            self.tokens[stream] = token
        return lines


def follow_training_job(
    session: Any, job_name: str, echo: Echo, *, poll_seconds: float = 15, sleep: Sleep = time.sleep
) -> dict[str, Any]:
    """Print status changes and log lines until the job ends; a failed or stopped job is an error."""
    with aws_errors(f"training job {job_name}"):
        sagemaker = session.client("sagemaker")
        reader = TrainingLogReader(session.client("logs"), job_name)
        last = None
        while True:
            job = sagemaker.describe_training_job(TrainingJobName=job_name)
            state = (job["TrainingJobStatus"], job.get("SecondaryStatus"))
            if state != last:
                echo(f"status: {state[0]}" + (f" ({state[1]})" if state[1] else ""))
                last = state
            for line in reader.read_new():
                echo(line)
            if state[0] in TERMINAL_JOB_STATES:
                break
            sleep(poll_seconds)
    describe_training_outcome(job, echo)
    return dict(job)


def describe_training_outcome(job: Mapping[str, Any], echo: Echo) -> None:
    name, status = job["TrainingJobName"], job["TrainingJobStatus"]
    if status == "Failed":
        raise UserError(f"training job {name} failed: {job.get('FailureReason', 'no reason given')}")
    if status == "Stopped":
        raise UserError(f"training job {name} was stopped before it finished.")
    for metric in job.get("FinalMetricDataList", []):
        echo(f"final {metric['MetricName']} = {metric['Value']:.4f}")
    billable, seconds = job.get("BillableTimeInSeconds"), job.get("TrainingTimeInSeconds")
    if job.get("EnableManagedSpotTraining") and billable is not None and seconds:
        echo(f"spot: billed {billable} s of {seconds} s ({100 * (1 - billable / seconds):.0f}% saved)")
    artifacts = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if artifacts:
        echo(f"model: {artifacts}")


def follow_tuning_job(
    session: Any, job_name: str, echo: Echo, *, poll_seconds: float = 60, sleep: Sleep = time.sleep
) -> dict[str, Any]:
    """Print the training jobs' counts as they change until the tuning job ends; then the best job."""
    with aws_errors(f"tuning job {job_name}"):
        sagemaker = session.client("sagemaker")
        last = ""
        while True:
            job = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
            counts = job.get("TrainingJobStatusCounters", {})
            failed = counts.get("RetryableError", 0) + counts.get("NonRetryableError", 0)
            line = (
                f"status: {job['HyperParameterTuningJobStatus']}; training jobs: "
                f"{counts.get('Completed', 0)} completed, {counts.get('InProgress', 0)} in progress, "
                f"{counts.get('Stopped', 0)} stopped, {failed} failed"
            )
            if line != last:
                echo(line)
                last = line
            if job["HyperParameterTuningJobStatus"] in TERMINAL_JOB_STATES:
                break
            sleep(poll_seconds)
    if job["HyperParameterTuningJobStatus"] == "Failed":
        raise UserError(f"tuning job {job_name} failed: {job.get('FailureReason', 'no reason given')}")
    best = job.get("BestTrainingJob")
    if best:
        objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
        echo(
            f"best training job: {best['TrainingJobName']} ({objective.get('MetricName', TUNING_OBJECTIVE)} "
            f"= {objective.get('Value', float('nan')):.4f})"
        )
        for name, value in sorted(best.get("TunedHyperParameters", {}).items()):
            echo(f"  {name} = {value}")
        echo(f"deploy it: recsys aws deploy --training-job {best['TrainingJobName']} --name NAME")
    return dict(job)


def train_locally(spec: TrainingSpec, root: Path, docker: DockerCli, echo: Echo) -> Path:
    """Run ``spec`` in SDK v3 local mode (docker compose on this machine); returns the model dir.

    Channels are local directories. The job's ``output/`` decides the outcome: SDK local mode
    raises a bare RuntimeError when the container fails, and reports success for a container that
    exits 0 without training.
    """
    for name, source in spec.channels.items():
        if not Path(source).is_dir():
            raise UserError(f"with --local, channel '{name}' must be a local directory; got {source}.")
    if root.exists() and any(root.iterdir()):
        raise UserError(f"{root} is not empty: local mode needs a new or empty directory per run.")
    docker.require_engine()
    compose = docker.compose()
    docker.require_image(spec.image_uri)
    local = replace(
        spec,
        image_uri=docker.with_train_command(spec.image_uri),
        instance_type="local",
        channels={name: str(Path(source).resolve()) for name, source in spec.channels.items()},
    )
    root.mkdir(parents=True, exist_ok=True)
    echo(f"local mode: {local.image_uri} under {root}")
    trainer = build_model_trainer(local, None, local_root=root.resolve())
    crashed: RuntimeError | None = None
    try:
        trainer.train(input_data_config=input_data(local), wait=True)
    except RuntimeError as exc:  # docker compose exited non-zero; output/failure says why
        crashed = exc
    finally:
        # Local mode leaves its stopped containers and network behind; the engine may be shared.
        compose_file = root / "docker-compose.yaml"
        if compose_file.exists():
            subprocess.run(
                [*compose, "-f", str(compose_file), "down", "--remove-orphans"],
                capture_output=True,
                timeout=300,
                check=False,
            )
    output = root / "artifacts" / "output"
    if (output / "failure").exists():
        reason = (output / "failure").read_text(encoding="utf-8").strip()
        raise UserError(f"local training failed: {reason[:1024]}") from crashed
    if crashed is not None:
        raise UserError(f"local training failed: {crashed}") from crashed
    model_dir = root / "model"
    if not (output / "success").exists() or not (model_dir / "manifest.json").exists():
        raise UserError(f"local training wrote no model under {model_dir}: see the container's log above.")
    return model_dir


# -- hosting and Batch Transform (boto3) -----------------------------------------------------------


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


def invoke(session: Any, endpoint_name: str, body: bytes, *, content_type: str, accept: str) -> bytes:
    """One request to the endpoint's /invocations; the container's 4xx comes back as an error."""
    with aws_errors(f"invoke {endpoint_name}"):
        runtime = session.client("sagemaker-runtime")
        try:
            response = runtime.invoke_endpoint(
                EndpointName=endpoint_name, ContentType=content_type, Accept=accept, Body=body
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
