"""``python -m recsys serve`` as a real process, spoken to over real HTTP.

The model is the one trained once for the session (``tests/serving/trained_model.py``). Two servers
run for the module: one with the default limits, one with a tiny body limit and instance limit.
Others start and stop inside their test: SIGTERM with a request in flight, and bad artifacts that
must stop the process before its port ever answers.

Every answer is compared with the engine loaded in this process where it can be, so a server that
drops, reorders or mixes up records fails here. No response body may hold a traceback.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from recsys.data.synthetic import SyntheticData
from recsys.serving.engine import Query, Recommender
from tests.conftest import free_port
from tests.serving.trained_model import trained_tree

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_SECONDS = 60.0  # model load on a busy two-core machine; usually 2-4 s
BAD_ARTIFACT_EXIT_SECONDS = 20.0
SHUTDOWN_SECONDS = 10.0
MAX_INSTANCES = 5
MAX_PAYLOAD_MB = "0.01"  # 10,485 bytes
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


# --- servers -----------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _start(
    base: Path, log_path: Path, extra_env: Mapping[str, str] | None = None, *, verbose: bool = False
) -> Server:
    """``recsys serve`` with one worker; ``verbose``: ``recsys -v``, DEBUG lines in its log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_", "RECSYS_"))}
    port = free_port()
    env.update(
        SAGEMAKER_BASE_DIR=str(base),
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_MODEL_SERVER_WORKERS="1",
        **(extra_env or {}),
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "recsys", *(["-v"] if verbose else []), "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(process, port, log_path)


def _ping_status(port: int) -> int | None:
    """The status of GET /ping, or None while nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        # Our own log must say the port is bound: a 200 from another process that took the port
        # between free_port and the bind must not pass for ours.
        bound = f"Uvicorn running on http://0.0.0.0:{server.port}" in server.log()
        if bound and _ping_status(server.port) == 200:
            return
        time.sleep(0.1)
    pytest.fail(f"/ping did not answer 200 within {READY_SECONDS:g} s:\n{server.log()[-3000:]}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=SHUTDOWN_SECONDS)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=SHUTDOWN_SECONDS)


@pytest.fixture(scope="module")
def served_base(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data)


@pytest.fixture(scope="module")
def servers(served_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Both module servers, started together so that their start-ups overlap."""
    logs = tmp_path_factory.mktemp("server_logs")
    started: dict[str, Server] = {}
    try:
        started["default"] = _start(served_base, logs / "default.log")
        started["limited"] = _start(
            served_base,
            logs / "limited.log",
            {"RECSYS_MAX_INSTANCES": str(MAX_INSTANCES), "SAGEMAKER_MAX_PAYLOAD_IN_MB": MAX_PAYLOAD_MB},
        )
        for server in started.values():
            _wait_ready(server)
        yield started
    finally:
        for server in started.values():
            _stop(server)


@pytest.fixture(scope="module")
def server(servers: dict[str, Server]) -> Server:
    return servers["default"]


@pytest.fixture(scope="module")
def limited_server(servers: dict[str, Server]) -> Server:
    return servers["limited"]


@pytest.fixture(scope="module")
def engine(served_base: Path) -> Recommender:
    """The same artifact in this process: the oracle for what the server must answer."""
    return Recommender.load(served_base / "model")


@pytest.fixture(scope="module")
def seen(tiny_data: SyntheticData) -> dict[str, set[str]]:
    frame = tiny_data.interactions
    return {str(user): set(group["item_id"].astype(str)) for user, group in frame.groupby("user_id")}


# --- HTTP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").partition(";")[0].strip()


def _http(
    server: Server,
    method: str,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}), encode_chunked=chunked)
        response = connection.getresponse()
        reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()
    # Whatever was sent, the internals never leak into an answer.
    assert b"Traceback" not in reply.body, reply.body[:2000]
    assert b'File "' not in reply.body, reply.body[:2000]
    return reply


