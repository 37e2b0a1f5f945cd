"""``recsys aws api deploy|delete``: the template linted by cfn-lint and deployed into moto's
CloudFormation, with the function's role limited to the one endpoint."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from tests.sagemaker.conftest import REGION, FakeAws, Run

# The launcher against a moto_server subprocess: left out of `make test-fast`.
pytestmark = pytest.mark.slow

TEMPLATE = Path(__file__).resolve().parents[2] / "recsys" / "aws" / "templates" / "api.yaml"


def test_the_template_passes_cfn_lint() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), "--regions", REGION, "--", str(TEMPLATE)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_creates_the_stack_prints_the_url_and_delete_removes_it(aws: FakeAws, recsys_aws: Run) -> None:
    aws.client("s3").create_bucket(
        Bucket="code-bucket", CreateBucketConfiguration={"LocationConstraint": REGION}
    )

    code, out, err = recsys_aws(
        "api", "deploy", "--endpoint", "recs", "--code-s3", "s3://code-bucket/api/", "--rate", "20"
    )

    assert code == 0, err
    cloudformation = aws.client("cloudformation")
    (stack,) = cloudformation.describe_stacks(StackName="recsys-api-recs")["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert (
        parameters["EndpointName"] == "recs"
        and parameters["ThrottleRate"] == "20"
        and parameters["Auth"] == "iam"
    )
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["InvokeUrl"].startswith("https://") and outputs["InvokeUrl"].endswith(
        "/prod/recommendations"
    )
    assert f"invoke URL: {outputs['InvokeUrl']}" in out and "--aws-sigv4" in out
    # The function: the handler alone in its zip, configured for this endpoint.
    function = aws.client("lambda").get_function(FunctionName=outputs["FunctionName"])
    assert function["Configuration"]["Environment"]["Variables"]["ENDPOINT_NAME"] == "recs"
    assert function["Configuration"]["Handler"] == "api_handler.handler"
    uploaded = (
        aws.client("s3")
        .get_object(Bucket="code-bucket", Key="api/recsys-api-recs-function.zip")["Body"]
        .read()
    )
    assert zipfile.ZipFile(BytesIO(uploaded)).namelist() == ["api_handler.py"]
    # Its role may invoke this endpoint and nothing else.
    role = outputs["FunctionRoleArn"].rsplit("/", 1)[1]
    iam = aws.client("iam")
    policy = iam.get_role_policy(RoleName=role, PolicyName="invoke-one-endpoint")["PolicyDocument"]
    # boto3 decodes AWS's JSON; moto's CloudFormation stores the template's mapping as its repr.
    document = policy if isinstance(policy, dict) else ast.literal_eval(policy)
    (statement,) = document["Statement"]
    assert statement["Action"] == "sagemaker:InvokeEndpoint"
    assert statement["Resource"].endswith(":endpoint/recs")
    # The POST method signs with IAM by default.
    gateway = aws.client("apigateway")
    (api,) = [a for a in gateway.get_rest_apis()["items"] if a["name"] == "recsys-api-recs"]
    resources = gateway.get_resources(restApiId=api["id"])["items"]
    (recommendations,) = [r for r in resources if r.get("pathPart") == "recommendations"]
    method = gateway.get_method(restApiId=api["id"], resourceId=recommendations["id"], httpMethod="POST")
    assert method["authorizationType"] == "AWS_IAM"

    code, out, err = recsys_aws("api", "delete", "--stack-name", "recsys-api-recs")
    assert code == 0, err
    stacks = cloudformation.list_stacks()["StackSummaries"]
    assert all(s["StackStatus"] == "DELETE_COMPLETE" for s in stacks if s["StackName"] == "recsys-api-recs")


def test_cognito_without_a_pool_is_refused_before_any_request(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(
        "api", "deploy", "--endpoint", "recs", "--code-s3", "s3://code-bucket/api/", "--auth", "cognito"
    )
    assert code == 1 and "--user-pool-arn" in err
    assert aws.sent("CreateStack") == []
