"""Wire formats of /invocations: headers, decoding with exact order and count, encoding, client errors."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from recsys.errors import UserError
from recsys.serving.codecs import (
    MEDIA_TYPES,
    accept_of,
    content_type_of,
    decode_instances,
    encode_predictions,
)

LIMIT = 100


def decode(body: bytes, fmt: str, max_instances: int = LIMIT) -> list[dict[str, Any]]:
    return decode_instances(body, fmt, max_instances=max_instances)


def client_error(body: bytes, fmt: str, max_instances: int = LIMIT) -> UserError:
    """The UserError a bad body raises; it must be a 400."""
    with pytest.raises(UserError) as caught:
        decode(body, fmt, max_instances)
    assert caught.value.status_code == 400
    return caught.value


# --- Content-Type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "json"),
        ("", "json"),
        ("application/json", "json"),
        ("application/jsonlines", "jsonlines"),
        ("application/x-jsonlines", "jsonlines"),
        ("text/csv", "csv"),
        ("application/json; charset=utf-8", "json"),
        ("Application/JSON", "json"),
        ("TEXT/CSV;charset=UTF-8", "csv"),
        ("  application/x-jsonlines ; charset=utf-8", "jsonlines"),
    ],
)
def test_content_type_of_supported(header: str | None, expected: str) -> None:
    assert content_type_of(header) == expected


@pytest.mark.parametrize("header", ["text/plain", "application/xml; charset=utf-8", "application/x-npy"])
def test_content_type_of_unsupported_is_415_naming_type_and_supported(header: str) -> None:
    with pytest.raises(UserError) as caught:
        content_type_of(header)
    assert caught.value.status_code == 415
    message = caught.value.message
    assert header.split(";")[0] in message
    for supported in ("application/json", "application/jsonlines", "application/x-jsonlines", "text/csv"):
        assert supported in message


# --- Accept -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "json"),
        ("", "json"),
        ("*/*", "json"),
        ("application/json", "json"),
        ("application/jsonlines", "jsonlines"),
        ("application/x-jsonlines", "jsonlines"),
        ("text/csv", "csv"),
        ("Text/CSV; charset=utf-8", "csv"),
        ("application/*", "json"),
        ("text/*", "csv"),
        # Unacceptable entries are passed over.
        ("text/html, text/csv", "csv"),
        # Listed order breaks ties.
        ("text/csv, application/json", "csv"),
        ("application/jsonlines, text/csv", "jsonlines"),
        # Higher q wins whatever the order.
        ("text/csv;q=0.5, application/json", "json"),
        ("application/json;q=0.2, application/jsonlines;q=0.9, text/csv;q=0.5", "jsonlines"),
        ("application/json; q=0.8, text/csv; Q=0.8", "json"),
        # q=0 rules an entry out.
        ("application/json;q=0, text/csv;q=0.1", "csv"),
        ("text/html;q=1.0, */*;q=0.1", "json"),
        ("text/html, application/*;q=0.3", "json"),
        # Empty entries (a stray comma) ask for nothing.
        ("text/csv,, ", "csv"),
    ],
)
def test_accept_of(header: str | None, expected: str) -> None:
    assert accept_of(header) == expected


@pytest.mark.parametrize("header", ["text/html", "application/xml, image/png", "text/csv;q=0", "*/*;q=0"])
def test_accept_of_nothing_acceptable_is_406_naming_asked_and_offered(header: str) -> None:
    with pytest.raises(UserError) as caught:
        accept_of(header)
    assert caught.value.status_code == 406
    message = caught.value.message
    assert header in message
    for offered in ("application/json", "application/jsonlines", "text/csv"):
        assert offered in message


def test_media_types_name_the_response_content_type() -> None:
    assert MEDIA_TYPES == {
        "json": "application/json",
        "jsonlines": "application/jsonlines",
        "csv": "text/csv",
    }
    for fmt, media_type in MEDIA_TYPES.items():
        assert content_type_of(media_type) == fmt
        assert accept_of(media_type) == fmt


# --- JSON -------------------------------------------------------------------------------------


def test_json_wrapped_instances_keep_order() -> None:
    instances = [{"user_id": "u2", "k": 3}, {"user_id": "u1"}, {"history": ["i1", "i2"]}]
    assert decode(json.dumps({"instances": instances}).encode(), "json") == instances


def test_json_bare_instance_is_one_instance() -> None:
    assert decode(b'{"user_id": "u1", "k": 5}', "json") == [{"user_id": "u1", "k": 5}]


def test_json_top_level_list() -> None:
    assert decode(b'[{"user_id": "a"}, {"user_id": "b"}]', "json") == [{"user_id": "a"}, {"user_id": "b"}]


def test_json_keeps_non_ascii_and_allows_a_bom() -> None:
    body = "\ufeff" + json.dumps({"user_id": "é✓"}, ensure_ascii=False)
    assert decode(body.encode("utf-8"), "json") == [{"user_id": "é✓"}]


def test_json_invalid_names_line_and_column() -> None:
    message = client_error(b'{"instances": [\n  {"user_id": "a"}\n  {"user_id": "b"}]}', "json").message
    assert "invalid JSON" in message
    assert "line 3" in message
    assert "column 3" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"instances": {"user_id": "a"}}', '"instances" must be a list'),
        (b'{"instances": "a"}', '"instances" must be a list'),
        (b'{"instances": []}', '"instances" is empty'),
        (b"[]", "empty"),
        (b'{"instances": [{"user_id": "a"}, "b"]}', '"instances"[1] is a JSON string, not an object'),
        (b'[{"user_id": "a"}, {"user_id": "b"}, [1]]', "[2] is a JSON array, not an object"),
        (b'"u1"', "JSON string"),
        (b"42", "JSON number"),
        (b"null", "JSON null"),
        (b'{"instances": [{"user_id": "a"}], "k": 5}', 'unexpected field(s) beside "instances": k'),
    ],
)
def test_json_shape_errors_name_the_problem(body: bytes, expected: str) -> None:
    assert expected in client_error(body, "json").message


# --- JSON Lines -------------------------------------------------------------------------------


def test_jsonlines_keep_order_and_count() -> None:
    instances = [{"user_id": f"u{n}", "k": n} for n in range(7, 0, -1)]
    body = "\n".join(json.dumps(instance) for instance in instances).encode()
    assert decode(body, "jsonlines") == instances


def test_jsonlines_one_trailing_newline_is_fine() -> None:
    assert decode(b'{"user_id": "a"}\n{"user_id": "b"}\n', "jsonlines") == [
        {"user_id": "a"},
        {"user_id": "b"},
    ]


def test_jsonlines_crlf() -> None:
    assert decode(b'{"user_id": "a"}\r\n{"user_id": "b"}\r\n', "jsonlines") == [
        {"user_id": "a"},
        {"user_id": "b"},
    ]


def test_jsonlines_do_not_split_on_unicode_line_separators() -> None:
    # U+2028 may sit unescaped inside a JSON string; str.splitlines would cut the record in two.
    body = '{"user_id": "a\u2028b"}\n{"user_id": "c"}\n'.encode()
    assert decode(body, "jsonlines") == [{"user_id": "a\u2028b"}, {"user_id": "c"}]


def test_jsonlines_wrapper_line_is_not_unwrapped() -> None:
    line = {"instances": [{"user_id": "a"}, {"user_id": "b"}]}
    assert decode(json.dumps(line).encode() + b"\n", "jsonlines") == [line]


@pytest.mark.parametrize(
    ("body", "line"),
    [
        (b'{"user_id": "a"}\n\n{"user_id": "b"}\n', 2),
        (b'{"user_id": "a"}\n   \n{"user_id": "b"}', 2),
        (b'\n{"user_id": "a"}', 1),
        (b'{"user_id": "a"}\n\n', 2),  # Only one final newline: a second one is a blank line.
        (b'{"user_id": "a"}\r\n\r\n{"user_id": "b"}', 2),
    ],
)
def test_jsonlines_blank_line_names_it(body: bytes, line: int) -> None:
    message = client_error(body, "jsonlines").message
    assert f"line {line} is blank" in message


def test_jsonlines_invalid_json_names_line() -> None:
    message = client_error(b'{"user_id": "a"}\n{"user_id": "b"}\n{"user_id": c}\n', "jsonlines").message
    assert message.startswith("line 3: invalid JSON")


@pytest.mark.parametrize(("line", "kind"), [(b'"u1"', "string"), (b"[1, 2]", "array"), (b"7", "number")])
def test_jsonlines_non_object_line_names_line(line: bytes, kind: str) -> None:
    message = client_error(b'{"user_id": "a"}\n' + line, "jsonlines").message
    assert "line 2" in message
    assert f"JSON {kind}" in message


# --- CSV --------------------------------------------------------------------------------------


def test_csv_with_and_without_k_in_order() -> None:
    body = b"u3,5\nu1\nu2,+2\n"
    assert decode(body, "csv") == [{"user_id": "u3", "k": 5}, {"user_id": "u1"}, {"user_id": "u2", "k": 2}]


def test_csv_carries_a_history_separated_by_bars() -> None:
    body = b'u1,5,i3|i7|i9\nu2,,i4\n,3,i1|i2\n"u,3",,"i,1|i2"\nu4,\n'
    assert decode(body, "csv") == [
        {"user_id": "u1", "k": 5, "history": ["i3", "i7", "i9"]},
        {"user_id": "u2", "history": ["i4"]},  # k left empty: the default
        {"k": 3, "history": ["i1", "i2"]},  # no user id: a new user
        {"user_id": "u,3", "history": ["i,1", "i2"]},  # quoted fields keep their commas
        {"user_id": "u4"},
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"u1,5,i3||i9\n", "line 1: the history has an empty item id between '|'s"),
        (b",5,\n", "line 1: user_id is empty (and there is no history)"),
    ],
)
def test_csv_history_errors_name_the_line(body: bytes, expected: str) -> None:
    assert expected in client_error(body, "csv").message


def test_csv_k_is_an_int() -> None:
    (instance,) = decode(b"u1,10", "csv")
    assert type(instance["k"]) is int


def test_csv_quoted_ids_hold_commas_and_quotes() -> None:
    body = b'"a,b",3\n"say ""hi"""\n'
    assert decode(body, "csv") == [{"user_id": "a,b", "k": 3}, {"user_id": 'say "hi"'}]


