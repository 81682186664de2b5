"""Catalog writes and pages through Flask's test client: listing with filters, PATCH of
metadata, batch adds (NDJSON and JSON) acknowledged per item."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from server.config import ServerConfig
from tests.server.helpers import (
    API_KEY,
    assert_error,
    b64,
    delete_right_after_adding,
    make_app,
    upload,
)

KEY = {"X-API-Key": API_KEY}


def _ndjson(rows: list) -> bytes:
    return ("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n").encode()


# -- listing -----------------------------------------------------------------------------------
def test_list_items_with_filters_pages_the_matching_items(client, catalog_rows):
    label = sorted({r["label"] for r in catalog_rows.values()})[0]
    want = sorted(i for i, r in catalog_rows.items() if r["label"] == label)
    ids, cursor = [], None
    while True:
        query = {"limit": 4, "filter.label": label, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/items", query_string=query).get_json()
        assert body["filter"] == {"label": label}
        ids += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert ids == want
    prices = sorted({float(r["price"]) for r in catalog_rows.values()})
    flt = json.dumps({"price": {"gte": prices[1]}})
    body = client.get("/v1/items", query_string={"filter": flt, "limit": 100}).get_json()
    assert [i["id"] for i in body["items"]] == sorted(
        i for i, r in catalog_rows.items() if float(r["price"]) >= prices[1]
    )


def test_list_items_refuses_unknown_fields_and_params(client):
    assert_error(client.get("/v1/items?filter.colour=red"), 400, "invalid_filter")
    assert_error(client.get("/v1/items?label=x"), 400, "invalid_request")
    r = client.get("/v1/items", query_string={"filter": '{"label": {"lt": 1}}'})
    assert "text" in assert_error(r, 400, "invalid_filter")["message"]
    assert_error(client.get("/v1/items", query_string={"filter": "[1]"}), 400, "invalid_filter")


# -- PATCH -------------------------------------------------------------------------------------
def test_patch_changes_metadata_without_reembedding_and_lasts(writable, first_id):
    app, folder = writable
    c = app.test_client()
    svc = app.extensions["phonesim"].service
    before_vec = svc.index.get_vectors([first_id])[0].copy()
    before = c.get(f"/v1/items/{first_id}").get_json()
    r = c.patch(
        f"/v1/items/{first_id}", json={"metadata": {"price": 199, "sale": True}}, headers=KEY
    )
    assert r.status_code == 200, r.get_json()
    item = r.get_json()["item"]
    assert item["price"] == 199 and item["sale"] is True and item["title"] == before["title"]
    assert np.array_equal(svc.index.get_vectors([first_id])[0], before_vec)
    cheap = c.get("/v1/items", query_string={"filter": '{"price": {"lt": 200}}'}).get_json()
    assert [i["id"] for i in cheap["items"]] == [first_id]
    r = c.patch(
        f"/v1/items/{first_id}", json={"metadata": {"label": "x"}, "merge": False}, headers=KEY
    )
    item = r.get_json()["item"]
    assert item["label"] == "x" and "title" not in item and "price" not in item
    assert item["image_url"]  # the server's own image field survives a replace
    # Durable: a fresh open of the folder sees the change.
    from index import CatalogIndex

    with CatalogIndex.open(folder, readonly=True) as reopened:
        assert reopened.get(first_id).metadata["label"] == "x"


def test_patch_errors(writable, client, first_id):
    app, _ = writable
    c = app.test_client()
    body = {"metadata": {"price": 1}}
    assert_error(c.patch("/v1/items/no-such-phone", json=body, headers=KEY), 404, "unknown_item")
    assert_error(c.patch(f"/v1/items/{first_id}", json=body), 401, "missing_api_key")
    bad_key = {"X-API-Key": "wrong"}
    assert_error(c.patch(f"/v1/items/{first_id}", json=body, headers=bad_key), 403)
    assert_error(c.patch(f"/v1/items/{first_id}", json={}, headers=KEY), 400)
    private = {"metadata": {"image": "/etc/passwd"}}
    assert_error(c.patch(f"/v1/items/{first_id}", json=private, headers=KEY), 400)
    assert_error(c.patch(f"/v1/items/{first_id}", json={**body, "merge": 1}, headers=KEY), 400)
    assert_error(c.patch(f"/v1/items/{first_id}", json={**body, "x": 1}, headers=KEY), 400)
    r = c.patch(f"/v1/items/{first_id}", data=b"price=1", headers=KEY, content_type="text/plain")
    assert_error(r, 415)
    # The read-only app: the index refuses writes.
    assert_error(client.patch(f"/v1/items/{first_id}", json=body, headers=KEY), 403)


def test_merges_cannot_grow_an_item_past_the_field_limit(writable, first_id):
    """Each PATCH was checked alone: three merges of 32 new fields made a 96-field item that
    no longer passed its own limit (and 96 filterable field names)."""
    from server.limits import MAX_METADATA_FIELDS

    app, _ = writable
    c = app.test_client()
    url = f"/v1/items/{first_id}"
    before = c.get(url).get_json()
    given = len([k for k in before if k not in ("id", "image_url")])
    room = MAX_METADATA_FIELDS - given
    fill = {f"f{i}": i for i in range(room)}
    assert c.patch(url, json={"metadata": fill}, headers=KEY).status_code == 200
    full = c.get(url).get_json()
    over = assert_error(c.patch(url, json={"metadata": {"one_more": 1}}, headers=KEY), 400)
    assert over["code"] == "invalid_metadata" and "more than 32" in over["message"]
    assert c.get(url).get_json() == full  # nothing of the refused merge was stored
    # Changing fields it has, or replacing them all, is still allowed.
    assert c.patch(url, json={"metadata": {"f0": "x"}}, headers=KEY).status_code == 200
    r = c.patch(url, json={"metadata": {"one_more": 1}, "merge": False}, headers=KEY)
    assert r.status_code == 200 and r.get_json()["item"]["one_more"] == 1


# -- batch add ---------------------------------------------------------------------------------
def test_batch_add_acknowledges_each_item(writable, jpeg_bytes, first_id):
    app, _ = writable
    c = app.test_client()
    img = b64(jpeg_bytes)
    rows = [
        {"id": "new-1", "image": img, "metadata": {"price": 10, "label": "nova-max"}},
        {"id": "new-2", "image": img},
        {"id": first_id, "image": img},  # exists
        {"id": "new-1", "image": img},  # repeated in the batch
        {"id": "new-3", "image": b64(b"not an image")},
        {"id": "new-4"},  # no image
        7,
        {"id": "new-5", "image": img, "metadata": {"image": "/etc/passwd"}},
        {"id": "", "image": img},
        {"id": "new-7", "image": b64(b"not an image")},
        {"id": "new-7", "image": img},  # the refused entry before it does not take the id
    ]
    r = c.post(
        "/v1/items/batch", data=_ndjson(rows), content_type="application/x-ndjson", headers=KEY
    )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    statuses = [(a["id"], a["status"]) for a in body["results"]]
    assert statuses == [
        ("new-1", 201),
        ("new-2", 201),
        (first_id, 409),
        ("new-1", 409),
        ("new-3", 400),
        ("new-4", 400),
        (None, 400),
        ("new-5", 400),
        ("", 400),
        ("new-7", 400),
        ("new-7", 201),
    ]
    assert body["added"] == 3 and body["failed"] == 8
    messages = [a["error"]["message"] for a in body["results"][2:4]]
    assert messages == [
        f"item {first_id!r} already exists",
        "item 'new-1' is given by an earlier entry of this batch",
    ]
    broken = _ndjson([rows[0], "{not json"])  # not NDJSON: the whole request is refused
    r = c.post("/v1/items/batch", data=broken, content_type="application/x-ndjson", headers=KEY)
    assert "line 2" in assert_error(r, 400, "invalid_json")["message"]
    assert body["results"][0]["item"]["price"] == 10
    assert body["results"][4]["error"]["code"] == "invalid_image"
    hit = c.post("/v1/search?k=1&filter.label=nova-max", json={"image": img}).get_json()
    assert hit["neighbors"]
    assert c.get("/v1/items/new-2").status_code == 200
    as_json = {"items": [{"id": "new-6", "image": img, "metadata": {"price": 5}}]}
    r = c.post("/v1/items/batch", json=as_json, headers=KEY)
    assert r.get_json()["added"] == 1
    assert c.get("/v1/items/new-6").get_json()["price"] == 5


def test_batch_add_limits_and_keys(tiny_embedder, writable, jpeg_bytes):
    app, _ = writable
    c = app.test_client()
    row = {"id": "a", "image": b64(jpeg_bytes)}
    nd = "application/x-ndjson"
    assert_error(c.post("/v1/items/batch", data=_ndjson([row]), content_type=nd), 401)
    assert_error(c.post("/v1/items/batch", json={"items": []}, headers=KEY), 400)
    assert_error(c.post("/v1/items/batch", json={"items": "x"}, headers=KEY), 400)
    assert_error(c.post("/v1/items/batch", data=b"\n\n", content_type=nd, headers=KEY), 400)
    assert_error(c.post("/v1/items/batch", data=b"x", content_type="text/plain", headers=KEY), 415)
    index = app.extensions["phonesim"].service.index
    small = make_app(ServerConfig(api_key=API_KEY, max_batch_entries=2), tiny_embedder, index)
    try:
        rows = [{**row, "id": f"x{i}"} for i in range(3)]
        r = small.test_client().post(
            "/v1/items/batch", data=_ndjson(rows), content_type=nd, headers=KEY
        )
        assert_error(r, 400, "too_many_entries")
        assert "x0" not in index  # nothing of a refused batch is added
    finally:
        small.extensions["phonesim"].close()


# -- field types -------------------------------------------------------------------------------
def test_a_price_in_words_leaves_every_clients_range_filters_working(writable, jpeg_bytes):
    """One listing's "call us" (or a blank written as "") in "price" must not turn every
    client's range filter on prices into an error: ranges skip the items without a number."""
    app, _ = writable
    c = app.test_client()
    cheap = {"filter": '{"price": {"lt": 1000000}}', "limit": 100}
    before = [i["id"] for i in c.get("/v1/items", query_string=cheap).get_json()["items"]]
    body = {"id": "w1", "image": b64(jpeg_bytes), "metadata": {"price": "call us"}}
    assert c.post("/v1/items", json=body, headers=KEY).status_code == 201
    form = {**upload(jpeg_bytes), "id": "w2", "price": "12.5"}  # all a form can send: text
    assert c.post("/v1/items", data=form, headers=KEY).status_code == 201
    after = c.get("/v1/items", query_string=cheap)
    assert after.status_code == 200, after.get_json()
    assert [i["id"] for i in after.get_json()["items"]] == sorted([*before, "w2"])
    words = c.get("/v1/items", query_string={"filter": '{"price": "call us"}'}).get_json()
    assert [i["id"] for i in words["items"]] == ["w1"]
    name = c.get("/v1/items", query_string={"filter": '{"title": {"lt": 3}}'})
    assert "text field" in assert_error(name, 400, "invalid_filter")["message"]


