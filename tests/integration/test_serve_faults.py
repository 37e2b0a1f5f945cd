"""Nothing a client or a disk does takes the endpoint down: real ``recsys serve`` processes.

Requests that Python itself would choke on (integers past its 4,300-digit conversion limit,
numbers past a double, lone UTF-16 surrogates) are 400s naming the problem, and fail no request
scored beside them. A request that timed out stops taking the scoring thread. Workers exit with
a killed master. A broken artifact is one ``error:`` line and exit 1, whatever the worker count.

The servers and helpers are those of ``test_serve_http.py``; the model is the session's tiny one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from recsys.data.synthetic import SyntheticData
from recsys.errors import UserError
from recsys.serving.codecs import decode_instances
from recsys.serving.engine import Recommender
from recsys.serving.processes import LARGE_REQUEST_BYTES
from recsys.serving.schemas import parse_instances
from tests.conftest import free_port
from tests.integration.test_serve_http import (
    READY_SECONDS,
    REPO_ROOT,
    Reply,
    Server,
    _assert_same,
    _error,
    _expected,
    _invoke,
    _ping_status,
    _predictions,
    _start,
    _stop,
    _wait_ready,
)
from tests.serving.trained_model import trained_tree

pytestmark = pytest.mark.slow

TIMEOUT_SECONDS = 1  # SAGEMAKER_MODEL_SERVER_TIMEOUT of the server that times requests out
# The request that times out: the default instance limit, each a known user with fresh events, so
# that every instance takes the per-row path. Scoring them all takes several times TIMEOUT_SECONDS
# (about 6 s on two cores), so a server still busy with it after its 504 cannot answer the next
# request within its own timeout. Its body (about 8 MB) is over the default limit: that server
# takes up to TIMED_OUT_PAYLOAD_MB.
TIMED_OUT_INSTANCES = 100_000
TIMED_OUT_HISTORY = 5
TIMED_OUT_PAYLOAD_MB = 32
WORKER_EXIT_SECONDS = 10.0  # the watchdog polls twice a second; the kernel's signal is at once
# A hang guard, not a timing: the trim is queued on the scoring thread as the response is sent.
TRIM_LOG_SECONDS = 30.0
BAD_ARTIFACT_EXIT_SECONDS = 60.0
LONG_INTEGER = "1" * 4301  # past Python's int <-> str conversion limit


@pytest.fixture(scope="module")
def served_base(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Path:
    return trained_tree(tmp_path_factory, tiny_data)


@pytest.fixture(scope="module")
def servers(served_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    logs = tmp_path_factory.mktemp("fault_logs")
    started: dict[str, Server] = {}
    try:
        # Both log at DEBUG: what the batcher and the memory trim do inside the process (a failed
        # batch scored again request by request, the chunks of a request, a trim) is read there.
        started["default"] = _start(served_base, logs / "default.log", verbose=True)
        started["short"] = _start(
            served_base,
            logs / "short.log",
            {
                "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(TIMEOUT_SECONDS),
                "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(TIMED_OUT_PAYLOAD_MB),
            },
            verbose=True,
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
def engine(served_base: Path) -> Recommender:
    return Recommender.load(served_base / "model")


@pytest.fixture(scope="module")
def user_ids(served_base: Path) -> list[str]:
    ids: list[str] = json.loads((served_base / "model" / "users.json").read_text(encoding="utf-8"))
    return ids


# --- requests Python chokes on ------------------------------------------------------------------

JSON = "application/json"


def _body(template: str, number: str) -> str:
    """``template`` with ``@`` replaced by ``number`` (the JSON braces make ``format`` awkward)."""
    return template.replace("@", number)


BAD_REQUESTS: dict[str, tuple[str, str, str]] = {
    # name: (body, content type, what the message must say)
    "long user_id": (_body('{"user_id": @}', LONG_INTEGER), JSON, "4,301 digits"),
    "long k": (_body('{"user_id": "u0001", "k": @}', LONG_INTEGER), JSON, "4,301 digits"),
    "long history item": (_body('{"history": ["i0001", @]}', LONG_INTEGER), JSON, "4,301 digits"),
    "long exclude": (_body('{"user_id": "u0001", "exclude": [@]}', LONG_INTEGER), JSON, "4,301 digits"),
    "long items": (_body('{"user_id": "u0001", "items": [@]}', LONG_INTEGER), JSON, "4,301 digits"),
    "long item_id": (_body('{"item_id": @}', LONG_INTEGER), JSON, "4,301 digits"),
    "long filter value": (
        _body('{"user_id": "u0001", "filter": {"genre": [@]}}', LONG_INTEGER),
        JSON,
        "digits",
    ),
    "filter past a double": (
        _body('{"user_id": "u0001", "filter": {"price": @}}', "1" * 310),
        JSON,
        "310 digits",
    ),
    "filter 1e400": ('{"user_id": "u0001", "filter": {"price": {"min": 1e400}}}', JSON, "not finite"),
    "filter NaN": ('{"user_id": "u0001", "filter": {"price": NaN}}', JSON, "not a finite number"),
    "filter Infinity": ('{"user_id": "u0001", "filter": {"price": {"max": Infinity}}}', JSON, "finite"),
    "lone surrogate item_id": ('{"item_id": "\\ud800"}', JSON, "item_id: the request holds a lone surrogate"),
    "lone surrogate history": ('{"history": ["i0001", "\\udfff"]}', JSON, "history[1]"),
    "lone surrogate user_id": ('{"user_id": "\\ud83d"}', JSON, "lone surrogate"),
    "jsonlines long integer": (
        _body('{"user_id": "u0001"}\n{"user_id": @}\n', LONG_INTEGER),
        "application/jsonlines",
        "line 2: ",
    ),
    "jsonlines lone surrogate": ('{"item_id": "\\udc00"}\n', "application/jsonlines", "line 1: item_id"),
    "csv long k": (_body("u0001,3\nu0002,@\n", LONG_INTEGER), "text/csv", "line 2: k has 4,301 digits"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_what_python_chokes_on_is_a_400_naming_it(server: Server, name: str) -> None:
    body, content_type, expected = BAD_REQUESTS[name]

    message = _error(_invoke(server, body, content_type=content_type), 400)

    assert expected in message


def test_lone_surrogates_name_unicode(server: Server) -> None:
    message = _error(_invoke(server, '{"item_id": "\\ud800"}'), 400)

    assert "not valid Unicode" in message


def test_surrogate_pairs_still_work(server: Server, engine: Recommender) -> None:
    instances = [{"user_id": "\U0001f600", "k": 3}, {"history": ["i0001", "\U0001f600"], "k": 3}]
    body = json.dumps({"instances": instances})  # ensure_ascii: the emoji goes as \ud83d\ude00
    assert "\\ud83d\\ude00" in body

    predictions = _predictions(_invoke(server, body))

    _assert_same(predictions, _expected(engine, instances))


# --- one bad request among good ones ------------------------------------------------------------

# Requests that decoding and validation accept and that only the engine refuses, while it scores
# (Recommender.recommend): the kind that reaches the micro-batch and is scored beside other
# requests. name: (fields beside a known user_id, what the message must say).
ENGINE_BAD_REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown event type": ({"exclude_event_types": ["refund"]}, "unknown event type 'refund'"),
    "event types and exclude_seen": (
        {"exclude_event_types": ["purchase"], "exclude_seen": True},
        "Send one of the two",
    ),
    "unknown filter attribute": ({"filter": {"colour": ["red"]}}, "unknown item attribute 'colour'"),
    "filter value no item has": ({"filter": {"genres": ["Polka"]}}, "no item has the value 'Polka'"),
}
# A failed micro-batch being scored again request by request (recsys.serving.batching, DEBUG).
RESCORED_BATCH = re.compile(r"a batch of (\d+) requests failed \(")


@pytest.mark.parametrize("name", list(ENGINE_BAD_REQUESTS))
def test_engine_bad_requests_pass_decoding_and_fail_in_the_engine(
    engine: Recommender, user_ids: list[str], name: str
) -> None:
    """The premise of the isolation test below: these get past everything before the batcher."""
    fields, expected = ENGINE_BAD_REQUESTS[name]
    body = json.dumps({"user_id": user_ids[0], **fields}).encode("utf-8")

    queries = parse_instances(decode_instances(body, "json", max_instances=1))

    with pytest.raises(UserError, match=re.escape(expected)):
        engine.recommend(queries)


def test_bad_requests_fail_no_request_scored_beside_them(
    server: Server, engine: Recommender, user_ids: list[str]
) -> None:
    """96 good requests and 32 bad ones at once: batches mix them, and every good one is a 200.

    Half the bad ones are refused while decoding, before the batcher; the other half pass
    decoding and fail inside the engine, so they fail the micro-batch they are scored in, and
    only scoring that batch again request by request keeps their neighbours' answers.
    """
    decode_kinds = [
        "lone surrogate item_id",
        "lone surrogate history",
        "filter past a double",
        "long user_id",
    ]
    engine_kinds = list(ENGINE_BAD_REQUESTS)
    bad_kinds = [kind for pair in zip(engine_kinds, decode_kinds, strict=True) for kind in pair]
    # (body, content type, the good instance or None, what a bad one's message must say)
    requests: list[tuple[str, str, dict[str, Any] | None, str]] = []
    for n in range(128):
        user = user_ids[n % len(user_ids)]
        if n % 4 == 3:
            kind = bad_kinds[(n // 4) % len(bad_kinds)]
            if kind in ENGINE_BAD_REQUESTS:
                fields, expected = ENGINE_BAD_REQUESTS[kind]
                requests.append((json.dumps({"user_id": user, **fields}), JSON, None, expected))
            else:
                body, content_type, expected = BAD_REQUESTS[kind]
                requests.append((body, content_type, None, expected))
        else:
            instance = {"user_id": user, "k": 5}
            requests.append((json.dumps(instance), JSON, instance, ""))
    rescored_before = len(RESCORED_BATCH.findall(server.log()))

    def send(request: tuple[str, str, dict[str, Any] | None, str]) -> Reply:
        return _invoke(server, request[0], content_type=request[1])

    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(send, requests))

    good = [(reply, request[2]) for reply, request in zip(replies, requests, strict=True) if request[2]]
    failed_good = [reply.status for reply, _ in good if reply.status != 200]
    assert not failed_good, f"{len(failed_good)} of {len(good)} good requests failed: {failed_good[:10]}"
    for reply, instance in good:
        assert instance is not None
        assert [p["item_ids"] for p in _predictions(reply)] == [
            e["item_ids"] for e in _expected(engine, [instance])
        ]
    for reply, (_, _, good_instance, expected) in zip(replies, requests, strict=True):
        if good_instance is None:  # a bad one: refused for its own reason
            assert expected in _error(reply, 400)
    # The engine's refusals really met good requests in a batch: at least one batch failed and
    # was scored again request by request (32 clients at once keep the scoring thread's queue full).
    assert len(RESCORED_BATCH.findall(server.log())) > rescored_before, server.log()[-3000:]


# --- a large request: memory ---------------------------------------------------------------------


def test_a_large_request_is_followed_by_a_trim(server: Server, user_ids: list[str]) -> None:
    """A body of 1 MiB or more: once answered, the worker returns its freed heap pages
    (``release_freed_memory``) and says so in its DEBUG log; a small request costs no trim.
    What the trim does to RSS is left to ``make bench-soak``: here it is noise."""
    instance = json.dumps({"user_id": user_ids[0], "k": 3})
    small = instance.encode("utf-8")
    # Valid JSON padded with whitespace: a large body that costs nothing to score.
    large = (instance + " " * (LARGE_REQUEST_BYTES + 4321 - len(instance))).encode("utf-8")

    assert _invoke(server, small).status == 200
    assert len(_predictions(_invoke(server, large))[0]["item_ids"]) == 3

    trimmed = f"after a request of {len(large)} bytes: "
    deadline = time.monotonic() + TRIM_LOG_SECONDS
    while trimmed not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next((line for line in server.log().splitlines() if trimmed in line), None)
    assert line is not None, f"no trim after the large request:\n{server.log()[-3000:]}"
    assert "DEBUG recsys.serving.app" in line
    if sys.platform.startswith("linux"):
        assert "returned to the system (malloc_trim)" in line, line
    assert f"after a request of {len(small)} bytes" not in server.log()


# --- a timed-out request -----------------------------------------------------------------------

# The chunks of a request larger than a micro-batch (recsys.serving.batching, DEBUG lines).
CHUNK_SCORED = re.compile(r"chunked request (\d+): scoring chunk (\d+) of (\d+)")
CHUNKED_STOPPED = re.compile(r"chunked request (\d+): its caller stopped waiting during chunk (\d+) of (\d+)")


def test_a_timed_out_request_stops_taking_the_scoring_thread(
    servers: dict[str, Server], served_base: Path, user_ids: list[str]
) -> None:
    """After its 504, no further chunk of the request is scored, and the next request is a 200.

    Told by behaviour, not by the clock: a server still scoring the rest of the big request
    (several times TIMEOUT_SECONDS of work) would answer the next request with its own 504, and
    its log would show chunks of the big request scored after its caller stopped waiting.
    """
    short = servers["short"]
    items: list[str] = json.loads((served_base / "model" / "items.json").read_text(encoding="utf-8"))
    big = {
        "instances": [
            {
                "user_id": user_ids[n % len(user_ids)],
                "history": [items[(n + j) % len(items)] for j in range(TIMED_OUT_HISTORY)],
            }
            for n in range(TIMED_OUT_INSTANCES)
        ]
    }

    timed_out = _invoke(short, big)

    assert "took longer than" in _error(timed_out, 504)
    # The line is written as the timeout cancels the request, before its 504 is sent.
    stops = list(CHUNKED_STOPPED.finditer(short.log()))
    assert stops, f"no chunked request stopped:\n{short.log()[-3000:]}"
    stop = stops[-1]
    request, stopped_at, chunks = (int(group) for group in stop.groups())
    assert stopped_at < chunks  # the timeout came with chunks still to score

    reply = _invoke(short, {"user_id": user_ids[0], "k": 3})

    assert reply.status == 200, reply.body[:500]
    assert len(_predictions(reply)[0]["item_ids"]) == 3
    log = short.log()
    scored = [
        int(m.group(2)) for m in CHUNK_SCORED.finditer(log, 0, stop.start()) if int(m.group(1)) == request
    ]
    late = [int(m.group(2)) for m in CHUNK_SCORED.finditer(log, stop.end()) if int(m.group(1)) == request]
    assert scored and max(scored) <= stopped_at  # it was being scored, chunk by chunk, until then
    assert not late, f"chunks {late[:10]} of {chunks} were scored after the request timed out"


# --- the engine on its own ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [{"price": 10**400}, {"price": {"min": 10**400}}, {"price": {"max": -(10**310)}}],
    ids=["equal", "min", "max"],
)
def test_the_numeric_filter_refuses_a_number_past_a_double(engine: Recommender, spec: dict[str, Any]) -> None:
    with pytest.raises(UserError, match="filter 'price': a number beyond the range of a double"):
        engine.filter_mask(spec)


# --- a killed master ---------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by whoever adopted it, is not)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rpartition(")")[2].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker_pids(server: Server, count: int) -> list[int]:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        pids = [int(p) for p in re.findall(r"Started server process \[(\d+)\]", server.log())]
        if len(pids) >= count:
            return pids
        time.sleep(0.1)
    pytest.fail(f"{count} workers did not start within {READY_SECONDS:g} s:\n{server.log()[-3000:]}")


def _serve(base: Path, log_path: Path, workers: int) -> Server:
    """``recsys serve`` with ``workers`` worker processes (``_start`` always runs one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_", "RECSYS_"))}
    port = free_port()
    env.update(
        SAGEMAKER_BASE_DIR=str(base),
        SAGEMAKER_BIND_TO_PORT=str(port),
        SAGEMAKER_MODEL_SERVER_WORKERS=str(workers),
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "recsys", "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(process, port, log_path)


def test_workers_exit_when_the_master_is_killed(served_base: Path, tmp_path: Path) -> None:
    server = _serve(served_base, tmp_path / "server.log", workers=2)
    workers: list[int] = []
    try:
        _wait_ready(server)
        workers = _worker_pids(server, 2)
        assert server.process.pid not in workers

        server.process.kill()  # SIGKILL: the master has no chance to stop its workers
        server.process.wait(timeout=10)
        deadline = time.monotonic() + WORKER_EXIT_SECONDS
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)

        left = [pid for pid in workers if _alive(pid)]
        assert not left, f"workers {left} still serve {WORKER_EXIT_SECONDS:g} s after the master died"
        assert _ping_status(server.port) is None
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        _stop(server)


def test_a_killed_worker_is_replaced_and_the_endpoint_keeps_answering(
    served_base: Path, tmp_path: Path, user_ids: list[str]
) -> None:
    server = _serve(served_base, tmp_path / "server.log", workers=2)
    workers: list[int] = []
    try:
        _wait_ready(server)
        workers = _worker_pids(server, 2)

        os.kill(workers[0], signal.SIGKILL)  # the OOM killer's way: no shutdown, no goodbye
        replaced = _worker_pids(server, 3)  # the master logs a third worker's start

        assert replaced[2] not in workers and _alive(replaced[2])
        assert _alive(server.process.pid)
        # Every request gets its answer afterwards, whichever worker takes the connection.
        for user in user_ids[:20]:
            reply = _invoke(server, {"user_id": user, "k": 3})
            assert reply.status == 200, reply.body[:500]
    finally:
        _stop(server)
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- broken artifacts --------------------------------------------------------------------------


def _update_checksum(model: Path, name: str) -> None:
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"][name] = hashlib.sha256((model / name).read_bytes()).hexdigest()
    (model / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _truncated(name: str) -> Callable[[Path], str]:
    """The file cut in half after training, its checksum in the manifest updated to match."""

    def damage(model: Path) -> str:
        content = (model / name).read_bytes()
        (model / name).write_bytes(content[: len(content) // 2])
        _update_checksum(model, name)
        return f"cannot read {name}"

    damage.__name__ = f"truncated {name}"
    return damage


def _flipped_manifest(model: Path) -> str:
    content = bytearray((model / "manifest.json").read_bytes())
    content[5] ^= 0xFF  # a byte that cannot start a UTF-8 character
    (model / "manifest.json").write_bytes(bytes(content))
    return "cannot read manifest.json"


def _directory_for_a_file(model: Path) -> str:
    (model / "items.json").unlink()
    (model / "items.json").mkdir()
    return "items.json is not a file"


def _manifest_as_a_list(model: Path) -> str:
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    (model / "manifest.json").write_text(json.dumps([manifest]), encoding="utf-8")
    return "manifest.json is not a JSON object"


def _manifest_without_files(model: Path) -> str:
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    del manifest["files"]
    (model / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return "manifest.json lists no files"


def _directory_for_the_weights(model: Path) -> str:
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").mkdir()
    return "model.safetensors is not a file"


@pytest.mark.parametrize(
    ("damage", "workers"),
    [
        (_truncated("model.safetensors"), 1),
        (_truncated("model.safetensors"), 2),
        (_truncated("items.json"), 2),
        (_truncated("seen_indptr.npy"), 1),
        (_flipped_manifest, 2),
        (_manifest_as_a_list, 1),
        (_manifest_without_files, 2),
        (_directory_for_a_file, 1),
        (_directory_for_the_weights, 2),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_a_broken_artifact_is_one_error_line_and_exit_1(
    served_base: Path, tmp_path: Path, damage: Callable[[Path], str], workers: int
) -> None:
    base = tmp_path / "opt_ml"
    shutil.copytree(served_base / "model", base / "model")
    problem = damage(base / "model")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SM_", "RECSYS_"))}
    env.update(
        SAGEMAKER_BASE_DIR=str(base),
        SAGEMAKER_BIND_TO_PORT=str(free_port()),
        SAGEMAKER_MODEL_SERVER_WORKERS=str(workers),
    )

    done = subprocess.run(
        [sys.executable, "-m", "recsys", "serve"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BAD_ARTIFACT_EXIT_SECONDS,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert problem in errors[0]
    assert str(base / "model") in errors[0]
    assert "Traceback" not in output