def test_csv_crlf() -> None:
    assert decode(b"u1,2\r\nu2\r\n", "csv") == [{"user_id": "u1", "k": 2}, {"user_id": "u2"}]


def test_csv_first_line_is_data_and_header_is_rejected_with_a_hint() -> None:
    # A lone "user_id" header is indistinguishable from a user of that name: it is data.
    assert decode(b"user_id\nu1\n", "csv") == [{"user_id": "user_id"}, {"user_id": "u1"}]
    message = client_error(b"user_id,k\nu1,3\n", "csv").message
    assert "line 1" in message
    assert "header" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"u1,2\nu2,3,4,5\n", "line 2: expected user_id[,k[,history]], got 4 fields"),
        (b"u1\n,4\n", "line 2: user_id is empty"),
        (b'u1\nu2\n"",4\n', "line 3: user_id is empty"),
        (b"u1,two\n", "line 1: k must be an integer"),
        (b"u1\nu2,1.5\n", "line 2: k must be an integer"),
        (b"u1\nu2\nu3,1_0\n", "line 3: k must be an integer"),
        (b"u1\n\nu2\n", "line 2 is blank"),
        (b"u1\r\n\r\nu2\r\n", "line 2 is blank"),
        (b"u1\nu2\n\n", "line 3 is blank"),
        (b'u1\n"u2,3\nu3\n', "line 2: a quoted field is not closed"),
        (b'u1\n"u2\nu3",4\n', "line 2: a quoted field is not closed"),
        (b'u1\n"u2', "line 2: a quoted field is not closed"),
        (b'u1\nu2\n"u3,4\n', "line 3: a quoted field is not closed"),
        (b'u1\n"u2"x,3\n', "line 2: malformed CSV"),
    ],
)
def test_csv_errors_name_the_line(body: bytes, expected: str) -> None:
    assert expected in client_error(body, "csv").message


