"""A public HTTPS API in front of an endpoint, through CloudFormation: ``recsys aws api deploy|delete``.

The stack is ``templates/api.yaml``: API Gateway (REST) -> Lambda (``api_handler.py``, zipped and
uploaded here) -> InvokeEndpoint on one endpoint. Deploying again updates the same stack.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from recsys.aws.common import Echo, aws_errors
from recsys.errors import UserError

TEMPLATE = "api.yaml"
HANDLER = "api_handler.py"


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

    def __post_init__(self) -> None:
        if self.auth not in ("iam", "cognito"):
            raise UserError(f"--auth is iam or cognito; got {self.auth!r}.")
        if self.auth == "cognito" and not self.user_pool_arn:
            raise UserError("--auth cognito needs --user-pool-arn: the pool whose ID tokens the API accepts.")
        if not 1 <= self.max_body_bytes <= 5 * 2**20:
            raise UserError("--max-body-bytes must be between 1 and 5,242,880 (Lambda's payload limit).")

    @property
    def code_location(self) -> tuple[str, str]:
        bucket, _, prefix = self.code_s3_uri.removeprefix("s3://").partition("/")
        key = f"{prefix.rstrip('/')}/{self.stack_name}-function.zip".lstrip("/")
        return bucket, key


def template_body() -> str:
    return (resources.files("recsys.aws") / "templates" / TEMPLATE).read_text(encoding="utf-8")


def function_zip() -> bytes:
    """The handler alone, as Lambda runs it (boto3 comes with the runtime)."""
    source = Path(__file__).with_name(HANDLER).read_text(encoding="utf-8")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(HANDLER, source)
    return buffer.getvalue()


def stack_parameters(spec: ApiSpec) -> list[dict[str, str]]:
    bucket, key = spec.code_location
    values = {
        "EndpointName": spec.endpoint_name,
        "CodeBucket": bucket,
        "CodeKey": key,
        "Auth": spec.auth,
        "CognitoUserPoolArn": spec.user_pool_arn,
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

    bucket, key = spec.code_location
    with aws_errors(f"api deploy {spec.stack_name}"):
        session.client("s3").put_object(Bucket=bucket, Key=key, Body=function_zip())
        echo(f"uploaded the function to s3://{bucket}/{key}")
        cloudformation = session.client("cloudformation")
        request = {
            "StackName": spec.stack_name,
            "TemplateBody": template_body(),
            "Parameters": stack_parameters(spec),
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
