"""The public API's template read as CloudFormation would resolve it, for each value of its switches.

moto's CloudFormation skips the resource types that carry the API's access rules: it creates no
``AWS::ApiGateway::Stage`` (so no MethodSettings throttling), no ``UsagePlan``, ``ApiKey`` or
``UsagePlanKey``, and no ``Authorizer``; a stack deployed into moto says nothing about them. So
these tests load the YAML with cfn-lint's decoder (which knows the short-form tags), resolve the
conditions, ``Fn::If`` and parameter references for given parameters, and check what API Gateway
would be asked to create. They also check the template that ``recsys aws api deploy`` sends: the
parameters it passes are the template's, and its renamed Deployment is the one the stage uses.
"""

from __future__ import annotations

from typing import Any

import pytest

from recsys.aws.api import ApiSpec, deployment_id, stack_parameters, template_body, template_text

cfn_yaml = pytest.importorskip(
    "cfnlint.decode.cfn_yaml", reason="cfn-lint (a dev dependency, make install) reads the template"
)

POOL_ARN = "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_abc"
_DROP = object()  # Ref AWS::NoValue: the property is left out


def _condition(node: Any, parameters: dict[str, str], conditions: dict[str, Any]) -> bool:
    (function, argument), *_ = node.items()
    if function == "Fn::Equals":
        left, right = (_value(a, parameters, conditions) for a in argument)
        return bool(left == right)
    if function == "Fn::Not":
        return not _condition(argument[0], parameters, conditions)
    if function == "Fn::And":
        return all(_condition(a, parameters, conditions) for a in argument)
    if function == "Fn::Or":
        return any(_condition(a, parameters, conditions) for a in argument)
    if function == "Condition":
        return _condition(conditions[argument], parameters, conditions)
    raise AssertionError(f"a condition function the test does not know: {function}")


def _value(node: Any, parameters: dict[str, str], conditions: dict[str, Any]) -> Any:
    """``node`` with parameters, conditions and Fn::If resolved; other intrinsics left as written."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] == "AWS::NoValue":
            return _DROP
        if set(node) == {"Ref"} and node["Ref"] in parameters:
            return parameters[node["Ref"]]
        if set(node) == {"Fn::If"}:
            name, when_true, when_false = node["Fn::If"]
            chosen = when_true if _condition(conditions[name], parameters, conditions) else when_false
            return _value(chosen, parameters, conditions)
        resolved = {str(k): _value(v, parameters, conditions) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not _DROP}
    if isinstance(node, list):
        return [v for v in (_value(item, parameters, conditions) for item in node) if v is not _DROP]
    return node


def resolve(text: str, **given: str) -> dict[str, Any]:
    """The template's resources and outputs for these parameters (the rest at their defaults)."""
    template = cfn_yaml.loads(text)
    declared = template["Parameters"]
    unknown = set(given) - set(declared)
    assert not unknown, f"not parameters of the template: {unknown}"
    parameters = {name: str(spec.get("Default", "")) for name, spec in declared.items()}
    parameters.update(given)
    conditions = template.get("Conditions", {})

    def present(entry: dict[str, Any]) -> bool:
        condition = entry.get("Condition")
        return condition is None or _condition({"Condition": condition}, parameters, conditions)

    def kept(entries: dict[str, Any]) -> dict[str, Any]:
        return {name: _value(e, parameters, conditions) for name, e in entries.items() if present(e)}

    return {"Resources": kept(template["Resources"]), "Outputs": kept(template.get("Outputs", {}))}


def _of_type(resolved: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: r for name, r in resolved["Resources"].items() if r["Type"] == kind}


def _method(resolved: dict[str, Any]) -> dict[str, Any]:
    (method,) = _of_type(resolved, "AWS::ApiGateway::Method").values()
    properties: dict[str, Any] = method["Properties"]
    return properties


def test_iam_auth_signs_the_method_and_creates_no_authorizer() -> None:
    resolved = resolve(template_text(), Auth="iam")

    assert _of_type(resolved, "AWS::ApiGateway::Authorizer") == {}
    method = _method(resolved)
    assert method["AuthorizationType"] == "AWS_IAM"
    assert "AuthorizerId" not in method  # AWS::NoValue: IAM auth takes no authorizer