# --- Shared rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "jsonlines", "csv"])
@pytest.mark.parametrize("body", [b"", b"\n", b"  \r\n ", b"\xef\xbb\xbf"])
def test_empty_body(fmt: str, body: bytes) -> None:
    assert client_error(body, fmt).message == "empty request body"


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ("json", json.dumps({"instances": [{"user_id": str(n)} for n in range(4)]}).encode()),
        ("json", json.dumps([{"user_id": str(n)} for n in range(4)]).encode()),
        ("jsonlines", b"".join(b'{"user_id": "%d"}\n' % n for n in range(4))),
        ("csv", b"a\nb\nc\nd\n"),
    ],
)
def test_too_many_instances_names_count_and_limit(fmt: str, body: bytes) -> None:
    message = client_error(body, fmt, max_instances=3).message
    assert "4" in message
    assert "limit is 3" in message
    assert len(decode(body, fmt, max_instances=4)) == 4


@pytest.mark.parametrize(
    ("fmt", "body", "where"),
    [
        ("json", b'{"user_id": "\xff"}', "at byte 13"),
        ("jsonlines", b'{"user_id": "a"}\n{"user_id": "\xc3("}', "line 2"),
        ("csv", b"u1\nu2\n\xe9t\xe9\n", "line 3"),
        ("csv", b"\xef\xbb\xbfu1\n\xff\n", "line 2 (byte 6)"),
    ],
)
def test_non_utf8_is_400_naming_where(fmt: str, body: bytes, where: str) -> None:
    message = client_error(body, fmt).message
    assert "not valid UTF-8" in message
    assert where in message