def test_null_metadata_is_refused_by_single_and_batch_adds_alike(writable, jpeg_bytes):
    """The schema says an object; the single add took null as {} where the batch refused it."""
    app, _ = writable
    c = app.test_client()
    body = {"id": "n1", "image": b64(jpeg_bytes), "metadata": None}
    assert_error(c.post("/v1/items", json=body, headers=KEY), 400, "invalid_metadata")
    r = c.post("/v1/items/batch", json={"items": [body]}, headers=KEY)
    assert r.get_json()["results"][0]["status"] == 400
    assert_error(c.get("/v1/items/n1"), 404)
    del body["metadata"]  # left out: no metadata
    assert c.post("/v1/items", json=body, headers=KEY).status_code == 201


def test_form_fields_left_blank_are_not_given_and_repeated_ones_are_400(writable, jpeg_bytes):
    app, _ = writable
    c = app.test_client()
    form = {**upload(jpeg_bytes), "id": "blank", "price": "", "title": "Blank price"}
    r = c.post("/v1/items", data=form, headers=KEY)
    assert r.status_code == 201, r.get_json()
    assert "price" not in r.get_json()["item"] and r.get_json()["item"]["title"] == "Blank price"
    blank = {**upload(jpeg_bytes), "id": "blank-2", "metadata": "", "price": "", "title": "x"}
    assert c.post("/v1/items", data=blank, headers=KEY).status_code == 201
    both = {**upload(jpeg_bytes), "id": "blank-3", "metadata": '{"price": 1}', "price": ""}
    r = c.post("/v1/items", data=both, headers=KEY)
    assert r.status_code == 201 and r.get_json()["item"]["price"] == 1
    twice = [
        {**upload(jpeg_bytes), "id": ["a1", "a2"]},
        {**upload(jpeg_bytes), "id": ["a5", (io.BytesIO(b"a6"), "id.txt")]},  # text and file
        {
            "image": [(io.BytesIO(jpeg_bytes), "a.jpg"), (io.BytesIO(jpeg_bytes), "b.jpg")],
            "id": "a3",
        },
        {**upload(jpeg_bytes), "id": "a4", "metadata": '{"price": 1}', "price": "2"},
    ]
    for form in twice:
        assert_error(c.post("/v1/items", data=form, headers=KEY), 400)
    gone = ("a1", "a2", "a3", "a4", "a5", "a6")
    assert all(c.get(f"/v1/items/{i}").status_code == 404 for i in gone)


