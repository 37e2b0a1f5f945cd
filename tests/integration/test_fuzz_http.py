"""Property-based fuzzing of ``python -m recsys serve`` over real HTTP: nothing a client sends
may take the endpoint down.

One server runs for the module, on the session's tiny trained model. Hypothesis sends it
generated instances (with nasty values: huge and 4,301-digit integers, lone surrogates, NaN-like
text, very long strings, empty lists, wrong types), header variants and raw bodies in every wire
format; Schemathesis then sends what our own /openapi.json describes, and checks the answers
against it. Every answer must be below 500 and hold no traceback; every 200 must be well formed
(one prediction per instance, known item ids only, no repeats, at most k); /ping must stay 200.

Bounded for CI: a fixed number of examples per test, derandomized (the same inputs every run),
about a minute in all on two cores.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from schemathesis import GenerationMode

from recsys.data.features import column_names
from recsys.data.synthetic import SyntheticData
from recsys.serving.codecs import content_type_of, decode_instances
from recsys.serving.engine import DEFAULT_K, Recommender
from tests.integration.test_serve_http import Server, _start, _stop, _wait_ready
from tests.serving.trained_model import trained_tree

pytestmark = pytest.mark.slow

REQUEST_TIMEOUT_S = 30.0
# Each Hypothesis test: a fixed count of examples, the same ones every run, no per-example
# deadline (a shared two-core CI machine makes timings noise), no database (CI starts clean).
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
TRACEBACK = re.compile(rb"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+")


# --- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    server: Server
    items: frozenset[str]
    users: tuple[str, ...]
    item_ids: tuple[str, ...]
    filter_values: dict[str, tuple[str, ...]]  # attribute -> its values (numeric ones: none)
    context_keys: tuple[str, ...]
    event_types: tuple[str, ...]
    user_columns: tuple[str, ...]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_data: SyntheticData) -> Iterator[Live]:
    base = trained_tree(tmp_path_factory, tiny_data)
    engine = Recommender.load(base / "model")
    server = _start(base, tmp_path_factory.mktemp("fuzz_logs") / "server.log")
    try:
        _wait_ready(server)
        yield Live(
            server=server,
            items=frozenset(engine.artifact.items.ids),
            users=tuple(engine.artifact.users.ids[:20]),
            item_ids=tuple(engine.artifact.items.ids[:20]),
            filter_values={name: tuple(a.values or ()) for name, a in engine.attributes.items()},
            context_keys=tuple(engine.context_keys),
            event_types=tuple(engine.rows.event_types) or ("click",),
            user_columns=tuple(column_names(engine.artifact.user_encoding)) or ("age_group",),
        )
    finally:
        _stop(server)


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes


def _send(
    live: Live, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", live.server.port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.getheader("Content-Type") or "", response.read())
    finally:
        connection.close()


def _assert_survived(live: Live, reply: Reply, sent: bytes | None) -> None:
    """The common properties: a client's error at worst, nothing of the internals, /ping still 200."""
    if currently_in_test_context():  # pytest --hypothesis-show-statistics: how many got through
        event(f"status {reply.status}")
    shown = (sent or b"")[:600]
    assert reply.status < 500, f"{reply.status} {reply.body[:300]!r} for the body {shown!r}"
    assert not TRACEBACK.search(reply.body), f"a traceback in the body: {reply.body[:600]!r}"
    if reply.status >= 400 and reply.status != 405:
        error = json.loads(reply.body)
        assert isinstance(error, dict) and set(error) == {"error"} and isinstance(error["error"], str)
    assert _send(live, "GET", "/ping").status == 200, f"/ping went down after {shown!r}"


# --- values ----------------------------------------------------------------------------------


class Digits:
    """An integer literal written digit by digit: json.dumps refuses ints past 4,300 digits."""

    def __init__(self, text: str) -> None:
        self.text = text


