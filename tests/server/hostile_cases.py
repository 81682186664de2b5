"""The hand-written hostile requests of test_hostile.py: JSON shapes, depths and numbers,
lone surrogates and NUL in filters, ids and metadata, formats, headers and methods, over every
endpoint, each with the status (and error code) it must get."""

from __future__ import annotations

import base64
import io
import json

from tests.imagefuzz import foreign_files
from tests.server.helpers import API_KEY, upload

KEY = {"X-API-Key": API_KEY}
JSON = "application/json"


def deep(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


def deep_object(levels: int) -> str:
    return '{"a": ' * levels + "1" + "}" * levels


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cases(jpeg: str) -> list[tuple[str, str, str, dict, int, str | None]]:
    """(name, method, path, test-client arguments, status, error code)."""

    def js(text: str, path: str = "/v1/search", method: str = "POST", **kw):
        return (
            method,
            path,
            {"data": text.encode("utf-8", "surrogatepass"), "content_type": JSON, **kw},
        )

    def item(text: str):
        return js(text, "/v1/items", headers=KEY)

    img = f'"image": "{jpeg}"'
    out: list[tuple[str, str, str, dict, int, str | None]] = []

    def add(name: str, request: tuple, status: int, code: str | None = None) -> None:
        method, path, kwargs = request
        out.append((name, method, path, kwargs, status, code))

    # -- JSON shapes, depths and numbers on search and embed ------------------------------------
    add("image-100000-deep", js('{"image": ' + deep(100_000) + "}"), 400, "json_too_deep")
    # Counted before parsing: 4.5 million "{}" took 11-16 s and 2.9 GB to parse, then refuse.
    many = ",".join(["{}"] * 300_000)
    add(
        "batch-300000-objects",
        js('{"queries": [' + many + "]}", "/v1/search/batch"),
        400,
        "json_too_large",
    )
    add("image-300000-values", js('{"image": [' + many + "]}"), 400, "json_too_large")
    ndjson = {"content_type": "application/x-ndjson", "headers": KEY}
    lines = ("POST", "/v1/items/batch", {"data": ("{}\n" * 100_000).encode(), **ndjson})
    add("ndjson-100000-lines", lines, 400, "too_many_entries")
    wide = ("POST", "/v1/items/batch", {"data": ("[" + many + "]\n").encode(), **ndjson})
    add("ndjson-300000-values", wide, 400, "json_too_large")
    add("image-9-deep", js('{"image": ' + deep(9) + "}"), 400, "json_too_deep")
    add(
        "filter-9-deep", js("{" + img + ', "filter": ' + deep_object(9) + "}"), 400, "json_too_deep"
    )
    add("body-top-level-deep", js(deep(5000)), 400, "json_too_deep")
    add("k-5000-digits", js("{" + img + ', "k": ' + "9" * 5000 + "}"), 400, "number_too_large")
    add("k-negative-5000-digits", js("{" + img + ', "k": -' + "1" * 5000 + "}"), 400)
    add("k-1e999", js("{" + img + ', "k": 1e999}'), 400, "number_too_large")
    add("k-long-fraction", js("{" + img + ', "k": 1.' + "0" * 5000 + "}"), 400)
    add("k-nan", js("{" + img + ', "k": NaN}'), 400, "invalid_json")
    add("k-infinity", js("{" + img + ', "k": -Infinity}'), 400, "invalid_json")
    add("k-string-number", js("{" + img + ', "k": "3"}'), 200)
    add("k-integral-float", js("{" + img + ', "k": 2.0}'), 200)  # an integer to JSON Schema
    add("k-fraction", js("{" + img + ', "k": 2.5}'), 400, "invalid_k")
    add("k-null", js("{" + img + ', "k": null}'), 400, "invalid_k")
    add("filter-json-null", js("{" + img + ', "filter": null}'), 400, "invalid_filter")
    add("duplicate-key", js("{" + img + ", " + img + "}"), 400, "invalid_json")
    members = ", ".join(f'"f{i}": 1' for i in range(300))
    add("300-member-filter", js("{" + img + ', "filter": {' + members + "}}"), 400)
    add("json-null", js("null"), 400, "invalid_json")
    add("json-string", js('"image"'), 400, "invalid_json")
    add("json-empty", js(""), 400, "invalid_json")
    add("json-whitespace", js("  \n "), 400, "invalid_json")
    add("json-bom", js('\ufeff{"image": "x"}'), 400, "invalid_base64")  # BOM: still UTF-8
    add(
        "json-invalid-utf8",
        ("POST", "/v1/search", {"data": b'{"image": "\xff"}', "content_type": JSON}),
        400,
    )
    add("json-trailing-garbage", js("{" + img + "} x"), 400, "invalid_json")
    add("image-as-list", js('{"image": [1, 2, 3]}'), 400, "invalid_base64")
    add("image-as-object", js('{"image": {"a": 1}}'), 400, "invalid_base64")
    add("image-null", js('{"image": null}'), 400, "invalid_base64")
    add("embed-deep", js('{"image": ' + deep(100_000) + "}", "/v1/embed"), 400, "json_too_deep")
    add(
        "embed-surrogate-key", js('{"\\ud800": 1, ' + img + "}", "/v1/embed"), 400, "invalid_string"
    )
    add("embed-empty-raw", ("POST", "/v1/embed", {"data": b"", "content_type": "image/png"}), 400)
    add(
        "embed-nul-raw",
        ("POST", "/v1/embed", {"data": b"\0" * 999, "content_type": "image/png"}),
        400,
    )

    # -- unicode, NUL and sizes in filters ---------------------------------------------------
    add(
        "filter-lone-surrogate",
        js("{" + img + ', "filter": {"label": "\\ud800"}}'),
        400,
        "invalid_string",
    )
    add(
        "filter-list-surrogate",
        js("{" + img + ', "filter": {"title": ["ok", "\\udbff"]}}'),
        400,
        "invalid_string",
    )
    add(
        "filter-key-surrogate",
        js("{" + img + ', "filter": {"\\udfff": "x"}}'),
        400,
        "invalid_string",
    )
    add("filter-nul", js("{" + img + ', "filter": {"label": "a\\u0000b"}}'), 400, "invalid_string")
    add("filter-raw-surrogate", js("{" + img + ', "filter": {"label": "\ud800"}}'), 400)
    add(
        "filter-101-values",
        js("{" + img + ', "filter": {"label": ' + json.dumps(["x"] * 101) + "}}"),
        400,
        "invalid_filter",
    )
    add(
        "filter-long-value",
        js("{" + img + ', "filter": {"label": "' + "x" * 1001 + '"}}'),
        400,
        "invalid_filter",
    )
    add(
        "filter-huge-float",
        js("{" + img + ', "filter": {"label": 1e300}}'),
        400,
        "number_too_large",
    )
    add("filter-null", js("{" + img + ', "filter": {"label": null}}'), 400, "invalid_filter")
    add("filter-empty-list", js("{" + img + ', "filter": {"label": []}}'), 400, "invalid_filter")
    add("filter-unicode-ok", js("{" + img + ', "filter": {"label": "Ünïcødé 📱"}}'), 200)
    add(
        "query-filter-nul",
        ("POST", "/v1/search?filter.label=%00", {"data": {"image": (io.BytesIO(b""), "x")}}),
        400,
    )
    add("query-filter-encoded-surrogate", ("POST", "/v1/search?filter.label=%ED%A0%80", {}), 400)
    add("query-filter-long", ("POST", "/v1/search?filter.label=" + "x" * 1001, {}), 400)
    add("query-filter-101", ("POST", "/v1/search?" + "&".join(["filter.label=x"] * 101), {}), 400)

    # -- formats and multipart -----------------------------------------------------------------
    add(
        "multipart-no-boundary",
        ("POST", "/v1/search", {"data": b"--x\r\n", "content_type": "multipart/form-data"}),
        400,
    )
    add(
        "multipart-garbage",
        (
            "POST",
            "/v1/search",
            {"data": b"\0" * 64, "content_type": "multipart/form-data; boundary=zz"},
        ),
        400,
    )
    add(
        "content-type-garbage", ("POST", "/v1/search", {"data": b"x", "content_type": ";;;=="}), 415
    )
    add(
        "json-charset-latin1",
        (
            "POST",
            "/v1/search",
            {
                "data": '{"image": "é"}'.encode("latin-1"),
                "content_type": "application/json; charset=latin-1",
            },
        ),
        400,
    )
    add(
        "raw-tiff-garbage",
        ("POST", "/v1/search", {"data": b"II*\x00" + b"\xff" * 64, "content_type": "image/tiff"}),
        400,
        "invalid_image",
    )
    add(
        "raw-pdf-as-jpeg",
        ("POST", "/v1/embed", {"data": b"%PDF-1.4\n%%EOF", "content_type": "image/jpeg"}),
        400,
        "invalid_image",
    )

    # -- writes: ids, metadata keys and values, numbers, depths -------------------------------
    add("id-lone-surrogate", item('{"id": "ab\\ud800", ' + img + "}"), 400, "invalid_string")
    add("id-nul", item('{"id": "a\\u0000", ' + img + "}"), 400, "invalid_string")
    add("id-number", item('{"id": 5, ' + img + "}"), 400, "invalid_id")
    add("id-dot", item('{"id": ".", ' + img + "}"), 400, "invalid_id")
    add("id-dotdot-segment", item('{"id": "a/../b", ' + img + "}"), 400, "invalid_id")
    add("id-double-slash", item('{"id": "a//b", ' + img + "}"), 400, "invalid_id")
    add("id-leading-slash", item('{"id": "/a", ' + img + "}"), 400, "invalid_id")
    add("id-trailing-space", item('{"id": "a ", ' + img + "}"), 400, "invalid_id")
    add("id-newline", item('{"id": "a\\nb", ' + img + "}"), 400, "invalid_id")
    add("id-c1-control", item('{"id": "a\\u0085b", ' + img + "}"), 400, "invalid_id")
    add("id-257-chars", item('{"id": "' + "x" * 257 + '", ' + img + "}"), 400, "invalid_id")
    add(
        "meta-value-surrogate",
        item('{"id": "m1", ' + img + ', "metadata": {"title": "\\udfff"}}'),
        400,
        "invalid_string",
    )
    add(
        "meta-key-surrogate",
        item('{"id": "m1", ' + img + ', "metadata": {"\\ud800": "x"}}'),
        400,
        "invalid_string",
    )
    add(
        "meta-value-nul",
        item('{"id": "m1", ' + img + ', "metadata": {"title": "a\\u0000"}}'),
        400,
        "invalid_string",
    )
    add(
        "meta-5000-digit-price",
        item('{"id": "m1", ' + img + ', "metadata": {"price": 1' + "0" * 5000 + "}}"),
        400,
        "number_too_large",
    )
    add(
        "meta-1e19-price",
        item('{"id": "m1", ' + img + ', "metadata": {"price": 1e19}}'),
        400,
        "number_too_large",
    )
    add(
        "meta-50000-deep",
        item('{"id": "m1", ' + img + ', "metadata": ' + deep_object(50_000) + "}"),
        400,
        "json_too_deep",
    )
    add(
        "meta-nested-value",
        item('{"id": "m1", ' + img + ', "metadata": {"a": [1]}}'),
        400,
        "invalid_request",
    )
    add(
        "meta-300k-title",
        item('{"id": "m1", ' + img + ', "metadata": {"title": "' + "t" * 300_000 + '"}}'),
        400,
        "invalid_metadata",
    )
    fields = ", ".join(f'"f{i}": {i}' for i in range(33))
    add(
        "meta-33-fields",
        item('{"id": "m1", ' + img + ', "metadata": {' + fields + "}}"),
        400,
        "invalid_metadata",
    )
    add(
        "meta-long-key",
        item('{"id": "m1", ' + img + ', "metadata": {"' + "k" * 65 + '": 1}}'),
        400,
        "invalid_metadata",
    )
    add(
        "meta-key-space",
        item('{"id": "m1", ' + img + ', "metadata": {"a b": 1}}'),
        400,
        "invalid_metadata",
    )
    add(
        "meta-key-empty",
        item('{"id": "m1", ' + img + ', "metadata": {"": 1}}'),
        400,
        "invalid_metadata",
    )
    add(
        "meta-not-object",
        item('{"id": "m1", ' + img + ', "metadata": "x"}'),
        400,
        "invalid_metadata",
    )
    add(
        "meta-id-inside",
        item('{"id": "m1", ' + img + ', "metadata": {"id": "m2"}}'),
        400,
        "invalid_metadata",
    )
    form = {"id": "m1", "metadata": '{"price": ' + "9" * 5000 + "}"}
    add(
        "form-meta-5000-digits",
        ("POST", "/v1/items", {"data": {**upload(b"x"), **form}, "headers": KEY}),
        400,
    )
    form = {"id": "m1", "metadata": deep_object(50_000)}
    add(
        "form-meta-50000-deep",
        ("POST", "/v1/items", {"data": {**upload(b"x"), **form}, "headers": KEY}),
        400,
    )
    form = {"id": "m1", "title": "t" * 300_000}
    add(
        "form-field-300k",
        ("POST", "/v1/items", {"data": {**upload(b"x"), **form}, "headers": KEY}),
        400,
    )
    form = {"id": "m1", "title": "a\x00b"}
    add(
        "form-field-nul",
        ("POST", "/v1/items", {"data": {**upload(b"x"), **form}, "headers": KEY}),
        400,
    )
    dds = foreign_files()["dds"]
    add(
        "item-dds-image",
        ("POST", "/v1/items", {"data": {**upload(dds, "a.dds"), "id": "m1"}, "headers": KEY}),
        400,
        "invalid_image",
    )

    # -- ids, cursors and parameters on reads ---------------------------------------------------
    add("get-nul-id", ("GET", "/v1/items/%00", {}), 404, "unknown_item")
    add("get-10k-id", ("GET", "/v1/items/" + "x" * 10_000, {}), 404)
    # Not UTF-8 (an encoded surrogate): no id is spelled so, and the path says why.
    add("get-encoded-surrogate-id", ("GET", "/v1/items/%ED%A0%80", {}), 400, "invalid_string")
    add("get-traversal-id", ("GET", "/v1/items/..%2F..%2Fetc%2Fpasswd", {}), 404)
    add("similar-k-20-digits", ("GET", "/v1/items/x/similar?k=" + "9" * 20, {}), 400, "invalid_k")
    add("similar-filter-nul", ("GET", "/v1/items/x/similar?filter.label=%00", {}), 400)
    add(
        "cursor-deep-json",
        ("GET", "/v1/items?cursor=" + cursor_of(deep(100_000).encode()), {}),
        400,
        "invalid_cursor",
    )
    add(
        "cursor-surrogate",
        ("GET", "/v1/items?cursor=" + cursor_of(b'{"after": "\\ud800"}'), {}),
        400,
        "invalid_cursor",
    )
    add(
        "cursor-huge-number",
        ("GET", "/v1/items?cursor=" + cursor_of(b'{"after": 1' + b"0" * 5000 + b"}"), {}),
        400,
        "invalid_cursor",
    )
    add("limit-exponent", ("GET", "/v1/items?limit=1e3", {}), 400, "invalid_limit")
    add("limit-nul", ("GET", "/v1/items?limit=%00", {}), 400, "invalid_limit")

    # -- headers and methods ---------------------------------------------------------------
    add("delete-thumbnail-url", ("DELETE", "/v1/items/x/image", {"headers": KEY}), 405)
    add("delete-similar-url", ("DELETE", "/v1/items/x/similar", {"headers": KEY}), 405)
    add("delete-nul-id", ("DELETE", "/v1/items/%00", {"headers": KEY}), 404)
    add(
        "key-lowercase-header",
        ("DELETE", "/v1/items/nope", {"headers": {"x-api-key": API_KEY}}),
        404,
    )
    add("key-latin1", ("DELETE", "/v1/items/nope", {"headers": {"X-API-Key": "\xff\xfe"}}), 403)
    add("key-100kb", ("DELETE", "/v1/items/nope", {"headers": {"X-API-Key": "k" * 100_000}}), 403)
    add(
        "bearer-empty", ("DELETE", "/v1/items/nope", {"headers": {"Authorization": "Bearer "}}), 401
    )
    add(
        "basic-auth",
        ("DELETE", "/v1/items/nope", {"headers": {"Authorization": "Basic eDp5"}}),
        401,
    )
    add("patch-search", ("PATCH", "/v1/search", {}), 405)
    add("trace-root", ("TRACE", "/", {}), 405)
    add("put-items", ("PUT", "/v1/items", {}), 405)
    add("custom-method", ("BREW", "/v1/info", {}), 405)
    add("head-healthz", ("HEAD", "/healthz", {}), 200)
    add("options-search", ("OPTIONS", "/v1/search", {}), 204)  # no content: Allow
    add("huge-header-read", ("GET", "/v1/info", {"headers": {"X-Pad": "p" * 100_000}}), 200)
    return out
