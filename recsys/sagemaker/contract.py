"""The SageMaker container contract: the only module that knows ``/opt/ml`` and ``SAGEMAKER_*``.

Every path derives from one base directory, ``$SAGEMAKER_BASE_DIR`` (default ``/opt/ml``), so a
local run or a test points the whole contract somewhere else with one variable. Nothing here reads
the environment at import: callers build a ``ContainerPaths`` at the edge and pass it down.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Channel names, as the training job's InputDataConfig names them. They are part of this contract;
# they are spelled in recsys/channels.py, below every layer, so that recsys.data can use them too.
from recsys.channels import CHANNEL_ITEMS as CHANNEL_ITEMS
from recsys.channels import CHANNEL_TRAIN as CHANNEL_TRAIN
from recsys.channels import CHANNEL_USERS as CHANNEL_USERS
from recsys.channels import CHANNEL_VALIDATION as CHANNEL_VALIDATION
from recsys.channels import KNOWN_CHANNELS as KNOWN_CHANNELS
from recsys.errors import UserError

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
DEFAULT_BASE_DIR = "/opt/ml"

HYPERPARAMETERS_FILE = "hyperparameters.json"
INPUT_DATA_CONFIG_FILE = "inputdataconfig.json"
RESOURCE_CONFIG_FILE = "resourceconfig.json"
FAILURE_FILE = "failure"
SUCCESS_FILE = "success"

# Names SageMaker itself adds to hyperparameters.json (tuning jobs, SDK defaults): not ours to validate.
RESERVED_HYPERPARAMETER_PREFIXES = ("sagemaker_", "_tuning_objective_metric", "_sagemaker")

# SageMaker shows the first 1024 characters of the failure file as the job's FailureReason.
FAILURE_REASON_LIMIT = 1024


@dataclass(frozen=True)
class ContainerPaths:
    """Every path of the contract, derived from one base directory."""

    base: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ContainerPaths:
        return cls(Path(environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR))

    @property
    def input_config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.input_config_dir / HYPERPARAMETERS_FILE

    @property
    def input_data_config_file(self) -> Path:
        return self.input_config_dir / INPUT_DATA_CONFIG_FILE

    @property
    def resource_config_file(self) -> Path:
        return self.input_config_dir / RESOURCE_CONFIG_FILE

    @property
    def data_dir(self) -> Path:
        return self.base / "input" / "data"

    def channel_dir(self, channel: str) -> Path:
        return self.data_dir / channel

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / FAILURE_FILE

    @property
    def success_file(self) -> Path:
        return self.output_dir / SUCCESS_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.base / "checkpoints"


@dataclass(frozen=True)
class ResourceConfig:
    """``resourceconfig.json``: which host this is among the job's hosts."""

    current_host: str = "algo-1"
    hosts: tuple[str, ...] = ("algo-1",)
    network_interface_name: str = "eth0"

    @property
    def num_hosts(self) -> int:
        return len(self.hosts)

    @property
    def is_leader(self) -> bool:
        return self.current_host == self.hosts[0]


@dataclass(frozen=True)
class TrainingContract:
    """What the training job was handed: raw hyperparameters, channels and resources."""

    paths: ContainerPaths
    hyperparameters: dict[str, Any]
    channels: dict[str, Path]
    resources: ResourceConfig = field(default_factory=ResourceConfig)


def decode_hyperparameter(raw: Any) -> Any:
    """SageMaker passes every hyperparameter as a string: try JSON, else keep the raw string."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a file that cannot be read, is not UTF-8 (Latin-1 text, a
    binary file) or not JSON is a ``UserError`` naming it, never an internal error."""
    try:
        # Decoded whole, not by read_text: its error's offset would be into a chunk, not the file.
        text = path.read_bytes().decode("utf-8")
        value = json.loads(text)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {path} is not valid UTF-8 JSON: byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start} is not UTF-8. Write the file as UTF-8 JSON."
        ) from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}.") from exc
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read: {exc.strerror or exc}.") from exc
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a JSON object, found {type(value).__name__}.")
    return value


def read_hyperparameters(paths: ContainerPaths) -> dict[str, Any]:
    """The decoded hyperparameters; an absent file means none were given."""
    if not paths.hyperparameters_file.exists():
        return {}
    raw = _read_json_object(paths.hyperparameters_file, "hyperparameters file")
    return {
        str(name): decode_hyperparameter(value)
        for name, value in raw.items()
        if not str(name).startswith(RESERVED_HYPERPARAMETER_PREFIXES)
    }