def test_a_batch_add_that_a_delete_overtakes_still_answers_what_was_stored(
    writable, jpeg_bytes, monkeypatch
):
    app, _ = writable
    c = app.test_client()
    delete_right_after_adding(app, monkeypatch)
    row = {"id": "gone", "image": b64(jpeg_bytes), "metadata": {"title": "Gone"}}
    r = c.post("/v1/items/batch", json={"items": [row]}, headers=KEY)
    result = r.get_json()["results"][0]
    assert result["status"] == 201 and result["item"]["title"] == "Gone"
    assert "metadata" not in result


def test_a_value_the_store_refuses_is_a_400_not_a_500(writable, first_id, monkeypatch):
    """PostgreSQL refusing a value beyond its limits (StoreRefusedError) was a logged 500."""
    from index.errors import StoreRefusedError

    app, _ = writable
    index = app.extensions["phonesim"].service.index

    def refused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise StoreRefusedError("postgresql://u@db:5432/c: refused (value too long)")

    monkeypatch.setattr(type(index), "update_metadata", refused)
    r = app.test_client().patch(f"/v1/items/{first_id}", json={"metadata": {"x": 1}}, headers=KEY)
    assert assert_error(r, 400, "invalid_request")["message"].endswith("(value too long)")


def test_a_store_that_broke_off_mid_commit_is_a_502_that_keeps_the_photo(
    writable, jpeg_bytes, monkeypatch
):
    """A 503 said "nothing was changed" (clients retry those) when the commit's answer never
    came, and the add deleted the photo of the item it may have stored; the PostgreSQL side
    is tests/index/test_pg_faults.py."""
    from index.errors import StoreOutcomeUnknownError, StoreUnavailableError

    app, _ = writable
    c = app.test_client()
    index = app.extensions["phonesim"].service.index
    uploads = Path(app.extensions["phonesim"].service.config.image_dir)
    real_add = index.add

    def committed_then_broke(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_add(*args, **kwargs)
        raise StoreOutcomeUnknownError("store: the connection broke while committing")

    monkeypatch.setattr(index, "add", committed_then_broke)
    r = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "maybe"}, headers=KEY)
    error = assert_error(r, 502, "store_outcome_unknown")
    assert "may have been made" in error["message"] and "Retry-After" not in r.headers
    assert c.get("/v1/items/maybe").status_code == 200  # it was made ...
    assert c.get("/v1/items/maybe/image").status_code == 200  # ... with its photo
    kept = sorted(p.name for p in uploads.rglob("*") if p.is_file())

    def down(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise StoreUnavailableError("store: unavailable")

    monkeypatch.setattr(index, "add", down)
    r = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "never"}, headers=KEY)
    assert_error(r, 503, "store_unavailable")
    assert sorted(p.name for p in uploads.rglob("*") if p.is_file()) == kept  # its photo went