def _dumps(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON text of ``value``; ``Digits`` go in as bare literals, lone surrogates as \\uXXXX
    escapes (ascii_only) or as the raw, invalid UTF-8 they would be (surrogatepass)."""
    literals: list[str] = []

    def placeholder(obj: Any) -> str:
        if isinstance(obj, Digits):
            literals.append(obj.text)
            return f"\x00digits{len(literals) - 1}\x00"
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, default=placeholder, ensure_ascii=ascii_only, allow_nan=True)
    for number, literal in enumerate(literals):
        text = text.replace(json.dumps(f"\x00digits{number}\x00"), literal)
    return text.encode("utf-8", "surrogatepass")


HUGE_INTEGERS = st.sampled_from(
    [2**63, -(2**63) - 1, 2**64, 10**308, 10**309, -(10**400), Digits("9" * 4301), Digits("1" + "0" * 5000)]
)
NAN_LIKE = st.sampled_from(
    ["NaN", "nan", "-nan", "Infinity", "-Infinity", "inf", "1e999", "-0", "null", "None"]
)
LONE_SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc00\ud800", "i\ud83d"])
LONG_TEXT = st.integers(1_000, 200_000).map(lambda n: "x" * n)
NASTY_TEXT = st.one_of(
    st.text(max_size=20), NAN_LIKE, LONE_SURROGATES, LONG_TEXT, st.just(""), st.just(" \t")
)
WRONG_TYPES = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.just([]),
    st.just({}),
    st.just([None]),
    st.just({"a": 1}),
)
NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False), HUGE_INTEGERS
)
TIMESTAMPS = st.one_of(
    st.integers(0, 2_000_000_000),
    NUMBERS,
    NAN_LIKE,
    st.sampled_from(
        [
            "2026-12-02T18:30:00Z",
            "2026-12-02T18:30:00+05:30",
            "2026-13-40",
            "yesterday",
            "9999-12-31T23:59:59",
        ]
    ),
    WRONG_TYPES,
)


def ids(live: Live, known: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(known), NASTY_TEXT, HUGE_INTEGERS, st.integers(), WRONG_TYPES)


def events(live: Live) -> st.SearchStrategy[Any]:
    event = st.fixed_dictionaries(
        {"item_id": ids(live, live.item_ids)},
        optional={
            "timestamp": TIMESTAMPS,
            "event_type": st.one_of(st.sampled_from(live.event_types), NASTY_TEXT, WRONG_TYPES),
        },
    )
    return st.one_of(ids(live, live.item_ids), event, WRONG_TYPES)


def mappings(keys: tuple[str, ...]) -> st.SearchStrategy[Any]:
    values = st.one_of(
        NASTY_TEXT,
        NUMBERS,
        WRONG_TYPES,
        st.lists(st.one_of(NASTY_TEXT, NUMBERS), max_size=3),
        st.fixed_dictionaries(
            {}, optional={"min": st.one_of(NUMBERS, WRONG_TYPES), "max": st.one_of(NUMBERS, WRONG_TYPES)}
        ),
    )
    key = st.one_of(st.sampled_from(keys), NASTY_TEXT) if keys else NASTY_TEXT
    return st.one_of(st.dictionaries(key, values, max_size=3), WRONG_TYPES)


def _valid_fields(live: Live) -> dict[str, st.SearchStrategy[Any]]:
    """Values the model accepts, field by field: the base that one nasty value goes into."""
    known_items = st.sampled_from(live.item_ids)
    event = st.fixed_dictionaries(
        {"item_id": known_items},
        optional={
            "timestamp": st.integers(1_600_000_000, 1_800_000_000),
            "event_type": st.sampled_from(live.event_types),
        },
    )
    genres = live.filter_values.get("genres", ())
    filters = st.one_of(
        st.builds(lambda g: {"genres": [g]}, st.sampled_from(genres)) if genres else st.just({}),
        st.builds(lambda x: {"price": {"max": x}}, st.floats(0, 100)),
    )
    return {
        "user_id": st.one_of(st.sampled_from(live.users), st.text(min_size=1, max_size=8)),
        "history": st.lists(st.one_of(known_items, event), max_size=6),
        "history_mode": st.sampled_from(["merge", "replace"]),
        "k": st.integers(1, 30),
        "exclude_seen": st.booleans(),
        "exclude": st.lists(known_items, max_size=5),
        "items": st.lists(known_items, min_size=1, max_size=5),
        "filter": filters,
        "context": st.fixed_dictionaries(
            {},
            optional={"device": st.sampled_from(["mobile", "tv", "web"]), "timestamp": st.integers(0, 2**31)},
        ),
    }


def _nasty_fields(live: Live) -> dict[str, st.SearchStrategy[Any]]:
    id_lists = st.one_of(st.lists(ids(live, live.item_ids), max_size=5), st.just([]), WRONG_TYPES)
    attributes = tuple(live.filter_values)
    return {
        "user_id": ids(live, live.users),
        "history": st.one_of(st.lists(events(live), min_size=1, max_size=6), st.just([]), WRONG_TYPES),
        "history_mode": st.one_of(NASTY_TEXT, WRONG_TYPES),
        "item_id": ids(live, live.item_ids),
        "k": st.one_of(st.integers(-3, 1003), HUGE_INTEGERS, NAN_LIKE, WRONG_TYPES),
        "exclude_seen": st.one_of(NASTY_TEXT, WRONG_TYPES),
        "exclude": id_lists,
        "items": id_lists,
        "exclude_event_types": st.one_of(
            st.lists(st.one_of(st.sampled_from(live.event_types), NASTY_TEXT)), WRONG_TYPES
        ),
        "filter": mappings(attributes),
        "context": mappings(live.context_keys),
        "user_attributes": mappings(live.user_columns),
    }


def instances(live: Live) -> st.SearchStrategy[dict[str, Any]]:
    """A valid instance with, most of the time, one field made nasty: one bad value at a time
    reaches the code that reads it, where a dozen would stop at the first."""
    base = st.fixed_dictionaries({}, optional=_valid_fields(live))
    nasty = _nasty_fields(live)
    mutation = st.none() | st.sampled_from(sorted(nasty)).flatmap(
        lambda name: nasty[name].map(lambda value: (name, value))
    )
    return st.builds(lambda found, change: found | dict([change] if change else []), base, mutation)


CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/jsonlines",
     "application/x-jsonlines", "text/csv", "text/csv; header=absent", "text/plain", "application/xml", "",
     ";", "application/json;;", "*/*"]
)  # fmt: skip
ACCEPTS = st.sampled_from(
    [None, "*/*", "application/json", "application/jsonlines", "text/csv", "text/*", "application/*",
     "text/csv;q=0.5, application/json", "image/png", "application/json;q=0", "text/csv;q=nan", ",",
     "application/json;q=1e999", ""]
)  # fmt: skip


# --- the properties --------------------------------------------------------------------------


def _expected_size(instance: dict[str, Any]) -> int:
    k = instance.get("k")
    if isinstance(k, int) and not isinstance(k, bool):
        return k
    items = instance.get("items")
    return len(items) if isinstance(items, list) and k is None else DEFAULT_K


def _answered(reply: Reply) -> list[dict[str, Any]]:
    """The predictions of a 200 in whichever format it came: ``{"item_ids": [...]}`` each, with
    ``"scores"`` too where the format carries them (CSV holds the item ids only)."""
    media_type = reply.content_type.partition(";")[0].strip()
    text = reply.body.decode("utf-8")
    if media_type == "application/json":
        predictions: list[dict[str, Any]] = json.loads(text)["predictions"]
        return predictions
    # One record per line, each ending in "\n" (split on it alone: str.splitlines also splits on
    # separators such as U+2028 that a record may hold).
    assert text.endswith("\n") or not text, f"an unterminated last record: {text[-200:]!r}"
    if media_type == "application/jsonlines":
        return [json.loads(line) for line in text.split("\n")[:-1]]
    assert media_type == "text/csv", f"a 200 in {reply.content_type!r}"
    return [{"item_ids": row} for row in csv.reader(io.StringIO(text, newline=""))]


def _assert_well_formed(live: Live, reply: Reply, sent: list[dict[str, Any]]) -> None:
    """A 200 holds one prediction per instance sent, each of known, distinct items, at most k."""
    if reply.status != 200:
        return
    predictions = _answered(reply)
    assert len(predictions) == len(sent), f"{len(predictions)} predictions for {len(sent)} instances"
    for instance, prediction in zip(sent, predictions, strict=True):
        found = prediction["item_ids"]
        assert set(found) <= live.items, f"unknown item ids in {prediction} for {instance}"
        assert len(found) == len(set(found)), f"repeated items in {prediction}"
        assert len(found) <= _expected_size(instance), f"more than k in {prediction} for {instance}"
        if "scores" in prediction:
            assert len(prediction["scores"]) == len(found)


def _instances_read(body: bytes, content_type: str | None) -> list[dict[str, Any]]:
    """The instances a body that got a 200 holds, read as the server reads them.

    Where the test cannot know them from what it generated (a CSV field may hold a comma, a quote
    or a line break; raw bytes are anything), the server's own decoder says; the engine and the
    encoder, which drop, merge or add records if anything does, are what this checks. The codecs'
    own tests (tests/serving/test_codecs.py) check that decoding keeps every record.
    """
    return decode_instances(body, content_type_of(content_type), max_instances=1 << 30)


@FUZZ
@given(data=st.data())
def test_generated_json_instances_never_take_the_endpoint_down(live: Live, data: st.DataObject) -> None:
    sent = data.draw(st.lists(instances(live), min_size=0, max_size=4), label="instances")
    shape = data.draw(st.sampled_from(["envelope", "list", "bare"]), label="shape")
    ascii_only = data.draw(st.booleans(), label="ascii_only")
    document: Any = (
        {"instances": sent} if shape == "envelope" else sent if shape == "list" else (sent or [{}])[0]
    )
    body = _dumps(document, ascii_only=ascii_only)
    reply = _send(live, "POST", "/invocations", body, {"Content-Type": "application/json"})
    _assert_survived(live, reply, body)
    _assert_well_formed(live, reply, sent if shape != "bare" else [(sent or [{}])[0]])


# Inputs that took the endpoint down before (issue "Nothing a client does takes the endpoint
# down"): always sent, whatever the generator draws.
REPORTED = {
    "4,301-digit user id": b'{"user_id": ' + b"9" * 4301 + b"}",
    "4,301-digit k": b'{"user_id": "u0001", "k": ' + b"1" * 4301 + b"}",
    "lone surrogate user id": b'{"user_id": "\\ud800"}',
    "lone surrogate in an unknown history item": b'{"history": ["\\udfff", "i0001"], "k": 3}',
    "lone surrogate filter value": b'{"user_id": "u0001", "filter": {"genres": ["\\ud800"]}}',
    "huge filter bound": b'{"user_id": "u0001", "filter": {"price": {"min": ' + b"9" * 400 + b"}}}",
    "huge filter number": b'{"user_id": "u0001", "filter": {"release_year": ' + b"9" * 400 + b"}}",
    "huge context number": b'{"user_id": "u0001", "context": {"timestamp": ' + b"9" * 400 + b"}}",
    "NaN-like timestamp text": b'{"user_id": "u0001", "history": [{"item_id": "i0001", "timestamp": "nan"}]}',
    "infinite timestamp text": b'{"user_id": "u0001", "context": {"timestamp": "inf"}}',
}


@pytest.mark.parametrize("body", list(REPORTED.values()), ids=list(REPORTED))
def test_reported_inputs_never_take_the_endpoint_down(live: Live, body: bytes) -> None:
    reply = _send(live, "POST", "/invocations", body, {"Content-Type": "application/json"})
    _assert_survived(live, reply, body)


@FUZZ
@given(data=st.data())
def test_generated_json_lines_and_csv_never_take_the_endpoint_down(live: Live, data: st.DataObject) -> None:
    fmt = data.draw(st.sampled_from(["application/jsonlines", "text/csv"]), label="format")
    if fmt == "text/csv":
        field = st.one_of(
            st.sampled_from(live.users), NASTY_TEXT, HUGE_INTEGERS.map(lambda n: getattr(n, "text", str(n)))
        )
        k = st.one_of(st.just(""), st.integers(-2, 1002).map(str), NAN_LIKE, NASTY_TEXT)
        history = st.lists(st.one_of(st.sampled_from(live.item_ids), NASTY_TEXT), max_size=4).map("|".join)
        row = st.tuples(field, k, history)
        rows = data.draw(st.lists(row.map(lambda r: ",".join(r[: data.draw(st.integers(1, 3))])), max_size=4))
        separator = data.draw(st.sampled_from(["\n", "\r\n"]))
        body = separator.join(rows).encode("utf-8", "surrogatepass")
        sent: list[dict[str, Any]] | None = None  # read from the body if it is answered
    else:
        lines = data.draw(st.lists(instances(live), max_size=4))
        body = b"\n".join(_dumps(line, ascii_only=data.draw(st.booleans())) for line in lines)
        sent = lines
    reply = _send(live, "POST", "/invocations", body, {"Content-Type": fmt})
    _assert_survived(live, reply, body)
    if reply.status == 200:
        _assert_well_formed(live, reply, sent if sent is not None else _instances_read(body, fmt))


@FUZZ
@given(
    content_type=CONTENT_TYPES,
    accept=ACCEPTS,
    body=st.one_of(
        st.binary(max_size=300),
        st.sampled_from(
            [
                b"",
                b"null",
                b"[]",
                b"{}",
                b"[[]]",
                b'{"instances": []}',
                b'{"instances": {}}',
                b"\xef\xbb\xbf{}",
                b"\xff\xfe",
                b"[" * 100_000,
                b'{"k": 1e999}',
                b"\n\n",
                b'{"user_id": "u0001"}\n',
                b"u0001,3\n",
            ]
        ),
    ),
)
def test_any_headers_and_bytes_never_take_the_endpoint_down(
    live: Live, content_type: str | None, accept: str | None, body: bytes
) -> None:
    headers = {
        name: value
        for name, value in (("Content-Type", content_type), ("Accept", accept))
        if value is not None
    }
    reply = _send(live, "POST", "/invocations", body, headers)
    _assert_survived(live, reply, body)
    if reply.status == 200:
        # The answer's media type is one Accept allowed (JSON when it said nothing).
        assert reply.content_type.split(";")[0] in {"application/json", "application/jsonlines", "text/csv"}
        _assert_well_formed(live, reply, _instances_read(body, content_type))


# --- Schemathesis against our own OpenAPI document ---------------------------------------------


@pytest.fixture(scope="module")
def live_schema(live: Live) -> Any:
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{live.server.port}/openapi.json")


# (method, path, generation mode): negative cases are requests the document calls invalid, which
# the server must refuse with a 4xx; GET /ping and /execution-parameters take nothing to mutate.
# /invocations is generated as JSON: its JSON Lines and CSV bodies are documented as text, and text
# cannot carry the mutations Schemathesis makes of a string (it sends `null` as the text "null",
# a valid CSV record of the user "null"), nor can a string pattern describe them: the Hypothesis
# tests above send those formats instead.
SCHEMATHESIS_RUNS = [
    ("POST", "/invocations", GenerationMode.POSITIVE),
    ("POST", "/invocations", GenerationMode.NEGATIVE),
    ("GET", "/ping", GenerationMode.POSITIVE),
    ("GET", "/execution-parameters", GenerationMode.POSITIVE),
]


@pytest.mark.parametrize(
    ("method", "path", "mode"), SCHEMATHESIS_RUNS, ids=lambda v: str(getattr(v, "value", v))
)
def test_the_server_agrees_with_its_openapi_document(
    live: Live, live_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = live_schema[path][method]
    cases = operation.as_strategy(generation_mode=mode)
    if method == "POST":
        cases = cases.filter(lambda case: case.media_type == "application/json")

    @settings(FUZZ, max_examples=60)
    @given(case=cases)
    def check(case: Any) -> None:
        response = case.call_and_validate(timeout=REQUEST_TIMEOUT_S)
        assert not TRACEBACK.search(response.content)
        assert _send(live, "GET", "/ping").status == 200

    check()
