"""``recsys aws ...``: the launcher's command line. Arguments and the environment are read here,
once, into the frozen specs of ``recsys.aws`` (common, images, jobs, hosting); nothing deeper reads either.

boto3 and the SageMaker SDK (the ``aws`` extra) are imported only when an ``aws`` command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from recsys.aws.common import ROLE_PERMISSIONS_HINT, timestamped_name
from recsys.aws.hosting import (
    CSV,
    DEFAULT_STARTUP_HEALTH_CHECK_SECONDS,
    DEFAULT_TARGET_INVOCATIONS,
    JSON,
    JSON_LINES,
    AutoscalingSpec,
    EndpointSpec,
    ModelSpec,
    ServerlessSpec,
    TransformSpec,
)
from recsys.aws.images import PushSpec
from recsys.aws.jobs import (
    DEFAULT_TUNING_RANGES,
    ParameterRange,
    ScalingType,
    SpotConfig,
    TrainingSpec,
    TuningSpec,
)
from recsys.config import TrainConfig
from recsys.errors import ConfigError, UserError
from recsys.options import add_hyperparameter_option, key_value
from recsys.sagemaker.contract import CHANNEL_TRAIN, KNOWN_CHANNELS, MULTI_MODEL_ENV

if TYPE_CHECKING:
    from recsys.aws.api import ApiSpec

ROLE_ENV = "RECSYS_SAGEMAKER_ROLE"
# After --region, the region's sources in the AWS CLI v2's order. boto3 reads AWS_DEFAULT_REGION
# and the profile's `region` but never AWS_REGION, so both variables are read here, in this order.
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
CONFIG_FILE_ENV = "AWS_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "~/.aws/config"
# IAM role ARNs in any partition (aws, aws-cn, aws-us-gov), with an optional path.
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+")
_S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "sagemaker", "s3transfer")


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """Keep the SDK's and botocore's warnings, not their INFO chatter (which endpoint, which config
    file); and drop the SDK's 'No region provided' warning: its resources get the session, whose
    region is set, but no region argument."""
    if not record.name.startswith(_QUIET_LOGGERS):
        return True
    return record.levelno >= logging.WARNING and not record.getMessage().startswith("No region provided")


def echo(line: str) -> None:
    print(line, flush=True)


# -- argument types ----------------------------------------------------------------------------------


def duration(text: str) -> int:
    """``90m``, ``2h``, ``1d``, ``3600s`` or ``3600``, in seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 3600, 90m, 2h or 1d; got {text!r}")
    return int(float(match.group(1)) * _SECONDS[match.group(2)])


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1; got {value}")
    return value


def s3_uri(text: str) -> str:
    if not _S3_URI.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected an S3 URI such as s3://bucket/prefix/; got {text!r}")
    return text


