"""Wire formats of POST /invocations: JSON, JSON Lines and CSV, for real-time and Batch Transform.

Batch Transform with ``BatchStrategy=MultiRecord`` sends many records in one body and joins the
response back to its input line by line, so every decoder and encoder here keeps the order and
the count of records exactly: nothing is skipped, merged or reordered, and a response holds one
record per request record.

Media types (parameters such as ``; charset=utf-8`` are ignored, names are case-insensitive):

=========  ======================================================  ====================
format     request Content-Type                                    response Content-Type
=========  ======================================================  ====================
json       ``application/json`` (also when the header is missing)  ``application/json``
jsonlines  ``application/jsonlines``, ``application/x-jsonlines``  ``application/jsonlines``
csv        ``text/csv``                                            ``text/csv``
=========  ======================================================  ====================

Every problem with a request is a :class:`~recsys.errors.UserError` whose message names it
(the line number, the field, the media type) and whose ``status_code`` is 400, 406 or 415.
An unknown ``fmt`` passed by the caller is a programming error and raises ``ValueError``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
from typing import Any, Literal

from recsys.errors import UserError

Format = Literal["json", "jsonlines", "csv"]

MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "jsonlines": "application/jsonlines",
    "csv": "text/csv",
}
"""The Content-Type to send with a response in each format."""

# Request media type -> format. Both JSON Lines spellings are in use around SageMaker: take either.
_CONTENT_TYPES: dict[str, Format] = {
    "application/json": "json",
    "application/jsonlines": "jsonlines",
    "application/x-jsonlines": "jsonlines",
    "text/csv": "csv",
}
# Accept also takes wildcards; each resolves to the first format it covers.
_ACCEPT_TYPES: dict[str, Format] = {
    **_CONTENT_TYPES,
    "*/*": "json",
    "application/*": "json",
    "text/*": "csv",
}
_SUPPORTED = ", ".join(_CONTENT_TYPES)
REQUEST_MEDIA_TYPES: tuple[str, ...] = tuple(_CONTENT_TYPES)
"""Every request Content-Type the server takes (recsys/aws/api_handler.py keeps its own copy)."""
# Between the item ids of a CSV record's history field.
HISTORY_SEPARATOR = "|"


def _media_type(value: str) -> str:
    """The bare ``type/subtype`` of a header value, lower-cased, without parameters."""
    return value.partition(";")[0].strip().lower()


def content_type_of(header: str | None) -> Format:
    """The request format named by a Content-Type header.

    A missing (or blank) header means JSON, the endpoint's default format. An unsupported type
    is a 415 naming it and the supported ones.
    """
    if header is None or not header.strip():
        return "json"
    media_type = _media_type(header)
    fmt = _CONTENT_TYPES.get(media_type)
    if fmt is None:
        raise UserError(
            f"unsupported Content-Type {media_type!r}; supported: {_SUPPORTED}",
            status_code=415,
        )
    return fmt


def _quality(params: list[str]) -> float:
    """The ``q`` parameter of one Accept entry; 1.0 when absent or malformed (as lenient servers do)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 1.0
            return min(max(q, 0.0), 1.0) if math.isfinite(q) else 1.0
    return 1.0


