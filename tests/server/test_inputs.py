"""Every bad request gets a 4xx JSON error, and the server goes on answering."""

from __future__ import annotations

import json

import pytest

from tests.server.helpers import SMALL_UPLOAD_MB, assert_error, b64, bad_requests, upload


@pytest.fixture
def corpus(jpeg_bytes):  # not shared: the uploads are streams, read once
    return bad_requests(jpeg_bytes)


def test_bad_input_corpus_is_large_enough(corpus):
    assert len(corpus) >= 25
    assert len({name for name, _, _ in corpus}) == len(corpus)


def test_every_bad_input_gets_a_4xx_json_error_and_the_server_keeps_answering(
    client, corpus, jpeg_bytes
):
    for name, kwargs, status in corpus:
        kwargs = dict(kwargs)
        response = client.open(kwargs.pop("path"), **kwargs)
        assert response.status_code == status, (name, response.get_data(as_text=True)[:300])
        assert 400 <= response.status_code < 500
        error = assert_error(response, status)
        # One code for "too large", whichever limit refused the body.
        assert (error["code"] == "payload_too_large") == (status == 413), name
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/search", data=upload(jpeg_bytes))
    assert ok.status_code == 200 and ok.get_json()["neighbors"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'status="500"' not in metrics


def test_an_image_just_over_the_upload_limit_is_refused_by_the_app_itself(app, client, jpeg_bytes):
    """Werkzeug's body limit is 4/3 of the upload limit plus room for the fields, so a raw or
    base64 image a little over the upload limit passes it: only the app's check of the image
    itself refuses it (the corpus's raw body, 3x the limit, never got that far)."""
    limit = app.extensions["phonesim"].config.max_upload_bytes
    said = f"image is larger than {SMALL_UPLOAD_MB:g} MiB (--max-upload-mb)"
    # Decoded, over the limit by more than base64's padding slack; sent, within the body limit.
    over_json = jpeg_bytes + b"\x00" * (limit + 1024 - len(jpeg_bytes))
    over_raw = jpeg_bytes + b"\x00" * (limit + 1 - len(jpeg_bytes))  # one byte over
    cases = {
        "json": {"json": {"image": b64(over_json)}},
        "data-url": {"json": {"image": "data:image/jpeg;base64," + b64(over_json)}},
        "raw": {"data": over_raw, "content_type": "image/jpeg"},
        "octet-stream": {"data": over_raw, "content_type": "application/octet-stream"},
    }
    for name, kwargs in cases.items():
        body = kwargs.get("data") or json.dumps(kwargs["json"]).encode()
        assert len(body) <= app.config["MAX_CONTENT_LENGTH"], name  # werkzeug lets it through
        error = assert_error(client.post("/v1/search", **kwargs), 413, "payload_too_large")
        assert error["message"] == said, name
    # At the limit, the same image is taken.
    at_limit = jpeg_bytes + b"\x00" * (limit - len(jpeg_bytes))
    for kwargs in (
        {"json": {"image": b64(at_limit)}},
        {"data": at_limit, "content_type": "image/jpeg"},
    ):
        assert client.post("/v1/search", **kwargs).status_code == 200


@pytest.mark.parametrize("name", ["score", "image_url"])
def test_a_metadata_name_the_server_adds_is_refused_as_such(name):
    """The name "score" was refused as if its characters were wrong ("must be 1-64 letters")."""
    from server.errors import ApiError
    from server.limits import check_metadata

    with pytest.raises(ApiError, match=f"'{name}' is the server's own"):
        check_metadata({name: 1})


@pytest.mark.parametrize("name", ["Größe", "品牌", "Preis (€)"])
def test_a_non_ascii_field_name_is_refused_saying_ascii_and_where_it_can_live(name):
    """The rule said "letters": a German or Chinese catalog's own column names, letters to their
    users, were refused as if misspelt."""
    from server.errors import ApiError
    from server.limits import check_metadata

    with pytest.raises(ApiError, match="ASCII letters.*catalog CSV's other column names"):
        check_metadata({name: 1})


def test_the_value_bound_leaves_room_for_the_largest_batch_of_vectors():
    """The bound is counted before parsing; a full batch of wide vectors still parses."""
    import json

    from server.errors import ApiError
    from server.limits import MAX_JSON_VALUES, json_values_for, parse_json

    queries = [{"vector": [0.012345] * 8192} for _ in range(64)]
    body = json.dumps({"queries": queries, "k": 5})
    with pytest.raises(ApiError, match="more than 262144 JSON values"):
        parse_json(body)  # the default bound: a single request's
    assert len(parse_json(body, max_values=json_values_for(64, 8192))["queries"]) == 64
    assert json_values_for(1, 8) == MAX_JSON_VALUES


def test_a_form_field_over_its_bound_is_a_400_naming_it(tiny_embedder, readonly_index, jpeg_bytes):
    """werkzeug answers a text field over its memory bound 413, as for a body over the
    upload limit, which this 1 MB body is not (10 MB)."""
    import io

    from server.config import ServerConfig
    from tests.server.helpers import make_app

    app = make_app(ServerConfig(), tiny_embedder, readonly_index)
    try:
        data = {"metadata": "x" * 2**20, "image": (io.BytesIO(jpeg_bytes), "a.jpg")}
        response = app.test_client().post("/v1/search", data=data)
        error = assert_error(response, 400, "form_too_large")
        assert "256 KiB" in error["message"] and "100 parts" in error["message"]
    finally:
        app.extensions["phonesim"].close()


def test_commas_inside_strings_are_no_values():
    """64 items with nine 999-comma metadata values (within every bound) were refused as
    "more than 262144 JSON values"."""
    import json

    from server.errors import ApiError
    from server.limits import check_json_size

    fields = {f"f{j}": "," * 999 for j in range(9)}
    body = json.dumps({"items": [{"id": f"i{i}", "metadata": fields} for i in range(64)]})
    check_json_size(body.encode(), "request body")
    check_json_size(body, "request body")
    escaped = json.dumps(['a\\",b' * 100_000, *range(300_000)])  # escaped quotes inside
    with pytest.raises(ApiError, match="more than 262144 JSON values"):
        check_json_size(escaped.encode(), "request body")


def test_the_value_count_stays_linear_on_escapes_and_unterminated_strings():
    """A body of escaped quotes ending in a lone backslash made the string pattern fail
    from every quote and scan again: 40 s for 64,000 of them, holding the GIL, so the whole
    worker stopped. Linear, 200,000 take well under a second; the bound is a hang guard."""
    import time

    from server.errors import ApiError
    from server.limits import check_json_size

    commas = b"," * 262_144
    hostile = [
        commas + b'"' + b'\\"' * 200_000 + b"\\",
        commas + b'"' + b'\\"' * 200_000,
        commas + b'"\\' * 200_000,
    ]
    for body in hostile:
        started = time.perf_counter()
        with pytest.raises(ApiError, match="JSON values"):
            check_json_size(body, "request body")
        assert time.perf_counter() - started < 10


def test_json_that_is_not_utf8_is_refused():
    """UTF-16 JSON parsed, but a quote byte inside another character (U+2200 is 00 22)
    hid commas from the count: 2.3 million values passed a bound of 262,144."""
    from server.errors import ApiError
    from server.limits import parse_json

    body = '{"a": "\u2200", "b": [1, 2], "c": "\u2200"}'
    assert parse_json(body.encode("utf-8"))["b"] == [1, 2]
    for encoding in ("utf-16-le", "utf-16", "utf-32"):
        with pytest.raises(ApiError, match="must be UTF-8 JSON"):
            parse_json(body.encode(encoding))


def test_nested_lists_count_as_values_without_commas():
    """500-deep lists joined by commas: 13,385 commas in 13 MB, 6.7 million lists, 3 s and
    616 MB to parse before the depth check refused them."""
    from server.errors import ApiError
    from server.limits import check_json_size

    deep = "[" * 500 + "]" * 500
    body = ("[" + ",".join([deep] * 600) + "]").encode()
    assert body.count(b",") < 1000
    with pytest.raises(ApiError, match="JSON values"):
        check_json_size(body, "request body")
    check_json_size(b'{"queries": [{"vector": [0.5, 0.5]}], "filter": {"a": ["x"]}}', "body")
