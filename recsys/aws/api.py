"""A public HTTPS API in front of an endpoint, through CloudFormation: ``recsys aws api deploy|delete``.

The stack is ``templates/api.yaml``: API Gateway (REST) -> Lambda (``api_handler.py``, zipped and
uploaded here) -> InvokeEndpoint on one endpoint. Deploying again updates the same stack, and two
names make sure that an update reaches what runs:

- the function's zip is stored under a hash of its bytes, so a changed handler is a changed
  ``CodeKey`` and CloudFormation updates the function's code (the same key would look unchanged);
- the API's ``AWS::ApiGateway::Deployment`` (the stage's snapshot of the methods) is renamed with
  a hash of the template and the parameters: CloudFormation takes a new snapshot only when that
  resource is replaced, so a changed method (another auth, the API key) would otherwise never
  reach the stage.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from recsys.aws.common import Echo, aws_errors
from recsys.errors import UserError

TEMPLATE = "api.yaml"
HANDLER = "api_handler.py"
# The logical id of the template's AWS::ApiGateway::Deployment, and the one place that uses it.
DEPLOYMENT = "Deployment"
_DEPLOYMENT_RESOURCE = re.compile(rf"^  {DEPLOYMENT}:$", re.M)
_DEPLOYMENT_REFERENCE = re.compile(rf"(DeploymentId: !Ref ){DEPLOYMENT}$", re.M)
# A zip entry's time stamp and mode are part of its bytes: fixed, the same source gives the same
# zip, hence the same key, and an unchanged handler does not update the function.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o644 << 16


@dataclass(frozen=True)
class ApiSpec:
    stack_name: str
    endpoint_name: str
    code_s3_uri: str  # a prefix: the function's zip goes under it
    auth: str = "iam"  # or cognito
    user_pool_arn: str = ""
    throttle_rate: int = 50
    throttle_burst: int = 100
    quota_per_day: int = 100_000
    max_body_bytes: int = 1_048_576
    stage: str = "prod"
    # Callers send an API key, which the usage plan throttles and meters (its daily quota);
    # without one the plan would apply to no request, so the stack then has no plan at all.
    require_api_key: bool = True

    def __post_init__(self) -> None:
        if self.auth not in ("iam", "cognito"):
            raise UserError(f"--auth is iam or cognito; got {self.auth!r}.")
        if self.auth == "cognito" and not self.user_pool_arn:
            raise UserError("--auth cognito needs --user-pool-arn: the pool whose ID tokens the API accepts.")
        if not 1 <= self.max_body_bytes <= 5 * 2**20:
            raise UserError("--max-body-bytes must be between 1 and 5,242,880 (Lambda's payload limit).")

    def code_location(self, archive: bytes) -> tuple[str, str]:
        """The bucket and key of the function's zip: named by its content (see the module)."""
        bucket, _, prefix = self.code_s3_uri.removeprefix("s3://").partition("/")
        digest = hashlib.sha256(archive).hexdigest()[:16]
        key = f"{prefix.rstrip('/')}/{self.stack_name}-function-{digest}.zip".lstrip("/")
        return bucket, key


def template_text() -> str:
    """The template as it is in the package (its Deployment not yet renamed)."""
    return (resources.files("recsys.aws") / "templates" / TEMPLATE).read_text(encoding="utf-8")


def deployment_id(template: str, parameters: list[dict[str, str]]) -> str:
    """The Deployment's logical id for this template and these parameters: a new one (a new
    snapshot of the methods) whenever either changes. Anything may change a method, so everything
    counts; a needless snapshot costs nothing."""
    payload = json.dumps([template, parameters], sort_keys=True).encode("utf-8")
    return f"{DEPLOYMENT}{hashlib.sha256(payload).hexdigest()[:12]}"


def template_body(parameters: list[dict[str, str]]) -> str:
    """The template sent to CloudFormation: its Deployment renamed by ``deployment_id``."""
    template = template_text()
    logical_id = deployment_id(template, parameters)
    body, resources_renamed = _DEPLOYMENT_RESOURCE.subn(f"  {logical_id}:", template)
    body, references_renamed = _DEPLOYMENT_REFERENCE.subn(rf"\g<1>{logical_id}", body)
    if (resources_renamed, references_renamed) != (1, 1):
        # The template changed shape: a programming error, caught by the tests of this module.
        raise RuntimeError(
            f"{TEMPLATE}: expected one resource {DEPLOYMENT!r} and one 'DeploymentId: !Ref "
            f"{DEPLOYMENT}'; found {resources_renamed} and {references_renamed}"
        )
    return body