def test_cognito_auth_puts_the_pools_authorizer_on_the_method() -> None:
    resolved = resolve(template_text(), Auth="cognito", CognitoUserPoolArn=POOL_ARN)

    (name, authorizer), *others = _of_type(resolved, "AWS::ApiGateway::Authorizer").items()
    assert others == []
    assert authorizer["Properties"] == {
        "Name": "cognito",
        "RestApiId": {"Ref": "Api"},
        "Type": "COGNITO_USER_POOLS",
        "IdentitySource": "method.request.header.Authorization",
        "ProviderARNs": [POOL_ARN],
    }
    method = _method(resolved)
    assert method["AuthorizationType"] == "COGNITO_USER_POOLS"
    assert method["AuthorizerId"] == {"Ref": name}


def test_the_stage_throttles_every_caller_at_the_rate_and_burst() -> None:
    for require_key in ("true", "false"):  # the stage's limit holds with or without keys
        resolved = resolve(template_text(), ThrottleRate="20", ThrottleBurst="40", RequireApiKey=require_key)

        (stage,) = _of_type(resolved, "AWS::ApiGateway::Stage").values()
        (settings,) = stage["Properties"]["MethodSettings"]
        assert settings == {
            "ResourcePath": "/*",
            "HttpMethod": "*",
            "ThrottlingRateLimit": "20",
            "ThrottlingBurstLimit": "40",
        }


def test_by_default_a_key_is_required_and_the_usage_plan_throttles_and_meters_it() -> None:
    resolved = resolve(template_text(), ThrottleRate="20", ThrottleBurst="40", QuotaPerDay="500")

    assert _method(resolved)["ApiKeyRequired"] is True
    ((plan_name, plan),) = _of_type(resolved, "AWS::ApiGateway::UsagePlan").items()
    assert plan["Properties"]["ApiStages"] == [{"ApiId": {"Ref": "Api"}, "Stage": {"Ref": "Stage"}}]
    assert plan["Properties"]["Throttle"] == {"RateLimit": "20", "BurstLimit": "40"}
    assert plan["Properties"]["Quota"] == {"Limit": "500", "Period": "DAY"}
    ((key_name, key),) = _of_type(resolved, "AWS::ApiGateway::ApiKey").items()
    assert key["Properties"]["Enabled"] is True
    # The key belongs to the plan: without this link the plan would meter no request.
    (plan_key,) = _of_type(resolved, "AWS::ApiGateway::UsagePlanKey").values()
    assert plan_key["Properties"] == {
        "KeyId": {"Ref": key_name},
        "KeyType": "API_KEY",
        "UsagePlanId": {"Ref": plan_name},
    }
    assert resolved["Outputs"]["ApiKeyId"]["Value"] == {"Ref": key_name}


def test_without_a_key_there_is_no_usage_plan_to_mislead() -> None:
    resolved = resolve(template_text(), RequireApiKey="false")

    assert _method(resolved)["ApiKeyRequired"] is False
    for kind in ("UsagePlan", "ApiKey", "UsagePlanKey"):
        assert _of_type(resolved, f"AWS::ApiGateway::{kind}") == {}, kind
    assert "ApiKeyId" not in resolved["Outputs"]


def _sent(**fields: Any) -> list[dict[str, str]]:
    spec = ApiSpec(stack_name="recsys-api-recs", endpoint_name="recs", code_s3_uri="s3://b/api/", **fields)
    return stack_parameters(spec, "b", "api/recsys-api-recs-function-0123456789abcdef.zip")


def test_deploy_sends_the_templates_parameters_and_a_deployment_the_stage_uses() -> None:
    parameters = _sent(auth="cognito", user_pool_arn=POOL_ARN, require_api_key=False)
    declared = cfn_yaml.loads(template_text())["Parameters"]
    assert {p["ParameterKey"] for p in parameters} == set(declared)

    body = template_body(parameters)
    resolved = resolve(body, **{p["ParameterKey"]: p["ParameterValue"] for p in parameters})
    (deployment,) = _of_type(resolved, "AWS::ApiGateway::Deployment")
    assert deployment == deployment_id(template_text(), parameters) != "Deployment"
    (stage,) = _of_type(resolved, "AWS::ApiGateway::Stage").values()
    assert stage["Properties"]["DeploymentId"] == {"Ref": deployment}
    assert _method(resolved)["AuthorizationType"] == "COGNITO_USER_POOLS"


def test_a_changed_method_gets_a_new_deployment_and_an_unchanged_one_keeps_its_own() -> None:
    iam, cognito = _sent(), _sent(auth="cognito", user_pool_arn=POOL_ARN)
    without_key = _sent(require_api_key=False)

    ids = [deployment_id(template_text(), p) for p in (iam, cognito, without_key)]
    assert len(set(ids)) == 3
    assert deployment_id(template_text(), _sent()) == ids[0]
    assert template_body(_sent()) == template_body(iam)
