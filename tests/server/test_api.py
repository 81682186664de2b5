"""The JSON API through Flask's test client: search, embed, items, catalog pages, writes, info."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.config import ServerConfig
from tests.server.helpers import (
    API_KEY,
    assert_error,
    b64,
    delete_right_after_adding,
    make_app,
    rotated_png,
    upload,
)


# -- search ------------------------------------------------------------------------------------
def test_search_returns_prediction_neighbors_and_timings(client, jpeg_bytes, tiny_embedder):
    r = client.post("/v1/search?k=5", data=upload(jpeg_bytes))
    assert r.status_code == 200
    body = r.get_json()
    pred = body["prediction"]
    assert pred["label"] in tiny_embedder.label_names
    assert pred["label"] == pred["top"][0]["label"]
    assert sum(c["score"] for c in pred["top"]) == pytest.approx(1.0, abs=1e-3)
    scores = [n["score"] for n in body["neighbors"]]
    assert len(scores) == 5 and body["ranking"] == "class"  # the class may reorder them
    by_similarity = client.post("/v1/search?k=5&ranking=similarity", data=upload(jpeg_bytes))
    cosines = [n["score"] for n in by_similarity.get_json()["neighbors"]]
    assert cosines == sorted(cosines, reverse=True) and sorted(scores) == sorted(cosines)
    first = body["neighbors"][0]
    assert {"id", "score", "label", "title", "brand", "price", "image_url"} <= set(first)
    assert "image" not in first  # server paths are never sent to clients
    assert first["score"] > 0.99  # the query is a catalog image re-encoded as JPEG
    assert {"decode", "model", "search", "predict", "total"} <= set(body["timing_ms"])


def test_search_default_k_and_base64_json_and_raw_body_agree(client, jpeg_bytes):
    multipart = client.post("/v1/search", data=upload(jpeg_bytes)).get_json()
    as_json = client.post("/v1/search", json={"image": b64(jpeg_bytes), "k": 10}).get_json()
    data_url = "data:image/jpeg;base64," + b64(jpeg_bytes)
    as_data_url = client.post("/v1/search", json={"image": data_url}).get_json()
    raw = client.post("/v1/search", data=jpeg_bytes, content_type="image/jpeg").get_json()
    ids = [n["id"] for n in multipart["neighbors"]]
    assert len(ids) == 10
    for other in (as_json, as_data_url, raw):
        assert [n["id"] for n in other["neighbors"]] == ids
        assert other["prediction"]["label"] == multipart["prediction"]["label"]


def test_search_filter_by_label(client, jpeg_bytes, catalog_rows):
    label = sorted({r["label"] for r in catalog_rows.values()})[1]
    r = client.post(f"/v1/search?k=50&filter.label={label}", data=upload(jpeg_bytes))
    body = r.get_json()
    assert r.status_code == 200 and body["filter"] == {"label": label}
    expected = sum(1 for row in catalog_rows.values() if row["label"] == label)
    assert len(body["neighbors"]) == expected
    assert {n["label"] for n in body["neighbors"]} == {label}


def test_search_filter_any_of_and_json_filter(client, jpeg_bytes, catalog_rows):
    labels = sorted({r["label"] for r in catalog_rows.values()})[:2]
    query = "&".join(f"filter.label={x}" for x in labels)
    r = client.post(f"/v1/search?k=100&{query}", data=upload(jpeg_bytes))
    assert {n["label"] for n in r.get_json()["neighbors"]} == set(labels)
    payload = {"image": b64(jpeg_bytes), "filter": {"label": labels[0]}}
    r = client.post("/v1/search", json=payload)
    assert {n["label"] for n in r.get_json()["neighbors"]} == {labels[0]}


def test_search_matches_the_library_directly(client, jpeg_bytes, tiny_embedder, readonly_index):
    from embedder.images import load_image

    img = load_image(jpeg_bytes, min_side=tiny_embedder.decode_side)
    ref = tiny_embedder.embed_images([img])
    hits = readonly_index.search(ref.embeddings[0], 4)[0]
    # Ranked by similarity, as the library ranks (the default also weighs the class).
    body = client.post("/v1/search?k=4&ranking=similarity", data=upload(jpeg_bytes)).get_json()
    assert [n["id"] for n in body["neighbors"]] == [h.id for h in hits]
    np.testing.assert_allclose(
        [n["score"] for n in body["neighbors"]], [h.score for h in hits], atol=1e-4
    )


def test_concurrent_searches_are_batched_and_correct(app, jpeg_bytes):
    """Threads hitting the app at once share forward passes and still get their own rows."""
    results: list = [None] * 8
    images = []
    for angle in range(8):
        img = Image.open(io.BytesIO(jpeg_bytes)).rotate(angle * 45)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        images.append(buf.getvalue())
    solo = [
        app.test_client().post("/v1/embed", data=upload(b, "a.png")).get_json()["embedding"]
        for b in images
    ]
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        c = app.test_client()
        barrier.wait()
        results[i] = c.post("/v1/embed", data=upload(images[i], "a.png")).get_json()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, r in enumerate(results):
        np.testing.assert_allclose(r["embedding"], solo[i], atol=1e-4)
    assert max(r["timing_ms"]["batch_size"] for r in results) > 1


# -- embed -------------------------------------------------------------------------------------
def test_embed_returns_unit_vector_and_prediction(client, jpeg_bytes, tiny_embedder):
    body = client.post("/v1/embed", data=upload(jpeg_bytes)).get_json()
    vec = np.array(body["embedding"])
    assert body["dim"] == tiny_embedder.dim == len(vec)
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)
    assert body["model"] == tiny_embedder.model_name
    assert body["prediction"]["label"] in tiny_embedder.label_names


# -- items -------------------------------------------------------------------------------------
def test_get_item_and_similar_excludes_itself(client, first_id, catalog_rows):
    r = client.get(f"/v1/items/{first_id}")
    assert r.status_code == 200
    item = r.get_json()
    assert item["id"] == first_id and item["label"] == catalog_rows[first_id]["label"]
    assert "image" not in item and "/image?v=" in item["image_url"]
    body = client.get(f"/v1/items/{first_id}/similar?k=5").get_json()
    ids = [n["id"] for n in body["neighbors"]]
    assert len(ids) == 5 and first_id not in ids
    body = client.get(f"/v1/items/{first_id}/similar?k=100").get_json()
    assert len(body["neighbors"]) == len(catalog_rows) - 1


def test_thumbnail_is_a_small_jpeg_of_the_item(client, first_id):
    r = client.get(f"/v1/items/{first_id}/image")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    img = Image.open(io.BytesIO(r.data))
    assert img.format == "JPEG" and max(img.size) <= 256
    assert client.get(f"/v1/items/{first_id}/image").data == r.data  # cached, same bytes


def test_add_get_search_delete_item(writable, jpeg_bytes):
    app, _ = writable
    c = app.test_client()
    headers = {"X-API-Key": API_KEY}
    rotated = rotated_png(jpeg_bytes)
    form = {
        **upload(rotated, "new.png"),
        "id": "new/phone 1",
        "metadata": json.dumps({"title": "New phone", "price": 99.5, "label": "vibe-mini"}),
        "brand": "Acme",
    }
    r = c.post("/v1/items", data=form, headers=headers)
    assert r.status_code == 201, r.get_json()
    item = r.get_json()["item"]
    assert item["id"] == "new/phone 1" and item["brand"] == "Acme" and item["price"] == 99.5
    assert r.headers["Location"] == "/v1/items/new/phone%201"
    assert c.get("/v1/items/new/phone%201").get_json()["title"] == "New phone"
    assert c.get("/v1/items/new/phone%201/image").mimetype == "image/jpeg"
    hits = c.post("/v1/search?k=1", data=upload(rotated, "q.png")).get_json()
    assert hits["neighbors"][0]["id"] == "new/phone 1"
    assert c.get("/v1/info").get_json()["index"]["size"] == 19
    assert_error(c.post("/v1/items", data={**form, **upload(jpeg_bytes)}, headers=headers), 409)
    uploads = Path(app.extensions["phonesim"].service.config.image_dir)
    assert len(list(uploads.iterdir())) == 1  # the refused add kept no photo

    r = c.delete("/v1/items/new/phone%201", headers=headers)
    assert r.status_code == 200 and r.get_json() == {"id": "new/phone 1", "deleted": True}
    assert not any(uploads.iterdir())  # nor does the deleted item
    assert_error(c.get("/v1/items/new/phone%201"), 404, "unknown_item")
    gone = assert_error(c.delete("/v1/items/new/phone%201", headers=headers), 404, "unknown_item")
    assert gone["message"].startswith("cannot delete:")
    assert c.get("/v1/info").get_json()["index"]["size"] == 18


def test_writes_are_durable_across_reopen(writable, jpeg_bytes, tiny_embedder):
    from index import CatalogIndex

    app, path = writable
    c = app.test_client()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    payload = {
        "id": "json-item",
        "image": b64(jpeg_bytes),
        "metadata": {"title": "From JSON", "in_stock": True},
    }
    assert c.post("/v1/items", json=payload, headers=headers).status_code == 201
    # An empty X-API-Key (a client's unset variable) does not hide the Bearer token.
    both = {**headers, "X-API-Key": ""}
    payload2 = {**payload, "id": "json-item-2"}
    assert c.post("/v1/items", json=payload2, headers=both).status_code == 201
    first = next(i for i in CatalogIndex.open(path, readonly=True).ids() if "json-item" not in i)
    assert c.delete(f"/v1/items/{first}", headers=headers).status_code == 200
    with CatalogIndex.open(path, readonly=True) as reopened:  # another process's view
        assert "json-item" in reopened and "json-item-2" in reopened and first not in reopened
        assert reopened.get("json-item").metadata["in_stock"] is True


def test_writes_disabled_without_api_key(tiny_embedder, readonly_index, jpeg_bytes, first_id):
    app = make_app(ServerConfig(), tiny_embedder, readonly_index)
    c = app.test_client()
    r = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "x"}, headers={"X-API-Key": "a"})
    assert_error(r, 403, "writes_disabled")
    assert_error(c.delete(f"/v1/items/{first_id}"), 403, "writes_disabled")
    assert c.get("/v1/info").get_json()["writes_enabled"] is False
    app.extensions["phonesim"].close()


def test_a_losing_concurrent_add_never_deletes_the_winners_image(writable, jpeg_bytes, monkeypatch):
    """Two adds of one id race past the existence check; the loser cleans up only its own file."""
    app, _ = writable
    c = app.test_client()
    h = {"X-API-Key": API_KEY}
    assert (
        c.post("/v1/items", data={**upload(jpeg_bytes), "id": "race"}, headers=h).status_code == 201
    )
    index = app.extensions["phonesim"].service.index
    monkeypatch.setattr(type(index), "__contains__", lambda self, item_id: False)
    loser = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "race"}, headers=h)
    assert_error(loser, 409, "item_exists")
    assert c.get("/v1/items/race/image").mimetype == "image/jpeg"


def test_an_add_that_a_delete_overtakes_is_still_acknowledged(writable, jpeg_bytes, monkeypatch):
    """Another client deletes the item between its add and the answer: the add was done, so
    it is 201 with what was stored, not 404 "unknown item; nothing was changed"."""
    app, _ = writable
    c = app.test_client()
    h = {"X-API-Key": API_KEY}
    delete_right_after_adding(app, monkeypatch)
    form = {**upload(jpeg_bytes), "id": "gone", "metadata": json.dumps({"title": "Gone"})}
    r = c.post("/v1/items", data=form, headers=h)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["item"]["id"] == "gone" and r.get_json()["item"]["title"] == "Gone"
    assert_error(c.get("/v1/items/gone"), 404, "unknown_item")


def test_add_rejects_bad_ids_and_metadata(writable, jpeg_bytes):
    app, _ = writable
    c = app.test_client()
    h = {"X-API-Key": API_KEY}
    cases = [
        ({**upload(jpeg_bytes)}, "invalid_id"),
        ({**upload(jpeg_bytes), "id": ""}, "invalid_id"),
        ({**upload(jpeg_bytes), "id": "a\x00b"}, "invalid_id"),
        ({**upload(jpeg_bytes), "id": "x" * 300}, "invalid_id"),
        ({**upload(jpeg_bytes), "id": "x/similar"}, "invalid_id"),  # GET would route elsewhere
        ({**upload(jpeg_bytes), "id": "x/image"}, "invalid_id"),
        # Invisible: one id looking like another, or read backwards.
        ({**upload(jpeg_bytes), "id": "\u202eevil"}, "invalid_id"),
        ({**upload(jpeg_bytes), "id": "edge\u200bx2"}, "invalid_id"),
        ({**upload(jpeg_bytes), "id": "a\u2028b"}, "invalid_id"),
        ({**upload(jpeg_bytes), "id": "\ufeffx"}, "invalid_id"),
        ({**upload(jpeg_bytes), "id": "ok", "metadata": "{not json"}, "invalid_metadata"),
        ({**upload(jpeg_bytes), "id": "ok", "metadata": "[1, 2]"}, "invalid_metadata"),
        ({**upload(jpeg_bytes), "id": "ok", "metadata": '{"image": "/x"}'}, "invalid_metadata"),
        # What the API computes: another item's photo, a fake similarity.
        ({**upload(jpeg_bytes), "id": "ok", "image_url": "/v1/items/x/image"}, "invalid_metadata"),
        ({**upload(jpeg_bytes), "id": "ok", "metadata": '{"score": 0.99}'}, "invalid_metadata"),
        ({**upload(jpeg_bytes), "id": "ok", "metadata": '{"a": {"b": 1}}'}, "invalid_request"),
    ]
    for form, code in cases:
        assert_error(c.post("/v1/items", data=form, headers=h), 400, code)
    # The zero-width non-joiner is part of Persian spelling: an id may hold it.
    persian = {**upload(jpeg_bytes), "id": "\u0646\u06cc\u0645\u200c\u0641\u0627\u0635\u0644\u0647"}
    assert c.post("/v1/items", data=persian, headers=h).status_code == 201
    body = {"id": "ok", "image": b64(jpeg_bytes), "extra": 1}
    assert_error(c.post("/v1/items", json=body, headers=h), 400, "invalid_request")
    assert_error(c.post("/v1/items", data=jpeg_bytes, content_type="image/jpeg", headers=h), 415)
    for kind in ("text/json", "application/x-ndjson", "image/jpeg"):
        r = c.post("/v1/items", data=b"{}", content_type=kind, headers=h)
        message = assert_error(r, 415, "unsupported_media_type")["message"]
        assert "image/*" not in message and "application/json" in message, kind
    assert c.get("/v1/info").get_json()["index"]["size"] == 19  # 18 + the Persian id


def test_a_compressed_body_is_a_415_that_says_so(client, jpeg_bytes):
    """A gzip body was read as it was: "not an image" or "bad JSON", a misleading answer."""
    import gzip

    cases = [
        ("/v1/search", gzip.compress(jpeg_bytes), "image/jpeg"),
        ("/v1/search", gzip.compress(b'{"vector": [1.0], "k": 1}'), "application/json"),
    ]
    for path, data, kind in cases:
        r = client.post(path, data=data, content_type=kind, headers={"Content-Encoding": "gzip"})
        assert (
            "Content-Encoding 'gzip'" in assert_error(r, 415, "unsupported_media_type")["message"]
        )
        assert r.headers["Accept-Encoding"] == "identity"
    plain = {"Content-Encoding": "identity"}
    r = client.post("/v1/search", data=jpeg_bytes, content_type="image/jpeg", headers=plain)
    assert r.status_code == 200


# -- info ----------------------------------------------------------------------------------------
def test_info_health_ready(client, tiny_embedder):
    info = client.get("/v1/info").get_json()
    assert info["model"]["name"] == tiny_embedder.model_name
    assert info["classes"] == tiny_embedder.label_names
    assert info["index"]["size"] == 18 and info["index"]["kind"] == "flat"
    assert "image" not in info["index"]["filterable_fields"]
    assert "label" in info["index"]["filterable_fields"]
    # Which build of which software: enough to tie an answer to a checkpoint and an index.
    from common.stamps import phonesim_version

    assert info["version"] == phonesim_version() and info["version"]
    assert info["model"]["checkpoint_hash"] == tiny_embedder.checkpoint_hash
    assert info["index"]["built"].endswith("+00:00")
    assert info["index"]["embedding_precision"] is None  # not recorded by this test's build
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


# -- catalog pages -------------------------------------------------------------------------------
def _all_pages(c, limit: int, cursor: str | None = None) -> tuple[list[str], int]:
    """Every id from ``cursor`` on, and how many pages it took."""
    ids, pages = [], 0
    while True:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        r = c.get(f"/v1/items?{query}")
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert set(body) == {"items", "next_cursor", "filter"} and 1 <= len(body["items"]) <= limit
        ids += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages


def test_list_items_pages_through_the_catalog_in_id_order(client, catalog_rows):
    assert len(catalog_rows) == 18
    for limit, pages in ((5, 4), (17, 2), (18, 1), (100, 1)):
        assert _all_pages(client, limit) == (sorted(catalog_rows), pages)
    body = client.get("/v1/items").get_json()  # default limit 24
    assert [i["id"] for i in body["items"]] == sorted(catalog_rows) and body["next_cursor"] is None
    item = body["items"][0]
    row = catalog_rows[item["id"]]
    assert item["label"] == row["label"] and item["title"] == row["title"]
    assert "image" not in item and item["image_url"].startswith(f"/v1/items/{item['id']}/image?v=")
    assert client.get(item["image_url"]).mimetype == "image/jpeg"


def test_list_items_neither_skips_nor_repeats_while_items_come_and_go(writable, jpeg_bytes):
    app, _ = writable
    c = app.test_client()
    h = {"X-API-Key": API_KEY}
    before = _all_pages(c, 100)[0]
    first = c.get("/v1/items?limit=6").get_json()
    seen = [i["id"] for i in first["items"]]
    assert seen == before[:6]
    assert c.delete(f"/v1/items/{seen[2]}", headers=h).status_code == 200  # already seen
    assert c.delete(f"/v1/items/{before[9]}", headers=h).status_code == 200  # not yet seen
    for new_id in ("0-sorts-first", "zz-sorts-last"):
        form = {**upload(jpeg_bytes), "id": new_id}
        assert c.post("/v1/items", data=form, headers=h).status_code == 201
    rest = _all_pages(c, 6, first["next_cursor"])[0]
    assert rest == [*before[6:9], *before[10:], "zz-sorts-last"]


def test_every_item_endpoint_refuses_unknown_and_repeated_query_parameters(
    writable, jpeg_bytes, first_id
):
    """An ignored parameter would be a silent misunderstanding: PATCH ?merge=false would merge."""
    app, _ = writable
    c = app.test_client()
    h = {"X-API-Key": API_KEY}
    item = f"/v1/items/{first_id}"
    calls = [
        ("POST", "/v1/items?merge=false", {"data": {**upload(jpeg_bytes), "id": "q1"}}),
        ("GET", f"{item}?fields=title", {}),
        ("PATCH", f"{item}?merge=false", {"json": {"metadata": {"title": "x"}}}),
        ("DELETE", f"{item}?force=1", {}),
        ("GET", f"{item}/image?size=big", {}),
        ("GET", "/v1/info?verbose=1", {}),
        ("POST", "/v1/search?k=5&k=6", {"data": upload(jpeg_bytes)}),
        ("GET", f"{item}/similar?offset=1&offset=2", {}),
        ("GET", "/v1/items?limit=2&limit=3", {}),
        # filter=<json> twice: which object? The same answer as any repeated option.
        ("GET", '/v1/items?filter={"label":"a"}&filter={"label":"b"}', {}),
        ("GET", f'{item}/similar?filter={{"label":"a"}}&filter={{"label":"b"}}', {}),
    ]
    for method, path, kwargs in calls:
        r = c.open(path, method=method, headers=h, **kwargs)
        assert assert_error(r, 400, "invalid_request")["message"], path
    assert_error(c.get("/v1/items/q1"), 404)
    after = c.get(item).get_json()
    assert after["title"] != "x"  # neither PATCH nor DELETE did anything
    # filter.<field> repeated is "any of", not a repeated option.
    r = c.get("/v1/items?filter.label=a&filter.label=b")
    assert r.status_code == 200, r.get_json()


def test_an_id_added_again_with_another_photo_gets_another_thumbnail_url(writable, jpeg_bytes):
    """Thumbnails are cached for an hour: the URL must change with the stored photo."""
    app, _ = writable
    c = app.test_client()
    h = {"X-API-Key": API_KEY}
    first = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "re"}, headers=h).get_json()
    assert c.delete("/v1/items/re", headers=h).status_code == 200
    form = {**upload(rotated_png(jpeg_bytes), "b.png"), "id": "re"}
    second = c.post("/v1/items", data=form, headers=h).get_json()
    url_a, url_b = first["item"]["image_url"], second["item"]["image_url"]
    assert url_a != url_b and c.get(url_b).mimetype == "image/jpeg"
    assert c.get(url_b).headers["Cache-Control"] == "public, max-age=3600"


def test_a_batch_over_the_body_limit_is_told_to_split_itself(tiny_embedder, readonly_index):
    """The 413 said only "larger than the upload limit", though each photo was within it."""
    import base64

    from server.config import ServerConfig
    from tests.server.helpers import assert_error, make_app

    app = make_app(ServerConfig(max_upload_mb=0.01), tiny_embedder, readonly_index)
    try:
        photo = base64.b64encode(b"\xff\xd8" + b"x" * 5000).decode()  # each under 10 KB
        body = {"queries": [{"image": photo}] * 40}
        r = app.test_client().post("/v1/search/batch", json=body)
        message = assert_error(r, 413, "payload_too_large")["message"]
        assert "a batch's images count together" in message and "body at most 0.1 MiB" in message
        assert "an image may be at most 0.01 MiB (--max-upload-mb)" in message
        # One image over the body limit is told the image limit, not about batches.
        big = {"image": base64.b64encode(b"\xff\xd8" + b"x" * 200_000).decode()}
        message = assert_error(app.test_client().post("/v1/search", json=big), 413)["message"]
        assert "an image may be at most 0.01 MiB" in message and "batch" not in message
    finally:
        app.extensions["phonesim"].close()


def test_an_image_over_the_upload_limit_names_the_limit_as_configured(
    tiny_embedder, readonly_index
):
    """--max-upload-mb 0.01 was said as "larger than 0.00999928 MiB"."""
    from server.config import ServerConfig
    from tests.server.helpers import assert_error, make_app, upload

    app = make_app(ServerConfig(max_upload_mb=0.01), tiny_embedder, readonly_index)
    try:
        r = app.test_client().post("/v1/search", data=upload(b"\xff\xd8" + b"x" * 12_000))
        message = assert_error(r, 413, "payload_too_large")["message"]
        assert message == "image is larger than 0.01 MiB (--max-upload-mb)"
        # As given, to the last digit: 0.015 had been said as 0.01.
        from server.errors import mib

        assert [mib(int(mb * 2**20)) for mb in (0.015, 2.555, 10, 1024)] == [
            "0.015",
            "2.555",
            "10",
            "1024",
        ]
    finally:
        app.extensions["phonesim"].close()


def test_a_trailing_slash_is_no_endpoint_wherever_it_is(client):
    """The item route took "/v1/items/batch/" as the id "batch/": a POST answered 405 with
    the item URL's methods, where every other trailing slash was a 404."""
    from tests.server.helpers import assert_error

    for method, path in (
        ("POST", "/v1/items/batch/"),
        ("POST", "/v1/search/"),
        ("GET", "/v1/info/"),
    ):
        assert_error(client.open(path, method=method), 404, "not_found")
    assert client.get("/").status_code == 200
