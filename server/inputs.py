"""Reading a request's image and search parameters, turning every defect into an ApiError."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from flask import Request
from werkzeug.datastructures import MultiDict

from server.errors import PAYLOAD_TOO_LARGE, ApiError, mib
from server.filters import is_filter_param
from server.limits import MAX_JSON_VALUES, parse_json

IMAGE_FIELD = "image"
VECTOR_FIELD = "vector"
# Neighbours a search may skip (``offset``): k + offset neighbours are searched.
MAX_OFFSET = 1000
# Items per page of ``GET /v1/items``.
DEFAULT_LIMIT = 24
MAX_LIMIT = 100


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        PAYLOAD_TOO_LARGE,
        f"image is larger than {mib(limit)} MiB (--max-upload-mb)",
    )


def json_body(request: Request, max_values: int = MAX_JSON_VALUES) -> dict[str, Any]:
    """The request's JSON object, or 400 if the body is not one (or breaks a bound of
    :mod:`server.limits`)."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body is not valid JSON (it is empty)")
    data = parse_json(raw, max_values=max_values)
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


def is_json(request: Request) -> bool:
    """Whether the body is declared JSON: ``application/json`` or a ``+json`` type."""
    mimetype = request.mimetype or ""
    return mimetype == "application/json" or mimetype.endswith("+json")


def read_image(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    """The uploaded image bytes and the other fields of the request.

    Accepts multipart (file field ``image``, other form fields returned), a JSON object with a
    base64 ``image`` (other keys returned), or a raw ``image/*`` body.
    """
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        # Kept to tell a text part that was not UTF-8 (Werkzeug decodes its bad bytes to
        # U+FFFD) from one that holds U+FFFD itself; the form is parsed from this copy.
        raw = request.get_data(cache=True)
        boundary = request.mimetype_params.get("boundary", "")
        if boundary and raw and f"--{boundary}--".encode("latin-1", "replace") not in raw:
            # Werkzeug gives a body cut short (no closing boundary) as an empty form: it was
            # answered "no file in multipart field 'image'", which sends one to the image.
            raise ApiError(
                400,
                "invalid_multipart",
                "the multipart body is cut short or malformed: it has no closing boundary "
                f"(--{boundary[:70]}--); send the whole form",
            )
        # A repeated field is ambiguous (which id, which image?), as a repeated JSON key is.
        counts = Counter(
            name for name, values in [*request.form.lists(), *request.files.lists()] for _ in values
        )  # a name given once as text and once as a file counts twice too
        repeated = sorted(name for name, n in counts.items() if n > 1)
        if repeated:
            names = ", ".join(map(repr, repeated))
            raise ApiError(400, "invalid_request", f"field(s) {names} given more than once")
        # Only the image is read as a file: another file part (curl's -F metadata=@m.json)
        # would otherwise be dropped without a word, with what it held.
        files = sorted(name for name in request.files if name != IMAGE_FIELD)
        if files:
            names = ", ".join(map(repr, files))
            raise ApiError(
                400,
                "invalid_request",
                f"only '{IMAGE_FIELD}' may be a file; send {names} as a text field "
                "(curl: -F 'name=value' or -F 'name=<file', not -F 'name=@file')",
            )
        upload = request.files.get(IMAGE_FIELD)
        fields = {k: v for k, v in request.form.items()}
        for name, value in fields.items():
            # Werkzeug decodes a text part that is not UTF-8 (nor declares ISO-8859-1) with
            # U+FFFD in place of each bad byte: stored, that corrupts the value silently. A
            # value whose UTF-8 form is in the body was sent so, U+FFFD and all.
            if "\ufffd" in value and value.encode("utf-8", "surrogatepass") not in raw:
                raise ApiError(
                    400,
                    "invalid_string",
                    f"form field {name!r} is not UTF-8 text: send UTF-8 (a part in ISO-8859-1 "
                    "may say so: Content-Type: text/plain; charset=ISO-8859-1)",
                )
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
    if is_json(request):
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


def parse_offset(value: Any) -> int:
    """``offset``: neighbours to skip before the k returned, 0..MAX_OFFSET (default 0)."""
    return 0 if value is None else _bounded_int(value, "offset", 0, MAX_OFFSET)


RANKINGS = ("class", "similarity")


def parse_ranking(value: Any) -> str | None:
    """``ranking``: "class" (an uploaded photo's most similar few re-ranked by its predicted
    class, where the server does so) or "similarity" (cosine order); None: the server's."""
    if value is None or value in RANKINGS:
        return value
    # A long value is cut where every error message is (server.errors.MAX_MESSAGE).
    raise ApiError(
        400, "invalid_ranking", f"ranking must be 'class' or 'similarity', got {value!r}"
    )


READ_TEXT_MODES = ("auto", "always", "never")
# Why a photo's text was not read (a prediction's ``text_unread``): its prediction was sure
# enough without it (the gate), the request said never, the reading failed, the request had
# spent its reading time, or the worker's reader was busy with others' photos and enough
# requests waited for it already.
TEXT_UNREAD = ("sure", "never", "failed", "budget", "busy")


def parse_read_text(value: Any) -> str | None:
    """``read_text``: whether to read the text on an uploaded photo, on a server that reads
    text (``serve --read-text``): "auto" when its prediction is unsure (the server's
    ``--text-gate``), "always", or "never"; None: "auto"."""
    if value is None or value in READ_TEXT_MODES:
        return value
    raise ApiError(
        400,
        "invalid_read_text",
        f"read_text must be 'auto', 'always' or 'never', got {value!r}",
    )


def parse_threshold(value: Any) -> float | None:
    """``score_threshold``: the least cosine similarity a neighbour may have, in -1..1."""
    if value is None:
        return None
    code = "invalid_score_threshold"
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip()) if len(value) <= 40 else math.nan
        except ValueError:
            number = math.nan
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ApiError(400, code, f"score_threshold must be a number, got {value!r}")
    if not -1.0 <= number <= 1.0:  # NaN fails too
        raise ApiError(400, code, f"score_threshold must be between -1 and 1, got {value!r}")
    return float(number)