def accept_of(header: str | None) -> Format:
    """The response format chosen from an Accept header.

    Missing, blank or ``*/*`` means JSON. A list such as ``text/csv;q=0.5, application/json``
    is tried by descending ``q`` (ties keep the listed order) and the first acceptable entry wins;
    ``q=0`` rules an entry out. ``application/*`` means JSON and ``text/*`` means CSV. When no
    entry is acceptable: a 406 naming what was asked and what is offered.
    """
    if header is None or not header.strip():
        return "json"
    ranked: list[tuple[float, int, str]] = []
    for position, entry in enumerate(header.split(",")):
        media_type, *params = entry.split(";")
        media_type = media_type.strip().lower()
        if not media_type:
            continue  # "a, , b" or a trailing comma: nothing asked for.
        q = _quality(params)
        if q > 0.0:
            ranked.append((-q, position, media_type))
    ranked.sort()  # By descending q, then by position in the header: a stable preference order.
    for _, _, media_type in ranked:
        fmt = _ACCEPT_TYPES.get(media_type)
        if fmt is not None:
            return fmt
    raise UserError(
        f"cannot answer with any type in Accept {header.strip()!r}; offered: {_SUPPORTED}",
        status_code=406,
    )


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _decode_text(body: bytes, fmt: str) -> str:
    """The body as text; a UTF-8 BOM is dropped (some tools write one at the top of a file)."""
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # The codec reports offsets past a dropped BOM; count in the original body.
        offset = error.start + len(body) - len(error.object)
        where = f"byte {offset}"
        if fmt != "json":
            line = body.count(b"\n", 0, offset) + 1
            where = f"line {line} ({where})"
        raise UserError(f"request body is not valid UTF-8 at {where}") from None


def _check_count(count: int, max_instances: int) -> None:
    if count > max_instances:
        raise UserError(f"too many instances: {count} in the request, the limit is {max_instances}")


