"""Bounds on what a request may carry; each broken bound is a 400 that names it.

Untrusted JSON is parsed by :func:`parse_json` only: numbers longer than a few digits, NaN and
Infinity, duplicate keys, objects with too many members, nesting deeper than
:data:`MAX_JSON_DEPTH` (a 100,000-deep array included: the parser's own recursion error is
caught) and strings holding a lone surrogate or NUL are refused before any value reaches the
index. Item ids follow :data:`common.item_ids.ID_PATTERN` and metadata :func:`check_metadata`;
the OpenAPI document publishes the same bounds (:mod:`server.openapi`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from common.field_names import FIELD_NAME_RULE, is_api_field_name
from common.item_ids import ID_RULES, is_item_id
from server.errors import ApiError

MAX_JSON_DEPTH = 8  # the API's deepest document is body -> filter -> list of values (3)
MAX_JSON_MEMBERS = 256  # members of one JSON object
# Values of one document, counted as its commas before parsing: parsing costs about 3 µs a
# value in Python (a 13 MB body of "{}," took 11-16 s and 2.9 GB), so the bound must come
# first. The largest document the API takes is a batch of vectors: see json_values_for.
MAX_JSON_VALUES = 1 << 18
MAX_NUMBER_TEXT = 40  # characters of one JSON number
MAX_ABS_NUMBER = 9.2e18  # below 2**63: every number fits a 64-bit integer column
MAX_ID_LENGTH = 256
MAX_METADATA_FIELDS = 32
MAX_STRING_LENGTH = 1000  # one metadata or filter value
MAX_FILTER_VALUES = 100  # values of one filter field ("any of")
# Characters of a whole filter (names and values): answers repeat it, a batch's in each of its
# 64 results, so a 600 KB request of long values had drawn a 115 MB answer.
MAX_FILTER_TEXT = 16 * 1024
MAX_FORM_PARTS = 100  # of a multipart form: the image, metadata fields, search options
MAX_FORM_FIELD_BYTES = 256 * 1024  # one text field of a multipart form (metadata: ~35 KB)

# Strings anywhere in a request: no NUL (nor, from JSON, a lone surrogate: not Unicode).
TEXT_PATTERN = "^[^\\u0000]*$"

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_TEXT or abs(int(text)) > MAX_ABS_NUMBER:
        raise _Refused("number_too_large", f"number {text[:24]}... is out of range (±9.2e18)")
    return int(text)


def _float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_TEXT else math.inf
    if not abs(value) <= MAX_ABS_NUMBER:
        raise _Refused("number_too_large", f"number {text[:24]} is out of range (±9.2e18)")
    return value


def _constant(text: str) -> Any:
    raise _Refused("invalid_json", f"{text} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_JSON_MEMBERS:
        raise _Refused("json_too_large", f"an object has more than {MAX_JSON_MEMBERS} members")
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for k in keys if keys.count(k) > 1)
        raise _Refused("invalid_json", f"duplicate key {dup[:40]!r}")
    return out


def json_values_for(entries: int, dim: int) -> int:
    """The value bound of a document holding ``entries`` vectors of ``dim`` numbers (with
    room for their options), at least :data:`MAX_JSON_VALUES`."""
    return max(MAX_JSON_VALUES, entries * (dim + 64))


def check_json_size(data: bytes | str, what: str, max_values: int = MAX_JSON_VALUES) -> None:
    """Refuse a document with more than ``max_values`` values before parsing it: the commas
    and opened containers outside its strings bound its values. Counted
    at C speed: all commas first (a 13 MB photo: milliseconds), and only when they are
    too many, those left once one regular expression has cut the strings out (0.5 s for
    3 million strings)."""
    if isinstance(data, bytes) and json.detect_encoding(data) not in ("utf-8", "utf-8-sig"):
        # json.loads takes UTF-16 and -32 too, where a quote byte may sit inside another
        # character: the strings cut out would hide commas. JSON between systems is UTF-8.
        raise ApiError(400, "invalid_json", f"{what} must be UTF-8 JSON (RFC 8259)")
    if _separators(data) < max_values:
        return
    strings = _STRING_B if isinstance(data, bytes) else _STRING
    if _separators(strings.sub(data[:0], data)) >= max_values:
        raise ApiError(400, "json_too_large", f"{what} holds more than {max_values} JSON values")


def _separators(data: bytes | str) -> int:
    """Commas and opened containers: a document holds at most one value more. Containers
    count too: nested ones need no comma (a 13 MB body of 500-deep lists held 13,385 commas
    and 6.7 million lists, 3 s and 616 MB to parse before the depth check refused it)."""
    if isinstance(data, bytes):
        return data.count(b",") + data.count(b"[") + data.count(b"{")
    return data.count(",") + data.count("[") + data.count("{")


# A JSON string, escapes included, as an unrolled loop (runs of plain characters matched
# whole: 25 times faster than one alternation per character on a base64 photo). It matches
# from every quote, whatever follows: an unterminated string runs to the end (\Z), as does a
# lone backslash there. A match that could fail was retried from every later quote, each
# scan to the end: quadratic time (2 s for 16,000 escaped quotes, 40 s for 64,000).
_STRING = re.compile(r'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)', re.S)
_STRING_B = re.compile(rb'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)', re.S)


def parse_json(
    data: bytes | str,
    what: str = "request body",
    code: str = "invalid_json",
    *,
    max_values: int = MAX_JSON_VALUES,
) -> Any:
    """Parse untrusted JSON within the bounds above (else ApiError 400; ``code`` for JSON
    that does not parse)."""
    check_json_size(data, what, max_values)
    try:
        value = json.loads(
            data,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
    except _Refused as exc:
        raise ApiError(400, exc.code, f"{what}: {exc}") from None
    except RecursionError:
        raise ApiError(
            400, "json_too_deep", f"{what} nests deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ApiError(400, code, f"{what} is not valid JSON ({exc})") from None
    check_json(value, what)
    return value


def check_json(value: Any, what: str = "request body") -> None:
    """Depth and strings of a parsed document (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            check_text(item, what)
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(
                    400, "json_too_deep", f"{what} nests deeper than {MAX_JSON_DEPTH} levels"
                )
            if isinstance(item, dict):
                for key, member in item.items():
                    check_text(key, what)
                    stack.append((member, depth + 1))
            else:
                stack.extend((member, depth + 1) for member in item)


def check_text(text: str, what: str = "a string") -> str:
    """Refuse NUL and lone surrogates (which no database or UTF-8 encoder takes)."""
    bad = _BAD_TEXT.search(text)
    if bad is not None:
        kind = "NUL" if bad.group() == "\x00" else f"lone surrogate U+{ord(bad.group()):04X}"
        raise ApiError(400, "invalid_string", f"{what}: strings must not contain {kind}")
    return text


def check_item_id(item_id: Any) -> str:
    """An id a client may give a new item (see :data:`common.item_ids.ID_PATTERN`)."""
    if not isinstance(item_id, str) or not item_id.strip():
        raise ApiError(400, "invalid_id", "'id' must be a non-empty string")
    bad = len(item_id) > MAX_ID_LENGTH or _BAD_TEXT.search(item_id) is not None
    if bad or not is_item_id(item_id):
        raise ApiError(400, "invalid_id", f"'id' must be at most {MAX_ID_LENGTH} {ID_RULES}")
    return item_id


def check_scalar(value: Any, what: str, code: str) -> None:
    """A metadata or filter value: a short string, a bounded number, a boolean (or null)."""
    if isinstance(value, str):
        check_text(value, what)
        if len(value) > MAX_STRING_LENGTH:
            raise ApiError(400, code, f"{what} is longer than {MAX_STRING_LENGTH} characters")
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not abs(value) <= MAX_ABS_NUMBER
    ):
        raise ApiError(400, code, f"{what} is out of range (±9.2e18)")


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """At most 32 fields named by :data:`common.field_names.FIELD_NAME_PATTERN`, each a scalar (see
    :func:`check_scalar`)."""
    if len(metadata) > MAX_METADATA_FIELDS:
        raise ApiError(
            400, "invalid_metadata", f"metadata has more than {MAX_METADATA_FIELDS} fields"
        )
    for key, value in metadata.items():
        check_text(key, "metadata field name")
        if key in ("id", "image"):
            continue  # refused by the service with its own message
        if key in ("image_url", "score"):
            raise ApiError(
                400,
                "invalid_metadata",
                f"metadata field name {key!r} is the server's own: each answer adds it",
            )
        if not is_api_field_name(key):
            raise ApiError(
                400,
                "invalid_metadata",
                f"metadata field name {key[:40]!r} must be {FIELD_NAME_RULE} (a catalog "
                "CSV's other column names, 'Größe' or '品牌', are kept and filtered on, but "
                "not written through the API)",
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ApiError(
                400,
                "invalid_request",
                f"metadata[{key!r}]: values must be strings, numbers, booleans or null",
            )
        check_scalar(value, f"metadata[{key!r}]", "invalid_metadata")
    return metadata