def test_unknown_format_and_bad_limit_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        decode(b"{}", "xml")
    with pytest.raises(ValueError, match="max_instances"):
        decode(b"{}", "json", max_instances=0)
    with pytest.raises(ValueError, match="unknown format"):
        encode_predictions([], "xml")


# --- Encoding ---------------------------------------------------------------------------------

PREDICTIONS: list[dict[str, Any]] = [
    {"item_ids": ["i3", "i1"], "scores": [0.9, 0.123456789]},
    {"item_ids": [], "scores": []},
    {"item_ids": ["a,b", 'q"uote', "é"], "scores": [1.0, 0.5, 0.25]},
    {"item_ids": ["i7"], "scores": [0.1]},
]


def test_encode_json_round_trip() -> None:
    body = encode_predictions(PREDICTIONS, "json")
    assert json.loads(body.decode("utf-8")) == {"predictions": PREDICTIONS}
    assert b": " not in body  # Compact separators.
    assert "é".encode() in body  # Not escaped as \u00e9.


def test_encode_jsonlines_one_line_per_prediction() -> None:
    body = encode_predictions(PREDICTIONS, "jsonlines")
    assert body.endswith(b"\n")
    lines = body.decode("utf-8").split("\n")
    assert lines[-1] == ""
    assert [json.loads(line) for line in lines[:-1]] == PREDICTIONS
    assert lines[0] == '{"item_ids":["i3","i1"],"scores":[0.9,0.123456789]}'


def test_encode_jsonlines_round_trips_through_the_decoder() -> None:
    body = encode_predictions(PREDICTIONS, "jsonlines")
    assert decode(body, "jsonlines") == PREDICTIONS


def test_encode_csv_one_line_per_prediction_empty_list_is_empty_line() -> None:
    body = encode_predictions(PREDICTIONS, "csv")
    assert body.decode("utf-8") == 'i3,i1\n\n"a,b","q""uote",é\ni7\n'
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"))))
    assert rows == [prediction["item_ids"] for prediction in PREDICTIONS]


@pytest.mark.parametrize("fmt", ["json", "jsonlines", "csv"])
def test_encode_no_predictions(fmt: str) -> None:
    expected = b'{"predictions":[]}' if fmt == "json" else b""
    assert encode_predictions([], fmt) == expected


