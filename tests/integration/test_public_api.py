"""The public API's Lambda handler end to end: API Gateway proxy events in, through boto3's
InvokeEndpoint to a local stand-in for the SageMaker runtime API, which forwards to a real
``python -m recsys serve`` process and answers its errors as SageMaker does (ModelError)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from recsys.aws import api_handler
from recsys.data.synthetic import SyntheticData
from recsys.serving.engine import Query, Recommender
from tests.integration.test_serve_http import _start, _stop, _wait_ready
from tests.serving.trained_model import trained_tree

pytestmark = pytest.mark.slow
ENDPOINT = "recs"


def _runtime_stand_in(serve_port: int) -> ThreadingHTTPServer:
    """POST /endpoints/<name>/invocations, as the SageMaker runtime API takes it."""

    class Runtime(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = self.path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "endpoints" or parts[2] != "invocations":
                self._reply(404, b"{}", {"Content-Type": "application/json"})
                return
            if parts[1] != ENDPOINT:
                message = json.dumps({"message": f"Endpoint {parts[1]} of account 123456789012 not found."})
                self._reply(
                    400,
                    message.encode(),
                    {"x-amzn-ErrorType": "ValidationError", "Content-Type": "application/json"},
                )
                return
            connection = http.client.HTTPConnection("127.0.0.1", serve_port, timeout=30)
            forwarded = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
            connection.request("POST", "/invocations", body=body, headers=forwarded)
            answer = connection.getresponse()
            payload = answer.read()
            connection.close()
            if answer.status == 200:
                self._reply(
                    200, payload, {"Content-Type": answer.getheader("Content-Type") or "application/json"}
                )
                return
            error = {
                "ErrorCode": "CLIENT_ERROR_FROM_MODEL",
                "OriginalStatusCode": answer.status,
                "OriginalMessage": payload.decode(),
                "Message": f"Received client error ({answer.status}) from primary",
            }
            self._reply(
                424,
                json.dumps(error).encode(),
                {"x-amzn-ErrorType": "ModelError", "Content-Type": "application/json"},
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Runtime)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data)


@pytest.fixture(scope="module")
def runtime(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _start(base, tmp_path_factory.mktemp("api_logs") / "serve.log")
    try:
        _wait_ready(server)
        stand_in = _runtime_stand_in(server.port)
        yield f"http://127.0.0.1:{stand_in.server_address[1]}"
        stand_in.shutdown()
    finally:
        _stop(server)


@pytest.fixture()
def handler(runtime: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SAGEMAKER_RUNTIME_URL", runtime)
    monkeypatch.setenv("ENDPOINT_NAME", ENDPOINT)
    monkeypatch.setenv("MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setattr(api_handler, "_client", None)
    return api_handler.handler


def _event(
    body: str, content_type: str = "application/json", *, method: str = "POST", **extra: Any
) -> dict[str, Any]:
    # API Gateway's REST proxy event (payload 1.0), as the template's integration sends it.
    return {
        "httpMethod": method,
        "headers": {"Content-Type": content_type},
        "body": body,
        "isBase64Encoded": False,
        **extra,
    }


def test_a_request_through_the_api_answers_what_the_endpoint_answers(
    handler: Any, base: Path, tiny_data: SyntheticData
) -> None:
    user = str(tiny_data.interactions["user_id"].iloc[0])
    response = handler(_event(json.dumps({"user_id": user, "k": 4})))

    assert response["statusCode"] == 200, response
    expected = Recommender.load(base / "model").recommend([Query(user_id=user, k=4)])[0]
    assert json.loads(response["body"])["predictions"][0]["item_ids"] == expected.item_ids
    # HTTP API's payload 2.0, base64 bodies, CSV: the same endpoint, the same answer.
    encoded = base64.b64encode(f"{user},4\n".encode()).decode()
    v2 = {
        "requestContext": {"http": {"method": "POST"}},
        "headers": {"content-type": "text/csv"},
        "body": encoded,
        "isBase64Encoded": True,
    }
    csv_answer = handler(v2)
    assert csv_answer["statusCode"] == 200 and csv_answer["headers"]["Content-Type"] == "text/csv"
    assert expected.item_ids[0] in csv_answer["body"]


def test_the_endpoints_own_errors_pass_through_with_their_status_and_message(handler: Any) -> None:
    response = handler(_event(json.dumps({"user_id": "u1", "k": 0})))
    assert response["statusCode"] == 400
    assert "k: Input should be greater than or equal to 1" in json.loads(response["body"])["error"]
    response = handler(_event(json.dumps({"user_id": "u1", "colour": "red"})))
    assert response["statusCode"] == 400 and "colour" in json.loads(response["body"])["error"]


def test_bad_requests_never_reach_the_endpoint_and_a_missing_endpoint_is_404(
    handler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [
        (_event("{}", method="GET"), 405, "POST"),
        (_event(""), 400, "empty"),
        (_event("{not json"), 400, "invalid JSON"),
        (_event("x" * 5000), 413, "4,096"),
        (_event("<a/>", "application/xml"), 415, "application/xml"),
        (_event("!!!", isBase64Encoded=True), 400, "base64"),
    ]
    for event, status, named in cases:
        response = handler(event)
        assert response["statusCode"] == status and named in response["body"], (event, response)
        assert "Traceback" not in response["body"]
    monkeypatch.setenv("ENDPOINT_NAME", "gone")
    response = handler(_event(json.dumps({"user_id": "u1"})))
    assert response["statusCode"] == 404 and "gone" in json.loads(response["body"])["error"]


def test_the_handler_imports_nothing_but_the_standard_library_and_boto3() -> None:
    source = Path(api_handler.__file__).read_text()
    imported = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from ")) or line.lstrip().startswith(("import ", "from "))
    }
    assert imported <= {"__future__", "base64", "binascii", "json", "logging", "os", "typing", "boto3"}, (
        imported
    )
    assert os.path.basename(api_handler.__file__) == "api_handler.py"