def _invoke(
    server: Server,
    body: bytes | str | Any,
    content_type: str | None = "application/json",
    accept: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    if isinstance(body, str):
        body = body.encode("utf-8")
    elif not isinstance(body, bytes):
        body = json.dumps(body).encode("utf-8")
    sent = dict(headers or {})
    if content_type is not None:
        sent["Content-Type"] = content_type
    if accept is not None:
        sent["Accept"] = accept
    return _http(server, "POST", "/invocations", body, sent)


def _predictions(reply: Reply) -> list[dict[str, Any]]:
    assert reply.status == 200, reply.body[:2000]
    assert reply.media_type == "application/json"
    predictions: list[dict[str, Any]] = reply.json()["predictions"]
    return predictions


def _error(reply: Reply, status: int) -> str:
    """The message of an error reply: the status, JSON ``{"error": str}`` and nothing else."""
    assert reply.status == status, reply.body[:2000]
    assert reply.media_type == "application/json"
    document = reply.json()
    assert list(document) == ["error"]
    message: str = document["error"]
    assert message
    return message


def _expected(engine: Recommender, instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Instances are JSON objects: their values' types are the fields', which mypy cannot see.
    queries = [
        Query(**{k: tuple(v) if isinstance(v, list) else v for k, v in instance.items()})  # type: ignore[arg-type]
        for instance in instances
    ]
    return [result.to_json() for result in engine.recommend(queries)]


def _assert_same(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same records in the same order; scores equal up to float noise between processes."""
    assert len(got) == len(expected)
    for row, (answer, wanted) in enumerate(zip(got, expected, strict=True)):
        assert {k: v for k, v in answer.items() if k != "scores"} == {
            k: v for k, v in wanted.items() if k != "scores"
        }, f"record {row}"
        assert answer["scores"] == pytest.approx(wanted["scores"], abs=1e-5), f"record {row}"


# --- health, parameters, OpenAPI ---------------------------------------------------------------


def test_ping_is_200_with_an_empty_body(server: Server) -> None:
    reply = _http(server, "GET", "/ping")

    assert reply.status == 200
    assert reply.body == b""


def test_execution_parameters(server: Server) -> None:
    reply = _http(server, "GET", "/execution-parameters")

    assert reply.status == 200
    parameters = reply.json()
    assert parameters["MaxConcurrentTransforms"] == 1  # SAGEMAKER_MODEL_SERVER_WORKERS=1
    assert parameters["BatchStrategy"] == "MULTI_RECORD"
    assert isinstance(parameters["MaxPayloadInMB"], int)
    assert 1 <= parameters["MaxPayloadInMB"] <= 6  # within the server's default body limit


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow ``$ref`` the way an OpenAPI client does: a JSON pointer from the document's root."""
    while "$ref" in schema:
        reference = schema["$ref"]
        assert reference.startswith("#/"), reference
        node: Any = document
        for part in reference[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(node, dict) and part in node, f"{reference} does not resolve"
            node = node[part]
        schema = node
    return schema


def test_openapi_describes_invocations_and_the_instance(server: Server) -> None:
    reply = _http(server, "GET", "/openapi.json")

    assert reply.status == 200
    document = reply.json()
    assert {"/ping", "/invocations", "/execution-parameters"} <= set(document["paths"])
    content = document["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/jsonlines", "text/csv"} <= set(content)
    request = _resolve(document, content["application/json"]["schema"])["anyOf"][0]  # {"instances": [...]}
    instance = _resolve(document, request["properties"]["instances"]["items"])
    assert {"user_id", "history", "item_id", "k", "exclude_seen", "exclude", "items", "filter"} <= set(
        instance["properties"]
    )
    (integer,) = [
        branch for branch in instance["properties"]["k"]["anyOf"] if branch.get("type") == "integer"
    ]
    assert integer["maximum"] == 1000
    assert instance.get("additionalProperties") is False  # unknown fields are refused


# --- content types and accept ------------------------------------------------------------------


TWO_INSTANCES = [{"user_id": "u0001", "k": 3}, {"user_id": "nobody", "k": 2}]
TWO_INSTANCE_BODIES = {
    "application/json": json.dumps({"instances": TWO_INSTANCES}),
    "application/jsonlines": "\n".join(json.dumps(i) for i in TWO_INSTANCES) + "\n",
    "application/x-jsonlines": "\n".join(json.dumps(i) for i in TWO_INSTANCES),
    "text/csv": "u0001,3\nnobody,2\n",
}


@pytest.mark.parametrize(
    "content_type",
    [*TWO_INSTANCE_BODIES, "application/json; charset=utf-8", "TEXT/CSV", None],
    ids=lambda c: str(c),
)
def test_every_content_type_is_read(server: Server, engine: Recommender, content_type: str | None) -> None:
    media_type = (content_type or "application/json").partition(";")[0].lower()
    reply = _invoke(server, TWO_INSTANCE_BODIES[media_type], content_type=content_type)

    predictions = _predictions(reply)
    _assert_same(predictions, _expected(engine, TWO_INSTANCES))
    assert [p["kind"] for p in predictions] == ["user", "popular"]
    assert predictions[1]["fallback"] and predictions[1]["unknown_user"]


def _parse_jsonlines(reply: Reply) -> list[dict[str, Any]]:
    assert reply.text.endswith("\n")
    return [json.loads(line) for line in reply.text.split("\n")[:-1]]


def _parse_csv(reply: Reply) -> list[list[str]]:
    assert reply.text.endswith("\n")
    return list(csv.reader(io.StringIO(reply.text)))


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("application/json", "application/json"),
        ("application/jsonlines", "application/jsonlines"),
        ("application/x-jsonlines", "application/jsonlines"),
        ("text/csv", "text/csv"),
        (None, "application/json"),
        ("*/*", "application/json"),
        ("text/csv;q=0.4, application/jsonlines;q=0.9", "application/jsonlines"),
        ("application/xml, text/csv", "text/csv"),
    ],
)
def test_accept_chooses_the_response_format(
    server: Server, engine: Recommender, accept: str | None, media_type: str
) -> None:
    reply = _invoke(server, {"instances": TWO_INSTANCES}, accept=accept)

    assert reply.status == 200, reply.body
    assert reply.media_type == media_type
    expected = _expected(engine, TWO_INSTANCES)
    if media_type == "application/json":
        _assert_same(reply.json()["predictions"], expected)
    elif media_type == "application/jsonlines":
        _assert_same(_parse_jsonlines(reply), expected)
    else:
        assert _parse_csv(reply) == [e["item_ids"] for e in expected]


@pytest.mark.parametrize("accept", ["application/xml", "text/html", "application/json;q=0"])
def test_unsupported_accept_is_406(server: Server, accept: str) -> None:
    message = _error(_invoke(server, {"instances": TWO_INSTANCES}, accept=accept), 406)

    assert accept in message
    assert "application/json" in message  # what is on offer


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded"]
)
def test_unsupported_content_type_is_415(server: Server, content_type: str) -> None:
    message = _error(_invoke(server, "u0001", content_type=content_type), 415)

    assert content_type in message
    assert "text/csv" in message  # what is supported


# --- every kind of instance --------------------------------------------------------------------


def test_every_kind_of_instance(server: Server, engine: Recommender, seen: dict[str, set[str]]) -> None:
    instances: list[dict[str, Any]] = [
        {"user_id": "u0001", "k": 5},
        {"history": ["i0003", "i0017", "i0042"], "k": 5},
        {
            "user_id": "u0002",
            "items": ["i0001", "i0002", "i0003", "i0004", "i0005", "ghost"],
            "exclude_seen": False,
        },
        {"user_id": "u0003", "k": 5, "filter": {"genres": ["Comedy", "Drama"], "price": {"max": 12}}},
        {"user_id": "u0004", "k": 5, "exclude": ["i0014", "i0049"], "exclude_seen": False},
        {"user_id": "nobody", "k": 4},
        {"k": 3},
        {"item_id": "i0010", "k": 5},
        {"item_id": "no-such-item", "k": 2},
        {"user_id": "u0005", "history": ["i0001"], "k": 2, "exclude_seen": False},
    ]

    predictions = _predictions(_invoke(server, {"instances": instances}))

    _assert_same(predictions, _expected(engine, instances))
    kinds = [p["kind"] for p in predictions]
    assert kinds == [
        "user",
        "history",
        "user",
        "user",
        "user",
        "popular",
        "popular",
        "similar",
        "popular",
        "history",
    ]
    assert not set(predictions[0]["item_ids"]) & seen["u0001"]
    assert not set(predictions[1]["item_ids"]) & {"i0003", "i0017", "i0042"}
    assert sorted(predictions[2]["item_ids"]) == ["i0001", "i0002", "i0003", "i0004", "i0005"]
    assert predictions[2]["unknown_items"] == ["ghost"]
    assert not {"i0014", "i0049"} & set(predictions[4]["item_ids"])
    assert predictions[5]["fallback"] and predictions[5]["unknown_user"]
    assert predictions[6]["fallback"] and "unknown_user" not in predictions[6]
    assert "i0010" not in predictions[7]["item_ids"]
    assert predictions[8]["unknown_items"] == ["no-such-item"] and predictions[8]["fallback"]
    assert [len(p["item_ids"]) for p in predictions] == [5, 5, 5, 5, 5, 4, 3, 5, 2, 2]


def test_a_bare_instance_and_a_bare_list_are_accepted(server: Server, engine: Recommender) -> None:
    bare = _predictions(_invoke(server, {"user_id": "u0007", "k": 4}))
    listed = _predictions(_invoke(server, [{"user_id": "u0007", "k": 4}, {"k": 1}]))

    _assert_same(bare, _expected(engine, [{"user_id": "u0007", "k": 4}]))
    _assert_same(listed, _expected(engine, [{"user_id": "u0007", "k": 4}, {"k": 1}]))


def test_numeric_user_ids_mean_the_same_user(server: Server) -> None:
    """``196`` and ``"196"`` are one id; here both are unknown, so both fall back the same way."""
    predictions = _predictions(_invoke(server, {"instances": [{"user_id": 196}, {"user_id": "196"}]}))

    assert predictions[0] == predictions[1]
    assert predictions[0]["unknown_user"]


# --- many records: order and count -------------------------------------------------------------


def _fifty_instances() -> list[dict[str, Any]]:
    """Known and unknown users interleaved, each with its own k, so a shifted line shows."""
    instances = []
    for row in range(50):
        user = f"u{row * 7 % 120 + 1:04d}" if row % 3 else f"stranger-{row}"
        instances.append({"user_id": user, "k": 1 + row % 6})
    return instances


def test_jsonlines_keeps_order_and_count(server: Server, engine: Recommender) -> None:
    instances = _fifty_instances()
    body = "".join(json.dumps(i) + "\n" for i in instances)

    reply = _invoke(server, body, content_type="application/jsonlines", accept="application/jsonlines")

    assert reply.status == 200, reply.body
    lines = _parse_jsonlines(reply)
    assert len(lines) == 50
    _assert_same(lines, _expected(engine, instances))


def test_csv_keeps_order_and_count(server: Server, engine: Recommender) -> None:
    instances = _fifty_instances()
    body = "\r\n".join(f"{i['user_id']},{i['k']}" for i in instances) + "\r\n"

    reply = _invoke(server, body, content_type="text/csv", accept="text/csv")

    assert reply.status == 200, reply.body
    assert reply.text.count("\n") == 50
    rows = _parse_csv(reply)
    assert rows == [e["item_ids"] for e in _expected(engine, instances)]
    assert [len(r) for r in rows] == [i["k"] for i in instances]


def test_csv_in_json_out(server: Server, engine: Recommender) -> None:
    instances = _fifty_instances()
    body = "\n".join(f"{i['user_id']},{i['k']}" for i in instances)

    predictions = _predictions(_invoke(server, body, content_type="text/csv", accept="application/json"))

    _assert_same(predictions, _expected(engine, instances))


def test_a_csv_request_with_histories_is_answered_as_the_same_request_in_json(server: Server) -> None:
    # A known user's fresh events (merged with the stored ones), a new user's quoted history, and a
    # known user's history with k left empty: the CSV decoder must give the JSON request's instances.
    body = 'u0002,5,i0003|i0017\r\n,4,"i0003|i0010|i0042"\r\n"u0005",,i0001\r\n'
    instances: list[dict[str, Any]] = [
        {"user_id": "u0002", "k": 5, "history": ["i0003", "i0017"]},
        {"k": 4, "history": ["i0003", "i0010", "i0042"]},
        {"user_id": "u0005", "history": ["i0001"]},
    ]

    from_csv = _predictions(_invoke(server, body, content_type="text/csv", accept="application/json"))
    from_json = _predictions(_invoke(server, {"instances": instances}))
    as_csv = _parse_csv(_invoke(server, body, content_type="text/csv", accept="text/csv"))

    _assert_same(from_csv, from_json)
    assert [p["kind"] for p in from_csv] == ["history"] * 3
    assert [p["fresh_events"] for p in from_csv] == [2, 3, 1]
    assert [len(p["item_ids"]) for p in from_csv] == [5, 4, 10]
    assert as_csv == [p["item_ids"] for p in from_json]


# --- headers -----------------------------------------------------------------------------------


def test_custom_attributes_are_echoed(server: Server) -> None:
    attributes = "trace_id=abc-123,variant=b"

    good = _invoke(server, {"k": 1}, headers={CUSTOM_ATTRIBUTES: attributes})
    bad = _invoke(server, {"k": 0}, headers={CUSTOM_ATTRIBUTES: attributes})
    plain = _invoke(server, {"k": 1})

    assert good.status == 200
    assert good.headers[CUSTOM_ATTRIBUTES.lower()] == attributes
    assert bad.status == 400
    assert bad.headers[CUSTOM_ATTRIBUTES.lower()] == attributes
    assert CUSTOM_ATTRIBUTES.lower() not in plain.headers


# --- bad input ---------------------------------------------------------------------------------


BAD_REQUESTS = [
    # (id, body, content type, words the message must hold)
    ("malformed-json", '{"instances": [{"user_id": "u0001"}', "application/json", ["invalid JSON", "line 1"]),
    ("not-utf8", b"\xff\xfe{}", "application/json", ["UTF-8"]),
    ("empty-body", b"", "application/json", ["empty"]),
    ("empty-list", "[]", "application/json", ["empty"]),
    ("nested-too-deep", "[" * 100_000, "application/json", ["nested"]),
    ("instances-not-list", '{"instances": {"user_id": "u1"}}', "application/json", ['"instances"', "list"]),
    ("instance-not-object", '{"instances": [1]}', "application/json", ["[0]", "number"]),
    ("field-beside-instances", '{"instances": [], "k": 3}', "application/json", ["k"]),
    ("user-id-boolean", '{"user_id": true}', "application/json", ["instance 0", "user_id"]),
    ("k-string", '{"user_id": "u0001", "k": "3"}', "application/json", ["instance 0", "k", "integer"]),
    ("k-float", '{"user_id": "u0001", "k": 2.5}', "application/json", ["k", "integer"]),
    ("history-string", '{"history": "i0001"}', "application/json", ["history", "list"]),
    ("exclude-seen-string", '{"exclude_seen": "no"}', "application/json", ["exclude_seen"]),
    ("filter-list", '{"filter": ["genres"]}', "application/json", ["filter"]),
    ("k-zero", '{"user_id": "u0001", "k": 0}', "application/json", ["k", "greater than or equal to 1"]),
    ("k-too-big", '{"user_id": "u0001", "k": 1001}', "application/json", ["k", "1000"]),
    ("unknown-field", '{"user_id": "u0001", "kk": 3}', "application/json", ["kk", "not permitted"]),
    (
        "second-instance-bad",
        '{"instances": [{"k": 1}, {"user_id": "u0001", "k": -1}]}',
        "application/json",
        ["instance 1", "k"],
    ),
    (
        "unknown-filter-attribute",
        '{"user_id": "u0001", "filter": {"colour": ["red"]}}',
        "application/json",
        ["colour", "genres", "price", "release_year"],
    ),
    (
        "filter-value-typo",
        '{"user_id": "u0001", "filter": {"genres": "comedy"}}',
        "application/json",
        ["filter 'genres'", "no item has the value 'comedy'", "did you mean 'Comedy'?"],
    ),
    (
        "bad-numeric-filter",
        '{"user_id": "u0001", "filter": {"price": {"below": 3}}}',
        "application/json",
        ["price", "min", "max"],
    ),
    ("jsonlines-bad-line", '{"k": 1}\n{"k": \n', "application/jsonlines", ["line 2", "invalid JSON"]),
    ("jsonlines-blank-line", '{"k": 1}\n\n{"k": 2}\n', "application/jsonlines", ["line 2", "blank"]),
    ("jsonlines-not-object", '{"k": 1}\n[1]\n', "application/jsonlines", ["line 2", "object"]),
    ("jsonlines-k-too-big", '{"k": 1}\n{"k": 5000}\n', "application/jsonlines", ["instance 1", "k"]),
    ("csv-bad-k", "u0001,3\nu0002,three\n", "text/csv", ["line 2", "k", "three"]),
    ("csv-too-many-fields", "u0001,3,x,y\n", "text/csv", ["line 1", "user_id[,k[,history]]"]),
    ("csv-empty-user", "u0001\n,3\n", "text/csv", ["line 2", "user_id"]),
    ("csv-k-out-of-range", "u0001,0\n", "text/csv", ["instance 0", "k"]),
]


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [pytest.param(body, ctype, words, id=name) for name, body, ctype, words in BAD_REQUESTS],
)
def test_bad_input_is_400_naming_the_problem(
    server: Server, body: str | bytes, content_type: str, words: list[str]
) -> None:
    message = _error(_invoke(server, body, content_type=content_type), 400)

    for word in words:
        assert word in message, message


