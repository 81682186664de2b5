"""Reading a request's image and search parameters, turning every defect into an ApiError."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Request

from server.errors import ApiError
from server.limits import MAX_FILTER_VALUES, check_scalar, check_text, parse_json

IMAGE_FIELD = "image"
# Query parameters that are not metadata filters.
RESERVED_PARAMS = frozenset({"k"})
# Items per page of ``GET /v1/items``.
DEFAULT_LIMIT = 24
MAX_LIMIT = 100


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"image is larger than {limit / 2**20:g} MiB")


def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or 400 if the body is not one (or breaks a bound of
    :mod:`server.limits`)."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body is not valid JSON (it is empty)")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "request body must be a JSON object")
    return data


def decode_base64_image(value: Any, limit: int) -> bytes:
    """Bytes of a base64 string (optionally a ``data:...;base64,`` URL)."""
    if not isinstance(value, str):
        raise ApiError(400, "invalid_base64", f"'{IMAGE_FIELD}' must be a base64 string")
    if value.startswith("data:"):
        head, sep, value = value.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(400, "invalid_base64", "data URL must be base64-encoded")
    text = "".join(value.split())
    if len(text) // 4 * 3 > limit + 3:
        raise too_large(limit)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(
            400, "invalid_base64", f"'{IMAGE_FIELD}' is not valid base64 ({exc})"
        ) from exc
    if not data:
        raise ApiError(400, "empty_image", "the image is empty")
    return data


def read_image(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The uploaded image bytes and the other fields of the request.

    Accepts multipart (file field ``image``, other form fields returned), a JSON object with a
    base64 ``image`` (other keys returned), or a raw ``image/*`` body.
    """
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        upload = request.files.get(IMAGE_FIELD)
        fields = {k: v for k, v in request.form.items()}
        if upload is None:
            if IMAGE_FIELD in request.form:
                raise ApiError(400, "missing_image", f"'{IMAGE_FIELD}' must be a file upload")
            raise ApiError(400, "missing_image", f"no file in multipart field '{IMAGE_FIELD}'")
        data = upload.read(limit + 1)
        if len(data) > limit:
            raise too_large(limit)
        if not data:
            raise ApiError(400, "empty_image", "the uploaded file is empty")
        return data, fields
    if mimetype == "application/json" or mimetype.endswith("+json"):
        body = json_body(request)
        if IMAGE_FIELD not in body:
            raise ApiError(400, "missing_image", f"JSON body has no '{IMAGE_FIELD}' field")
        return decode_base64_image(body.pop(IMAGE_FIELD), limit), body
    if mimetype.startswith("image/") or mimetype == "application/octet-stream":
        data = request.get_data(cache=False)
        if len(data) > limit:
            raise too_large(limit)
        if not data:
            raise ApiError(400, "empty_image", "the request body is empty")
        return data, {}
    if not mimetype and not request.content_length:
        raise ApiError(
            400,
            "missing_image",
            f"send the image as multipart field '{IMAGE_FIELD}', as base64 in a JSON "
            "object, or as an image/* body",
        )
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content type {mimetype or '(none)'!r} is not accepted; use multipart/form-data, "
        "application/json or image/*",
    )


def _bounded_int(value: Any, name: str, low: int, high: int) -> int:
    """An integer in ``low..high`` from a query string or JSON value; else 400 invalid_<name>."""
    code = f"invalid_{name}"
    if isinstance(value, bool):
        raise ApiError(400, code, f"{name} must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only: str.isdigit() also accepts "²" and other digits int() refuses.
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", text):
            raise ApiError(400, code, f"{name} must be an integer, got {value!r}")
        value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integers include 3.0
    if not isinstance(value, int):
        raise ApiError(400, code, f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ApiError(400, code, f"{name} must be between {low} and {high}, got {value}")
    return value


def parse_k(value: Any, default: int, max_k: int) -> int:
    """``k`` from a query string or JSON value: an integer in 1..max_k."""
    return default if value is None else _bounded_int(value, "k", 1, max_k)


def parse_limit(value: str | None) -> int:
    """``limit`` of a page of items: an integer in 1..MAX_LIMIT (default DEFAULT_LIMIT)."""
    return DEFAULT_LIMIT if value is None else _bounded_int(value, "limit", 1, MAX_LIMIT)


def encode_cursor(after_id: str) -> str:
    """An opaque cursor for the page after item ``after_id``."""
    raw = json.dumps({"after": after_id}, ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str | None) -> str | None:
    """The item id a cursor continues after (None: the first page), or 400 ``invalid_cursor``."""
    if value is None:
        return None
    try:
        text = value.strip()
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        data = parse_json(raw, "cursor")
    except (binascii.Error, ValueError, ApiError):
        data = None
    after = data.get("after") if isinstance(data, dict) and len(data) == 1 else None
    if not isinstance(after, str) or not after:
        raise ApiError(400, "invalid_cursor", "cursor is not one this server returned")
    return after


def parse_filter(
    args: Iterable[tuple[str, list[str]]],
    body_filter: Any,
    allowed: Iterable[str],
) -> dict[str, Any] | None:
    """Metadata filters from query parameters (``label=x``; repeated means any of) and an
    optional JSON ``filter`` object; an unknown field is a 400."""
    flt: dict[str, Any] = {}
    for key, values in args:
        if key in RESERVED_PARAMS:
            continue
        flt[check_text(key, "filter field")] = values[0] if len(values) == 1 else list(values)
    if body_filter is not None:
        if not isinstance(body_filter, Mapping):
            raise ApiError(400, "invalid_filter", "'filter' must be a JSON object")
        for key, value in body_filter.items():
            ok = isinstance(value, str | int | float | bool) or (
                isinstance(value, list)
                and value
                and all(isinstance(v, str | int | float | bool) for v in value)
            )
            if not ok:
                raise ApiError(
                    400,
                    "invalid_filter",
                    f"filter {key!r} must be a scalar or a non-empty list of scalars",
                )
            flt[str(key)] = value
    for key, value in flt.items():
        values = value if isinstance(value, list) else [value]
        if len(values) > MAX_FILTER_VALUES:
            raise ApiError(
                400, "invalid_filter", f"filter {key!r} has more than {MAX_FILTER_VALUES} values"
            )
        for v in values:
            check_scalar(v, f"filter {key!r}", "invalid_filter")
    if not flt:
        return None
    known = set(allowed)
    unknown = sorted(k for k in flt if k not in known)
    if unknown:
        raise ApiError(
            400,
            "invalid_filter",
            f"unknown filter field(s) {', '.join(map(repr, unknown))}; "
            f"filterable fields are: {', '.join(sorted(known)) or '(none)'}",
        )
    return flt