def test_encode_csv_only_empty_lists_keeps_count() -> None:
    assert encode_predictions([{"item_ids": []}] * 3, "csv") == b"\n\n\n"


# --- Numbers and strings Python would choke on later -------------------------------------------

LONG_INTEGER = "1" * 4301  # past Python's int <-> str conversion limit (4,300 digits)


@pytest.mark.parametrize(
    "instance",
    [
        '{"user_id": %s}',
        '{"user_id": "u1", "k": %s}',
        '{"history": [%s]}',
        '{"history": [{"item_id": %s}]}',
        '{"user_id": "u1", "exclude": [%s]}',
        '{"user_id": "u1", "items": [%s]}',
        '{"item_id": %s}',
        '{"user_id": "u1", "filter": {"price": %s}}',
        '{"user_id": "u1", "filter": {"price": {"min": %s}}}',
        '{"user_id": "u1", "filter": {"genre": [%s]}}',
    ],
)
@pytest.mark.parametrize("digits", [LONG_INTEGER, "1" * 310, "-" + LONG_INTEGER])
@pytest.mark.parametrize("fmt", ["json", "jsonlines"])
def test_an_absurdly_long_integer_is_400(instance: str, digits: str, fmt: str) -> None:
    body = (instance % digits).encode()

    message = client_error(body, fmt).message

    assert "integer" in message
    assert f"{len(digits.lstrip('-')):,} digits" in message
    if fmt == "jsonlines":
        assert message.startswith("line 1: ")


def test_integers_of_ordinary_length_still_decode() -> None:
    body = b'{"user_id": 12345678901234567890123456789012345678, "k": 5, "filter": {"price": -3}}'

    assert decode(body, "json") == [
        {"user_id": 12345678901234567890123456789012345678, "k": 5, "filter": {"price": -3}}
    ]


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("fmt", ["json", "jsonlines"])
def test_a_non_finite_number_is_400(number: str, fmt: str) -> None:
    body = b'{"user_id": "u1", "filter": {"price": {"min": %s}}}' % number.encode()

    message = client_error(body, fmt).message

    assert "finite" in message
    assert number.lstrip("-") in message


def test_finite_floats_still_decode() -> None:
    assert decode(b'{"filter": {"price": {"min": 1.5e300, "max": -0.25}}}', "json") == [
        {"filter": {"price": {"min": 1.5e300, "max": -0.25}}}
    ]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (rb'{"item_id": "\ud800"}', "item_id"),
        (rb'{"user_id": "\uDFFF"}', "user_id"),
        (rb'{"history": ["i1", "\ud83d"]}', "history[1]"),
        (rb'{"instances": [{"user_id": "u1"}, {"user_id": "u2", "exclude": ["a\udc00b"]}]}', "exclude[0]"),
        (rb'{"user_id": "u1", "filter": {"\ud800": "x"}}', "filter"),
        (rb'{"history": ["\ude00\ud83d"]}', "history[0]"),  # a pair in the wrong order is two lone halves
    ],
)
@pytest.mark.parametrize("fmt", ["json", "jsonlines"])
def test_a_lone_surrogate_is_400(body: bytes, where: str, fmt: str) -> None:
    if fmt == "jsonlines":
        body = b'{"user_id": "u0"}\n' + body

    message = client_error(body, fmt).message

    assert "lone surrogate" in message
    assert "not valid Unicode" in message
    assert where in message
    if fmt == "jsonlines":
        assert message.startswith("line 2: ")


@pytest.mark.parametrize("fmt", ["json", "jsonlines"])
def test_surrogate_pairs_and_escaped_backslashes_still_decode(fmt: str) -> None:
    body = rb'{"item_id": "\ud83d\ude00", "exclude": ["\\ud800", "\u00e9"]}'

    assert decode(body, fmt) == [{"item_id": "\U0001f600", "exclude": ["\\ud800", "\u00e9"]}]


def test_a_csv_k_of_absurd_length_is_400() -> None:
    message = client_error(b"u1,5\nu2,%s\n" % LONG_INTEGER.encode(), "csv").message

    assert message.startswith("line 2: ")
    assert "k" in message
    assert "4,301 digits" in message
