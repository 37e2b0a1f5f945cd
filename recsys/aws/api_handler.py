"""The Lambda function between API Gateway and the endpoint: validate, InvokeEndpoint, pass errors on.

Deployed alone (``recsys aws api deploy`` zips this file as ``api_handler.py``): it imports the
standard library and boto3 only, which Lambda's Python runtime provides. Configuration comes from
the function's environment, set by the template (recsys/aws/templates/api.yaml):

- ``ENDPOINT_NAME``: the SageMaker endpoint to call (the role may call no other);
- ``MAX_BODY_BYTES``: the largest request body passed on (a 413 above it);
- ``SAGEMAKER_RUNTIME_URL``: optional, another runtime API address (tests point it at a stand-in).

Requests are API Gateway proxy events (REST API, payload 1.0, or HTTP API, payload 2.0): ``POST``
with a JSON, JSON Lines or CSV body, as the endpoint takes them; ``X-Target-Model`` picks the model
of a multi-model endpoint. Answers are the endpoint's own: its 200 body, or its 4xx status and
message when the container refused the request (SageMaker's ``ModelError``). SageMaker's own
failures are JSON too: 404 for a missing endpoint, 429 when throttled, 502 otherwise.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from typing import Any

logger = logging.getLogger()
logger.setLevel(logging.INFO)

# The endpoint's request media types. recsys.serving.codecs owns them, but this file runs in
# Lambda alone, without recsys: a copy, which tests/sagemaker/test_aws_api.py holds equal.
JSON = "application/json"
MEDIA_TYPES = (JSON, "application/jsonlines", "application/x-jsonlines", "text/csv")
DEFAULT_MAX_BODY_BYTES = 5 * 2**20  # under Lambda's 6 MB synchronous payload, base64 included
TARGET_MODEL_HEADER = "x-target-model"
_client: Any = None


def _runtime() -> Any:
    """One client per container (Lambda reuses it across invocations)."""
    global _client
    if _client is None:
        import boto3

        url = os.environ.get("SAGEMAKER_RUNTIME_URL") or None
        _client = boto3.client("sagemaker-runtime", endpoint_url=url)
    return _client


def _answer(status: int, body: str | bytes, content_type: str = JSON) -> dict[str, Any]:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    return {"statusCode": status, "headers": {"Content-Type": content_type}, "body": text}


def _error(status: int, message: str) -> dict[str, Any]:
    return _answer(status, json.dumps({"error": message}))


def _method(event: dict[str, Any]) -> str:
    http = event.get("requestContext", {}).get("http", {})
    return str(event.get("httpMethod") or http.get("method") or "").upper()


def _media_type(value: str | None) -> str:
    return (value or "").partition(";")[0].strip().lower()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    if _method(event) != "POST":
        return _error(405, "send POST with the request body (see the endpoint's POST /invocations)")
    raw = event.get("body") or ""
    try:
        body = base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw.encode("utf-8")
    except (binascii.Error, ValueError):
        return _error(400, "the body is marked base64 but is not valid base64")
    if not body.strip():
        return _error(400, "empty request body: send one or more instances")
    limit = int(os.environ.get("MAX_BODY_BYTES") or DEFAULT_MAX_BODY_BYTES)
    if len(body) > limit:
        return _error(413, f"request body of {len(body):,} bytes is over the limit of {limit:,} bytes")
    content_type = _media_type(headers.get("content-type")) or JSON
    if content_type not in MEDIA_TYPES:
        return _error(415, f"unsupported Content-Type {content_type!r}; supported: {', '.join(MEDIA_TYPES)}")
    if content_type == JSON:
        try:
            json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return _error(400, f"invalid JSON: {error}")
    accept = _media_type(headers.get("accept"))
    accept = content_type if accept in ("", "*/*") else accept
    endpoint = os.environ["ENDPOINT_NAME"]
    extra = {"TargetModel": headers[TARGET_MODEL_HEADER]} if headers.get(TARGET_MODEL_HEADER) else {}
    runtime = _runtime()
    try:
        response = runtime.invoke_endpoint(
            EndpointName=endpoint, ContentType=content_type, Accept=accept, Body=body, **extra
        )
    except runtime.exceptions.ModelError as error:
        # The container answered with an error of its own: pass its status and message on.
        status = int(error.response.get("OriginalStatusCode") or 502)
        original = error.response.get("OriginalMessage") or error.response["Error"].get("Message", "")
        try:
            json.loads(original)
            return _answer(status, original)
        except (json.JSONDecodeError, TypeError):
            return _error(status, str(original))
    except runtime.exceptions.ValidationError as error:
        message = error.response["Error"].get("Message", "")
        status = 404 if "not found" in message.lower() else 400
        return _error(status, f"endpoint {endpoint}: {message}")
    except runtime.exceptions.ServiceUnavailable:
        return _error(503, f"endpoint {endpoint} is unavailable; retry")
    except Exception as error:  # throttling and the rest of SageMaker's own failures
        code = getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)
        logger.exception("InvokeEndpoint failed")
        if code in ("ThrottlingException", "TooManyRequestsException"):
            return _error(429, f"endpoint {endpoint} is throttling requests; retry with backoff")
        return _error(502, f"endpoint {endpoint} could not be called ({code}); see the function's logs")
    return _answer(200, response["Body"].read(), response.get("ContentType") or accept)