def _split_lines(text: str) -> list[str]:
    """Lines split on ``\\n`` only, with one final newline allowed and a CR before it removed.

    Not ``str.splitlines``: it also splits on U+2028 and other separators that may sit, unescaped,
    inside a JSON string. A blank line anywhere else is an error rather than skipped, because
    Batch Transform joins input and output by line number and a skipped line would shift the join.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if line.endswith("\r"):
            line = line[:-1]
            lines[number - 1] = line
        if not line or line.isspace():
            raise UserError(f"line {number} is blank; every line must hold one record")
    return lines


# Longer integers are refused while the JSON is parsed. Python will not convert an integer of
# over 4,300 digits to or from text (a ValueError, so a 500, wherever an id is turned into text),
# and one of over 308 digits overflows a float (a numeric filter); no id, k or bound needs more.
MAX_INTEGER_DIGITS = 100
# A \u escape of a UTF-16 surrogate (U+D800-U+DFFF). json joins a high and a low one into one
# character and keeps any other as a lone surrogate: a str that UTF-8 cannot encode, which fails
# far from here (a vocabulary lookup, the response). Raw UTF-8 text cannot hold one, so only a
# body with such an escape can produce one, and only then are the decoded strings searched.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _excerpt(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2]}...({len(text):,} characters)"


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INTEGER_DIGITS:
        raise UserError(
            f"the request holds an integer of {digits:,} digits; at most {MAX_INTEGER_DIGITS} are accepted"
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UserError(f"the number {_excerpt(text)} is not finite: it is beyond the range of a double")
    return value


def _parse_constant(name: str) -> float:
    # json otherwise takes NaN, Infinity and -Infinity, which are not JSON.
    raise UserError(f"{name} is not a finite number (nor valid JSON); send finite numbers only")


# One decoder for every request: json.loads with hooks would build a new one per call.
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)


def _lone_surrogate_in(value: Any, where: str) -> str | None:
    """Where in a decoded value a string (or a key) holds a lone surrogate; None if nowhere."""
    if isinstance(value, str):
        return (where or "a string") if _LONE_SURROGATE.search(value) else None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate_in(item, f"{where}[{index}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if _LONE_SURROGATE.search(key):
                return f"a key of {where or 'the instance'}"
            found = _lone_surrogate_in(item, f"{where}.{key}" if where else key)
            if found is not None:
                return found
    return None


def _loads(text: str) -> Any:
    """``json.loads`` that refuses what would fail later as an internal error: absurdly long
    integers, non-finite numbers and lone surrogates, each a 400 naming it."""
    value = _DECODER.decode(text)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate_in(value, "")
        if where is not None:
            raise UserError(
                f"{where}: the request holds a lone surrogate (a \\uD800-\\uDFFF escape without its "
                "pair), which is not valid Unicode"
            )
    return value


def _check_objects(values: list[Any], where: str) -> list[dict[str, Any]]:
    if not values:
        raise UserError(f"{where} is empty; send at least one instance")
    for index, value in enumerate(values):
        if not isinstance(value, dict):
            raise UserError(f"{where}[{index}] is a JSON {_json_type(value)}, not an object")
    return values


def _decode_json(text: str) -> list[dict[str, Any]]:
    try:
        document = _loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    except RecursionError:  # json raises this, not JSONDecodeError, for very deep nesting
        raise UserError("invalid JSON: arrays or objects nested too deeply") from None
    if isinstance(document, list):
        return _check_objects(document, "the request's list of instances")
    if not isinstance(document, dict):
        raise UserError(
            f"the request body is a JSON {_json_type(document)}; "
            'send {"instances": [...]}, a list of objects or one object'
        )
    if "instances" not in document:
        return [document]  # A bare instance.
    # Fields beside "instances" have no meaning here; refusing them beats silently ignoring, say, a "k".
    extra = sorted(key for key in document if key != "instances")
    if extra:
        raise UserError(f'unexpected field(s) beside "instances": {", ".join(extra)}')
    instances = document["instances"]
    if not isinstance(instances, list):
        raise UserError(f'"instances" must be a list of objects, got a JSON {_json_type(instances)}')
    return _check_objects(instances, '"instances"')


def _decode_jsonlines(lines: list[str]) -> list[dict[str, Any]]:
    instances: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        try:
            value = _loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"line {number}: invalid JSON at column {error.colno}: {error.msg}") from None
        except UserError as error:
            raise UserError(f"line {number}: {error.message}") from None
        except RecursionError:
            raise UserError(f"line {number}: invalid JSON: arrays or objects nested too deeply") from None
        if not isinstance(value, dict):
            raise UserError(f"line {number}: expected a JSON object, got a JSON {_json_type(value)}")
        instances.append(value)  # Never unwrapped: a line is one instance, whatever it holds.
    return instances


def _parse_k(field: str, number: int) -> int:
    """``k`` as a decimal integer; ``int()`` alone would also take ``1_0`` and non-ASCII digits."""
    text = field.strip()
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):
        hint = " (header lines are not supported: the first line is data)" if number == 1 else ""
        raise UserError(f"line {number}: k must be an integer, got {field!r}{hint}")
    if len(digits) > MAX_INTEGER_DIGITS:  # int() refuses over 4,300 digits with a ValueError
        raise UserError(
            f"line {number}: k has {len(digits):,} digits; at most {MAX_INTEGER_DIGITS} are accepted"
        )
    return int(text)


def _decode_csv(lines: list[str]) -> list[dict[str, Any]]:
    instances: list[dict[str, Any]] = []
    unclosed = "a quoted field is not closed on the same line"
    # strict: a stray quote is an error, not a field silently rebuilt around it. The extra empty
    # line makes a quote left open on the last line look like one left open anywhere else: a
    # record that runs on past its own line.
    reader = csv.reader(itertools.chain(lines, [""]), strict=True)
    number = 0
    try:
        for number, row in enumerate(reader, start=1):
            if reader.line_num != number:
                raise UserError(f"line {number}: {unclosed}")
            if number > len(lines):
                break  # The extra empty line.
            if len(row) > 3:
                raise UserError(f"line {number}: expected user_id[,k[,history]], got {len(row)} fields")
            user_id = row[0]
            history = [i for i in row[2].split(HISTORY_SEPARATOR) if i.strip()] if len(row) == 3 else []
            if (
                len(row) == 3
                and row[2].strip()
                and not all(i.strip() for i in row[2].split(HISTORY_SEPARATOR))
            ):
                raise UserError(
                    f"line {number}: the history has an empty item id between '{HISTORY_SEPARATOR}'s"
                )
            if not user_id.strip() and not history:
                raise UserError(f"line {number}: user_id is empty (and there is no history)")
            instance: dict[str, Any] = {"user_id": user_id} if user_id.strip() else {}
            if len(row) >= 2 and row[1].strip():
                instance["k"] = _parse_k(row[1], number)
            if history:
                instance["history"] = history
            instances.append(instance)
    except csv.Error as error:
        number += 1  # The line whose record failed.
        if reader.line_num > number:
            raise UserError(f"line {number}: {unclosed}") from None
        raise UserError(f"line {number}: malformed CSV: {error}") from None
    return instances


def decode_instances(body: bytes, fmt: str, *, max_instances: int) -> list[dict[str, Any]]:
    """The instances of a request body, in order, one per record.

    - ``json``: ``{"instances": [obj, ...]}`` (no other top-level field), a list ``[obj, ...]``,
      or one bare object (any object without ``"instances"``) which gives ``[obj]``.
    - ``jsonlines``: one JSON object per line; a line holding ``{"instances": [...]}`` stays one
      instance. Only a single final newline may end the body: a blank line is an error naming it.
    - ``csv``: one record ``user_id[,k[,history]]`` per line, read with the :mod:`csv` module (so a
      quoted field may hold commas), giving ``{"user_id": str, "k": int, "history": [str, ...]}``
      with the fields that are there. ``history`` is item ids oldest first, separated by ``|``
      (``196,10,i1|i7|i3``); ``k`` may be empty (``196,,i1|i7``: the default), and so may
      ``user_id`` when a history is given (a new user: ``,5,i1|i7``). There is no header line: the
      first line is data. ``user_id`` is kept exactly as sent. Blank lines are errors, as in JSON
      Lines; CRLF line endings work. Any field may be quoted (``196,10,"i1|i7"``); ``|`` splits a
      history quoted or not, so an item id holding ``|`` cannot travel in CSV (JSON Lines can).

    The body must be UTF-8 (a BOM is allowed), hold at least one instance and at most
    ``max_instances``. Every failure is a 400 ``UserError``; line numbers start at 1, JSON list
    indices at 0.
    """
    if max_instances < 1:
        raise ValueError(f"max_instances must be at least 1, got {max_instances}")
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(MEDIA_TYPES)}")
    text = _decode_text(body, fmt)
    if not text or text.isspace():
        raise UserError("empty request body")
    if fmt == "json":
        instances = _decode_json(text)
        _check_count(len(instances), max_instances)
        return instances
    lines = _split_lines(text)
    _check_count(len(lines), max_instances)  # Before parsing: an oversized batch costs no decoding.
    return _decode_jsonlines(lines) if fmt == "jsonlines" else _decode_csv(lines)


# What json.dumps(..., separators=(",", ":"), ensure_ascii=False) would build on every call; built once,
# it makes JSON Lines encoding several times faster.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_dumps = _ENCODER.encode


def encode_predictions(predictions: list[dict[str, Any]], fmt: str) -> bytes:
    """A response body in UTF-8 holding ``predictions`` in order, one record per prediction.

    - ``json``: ``{"predictions": [...]}``.
    - ``jsonlines``: one compact JSON object per line, each ending in ``\\n``.
    - ``csv``: one line per prediction holding its ``item_ids`` as CSV fields (quoted where needed),
      lines ending in ``\\n``; an empty ``item_ids`` gives an empty line, so the count still matches.

    Numbers are written as given (no rounding).
    """
    if fmt == "json":
        return _dumps({"predictions": predictions}).encode("utf-8")
    if fmt == "jsonlines":
        return "".join(_dumps(prediction) + "\n" for prediction in predictions).encode("utf-8")
    if fmt == "csv":
        buffer = io.StringIO()
        # "\n", not csv's default "\r\n": the same record separator as the JSON Lines output.
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows(prediction["item_ids"] for prediction in predictions)
        return buffer.getvalue().encode("utf-8")
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(MEDIA_TYPES)}")
