"""What every AWS command shares: readable AWS errors, names, the role hint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from recsys.errors import UserError

Echo = Callable[[str], None]


Sleep = Callable[[float], None]


TERMINAL_JOB_STATES = ("Completed", "Failed", "Stopped")


ROLE_PERMISSIONS_HINT = (
    "The role must trust sagemaker.amazonaws.com and allow s3:GetObject, s3:PutObject and "
    "s3:ListBucket on your bucket, ecr:GetAuthorizationToken, ecr:BatchGetImage and "
    "ecr:GetDownloadUrlForLayer on the repository, and logs:CreateLogStream, logs:PutLogEvents "
    "(README: 'IAM permissions')."
)


def timestamped_name(base: str, now: datetime | None = None, max_length: int = 63) -> str:
    """``base-YYYYmmdd-HHMMSS``, cut to SageMaker's name limit."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"{base[: max_length - len(stamp) - 1]}-{stamp}"


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
    """Every place the launcher looks for a region, in its order (see recsys.aws.cli.resolve_region)."""
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
