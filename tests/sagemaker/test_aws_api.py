"""``recsys aws api deploy|delete``: the template linted by cfn-lint and deployed into moto's
CloudFormation, with the function's role limited to the one endpoint, and a redeploy that reaches
the function's code and the stage. moto creates no Stage, UsagePlan, ApiKey or Authorizer:
tests/sagemaker/test_aws_api_template.py checks those in the template itself."""

from __future__ import annotations

import ast
import base64
import hashlib
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from recsys.aws import api
from tests.sagemaker.conftest import REGION, FakeAws, Run

# The launcher against a moto_server subprocess: left out of `make test-fast`.
pytestmark = pytest.mark.slow

TEMPLATE = Path(__file__).resolve().parents[2] / "recsys" / "aws" / "templates" / "api.yaml"


def test_the_template_and_what_deploy_sends_pass_cfn_lint(tmp_path: Path) -> None:
    from recsys.aws.api import ApiSpec, stack_parameters, template_body

    spec = ApiSpec(stack_name="recsys-api-recs", endpoint_name="recs", code_s3_uri="s3://b/api/")
    sent = tmp_path / "sent.yaml"
    sent.write_text(template_body(stack_parameters(spec, "b", "api/f.zip")), encoding="utf-8")
    cfn_lint = str(Path(sys.executable).with_name("cfn-lint"))
    command = [cfn_lint, "--regions", REGION, "--", str(TEMPLATE), str(sent)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
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
    assert "x-amz-security-token: $AWS_SESSION_TOKEN" in out
    # The function: the handler alone in its zip, configured for this endpoint.
    function = aws.client("lambda").get_function(FunctionName=outputs["FunctionName"])
    assert function["Configuration"]["Environment"]["Variables"]["ENDPOINT_NAME"] == "recs"
    assert function["Configuration"]["Handler"] == "api_handler.handler"
    (put,) = aws.sent("PutObject")
    assert put["Key"].startswith("api/recsys-api-recs-function-") and put["Key"].endswith(".zip")
    uploaded = aws.client("s3").get_object(Bucket="code-bucket", Key=put["Key"])["Body"].read()
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
    assert method["apiKeyRequired"] is True  # callers need the usage plan's key by default

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


def _deployment(aws: FakeAws) -> str:
    resources = aws.client("cloudformation").list_stack_resources(StackName="recsys-api-recs")
    (logical_id,) = [
        r["LogicalResourceId"]
        for r in resources["StackResourceSummaries"]
        if r.get("ResourceType") == "AWS::ApiGateway::Deployment"
    ]
    return str(logical_id)


def test_redeploying_updates_the_functions_code_and_takes_a_new_deployment(
    aws: FakeAws, recsys_aws: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws.client("s3").create_bucket(
        Bucket="code-bucket", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    deploy = ("api", "deploy", "--endpoint", "recs", "--code-s3", "s3://code-bucket/api/")
    pool = "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/x"
    cognito = ("--auth", "cognito", "--user-pool-arn", pool)
    assert recsys_aws(*deploy)[0] == 0
    first_key, first_deployment = aws.sent("PutObject")[0]["Key"], _deployment(aws)
    gateway = aws.client("apigateway")
    (rest_api,) = gateway.get_rest_apis()["items"]
    assert len(gateway.get_deployments(restApiId=rest_api["id"])["items"]) == 1

    # A new handler and another auth: both must reach what runs.
    handler = Path(api.__file__).with_name(api.HANDLER).read_text(encoding="utf-8")
    changed = api.function_zip(handler + "\n# changed\n")
    monkeypatch.setattr(api, "function_zip", lambda source=None: changed)
    code, _, err = recsys_aws(*deploy, *cognito)
    assert code == 0, err

    second_key = aws.sent("PutObject")[1]["Key"]
    assert second_key != first_key  # the same key would leave the function's code as it was
    stored = aws.client("s3").get_object(Bucket="code-bucket", Key=second_key)["Body"].read()
    assert stored == changed
    function = aws.client("lambda").get_function(FunctionName="recsys-api-recs-invoke")["Configuration"]
    assert function["CodeSha256"] == base64.b64encode(hashlib.sha256(changed).digest()).decode()
    (update,) = aws.sent("UpdateStack")
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in update["Parameters"]}
    assert parameters["CodeKey"] == second_key and parameters["Auth"] == "cognito"
    second_deployment = _deployment(aws)
    assert second_deployment != first_deployment
    assert second_deployment == api.deployment_id(api.template_text(), update["Parameters"])
    assert f"DeploymentId: !Ref {second_deployment}\n" in update["TemplateBody"]
    assert len(gateway.get_deployments(restApiId=rest_api["id"])["items"]) == 2  # a new snapshot

    # Nothing changed: the same key and the same deployment, so nothing is redeployed.
    assert recsys_aws(*deploy, *cognito)[0] == 0
    assert aws.sent("PutObject")[2]["Key"] == second_key
    assert aws.sent("UpdateStack")[1]["TemplateBody"] == update["TemplateBody"]
    assert _deployment(aws) == second_deployment


def test_the_zip_is_the_same_bytes_for_the_same_handler() -> None:
    # Its key is its hash: a zip that changed with the clock would redeploy the function each time.
    assert api.function_zip() == api.function_zip()
    assert api.function_zip("a = 1\n") != api.function_zip("a = 2\n")
    info = zipfile.ZipFile(BytesIO(api.function_zip())).getinfo("api_handler.py")
    assert info.external_attr >> 16 == 0o644  # readable by Lambda's runtime user


def test_deploy_prints_how_to_fetch_the_key_and_call_the_api_with_it() -> None:
    from recsys.aws.cli import api_usage_lines

    spec = api.ApiSpec(stack_name="s", endpoint_name="recs", code_s3_uri="s3://b/", quota_per_day=500)
    outputs = {"InvokeUrl": "https://x.execute-api.eu-west-1.amazonaws.com/prod/recommendations"}
    keyed = "\n".join(api_usage_lines(spec, {**outputs, "ApiKeyId": "k3y"}, REGION))
    assert "aws apigateway get-api-key --api-key k3y --include-value --query value --output text" in keyed
    assert '-H "x-api-key: $API_KEY"' in keyed and "500 a day" in keyed
    assert '-H "x-amz-security-token: $AWS_SESSION_TOKEN"' in keyed
    unkeyed = "\n".join(api_usage_lines(spec, outputs, REGION))
    assert "x-api-key" not in unkeyed and "get-api-key" not in unkeyed


def test_the_handlers_media_types_are_the_servers() -> None:
    # The handler runs in Lambda without recsys, so it keeps a copy: it must accept exactly what
    # the endpoint's codecs accept, or it would refuse good requests or pass on doomed ones.
    from recsys.aws import api_handler
    from recsys.serving.codecs import MEDIA_TYPES, REQUEST_MEDIA_TYPES, content_type_of

    assert api_handler.MEDIA_TYPES == REQUEST_MEDIA_TYPES
    assert MEDIA_TYPES["json"] == api_handler.JSON
    for media_type in REQUEST_MEDIA_TYPES:
        content_type_of(media_type)  # the codecs take each one (an unknown type raises a 415)