def function_zip(source: str | None = None) -> bytes:
    """The handler alone, as Lambda runs it (boto3 comes with the runtime); the same bytes for the
    same source. ``source`` replaces the handler file's text."""
    if source is None:
        source = Path(__file__).with_name(HANDLER).read_text(encoding="utf-8")
    entry = zipfile.ZipInfo(HANDLER, date_time=_ZIP_DATE)
    entry.external_attr = _ZIP_MODE
    entry.compress_type = zipfile.ZIP_DEFLATED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(entry, source)
    return buffer.getvalue()


def stack_parameters(spec: ApiSpec, code_bucket: str, code_key: str) -> list[dict[str, str]]:
    values = {
        "EndpointName": spec.endpoint_name,
        "CodeBucket": code_bucket,
        "CodeKey": code_key,
        "Auth": spec.auth,
        "CognitoUserPoolArn": spec.user_pool_arn,
        "RequireApiKey": "true" if spec.require_api_key else "false",
        "StageName": spec.stage,
        "ThrottleRate": str(spec.throttle_rate),
        "ThrottleBurst": str(spec.throttle_burst),
        "QuotaPerDay": str(spec.quota_per_day),
        "MaxBodyBytes": str(spec.max_body_bytes),
    }
    return [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()]


def _outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def deploy_api(session: Any, spec: ApiSpec, echo: Echo, *, poll_seconds: int = 10) -> dict[str, str]:
    """Upload the function, create or update the stack, wait; the stack's outputs."""
    from botocore.exceptions import ClientError, WaiterError

    archive = function_zip()
    bucket, key = spec.code_location(archive)
    parameters = stack_parameters(spec, bucket, key)
    with aws_errors(f"api deploy {spec.stack_name}"):
        session.client("s3").put_object(Bucket=bucket, Key=key, Body=archive)
        echo(f"uploaded the function to s3://{bucket}/{key}")
        cloudformation = session.client("cloudformation")
        request = {
            "StackName": spec.stack_name,
            "TemplateBody": template_body(parameters),
            "Parameters": parameters,
            "Capabilities": ["CAPABILITY_IAM"],
        }
        try:
            cloudformation.describe_stacks(StackName=spec.stack_name)
            exists = True
        except ClientError:
            exists = False
        if exists:
            try:
                cloudformation.update_stack(**request)
            except ClientError as exc:
                if "No updates are to be performed" not in str(exc):
                    raise
                echo(f"stack {spec.stack_name}: already up to date")
            waiter = "stack_update_complete"
        else:
            cloudformation.create_stack(**request, OnFailure="DELETE")
            waiter = "stack_create_complete"
        echo(
            f"stack {spec.stack_name}: {'updating' if exists else 'creating'} (API Gateway, Lambda, IAM role)"
        )
        try:
            cloudformation.get_waiter(waiter).wait(
                StackName=spec.stack_name, WaiterConfig={"Delay": poll_seconds, "MaxAttempts": 180}
            )
        except WaiterError as exc:
            events = cloudformation.describe_stack_events(StackName=spec.stack_name)["StackEvents"]
            failed = [e for e in events if str(e.get("ResourceStatus", "")).endswith("FAILED")]
            reason = failed[0].get("ResourceStatusReason", "") if failed else str(exc)
            raise UserError(f"stack {spec.stack_name} failed: {reason}") from exc
        (stack,) = cloudformation.describe_stacks(StackName=spec.stack_name)["Stacks"]
    outputs = _outputs(stack)
    echo(f"invoke URL: {outputs.get('InvokeUrl', '?')}")
    return outputs


def delete_api(session: Any, stack_name: str, echo: Echo, *, poll_seconds: int = 10) -> None:
    with aws_errors(f"api delete {stack_name}"):
        cloudformation = session.client("cloudformation")
        cloudformation.delete_stack(StackName=stack_name)
        cloudformation.get_waiter("stack_delete_complete").wait(
            StackName=stack_name, WaiterConfig={"Delay": poll_seconds, "MaxAttempts": 180}
        )
    echo(f"deleted stack {stack_name} (the API, the function and its role)")