def read_resource_config(paths: ContainerPaths) -> ResourceConfig:
    return _resource_config(paths.resource_config_file)


def _resource_config(path: Path) -> ResourceConfig:
    """``resourceconfig.json`` where a job has it (training and Processing put it apart)."""
    if not path.exists():
        return ResourceConfig()
    raw = _read_json_object(path, "resource config")
    hosts = tuple(str(h) for h in raw.get("hosts") or ["algo-1"])
    current = str(raw.get("current_host") or hosts[0])
    return ResourceConfig(
        current_host=current,
        hosts=hosts,
        network_interface_name=str(raw.get("network_interface_name") or "eth0"),
    )


def discover_channels(paths: ContainerPaths) -> dict[str, Path]:
    """Channels present on disk, checked against ``inputdataconfig.json`` when it exists.

    A channel declared in the config but absent on disk is a user error (the S3 prefix was
    probably empty); a directory that the config does not declare is still read, which keeps
    local runs with no config file working.
    """
    declared: set[str] = set()
    if paths.input_data_config_file.exists():
        config = _read_json_object(paths.input_data_config_file, "input data config")
        declared = set(config)
        piped = sorted(
            name
            for name, spec in config.items()
            if isinstance(spec, dict) and str(spec.get("TrainingInputMode", "File")).lower() == "pipe"
        )
        if piped:
            raise UserError(
                f"channel(s) {', '.join(repr(c) for c in piped)} use Pipe input mode, which recsys does not "
                f"read; use File or FastFile input mode."
            )
    unknown = sorted(declared - set(KNOWN_CHANNELS))
    if unknown:
        raise UserError(
            f"unknown channel(s) {', '.join(repr(c) for c in unknown)} in inputdataconfig.json; "
            f"recsys reads the channels {', '.join(KNOWN_CHANNELS)}."
        )
    channels: dict[str, Path] = {}
    for name in KNOWN_CHANNELS:
        directory = paths.channel_dir(name)
        if directory.is_dir():
            channels[name] = directory
        elif directory.exists():  # a file: skipped, it would be data silently left out
            raise UserError(
                f"channel '{name}': {directory} is a file, but a channel is a directory of files; move "
                f"it into a directory of that name ({directory}/{directory.name}.csv, say)."
            )
        elif name in declared:
            raise UserError(
                f"channel '{name}' is declared in inputdataconfig.json but {directory} does not exist."
            )
    if CHANNEL_TRAIN not in channels:
        raise UserError(
            f"the required channel '{CHANNEL_TRAIN}' is missing: expected interaction files under "
            f"{paths.channel_dir(CHANNEL_TRAIN)}. Pass an S3 prefix as the '{CHANNEL_TRAIN}' channel of "
            "the job."
        )
    return channels


def read_training_contract(paths: ContainerPaths) -> TrainingContract:
    return TrainingContract(
        paths=paths,
        hyperparameters=read_hyperparameters(paths),
        channels=discover_channels(paths),
        resources=read_resource_config(paths),
    )


def write_failure(paths: ContainerPaths, exc: BaseException) -> str:
    """Write ``output/failure``: a user error's message, or an internal error's traceback.

    The user error's one paragraph comes first so that it fits in the 1024 characters that
    SageMaker shows as FailureReason.
    """
    return write_failure_text(paths, _failure_text(exc))