def test_a_store_failing_midway_through_a_batch_says_which_items_were_added(
    writable, jpeg_bytes, monkeypatch
):
    """After a racing add of one of its ids, a batch adds its items one by one; the store
    failing on the second answered the whole request 503 "nothing was changed" though the
    first was stored."""
    from index.errors import DuplicateIdError, StoreUnavailableError

    app, _ = writable
    c = app.test_client()
    index = app.extensions["phonesim"].service.index
    uploads = Path(app.extensions["phonesim"].service.config.image_dir)
    real_add = index.add
    calls: list[list[str]] = []

    def flaky(ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(list(ids))
        if len(calls) == 1:
            raise DuplicateIdError("one of them was added meanwhile")
        if len(calls) == 3:
            raise StoreUnavailableError("store: unavailable")
        return real_add(ids, *args, **kwargs)

    monkeypatch.setattr(index, "add", flaky)
    items = {"items": [{"id": f"mid-{i}", "image": b64(jpeg_bytes)} for i in range(3)]}
    body = c.post("/v1/items/batch", json=items, headers=KEY).get_json()
    assert [a["status"] for a in body["results"]] == [201, 503, 503]
    assert "earlier item" in body["results"][2]["error"]["message"]
    assert body["added"] == 1 and body["failed"] == 2
    monkeypatch.setattr(index, "add", real_add)
    assert [c.get(f"/v1/items/mid-{i}").status_code for i in range(3)] == [200, 404, 404]
    assert len([p for p in uploads.rglob("*") if p.is_file()]) == 1  # the others' photos went


def _multipart(jpeg: bytes, field_part: bytes) -> tuple[bytes, str]:
    """A multipart body: the image and one text part given as raw bytes (headers included)."""
    b = b"phonesim-boundary"
    body = (
        b"--" + b + b'\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n"
        b"--" + b + b'\r\nContent-Disposition: form-data; name="id"\r\n\r\nenc-1\r\n'
        b"--" + b + b"\r\n" + field_part + b"\r\n--" + b + b"--\r\n"
    )
    return body, f"multipart/form-data; boundary={b.decode()}"


def test_text_that_is_not_utf8_is_refused_not_stored_with_replacement_characters(
    writable, jpeg_bytes
):
    """A Latin-1 form field was stored as "caf\\ufffd"; a query value %FF was taken as the text
    "%FF" and a path's as U+FFFD."""
    app, _ = writable
    c = app.test_client()
    latin1 = b'Content-Disposition: form-data; name="brand"\r\n\r\ncaf\xe9'
    body, ctype = _multipart(jpeg_bytes, latin1)
    r = c.post("/v1/items", data=body, content_type=ctype, headers=KEY)
    assert "'brand' is not UTF-8" in assert_error(r, 400, "invalid_string")["message"]
    assert c.get("/v1/items/enc-1").status_code == 404
    # U+FFFD sent as UTF-8 is text like any other (a scraped title holds one): kept.
    genuine = 'Content-Disposition: form-data; name="brand"\r\n\r\ncaf\ufffd'.encode()
    body, ctype = _multipart(jpeg_bytes, genuine)
    assert c.post("/v1/items", data=body, content_type=ctype, headers=KEY).status_code == 201
    assert c.get("/v1/items/enc-1").get_json()["brand"] == "caf\ufffd"
    assert c.delete("/v1/items/enc-1", headers=KEY).status_code == 200
    declared = b'Content-Disposition: form-data; name="brand"\r\n'
    declared += b"Content-Type: text/plain; charset=ISO-8859-1\r\n\r\ncaf\xe9"
    body, ctype = _multipart(jpeg_bytes, declared)
    assert c.post("/v1/items", data=body, content_type=ctype, headers=KEY).status_code == 201
    assert c.get("/v1/items/enc-1").get_json()["brand"] == "café"
    bad_urls = (("/v1/items?filter.brand=%ff", "query string"), ("/v1/items/%ff%fe", "path"))
    for url, where in bad_urls:
        error = assert_error(c.get(url), 400, "invalid_string")
        assert f"URL's {where} is not UTF-8 (byte 0xFF" in error["message"]
    assert c.get("/v1/items?filter.brand=caf%C3%A9").status_code == 200
    # A server that passes the target as sent (RAW_URI: gunicorn's sync worker, Werkzeug's):
    # one that urlsplit cannot parse had been a 500.
    odd = {"RAW_URI": "//[x/v1/items", "REQUEST_URI": "//[x/v1/items"}
    assert c.get("/v1/items", environ_overrides=odd).status_code == 200
    bad = {"RAW_URI": "//%ff/v1/items"}
    assert_error(c.get("/v1/items", environ_overrides=bad), 400, "invalid_string")
    assert c.get("/v1/items/caf%C3%A9").status_code == 404  # UTF-8: an id, just not held


def test_an_image_dir_that_fails_at_runtime_is_a_507_and_adds_nothing(
    writable, jpeg_bytes, monkeypatch
):
    """A full disk (or a folder gone read-only) under --image-dir answered 500 with a
    traceback, for the whole batch."""
    from common import fsutil
    from server import service as service_module

    app, _ = writable
    c = app.test_client()
    uploads = Path(app.extensions["phonesim"].service.config.image_dir)
    real_write, writes = fsutil.atomic_write, []

    def full_disk_at_the_second(path, write):  # noqa: ANN001, ANN202
        writes.append(path)
        if len(writes) >= 2:
            raise OSError(28, "No space left on device")
        return real_write(path, write)

    monkeypatch.setattr(service_module, "atomic_write", full_disk_at_the_second)
    r = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "one"}, headers=KEY)
    assert r.status_code == 201  # the first write succeeds
    r = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "two"}, headers=KEY)
    assert "No space left on device" in assert_error(r, 507, "insufficient_storage")["message"]
    rows = [{"id": f"b-{i}", "image": b64(jpeg_bytes)} for i in range(3)]
    r = c.post("/v1/items/batch", json={"items": rows}, headers=KEY)
    assert_error(r, 507, "insufficient_storage")  # nothing added: the whole request says so
    for item in ("two", "b-0", "b-1", "b-2"):
        assert c.get(f"/v1/items/{item}").status_code == 404
    kept = [p for p in uploads.rglob("*") if p.is_file()]
    assert len(kept) == 1  # the first add's photo only: none left behind by the refusals


