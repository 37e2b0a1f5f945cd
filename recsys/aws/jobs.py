"""Training and tuning jobs through the SageMaker SDK v3 (``ModelTrainer`` with the image alone, so
SageMaker runs ``docker run IMAGE train``; ``HyperparameterTuner``), and the same job locally in Docker.
The SDK is imported inside functions: ``recsys --help`` never loads it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from recsys.aws.common import TERMINAL_JOB_STATES, Echo, Sleep, aws_errors, sdk_errors
from recsys.aws.images import DockerCli
from recsys.config import resolve_train_config
from recsys.errors import UserError
from recsys.sagemaker.contract import (
    DEFAULT_BASE_DIR,
    FAILURE_FILE,
    FAILURE_REASON_LIMIT,
    KNOWN_CHANNELS,
    SUCCESS_FILE,
    ContainerPaths,
    decode_hyperparameter,
)
from recsys.sagemaker.metric_definitions import METRIC_DEFINITIONS, TUNING_OBJECTIVE

# Where SageMaker syncs CheckpointConfig.S3Uri inside the container: the contract's checkpoint dir.
CHECKPOINT_LOCAL_PATH = str(ContainerPaths(Path(DEFAULT_BASE_DIR)).checkpoint_dir)


TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


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
    # The artifact module owns the manifest's name; imported here, as it loads torch.
    from recsys.artifact import MANIFEST

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
    if (output / FAILURE_FILE).exists():
        reason = (output / FAILURE_FILE).read_text(encoding="utf-8").strip()
        raise UserError(f"local training failed: {reason[:FAILURE_REASON_LIMIT]}") from crashed
    if crashed is not None:
        raise UserError(f"local training failed: {crashed}") from crashed
    model_dir = root / "model"
    if not (output / SUCCESS_FILE).exists() or not (model_dir / MANIFEST).exists():
        raise UserError(f"local training wrote no model under {model_dir}: see the container's log above.")
    return model_dir