def parse_range(text: str) -> ParameterRange:
    """``NAME=LOW:HIGH[:log|:linear]`` (integer or continuous, from the hyperparameter's type) or
    ``NAME=V1,V2,...`` (categorical)."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise UserError(f"--range takes NAME=LOW:HIGH[:log|:linear] or NAME=V1,V2,...; got {text!r}.")
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    if name not in types:
        close = difflib.get_close_matches(name, types, n=1)
        raise ConfigError(
            f"--range: unknown hyperparameter '{name}'"
            + (f" (did you mean '{close[0]}'?)" if close else "")
            + ". Run `recsys hyperparameters` for the names."
        )
    if ":" not in spec:
        values = tuple(v.strip() for v in spec.split(",") if v.strip())
        if len(values) < 2:
            raise UserError(f"--range {name}: give LOW:HIGH or at least two comma-separated values.")
        return ParameterRange(name, "categorical", values=values)
    parts = spec.split(":")
    scalings: dict[str, ScalingType] = {"log": "Logarithmic", "linear": "Linear", "auto": "Auto"}
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].lower() not in scalings):
        raise UserError(f"--range {name}: expected LOW:HIGH[:log|:linear]; got {spec!r}.")
    kinds: dict[str, Literal["integer", "continuous"]] = {
        "int": "integer",
        "float": "continuous",
        "float | None": "continuous",
    }
    kind = kinds.get(types[name])
    if kind is None:
        raise UserError(f"--range {name}: '{name}' is not numeric; list its values instead, e.g. {name}=a,b.")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise UserError(f"--range {name}: LOW and HIGH must be numbers; got {spec!r}.") from None
    scaling = scalings[parts[2].lower()] if len(parts) == 3 else "Auto"
    return ParameterRange(name, kind, low=low, high=high, scaling=scaling)


# -- the parser ----------------------------------------------------------------------------------------


class CommandParser(argparse.ArgumentParser):
    """The parser of each ``recsys aws`` command. A bad, missing or unknown argument is one line on
    stderr and exit 1, like every other launcher error, instead of argparse's usage block and exit 2;
    the type functions above stay the validators, and ``--help`` is untouched."""

    def error(self, message: str) -> NoReturn:
        # argparse words a bad value "argument --output: expected ..."; lead with the option instead.
        self.exit(1, f"error: {message.removeprefix('argument ')}\n")

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        parsed, unknown = super().parse_known_args(args, namespace)
        # A command takes every argument after its name, so no parser above can use what it leaves:
        # refuse it here, in one line, rather than let the top-level parser print its usage.
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown


def _aws_common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--region",
        help="AWS region (default: AWS_REGION, then AWS_DEFAULT_REGION, then the profile's region)",
    )
    common.add_argument("--profile", help="named profile of ~/.aws/config (default: AWS_PROFILE or default)")
    return common


def _role_option(parser: argparse.ArgumentParser, *, required_note: str = "") -> None:
    parser.add_argument(
        "--role",
        help=f"SageMaker execution role ARN (default: ${ROLE_ENV}){required_note}",
    )


def _training_options(parser: argparse.ArgumentParser, *, local_mode: bool) -> None:
    """The options train and tune share; with ``local_mode`` (train's --local), no S3 output."""
    parser.add_argument("--image", required=True, help="training image URI (printed by `recsys aws push`)")
    _role_option(parser)
    for channel in KNOWN_CHANNELS:
        required = channel == CHANNEL_TRAIN
        parser.add_argument(
            f"--{channel}",
            required=required,
            metavar="S3_URI",
            help=f"S3 prefix of the '{channel}' channel" + (" (required)" if required else ""),
        )
    # argparse has no "required unless": train checks --output itself (resolve_training).
    parser.add_argument(
        "--output",
        type=s3_uri,
        required=not local_mode,
        metavar="S3_URI",
        help="S3 prefix for model.tar.gz and output.tar.gz"
        + (" (required unless --local)" if local_mode else " (required)"),
    )
    add_hyperparameter_option(parser, "a hyperparameter, passed as a string (repeatable)")
    parser.add_argument("--instance-type", default="ml.g5.xlarge", help="default: ml.g5.xlarge (one A10G)")
    parser.add_argument("--instance-count", type=positive_int, default=1, help="instances (default: 1)")
    parser.add_argument(
        "--volume-size", type=positive_int, default=30, help="EBS GB per instance (default: 30)"
    )
    parser.add_argument(
        "--max-run", type=duration, default=24 * 3600, help="time limit per job (default: 24h)"
    )
    parser.add_argument("--spot", action="store_true", help="managed spot training (up to 90%% cheaper)")
    parser.add_argument(
        "--max-wait",
        type=duration,
        help="with --spot: limit on waiting for capacity plus running (default: 2 x --max-run)",
    )
    parser.add_argument("--job-name-prefix", default="recsys", help="base of the job name (default: recsys)")
    parser.add_argument("--no-wait", action="store_true", help="return once the job is created")


def add_aws_parser(subparsers: Any) -> None:
    """Register ``recsys aws`` and its commands on the main parser's sub-parsers."""
    common = _aws_common()
    aws = subparsers.add_parser(
        "aws",
        help="push the image, train, tune, deploy, invoke, batch-transform on SageMaker (the aws extra)",
        description="Run the image on Amazon SageMaker. Needs the aws extra (pip install 'recsys[aws]'), "
        "AWS credentials and a region; train, tune, deploy and batch need an execution role "
        f"(--role or ${ROLE_ENV}).",
    )
    actions = aws.add_subparsers(
        dest="aws_command", required=True, metavar="COMMAND", parser_class=CommandParser
    )

    push = actions.add_parser("push", parents=[common], help="push the local image to ECR; prints its URI")
    push.add_argument("--image", default="recsys:latest", help="local image (default: recsys:latest)")
    push.add_argument(
        "--repository", default="recsys", help="ECR repository, created if missing (default: recsys)"
    )
    push.add_argument("--tag", help="tag in ECR (default: the local image's tag)")

    train = actions.add_parser(
        "train",
        parents=[common],
        help="run a training job of the image (follows its log)",
        description="A SageMaker training job running `docker run IMAGE train` with the given channels and "
        "hyperparameters; prints the log, the final metrics and the model's S3 URI.",
    )
    _training_options(train, local_mode=True)
    train.add_argument(
        "--checkpoint-s3", type=s3_uri, help="with --spot: checkpoint prefix (default: under --output)"
    )
    train.add_argument(
        "--local",
        type=Path,
        metavar="DIR",
        help="run in SageMaker SDK local mode on this machine's Docker instead (channels: local directories)",
    )

    tune = actions.add_parser(
        "tune",
        parents=[common],
        help="run a hyperparameter tuning job maximising validation:ndcg@10",
        description="A SageMaker tuning job over the given ranges (default: learning_rate, weight_decay, "
        "embedding_dim, batch_size, user_id_dropout), maximising validation:ndcg@10.",
    )
    _training_options(tune, local_mode=False)
    tune.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="LOW:HIGH[:log|:linear] or V1,V2,... (repeatable), e.g. learning_rate=0.0003:0.03:log",
    )
    tune.add_argument("--max-jobs", type=positive_int, default=20, help="training jobs in all (default: 20)")
    tune.add_argument("--max-parallel-jobs", type=positive_int, default=2, help="at once (default: 2)")
    tune.add_argument("--strategy", choices=["Bayesian", "Random", "Hyperband", "Grid"], default="Bayesian")
    tune.add_argument("--early-stopping", action="store_true", help="let SageMaker stop unpromising jobs")

    deploy = actions.add_parser(
        "deploy",
        parents=[common],
        help="create a real-time endpoint (model + endpoint config + endpoint, one name)",
    )
    deploy.add_argument("--name", required=True, help="name of the model, endpoint config and endpoint")
    _model_source_options(deploy, multi_model=True)
    deploy.add_argument("--instance-type", default="ml.m5.large", help="default: ml.m5.large")
    deploy.add_argument("--instance-count", type=positive_int, default=1)
    deploy.add_argument(
        "--startup-timeout",
        type=duration,
        default=DEFAULT_STARTUP_HEALTH_CHECK_SECONDS,
        help="ContainerStartupHealthCheckTimeoutInSeconds (60 s to 1 h; default: 10m)",
    )
    deploy.add_argument(
        "--inference-ami-version", help="InferenceAmiVersion (default on ml.g*/ml.p*: driver 580 / CUDA 13)"
    )
    deploy.add_argument("--no-wait", action="store_true", help="return before the endpoint is InService")
    scaling = deploy.add_argument_group("autoscaling (Application Auto Scaling, target tracking)")
    scaling.add_argument(
        "--min-instances", type=positive_int, help="the fewest instances (with --max-instances)"
    )
    scaling.add_argument("--max-instances", type=positive_int, help="the most instances")
    scaling.add_argument(
        "--target-invocations",
        type=float,
        help="invocations per instance per minute to hold (default with autoscaling: 1000)",
    )
    deploy.add_argument(
        "--serverless",
        type=int,
        metavar="MEMORY_MB",
        help="a serverless endpoint of this memory (1024 to 6144, steps of 1024); CPU image only",
    )
    deploy.add_argument(
        "--max-concurrency", type=positive_int, default=20, help="with --serverless (default: 20)"
    )

    invoke = actions.add_parser(
        "invoke", parents=[common], help="send one request to an endpoint; prints the answer"
    )
    invoke.add_argument("--endpoint", required=True)
    invoke.add_argument(
        "--target-model", help="on a multi-model endpoint: the model.tar.gz under its prefix (e.g. fr.tar.gz)"
    )
    body = invoke.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", help='the request, e.g. \'{"user_id": "u0001", "k": 5}\'')
    body.add_argument("--file", type=Path, help="a file holding the request ('-' for stdin)")
    invoke.add_argument("--content-type", help=f"default: from --file's extension, else {JSON}")
    invoke.add_argument("--accept", help="default: the content type")

    batch = actions.add_parser(
        "batch",
        parents=[common],
        help="run a Batch Transform job over S3 files (one request per line)",
    )
    batch.add_argument(
        "--model", required=True, help="model name; created first when a model source is given"
    )
    _model_source_options(batch, optional=True)
    batch.add_argument("--input", required=True, type=s3_uri, help="S3 prefix of the request files")
    batch.add_argument("--output", required=True, type=s3_uri, help="S3 prefix for the .out files")
    batch.add_argument("--instance-type", default="ml.m5.xlarge", help="default: ml.m5.xlarge")
    batch.add_argument("--instance-count", type=positive_int, default=1)
    batch.add_argument("--content-type", choices=[JSON_LINES, CSV], default=JSON_LINES)
    batch.add_argument(
        "--single-record", action="store_true", help="one line per request (default: MultiRecord)"
    )
    batch.add_argument(
        "--max-payload-mb", type=positive_int, default=6, help="largest mini-batch (default: 6)"
    )
    batch.add_argument("--join-input", action="store_true", help="write each input line with its prediction")
    batch.add_argument("--job-name", help="default: MODEL-<timestamp>")
    batch.add_argument("--no-wait", action="store_true")

    from recsys.sagemaker.process import add_prepare_arguments

    prepare = actions.add_parser(
        "prepare",
        parents=[common],
        help="run a Processing job of the image that cleans and splits raw logs into channels",
        description="A SageMaker Processing job running `docker run IMAGE prepare` on raw interaction "
        "logs; writes train/, validation/, test/ (and items/, users/, report/) under --output, ready "
        "for `recsys aws train`. With --instance-count > 1 the raw files are split between the "
        "instances (ShardedByS3Key).",
    )
    prepare.add_argument("--image", required=True, help="the image URI (printed by `recsys aws push`)")
    _role_option(prepare)
    prepare.add_argument("--input", required=True, type=s3_uri, help="S3 prefix of the raw interaction logs")
    prepare.add_argument("--items", type=s3_uri, help="S3 prefix of an item attribute table (optional)")
    prepare.add_argument("--users", type=s3_uri, help="S3 prefix of a user attribute table (optional)")
    prepare.add_argument("--output", required=True, type=s3_uri, help="S3 prefix for the channels")
    prepare.add_argument("--instance-type", default="ml.m5.xlarge", help="default: ml.m5.xlarge")
    prepare.add_argument("--instance-count", type=positive_int, default=1)
    prepare.add_argument(
        "--volume-size", type=positive_int, default=30, help="EBS GB per instance (default: 30)"
    )
    prepare.add_argument("--max-run", type=duration, default=24 * 3600, help="time limit (default: 24h)")
    prepare.add_argument("--job-name", help="default: recsys-prepare-<timestamp>")
    prepare.add_argument("--no-wait", action="store_true", help="return once the job is created")
    add_prepare_arguments(prepare)

    api = actions.add_parser(
        "api",
        help="a public HTTPS API in front of an endpoint (API Gateway -> Lambda -> InvokeEndpoint)",
        description="Deploy or delete a CloudFormation stack: a REST API (IAM auth, or Cognito), a "
        "throttling usage plan, and a Lambda function that validates requests and calls one endpoint.",
    )
    api_actions = api.add_subparsers(dest="api_command", required=True, metavar="{deploy,delete}")
    api_deploy = api_actions.add_parser(
        "deploy", parents=[common], help="create or update the API; prints its URL"
    )
    api_deploy.add_argument("--endpoint", required=True, help="the SageMaker endpoint to put behind it")
    api_deploy.add_argument(
        "--code-s3",
        required=True,
        type=s3_uri,
        help="S3 prefix for the function's zip (a bucket in the region)",
    )
    api_deploy.add_argument("--stack-name", help="default: recsys-api-<endpoint>")
    api_deploy.add_argument("--auth", choices=["iam", "cognito"], default="iam", help="default: iam (SigV4)")
    api_deploy.add_argument("--user-pool-arn", default="", help="with --auth cognito: the user pool")
    api_deploy.add_argument("--rate", type=positive_int, default=50, help="requests per second (default: 50)")
    api_deploy.add_argument("--burst", type=positive_int, default=100, help="burst (default: 100)")
    api_deploy.add_argument("--quota", type=positive_int, default=100_000, help="requests per day per key")
    api_deploy.add_argument(
        "--no-api-key",
        dest="api_key",
        action="store_false",
        help="callers send no API key: no usage plan, so no per-key throttle or daily quota, only "
        "the stage's --rate/--burst over all callers (default: an API key is required)",
    )
    api_deploy.add_argument(
        "--max-body-bytes", type=positive_int, default=1_048_576, help="largest request body (default: 1 MiB)"
    )
    api_delete = api_actions.add_parser("delete", parents=[common], help="delete the API's stack")
    api_delete.add_argument("--stack-name", required=True)

    delete = actions.add_parser(
        "delete", parents=[common], help="delete an endpoint, its endpoint config and its model"
    )
    delete.add_argument("--name", required=True)
    delete.add_argument("--keep-model", action="store_true", help="delete the endpoint and its config only")

    for parser in (push, train, tune, deploy, invoke, batch, prepare, api_deploy, api_delete, delete):
        parser.set_defaults(func=run_aws)


