"""Fixtures of the launcher's tests: a real AWS API on localhost (moto's server, as a subprocess) and
one real, small ``recsys train`` run whose log lines stand in for a job's CloudWatch stream.

Every boto3 client the launcher and the SageMaker SDK create goes to the moto server
(``AWS_ENDPOINT_URL``); the session the CLI builds is wrapped so that each request's parameters
are recorded as the SDK hands them to boto3, before they are sent.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from recsys.data.synthetic import SyntheticData
from tests.conftest import build_tree, free_port

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's account
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRecsys"
IMAGE_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/recsys:1.0"
REPO_ROOT = Path(__file__).resolve().parents[2]
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    for module in ("boto3", "sagemaker.train", "moto"):
        pytest.importorskip(module, reason="the launcher's tests need the aws and dev extras (make install)")
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if executable is None:
        pytest.skip("moto_server is not installed (the dev extra installs moto[server])")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as sink:
        server = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=sink, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/reset", data=b"", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@dataclass
class FakeAws:
    """The moto server, plus what the launcher asked of it."""

    url: str
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    role_allowed: bool = True
    log_lines: Sequence[str] = ()  # what a created training job's CloudWatch stream will hold
    patches: dict[str, dict[str, Any]] = field(default_factory=dict)  # operation -> fields of its answer
    denied: dict[str, str] = field(default_factory=dict)  # operation -> AccessDenied message
    session_regions: list[str | None] = field(default_factory=list)  # of each session the CLI built
    signed_regions: set[str] = field(default_factory=set)  # the regions the requests were signed for

    def client(self, service: str, region: str = REGION) -> Any:
        import boto3

        return boto3.Session(region_name=region).client(service)

    def sent(self, operation: str) -> list[dict[str, Any]]:
        """The parameters of every ``operation`` request, in order."""
        return [params for _, name, params in self.requests if name == operation]

    def patch_response(self, operation: str, fields: dict[str, Any]) -> None:
        """Answer ``operation`` with these fields over moto's (a state moto never reaches: Failed...)."""
        self.patches[operation] = fields

    def deny(self, operation: str, message: str) -> None:
        """Refuse ``operation`` as IAM would."""
        self.denied[operation] = message

    def queue_endpoint_results(self, results: list[dict[str, str]]) -> None:
        """What the next InvokeEndpoint calls answer (moto's static results queue)."""
        payload = json.dumps({"account_id": ACCOUNT, "region": REGION, "results": results}).encode()
        request = urllib.request.Request(
            f"{self.url}/moto-api/static/sagemaker/endpoint-results",
            data=payload,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def watch(self, session: Any) -> None:
        self.session_regions.append(session.region_name)
        session.events.register("provide-client-params", self._record)
        session.events.register("before-send", self._record_signing_region)
        session.events.register("before-call", self._refuse)
        session.events.register("before-call.iam.SimulatePrincipalPolicy", self._simulate)
        session.events.register("after-call.sagemaker.CreateTrainingJob", self._write_job_log)
        session.events.register("after-call", self._patch)

    def _refuse(self, model: Any, **_: Any) -> None:
        if model.name in self.denied:
            from botocore.exceptions import ClientError

            error = {"Error": {"Code": "AccessDeniedException", "Message": self.denied[model.name]}}
            raise ClientError(error, model.name)  # type: ignore[arg-type]

    def _patch(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        parsed.update(copy.deepcopy(self.patches.get(model.name, {})))

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.requests.append((model.service_model.service_name, model.name, copy.deepcopy(params)))

    def _record_signing_region(self, request: Any, **_: Any) -> None:
        # The endpoint is localhost whatever the region: the SigV4 credential scope names it.
        authorization = request.headers.get("Authorization") or ""
        if isinstance(authorization, bytes):
            authorization = authorization.decode()
        scope = _CREDENTIAL_SCOPE.search(authorization)
        if scope:
            self.signed_regions.add(scope.group(1))

    def _simulate(self, **_: Any) -> tuple[Any, dict[str, Any]]:
        # moto lacks iam:SimulatePrincipalPolicy, which the SDK's role check calls: answer it here.
        from botocore.awsrequest import AWSResponse

        decision = "allowed" if self.role_allowed else "explicitDeny"
        actions = self.sent("SimulatePrincipalPolicy")[-1]["ActionNames"]
        results = [{"EvalActionName": a, "EvalDecision": decision} for a in actions]
        return AWSResponse(self.url, 200, {}, None), {"EvaluationResults": results, "IsTruncated": False}

    def _write_job_log(self, **_: Any) -> None:
        # What SageMaker does while the job runs: the container's lines land in CloudWatch.
        if not self.log_lines:
            return
        job_name = self.sent("CreateTrainingJob")[-1]["TrainingJobName"]
        logs = self.client("logs")
        group, stream = "/aws/sagemaker/TrainingJobs", f"{job_name}/algo-1-1700000000"
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        now = int(time.time() * 1000)
        events = [{"timestamp": now + i, "message": line} for i, line in enumerate(self.log_lines)]
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


@pytest.fixture()
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeAws:
    """A fresh moto state, this process's AWS settings pointed at it, and the CLI's session watched."""
    from recsys.aws import cli as launcher_cli

    with urllib.request.urlopen(f"{moto_url}/moto-api/reset", data=b"", timeout=10):
        pass
    for name in (
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "RECSYS_SAGEMAKER_ROLE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE", raising=False)

    fake = FakeAws(moto_url)
    # The SDK validates the role against IAM: its trust policy must name SageMaker.
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sagemaker.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    fake.client("iam").create_role(RoleName="SageMakerRecsys", AssumeRolePolicyDocument=json.dumps(trust))

    original = launcher_cli.new_session

    def watched(region: str | None, profile: str | None) -> Any:
        session = original(region, profile)
        fake.watch(session)
        return session

    monkeypatch.setattr(launcher_cli, "new_session", watched)
    return fake


@dataclass(frozen=True)
class TrainingRun:
    lines: list[str]  # stdout and stderr of `recsys train`, as CloudWatch would hold them
    metrics: dict[str, Any]  # output/data/metrics.json


# Early stopping with patience 1 at a high learning rate: the last epoch is worse than the best,
# so "the last value in the log" and "the last epoch's value" differ.
# Wide and unregularised, so the tiny data set is overfit within a few epochs and the
# kept model is not the last epoch's.
EARLY_STOPPING_HYPERPARAMETERS = {
    "epochs": "8",
    "embedding_dim": "32",
    "history_length": "10",
    "patience": "1",
    "learning_rate": "0.05",
    "weight_decay": "0",
}


@pytest.fixture(scope="session")
def training_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> TrainingRun:
    """One real ``python -m recsys train`` on the tiny data set (a few seconds)."""
    base = build_tree(
        tmp_path_factory.mktemp("opt_ml"), tiny_data, hyperparameters=EARLY_STOPPING_HYPERPARAMETERS
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_"))}
    env["SAGEMAKER_BASE_DIR"] = str(base)
    result = subprocess.run(
        [sys.executable, "-m", "recsys", "train"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text(encoding="utf-8"))
    return TrainingRun(lines=(result.stdout + result.stderr).splitlines(), metrics=metrics)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture()
def recsys_aws(capsys: pytest.CaptureFixture[str]) -> Run:
    """``recsys aws ARGS... --region eu-west-1``: (exit code, stdout, stderr)."""
    from recsys.cli import main

    def run(*args: str, region: str | None = REGION) -> tuple[int, str, str]:
        capsys.readouterr()
        argv = ["aws", *args, *(["--region", region] if region else [])]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return run