def _failure_text(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return f"{exc.message}\n"
    details = "".join(traceback.format_exception(exc))
    return f"internal error: {type(exc).__name__}: {exc}\n\n{details}"


def write_failure_text(paths: ContainerPaths, text: str) -> str:
    """Write ``output/failure`` with a message of our own (no traceback to show)."""
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    paths.failure_file.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return text


def write_success(paths: ContainerPaths) -> None:
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    if paths.failure_file.exists():
        paths.failure_file.unlink()
    paths.success_file.write_text("", encoding="utf-8")


# -- processing jobs -----------------------------------------------------------------------------

# A Processing job's inputs and outputs: /opt/ml/processing/{input,output}/<name>, under the same
# base as the training contract. Its configuration sits in /opt/ml/config (not input/config), and
# the first 1 KB of /opt/ml/output/message becomes the job's ExitMessage.
PROCESSING_CONFIG_FILE = "processingjobconfig.json"
EXIT_MESSAGE_FILE = "message"


@dataclass(frozen=True)
class ProcessingPaths:
    """Every path of the Processing contract, derived from one base directory."""

    base: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProcessingPaths:
        return cls(Path(environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR))

    @property
    def input_root(self) -> Path:
        return self.base / "processing" / "input"

    @property
    def output_root(self) -> Path:
        return self.base / "processing" / "output"

    def input_dir(self, name: str) -> Path:
        return self.input_root / name

    def output_dir(self, name: str) -> Path:
        return self.output_root / name

    @property
    def config_dir(self) -> Path:
        return self.base / "config"

    @property
    def job_config_file(self) -> Path:
        return self.config_dir / PROCESSING_CONFIG_FILE

    @property
    def resource_config_file(self) -> Path:
        return self.config_dir / RESOURCE_CONFIG_FILE

    @property
    def message_file(self) -> Path:
        return self.base / "output" / EXIT_MESSAGE_FILE


@dataclass(frozen=True)
class ProcessingContract:
    """What a Processing job was handed: its hosts and how each input was distributed."""

    paths: ProcessingPaths
    resources: ResourceConfig
    # Input name -> True when every instance got every file (FullyReplicated).
    replicated: Mapping[str, bool]


def read_processing_contract(paths: ProcessingPaths) -> ProcessingContract:
    resources = _resource_config(paths.resource_config_file)
    replicated: dict[str, bool] = {}
    if paths.job_config_file.exists():
        config = _read_json_object(paths.job_config_file, "processing job config")
        for spec in config.get("ProcessingInputs") or []:
            if isinstance(spec, dict) and isinstance(spec.get("S3Input"), dict):
                s3 = spec["S3Input"]
                replicated[str(spec.get("InputName"))] = (
                    str(s3.get("S3DataDistributionType", "FullyReplicated")) == "FullyReplicated"
                )
    return ProcessingContract(paths=paths, resources=resources, replicated=replicated)


def write_exit_message(paths: ProcessingPaths, exc: BaseException) -> str:
    """Write ``output/message``: a user error's message first (the 1 KB that ExitMessage shows),
    an internal error's traceback after its one line."""
    text = _failure_text(exc)
    paths.message_file.parent.mkdir(parents=True, exist_ok=True)
    paths.message_file.write_text(text, encoding="utf-8")
    return text


# -- distributed training ------------------------------------------------------------------------

# The port of the rendezvous on hosts[0] (the issue's and SageMaker's examples' choice).
DEFAULT_MASTER_PORT = 7777
# Ours: overrides for the launch, mostly for tests and for CPU hosts that want several processes.
MASTER_PORT_ENV = "RECSYS_MASTER_PORT"
PROCESSES_PER_HOST_ENV = "RECSYS_PROCESSES_PER_HOST"
HOST_WAIT_ENV = "RECSYS_HOST_WAIT_SECONDS"
DEFAULT_HOST_WAIT_SECONDS = 600
# Set by torchrun in each process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class LaunchSettings:
    """How ``train`` starts its processes; resolved from the environment at the edge."""

    master_port: int = DEFAULT_MASTER_PORT
    processes_per_host: int | None = None  # None: one per GPU, or one on a CPU host
    host_wait_seconds: float = DEFAULT_HOST_WAIT_SECONDS


@dataclass(frozen=True)
class WorkerEnv:
    """This process's place among torchrun's processes."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def read_launch_settings(environ: Mapping[str, str]) -> LaunchSettings:
    processes = environ.get(PROCESSES_PER_HOST_ENV)
    return LaunchSettings(
        master_port=int(_positive_number(environ, MASTER_PORT_ENV, DEFAULT_MASTER_PORT, integer=True)),
        processes_per_host=(
            int(_positive_number(environ, PROCESSES_PER_HOST_ENV, 1, integer=True))
            if processes and processes.strip()
            else None
        ),
        host_wait_seconds=_positive_number(environ, HOST_WAIT_ENV, DEFAULT_HOST_WAIT_SECONDS, integer=False),
    )


def read_worker_env(environ: Mapping[str, str]) -> WorkerEnv | None:
    """torchrun's variables when this process is one of its workers; None otherwise."""
    if not all(environ.get(name) for name in TORCHRUN_ENV):
        return None
    rank, world, local_rank, local_world = (int(environ[name]) for name in TORCHRUN_ENV)
    return WorkerEnv(rank, world, local_rank, local_world)


# -- hosting -------------------------------------------------------------------------------------

BIND_TO_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
DEFAULT_PORT = 8080
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
TIMEOUT_ENV = "SAGEMAKER_MODEL_SERVER_TIMEOUT"
MAX_PAYLOAD_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
DEFAULT_MAX_PAYLOAD_MB = 6
DEFAULT_TIMEOUT_SECONDS = 60
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
# Ours, not SageMaker's: the most instances one request may carry.
MAX_INSTANCES_ENV = "RECSYS_MAX_INSTANCES"
DEFAULT_MAX_INSTANCES = 100_000
# Multi-model hosting: SageMaker loads models through /models (the image says it can with this
# label), each under /opt/ml/models/<name>/model. The mode is switched on by the environment
# (the launcher's deploy --multi-model sets it); loaded models share a memory budget.
MULTI_MODEL_LABEL = "com.amazonaws.sagemaker.capabilities.multi-models=true"
MULTI_MODEL_ENV = "SAGEMAKER_MULTI_MODEL"
# `exact` ranks the whole catalogue even when the artifact carries an approximate index (to
# compare the two, or to rule the index out); `auto`, the default, uses the index when there is one.
RETRIEVAL_ENV = "RECSYS_RETRIEVAL"
RETRIEVAL_CHOICES = ("auto", "exact")
MODEL_MEMORY_ENV = "RECSYS_MODEL_MEMORY_MB"
DEFAULT_MODEL_MEMORY_SHARE = 0.6  # of the machine's memory, when MODEL_MEMORY_ENV is unset


@dataclass(frozen=True)
class HostingConfig:
    """The hosting contract's settings, resolved from the environment at the server's edge."""

    model_dir: Path
    port: int
    workers: int
    timeout_seconds: float
    max_payload_bytes: int
    max_instances: int
    multi_model: bool = False
    model_memory_bytes: int = 0  # the loaded models' budget (multi-model only)
    exact_retrieval: bool = False  # rank exactly even with an index in the artifact


def _positive_number(environ: Mapping[str, str], name: str, default: float, *, integer: bool) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError as exc:
        kind = "a whole number" if integer else "a number"
        raise UserError(f"environment variable {name} must be {kind}; got {raw!r}.") from exc
    if value <= 0:
        raise UserError(f"environment variable {name} must be positive; got {raw!r}.")
    return value


def default_workers(cpu_count: int) -> int:
    """One worker per two cores, at least one: each worker's torch uses the other core's threads."""
    return max(1, cpu_count // 2)


def _physical_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def read_hosting_config(environ: Mapping[str, str], *, cpu_count: int) -> HostingConfig:
    paths = ContainerPaths.from_env(environ)
    multi_model = environ.get(MULTI_MODEL_ENV, "").strip().lower() in ("1", "true", "yes")
    budget_mb = _positive_number(
        environ,
        MODEL_MEMORY_ENV,
        DEFAULT_MODEL_MEMORY_SHARE * _physical_memory_bytes() / 2**20,
        integer=False,
    )
    workers = int(_positive_number(environ, WORKERS_ENV, default_workers(cpu_count), integer=True))
    retrieval = environ.get(RETRIEVAL_ENV, "").strip().lower() or "auto"
    if retrieval not in RETRIEVAL_CHOICES:
        raise UserError(
            f"environment variable {RETRIEVAL_ENV} must be one of {', '.join(RETRIEVAL_CHOICES)}; "
            f"got {environ.get(RETRIEVAL_ENV)!r}."
        )
    return HostingConfig(
        model_dir=paths.model_dir,
        port=int(_positive_number(environ, BIND_TO_PORT_ENV, DEFAULT_PORT, integer=True)),
        # Multi-model: one worker. SageMaker loads a model with one POST /models, which reaches one
        # process; a second worker would answer that model's requests with 404.
        workers=1 if multi_model else workers,
        multi_model=multi_model,
        model_memory_bytes=int(budget_mb * 2**20),
        timeout_seconds=_positive_number(environ, TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS, integer=False),
        max_payload_bytes=int(
            _positive_number(environ, MAX_PAYLOAD_ENV, DEFAULT_MAX_PAYLOAD_MB, integer=False) * 1024 * 1024
        ),
        max_instances=int(_positive_number(environ, MAX_INSTANCES_ENV, DEFAULT_MAX_INSTANCES, integer=True)),
        exact_retrieval=retrieval == "exact",
    )