def _model_source_options(
    parser: argparse.ArgumentParser, *, optional: bool = False, multi_model: bool = False
) -> None:
    source = parser.add_mutually_exclusive_group(required=not optional)
    source.add_argument("--training-job", help="a completed training job: its model, image and role")
    source.add_argument("--model-data", type=s3_uri, help="an S3 model.tar.gz (with --image)")
    if multi_model:
        source.add_argument(
            "--multi-model",
            type=s3_uri,
            metavar="S3_PREFIX",
            help="a multi-model endpoint over the model.tar.gz files under this prefix (with --image)",
        )
    parser.add_argument("--image", help="serving image URI (default: the training job's)")
    _role_option(parser, required_note="; default with --training-job: the job's role")
    parser.add_argument(
        "--env",
        type=key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="container environment, e.g. SAGEMAKER_MODEL_SERVER_WORKERS=2 (repeatable)",
    )


# -- resolution at the edge ----------------------------------------------------------------------------


def new_session(region: str | None, profile: str | None) -> Any:
    """The boto3 session every AWS call goes through (tests wrap this to watch the requests)."""
    import boto3

    return boto3.Session(region_name=region, profile_name=profile)


def resolve_region(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """--region, then AWS_REGION, then AWS_DEFAULT_REGION; None leaves boto3 to read the profile's
    ``region`` from the config file. An empty value counts as unset."""
    for region in (flag, *(environ.get(name) for name in REGION_ENVS)):
        if region and region.strip():
            return region.strip()
    return None


def resolve_session(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    from botocore.exceptions import ProfileNotFound

    from recsys.aws.common import no_credentials_message, no_region_message

    try:
        session = new_session(resolve_region(args.region, environ), args.profile)
    except ProfileNotFound as exc:
        raise UserError(f"{exc}: list the profiles with `aws configure list-profiles`.") from exc
    if session.get_credentials() is None:
        raise UserError(no_credentials_message())
    if session.region_name is None:
        config_file = environ.get(CONFIG_FILE_ENV) or DEFAULT_CONFIG_FILE
        raise UserError(no_region_message(session.profile_name, config_file))
    return session


def resolve_role(args: argparse.Namespace, environ: Mapping[str, str], fallback: str | None = None) -> str:
    role = args.role or environ.get(ROLE_ENV) or fallback
    if not role:
        raise UserError(
            f"no SageMaker execution role: pass --role arn:aws:iam::ACCOUNT:role/NAME or set {ROLE_ENV}. "
            + ROLE_PERMISSIONS_HINT
        )
    if not _ROLE_ARN.fullmatch(role):
        source = "--role" if args.role else ROLE_ENV
        raise UserError(
            f"{source} must be an IAM role ARN such as arn:aws:iam::123456789012:role/SageMakerRecsys; "
            f"got {role!r}."
        )
    return role


def resolve_training(
    args: argparse.Namespace, environ: Mapping[str, str], *, local: bool = False
) -> TrainingSpec:
    from recsys.aws.jobs import validate_hyperparameters

    channels = {name: getattr(args, name) for name in KNOWN_CHANNELS if getattr(args, name)}
    if not local:
        for name, uri in channels.items():
            if not _S3_URI.fullmatch(uri):
                raise UserError(f"--{name} must be an S3 URI such as s3://bucket/{name}/; got {uri!r}.")
        if args.output is None:
            raise UserError(
                "--output is required unless --local: the S3 prefix where SageMaker writes model.tar.gz."
            )
    hyperparameters = dict(args.hyperparameter)
    validate_hyperparameters(hyperparameters)
    if local and args.spot:
        raise UserError("--spot has no meaning with --local: local mode runs on this machine's Docker.")
    spot = None
    if args.spot:
        max_wait = args.max_wait or 2 * args.max_run
        if max_wait < args.max_run:
            raise UserError(f"--max-wait ({max_wait} s) must be at least --max-run ({args.max_run} s).")
        checkpoint = getattr(args, "checkpoint_s3", None)
        if checkpoint is None and args.output is not None:
            # A fresh prefix per launch: a later job must not resume from this one's checkpoints.
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            checkpoint = f"{args.output.rstrip('/')}/checkpoints/{args.job_name_prefix}-{stamp}/"
        spot = SpotConfig(max_wait_seconds=max_wait, checkpoint_s3_uri=checkpoint)
    elif args.max_wait is not None or getattr(args, "checkpoint_s3", None) is not None:
        raise UserError("--max-wait and --checkpoint-s3 apply to managed spot training: add --spot.")
    return TrainingSpec(
        image_uri=args.image,
        role_arn="" if local else resolve_role(args, environ),
        channels=channels,
        output_s3_uri=args.output,
        hyperparameters=hyperparameters,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        volume_size_gb=args.volume_size,
        max_run_seconds=args.max_run,
        spot=spot,
        base_job_name=args.job_name_prefix,
    )


def resolve_tuning(args: argparse.Namespace, environ: Mapping[str, str]) -> TuningSpec:
    from recsys.aws.jobs import validate_ranges

    training = resolve_training(args, environ)
    ranges = tuple(parse_range(text) for text in args.range) or DEFAULT_TUNING_RANGES
    validate_ranges(ranges, training.hyperparameters)
    if args.max_parallel_jobs > args.max_jobs:
        raise UserError(
            f"--max-parallel-jobs ({args.max_parallel_jobs}) exceeds --max-jobs ({args.max_jobs})."
        )
    return TuningSpec(
        training=training,
        ranges=ranges,
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
        strategy=args.strategy,
        early_stopping=args.early_stopping,
        base_job_name=f"{args.job_name_prefix}-tune",
    )


def resolve_model(
    args: argparse.Namespace, environ: Mapping[str, str], session: Any, name: str
) -> ModelSpec | None:
    """The model to create from --training-job or --model-data; None when neither is given."""
    from recsys.aws.hosting import model_source_from_training_job

    if args.training_job:
        model_data, image, role = model_source_from_training_job(session, args.training_job)
        return ModelSpec(
            name, args.image or image, model_data, resolve_role(args, environ, role), dict(args.env)
        )
    if args.model_data:
        if not args.image:
            raise UserError("--model-data needs --image: the serving image's URI (from `recsys aws push`).")
        return ModelSpec(name, args.image, args.model_data, resolve_role(args, environ), dict(args.env))
    prefix = getattr(args, "multi_model", None)
    if prefix:
        if not args.image:
            raise UserError("--multi-model needs --image: the serving image's URI (from `recsys aws push`).")
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        # The container reads the mode from its environment (recsys.sagemaker.contract).
        environment = {MULTI_MODEL_ENV: "true", **dict(args.env)}
        return ModelSpec(name, args.image, prefix, resolve_role(args, environ), environment, multi_model=True)
    return None


def read_request_body(args: argparse.Namespace) -> tuple[bytes, str]:
    if args.body is not None:
        body, guessed = args.body.encode("utf-8"), JSON
    else:
        path: Path = args.file
        try:
            body = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read --file {path}: {exc.strerror}.") from exc
        suffix = path.suffix.lower()
        guessed = {".jsonl": JSON_LINES, ".csv": CSV}.get(suffix, JSON)
    content_type = args.content_type or guessed
    if content_type == JSON:
        try:
            json.loads(body)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"the request is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
            ) from exc
    return body, content_type


# -- the commands --------------------------------------------------------------------------------------


def run_aws(args: argparse.Namespace) -> int:
    """Entry of every ``recsys aws`` command."""
    missing = [name for name in ("boto3", "sagemaker") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"`recsys aws` needs the aws extra ({', '.join(missing)} missing): pip install 'recsys[aws]' "
            f"(make install does)."
        )
    if not args.verbose:
        for log_handler in logging.getLogger().handlers:
            log_handler.addFilter(_quiet_libraries)
    environ = os.environ
    command = args.aws_command
    if command == "train" and args.local is not None:
        return _train_locally(args)
    session = resolve_session(args, environ)
    commands: dict[str, Callable[[argparse.Namespace, Mapping[str, str], Any], int]] = {
        "push": _push,
        "train": _train,
        "tune": _tune,
        "deploy": _deploy,
        "invoke": _invoke,
        "batch": _batch,
        "prepare": _prepare,
        "api": _api,
        "delete": _delete,
    }
    return commands[command](args, environ, session)


def _push(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.images import DockerCli, push_image

    last = args.image.split("/")[-1]
    tag = args.tag or (last.rsplit(":", 1)[1] if ":" in last else "latest")
    uri = push_image(session, PushSpec(args.image, args.repository, tag), DockerCli(), echo)
    echo(uri)
    return 0


def _console_url(session: Any, kind: str, name: str) -> str:
    region = session.region_name
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/{kind}/{name}"


def _train(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.jobs import follow_training_job, start_training

    spec = resolve_training(args, environ)
    job_name = start_training(session, spec)
    echo(f"training job {job_name}: {_console_url(session, 'jobs', job_name)}")
    if spec.spot and spec.spot.checkpoint_s3_uri:
        echo(f"checkpoints: {spec.spot.checkpoint_s3_uri}")
    if args.no_wait:
        return 0
    follow_training_job(session, job_name, echo)
    echo(f"next: recsys aws deploy --training-job {job_name} --name recsys-endpoint")
    return 0


def _train_locally(args: argparse.Namespace) -> int:
    from recsys.aws.images import DockerCli
    from recsys.aws.jobs import train_locally

    spec = resolve_training(args, os.environ, local=True)
    model_dir = train_locally(spec, args.local, DockerCli(), echo)
    echo(f"model: {model_dir}")
    return 0


def _tune(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.jobs import follow_tuning_job, start_tuning

    spec = resolve_tuning(args, environ)
    job_name = start_tuning(session, spec)
    echo(
        f"tuning job {job_name} ({spec.max_jobs} training jobs, {spec.max_parallel_jobs} at a time): "
        f"{_console_url(session, 'hyper-tuning-jobs', job_name)}"
    )
    if args.no_wait:
        return 0
    follow_tuning_job(session, job_name, echo)
    return 0


def _deploy(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.hosting import deploy

    model = resolve_model(args, environ, session, args.name)
    if model is None:
        raise UserError("deploy needs --training-job, --model-data or --multi-model.")
    autoscaling = None
    if (
        args.min_instances is not None
        or args.max_instances is not None
        or args.target_invocations is not None
    ):
        if args.min_instances is None or args.max_instances is None:
            raise UserError("autoscaling needs both --min-instances and --max-instances.")
        if args.no_wait:
            raise UserError("autoscaling registers the endpoint once it is InService: leave out --no-wait.")
        autoscaling = AutoscalingSpec(
            args.min_instances,
            args.max_instances,
            args.target_invocations if args.target_invocations is not None else DEFAULT_TARGET_INVOCATIONS,
        )
    serverless = None
    if args.serverless is not None:
        if model.multi_model:
            raise UserError("serverless endpoints host one model: --multi-model needs instances.")
        serverless = ServerlessSpec(args.serverless, args.max_concurrency)
    endpoint = EndpointSpec(
        name=args.name,
        instance_type=args.instance_type,
        instance_count=max(args.instance_count, autoscaling.min_instances)
        if autoscaling
        else args.instance_count,
        startup_health_check_seconds=args.startup_timeout,
        inference_ami_version=args.inference_ami_version,
        autoscaling=autoscaling,
        serverless=serverless,
    )
    if not 60 <= endpoint.startup_health_check_seconds <= 3600:
        raise UserError(f"--startup-timeout must be between 60 s and 1 h; got {args.startup_timeout} s.")
    deploy(session, model, endpoint, echo, wait=not args.no_wait)
    echo(f'try it: recsys aws invoke --endpoint {args.name} --body \'{{"user_id": "u0001", "k": 5}}\'')
    return 0


def _invoke(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.hosting import invoke

    body, content_type = read_request_body(args)
    answer = invoke(
        session,
        args.endpoint,
        body,
        content_type=content_type,
        accept=args.accept or content_type,
        target_model=args.target_model,
    )
    sys.stdout.write(answer.decode("utf-8", errors="replace").rstrip("\n") + "\n")
    return 0


def _batch(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.hosting import start_transform, wait_for_transform

    model = resolve_model(args, environ, session, args.model)
    spec = TransformSpec(
        job_name=args.job_name or timestamped_name(args.model),
        model_name=args.model,
        input_s3_uri=args.input,
        output_s3_uri=args.output,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        content_type=args.content_type,
        single_record=args.single_record,
        max_payload_mb=args.max_payload_mb,
        join_input=args.join_input,
    )
    start_transform(session, spec, echo, model=model)
    if args.no_wait:
        return 0
    wait_for_transform(session, spec.job_name, echo)
    return 0


def resolve_prepare(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    from recsys.aws.processing import PrepareJobSpec
    from recsys.sagemaker.process import ATTRIBUTE_INPUTS, config_from_args, prepare_arguments

    config = config_from_args(args)  # bad settings are refused here, before any request
    return PrepareJobSpec(
        job_name=args.job_name or timestamped_name("recsys-prepare"),
        image_uri=args.image,
        role_arn=resolve_role(args, environ),
        interactions_s3_uri=args.input,
        output_s3_uri=args.output,
        arguments=tuple(prepare_arguments(args)),
        attribute_s3_uris={name: getattr(args, name) for name in ATTRIBUTE_INPUTS if getattr(args, name)},
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        volume_size_gb=args.volume_size,
        max_runtime_seconds=args.max_run,
        cold_users=config.cold_user_fraction > 0,
    )


def _prepare(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.processing import next_training_command, start_prepare, wait_for_prepare
    from recsys.sagemaker.process import REPORT_OUTPUT

    spec = resolve_prepare(args, environ)
    start_prepare(session, spec)
    echo(f"processing job {spec.job_name}: {_console_url(session, 'processing-jobs', spec.job_name)}")
    if args.no_wait:
        return 0
    wait_for_prepare(session, spec, echo)
    # The report's file name is the data layer's (it loads pandas: only now, after the job).
    from recsys.data.prepare_report import REPORT_MARKDOWN

    echo(f"report: {spec.output_uri(REPORT_OUTPUT)}{REPORT_MARKDOWN}")
    echo(f"next: {next_training_command(spec)}")
    return 0


def _api(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.api import ApiSpec, delete_api, deploy_api

    if args.api_command == "delete":
        delete_api(session, args.stack_name, echo)
        return 0
    spec = ApiSpec(
        stack_name=args.stack_name or f"recsys-api-{args.endpoint}",
        endpoint_name=args.endpoint,
        code_s3_uri=args.code_s3,
        auth=args.auth,
        user_pool_arn=args.user_pool_arn,
        throttle_rate=args.rate,
        throttle_burst=args.burst,
        quota_per_day=args.quota,
        max_body_bytes=args.max_body_bytes,
        require_api_key=args.api_key,
    )
    outputs = deploy_api(session, spec, echo)
    for line in api_usage_lines(spec, outputs, session.region_name):
        echo(line)
    return 0


def api_usage_lines(spec: ApiSpec, outputs: Mapping[str, str], region: str) -> list[str]:
    """How to fetch the API key and call the API, as ``api deploy`` prints them."""
    url = outputs.get("InvokeUrl", "URL")
    lines: list[str] = []
    key_header = ""
    key_id = outputs.get("ApiKeyId")
    if key_id:
        lines.append(
            f"API key {key_id}: requests send it as x-api-key (usage plan: {spec.throttle_rate}/s, "
            f"burst {spec.throttle_burst}, {spec.quota_per_day:,} a day); fetch it with"
        )
        lines.append(
            f"  API_KEY=$(aws apigateway get-api-key --api-key {key_id} --include-value "
            f"--query value --output text --region {region})"
        )
        key_header = '-H "x-api-key: $API_KEY" '
    example = f'-H \'Content-Type: {JSON}\' -d \'{{"user_id": "u0001", "k": 5}}\' {url}'
    if spec.auth == "iam":
        # Temporary credentials (SSO, an assumed role) sign with their session token too, which
        # curl sends as x-amz-security-token; the export fills all three from any profile. With
        # long-term keys the token is empty, and curl leaves an empty header out.
        lines.append(
            "try it (credentials allowed execute-api:Invoke): "
            'eval "$(aws configure export-credentials --format env)"; '
            f'curl --aws-sigv4 "aws:amz:{region}:execute-api" '
            '--user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" '
            '-H "x-amz-security-token: $AWS_SESSION_TOKEN" '
            f"{key_header}{example}"
        )
    else:
        lines.append(f'try it: curl -H "Authorization: $ID_TOKEN" {key_header}{example}')
    return lines


def _delete(args: argparse.Namespace, environ: Mapping[str, str], session: Any) -> int:
    from recsys.aws.hosting import delete_endpoint_resources

    delete_endpoint_resources(session, args.name, echo, keep_model=args.keep_model)
    return 0