def test_the_server_still_serves_after_bad_input(server: Server) -> None:
    _error(_invoke(server, "{", content_type="application/json"), 400)

    assert _predictions(_invoke(server, {"k": 2}))[0]["kind"] == "popular"
    assert _http(server, "GET", "/ping").status == 200


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps({"instances": [{"k": 1}] * (MAX_INSTANCES + 1)}), "application/json"),
        ("".join('{"k": 1}\n' for _ in range(MAX_INSTANCES + 1)), "application/jsonlines"),
        ("".join(f"u{i:04d}\n" for i in range(1, MAX_INSTANCES + 2)), "text/csv"),
    ],
    ids=["json", "jsonlines", "csv"],
)
def test_too_many_instances_is_400(limited_server: Server, body: str, content_type: str) -> None:
    message = _error(_invoke(limited_server, body, content_type=content_type), 400)

    assert "too many instances" in message
    assert str(MAX_INSTANCES + 1) in message and str(MAX_INSTANCES) in message


def test_the_instance_limit_itself_is_allowed(limited_server: Server) -> None:
    reply = _invoke(limited_server, {"instances": [{"k": 1}] * MAX_INSTANCES})

    assert len(_predictions(reply)) == MAX_INSTANCES


def _oversized_body() -> bytes:
    body = json.dumps({"history": [f"i{i:04d}" for i in range(60)] * 40}).encode()
    assert len(body) > 0.01 * 1024 * 1024
    return body