def test_a_form_cut_short_says_so(writable, jpeg_bytes):
    """Werkzeug parses a body without its closing boundary as an empty form: it was answered
    "no file in multipart field 'image'", though the image was there."""
    app, _ = writable
    c = app.test_client()
    body, ctype = _multipart(jpeg_bytes, b'Content-Disposition: form-data; name="brand"\r\n\r\nx')
    cut = body[: len(body) - 40]
    r = c.post("/v1/items", data=cut, content_type=ctype, headers=KEY)
    assert "no closing boundary" in assert_error(r, 400, "invalid_multipart")["message"]
    r = c.post("/v1/search", data=cut, content_type=ctype)
    assert_error(r, 400, "invalid_multipart")
    assert c.post("/v1/items", data=body, content_type=ctype, headers=KEY).status_code == 201


def test_a_replace_keeps_the_image_the_item_has_when_it_is_written(writable, first_id):
    """The image path was read before the write: an item removed and added again by another
    worker in between got its old image back, a file that was deleted with it."""
    from index import CatalogIndex

    app, folder = writable
    svc = app.extensions["phonesim"].service
    vector = svc.index.get_vectors([first_id])
    real_update = svc.index.update_metadata

    def another_worker_first(*args, **kw):
        with CatalogIndex.open(folder) as other:
            other.remove([first_id])
            other.add([first_id], vector, [{"image": "new.jpg", "title": "again"}])
        return real_update(*args, **kw)

    svc.index.update_metadata = another_worker_first
    r = app.test_client().patch(
        f"/v1/items/{first_id}", json={"metadata": {"label": "x"}, "merge": False}, headers=KEY
    )
    assert r.status_code == 200, r.get_json()
    with CatalogIndex.open(folder, readonly=True) as reopened:
        assert reopened.get(first_id).metadata == {"label": "x", "image": "new.jpg"}


def test_a_full_disk_under_the_catalog_store_is_a_507_and_adds_nothing(
    writable, jpeg_bytes, monkeypatch
):
    """SQLite's "database or disk is full" was answered 503 "the catalog store cannot be
    reached; try again", as for a database that is down, which waiting does not mend."""
    import sqlite3

    from index.store import CatalogStore

    app, _ = writable
    c = app.test_client()

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = 13  # SQLITE_FULL, as SQLite sets it
        raise exc

    monkeypatch.setattr(CatalogStore, "insert_items", full)
    r = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "full"}, headers=KEY)
    assert (
        "disk is full; nothing was changed"
        in assert_error(r, 507, "insufficient_storage")["message"]
    )
    monkeypatch.undo()
    assert c.get("/v1/items/full").status_code == 404
    assert (
        c.post("/v1/items", data={**upload(jpeg_bytes), "id": "full"}, headers=KEY).status_code
        == 201
    )