def parse_vector(value: Any, dim: int) -> np.ndarray:
    """A query vector: ``dim`` finite numbers, not all zero; returned L2-normalised (float32)."""
    code = "invalid_vector"
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise ApiError(400, code, f"'{VECTOR_FIELD}' must be a list of {dim} numbers")
    if len(value) != dim:
        raise ApiError(
            400, code, f"'{VECTOR_FIELD}' has {len(value)} dimensions; the index has {dim}"
        )
    x = np.asarray(value, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ApiError(400, code, f"'{VECTOR_FIELD}' holds NaN or infinite values")
    scale = float(np.abs(x).max())
    if scale == 0.0:
        raise ApiError(400, code, f"'{VECTOR_FIELD}' is all zeros: it has no direction")
    x = x / scale  # first: tiny or huge numbers would underflow or overflow the norm
    return (x / np.linalg.norm(x)).astype(np.float32)


def check_query_params(args: MultiDict, allowed: Iterable[str], filters: bool) -> None:
    """Refuse query parameters the endpoint does not take, and options given twice
    (``k=5&k=6``: which?); filters are ``filter=<json>`` and ``filter.<field>=value`` only
    (repeated: any of), so no other parameter is read as a field."""
    known = set(allowed)
    repeated = sorted(a for a, values in args.lists() if len(values) > 1 and a in known)
    if repeated:
        names = ", ".join(map(repr, repeated))
        raise ApiError(400, "invalid_request", f"query parameter(s) {names} given more than once")
    unknown = sorted({a for a in args if a not in known and not (filters and is_filter_param(a))})
    if unknown:
        hint = " (equality filters are written filter.<field>=value)" if filters else ""
        takes = ", ".join(sorted(known | ({"filter", "filter.<field>"} if filters else set())))
        raise ApiError(
            400,
            "invalid_request",
            f"unknown query parameter(s) {', '.join(map(repr, unknown))}; this endpoint "
            f"takes {takes or 'none'}{hint}",
        )