def test_body_over_the_limit_is_413(limited_server: Server) -> None:
    message = _error(_invoke(limited_server, _oversized_body()), 413)

    assert "limit" in message
    assert " MB" in message
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in message


def test_chunked_body_over_the_limit_is_413(limited_server: Server) -> None:
    """No Content-Length to refuse early: the limit must hold while the body streams in."""
    body = _oversized_body()
    chunks = iter([body[i : i + 1000] for i in range(0, len(body), 1000)])

    reply = _http(
        limited_server,
        "POST",
        "/invocations",
        chunks,
        {"Content-Type": "application/json"},
        chunked=True,
    )

    assert "limit" in _error(reply, 413)


def test_body_under_the_limit_is_served(limited_server: Server) -> None:
    body = json.dumps({"history": [f"i{i:04d}" for i in range(1, 61)] * 5, "k": 3})
    assert len(body) < 0.01 * 1024 * 1024

    assert _predictions(_invoke(limited_server, body))[0]["kind"] == "history"


# --- shutdown ----------------------------------------------------------------------------------


def _read_response(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    return data


def test_sigterm_finishes_the_request_in_flight_and_exits_0(served_base: Path, tmp_path: Path) -> None:
    server = _start(served_base, tmp_path / "server.log")
    try:
        _wait_ready(server)
        body = json.dumps({"instances": [{"user_id": "u0001", "k": 3}]}).encode()
        head = (
            f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=SHUTDOWN_SECONDS) as client:
            # Half the body: the request has started and cannot finish until the rest arrives.
            client.sendall(head + body[:10])
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert server.process.poll() is None, "the server quit with a request in flight"
            client.sendall(body[10:])
            response = _read_response(client)
        stopped_at = time.monotonic()

        assert response.startswith(b"HTTP/1.1 200"), response[:500]
        predictions = json.loads(response.partition(b"\r\n\r\n")[2])["predictions"]
        assert len(predictions[0]["item_ids"]) == 3
        assert server.process.wait(timeout=SHUTDOWN_SECONDS) == 0, server.log()[-3000:]
        assert time.monotonic() - stopped_at < SHUTDOWN_SECONDS
        assert _ping_status(server.port) is None  # the port is closed
    finally:
        _stop(server)


# --- bad artifacts -----------------------------------------------------------------------------


def _missing_model(model: Path) -> str:
    shutil.rmtree(model)
    return "does not exist"


def _no_manifest(model: Path) -> str:
    (model / "manifest.json").unlink()
    return "manifest.json is missing"


def _corrupt_weights(model: Path) -> str:
    with (model / "model.safetensors").open("ab") as weights:
        weights.write(b"\0garbage")
    return "model.safetensors does not match its checksum"


def _missing_file(model: Path) -> str:
    (model / "items.json").unlink()
    return "items.json is missing"


@pytest.mark.parametrize("damage", [_missing_model, _no_manifest, _corrupt_weights, _missing_file])
def test_a_bad_artifact_exits_non_zero_before_serving(served_base: Path, tmp_path: Path, damage: Any) -> None:
    base = tmp_path / "opt_ml"
    shutil.copytree(served_base / "model", base / "model")
    problem = damage(base / "model")
    server = _start(base, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + BAD_ARTIFACT_EXIT_SECONDS
        pings = []
        while server.process.poll() is None and time.monotonic() < deadline:
            pings.append(_ping_status(server.port))
            time.sleep(0.1)

        assert server.process.poll() is not None, f"still running after {BAD_ARTIFACT_EXIT_SECONDS:g} s"
        assert server.process.returncode != 0
        assert 200 not in pings
        log = server.log()
        assert problem in log, log[-3000:]
        assert str(base / "model") in log
        assert "Traceback" not in log  # a user error, not a crash
    finally:
        _stop(server)
