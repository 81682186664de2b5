"""The lookup server through Flask's test client: every endpoint and every bad input.

A tiny model and an index of the tiny catalog are built once per session; each test gets a
fresh app with them injected (the Flask tutorial's pattern).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.app import create_app
from server.config import ServerConfig

API_KEY = "test-secret-key"
SMALL_UPLOAD_MB = 0.05  # 51 KiB: lets a test exceed the limit cheaply


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_embedder(tiny_checkpoint):
    from embedder.inference import Embedder

    return Embedder.from_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="session")
def catalog_rows(tiny_catalog) -> dict[str, dict[str, str]]:
    from index import read_catalog_csv

    return read_catalog_csv(tiny_catalog / "catalog.csv")


@pytest.fixture(scope="session")
def index_dir(tiny_embedder, tiny_catalog, catalog_rows, tmp_path_factory) -> Path:
    """The tiny catalog embedded with the tiny model, as an index folder."""
    from index import build_index

    ids = list(catalog_rows)
    batch = tiny_embedder.embed_paths([catalog_rows[i]["image"] for i in ids])
    out = tmp_path_factory.mktemp("server-index") / "index"
    build_index(
        out,
        ids,
        batch.embeddings,
        [catalog_rows[i] for i in ids],
        model_name=tiny_embedder.model_name,
        checkpoint_hash=tiny_embedder.checkpoint_hash,
        source={"catalog": str(tiny_catalog / "catalog.csv")},
    )
    return out


@pytest.fixture(scope="session")
def readonly_index(index_dir):
    from index import CatalogIndex

    ix = CatalogIndex.open(index_dir, readonly=True)
    yield ix
    ix.close()


def _make_app(config: ServerConfig, embedder, index):
    app = create_app(config, embedder=embedder, index=index)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def app(tiny_embedder, readonly_index):
    """Read-only app with an API key configured and a small upload limit."""
    app = _make_app(
        ServerConfig(api_key=API_KEY, max_upload_mb=SMALL_UPLOAD_MB),
        tiny_embedder,
        readonly_index,
    )
    yield app
    app.extensions["phonesim"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def writable(tiny_embedder, index_dir, tmp_path):
    """An app over a private writable copy of the index, writes enabled."""
    from index import CatalogIndex

    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    ix = CatalogIndex.open(copy)
    config = ServerConfig(api_key=API_KEY, image_dir=str(tmp_path / "uploads"))
    app = _make_app(config, tiny_embedder, ix)
    yield app, copy
    app.extensions["phonesim"].close()
    ix.close()


@pytest.fixture(scope="session")
def jpeg_bytes(catalog_rows) -> bytes:
    first = next(iter(catalog_rows.values()))
    img = Image.open(first["image"]).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="session")
def first_id(catalog_rows) -> str:
    return next(iter(catalog_rows))


def upload(data: bytes, name: str = "phone.jpg", field: str = "image") -> dict:
    return {field: (io.BytesIO(data), name)}


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


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
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    first = body["neighbors"][0]
    assert {"id", "score", "label", "title", "brand", "price", "image_url"} <= set(first)
    assert "image" not in first  # server paths are never sent to clients
    assert first["score"] > 0.99  # the query is a catalog image re-encoded as JPEG
    assert {"decode", "model", "search", "total"} <= set(body["timing_ms"])


def test_search_default_k_and_base64_json_and_raw_body_agree(client, jpeg_bytes):
    multipart = client.post("/v1/search", data=upload(jpeg_bytes)).get_json()
    as_json = client.post(
        "/v1/search", json={"image": base64.b64encode(jpeg_bytes).decode(), "k": 10}
    ).get_json()
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes).decode()
    as_data_url = client.post("/v1/search", json={"image": data_url}).get_json()
    raw = client.post("/v1/search", data=jpeg_bytes, content_type="image/jpeg").get_json()
    ids = [n["id"] for n in multipart["neighbors"]]
    assert len(ids) == 10
    for other in (as_json, as_data_url, raw):
        assert [n["id"] for n in other["neighbors"]] == ids
        assert other["prediction"]["label"] == multipart["prediction"]["label"]


def test_search_filter_by_label(client, jpeg_bytes, catalog_rows):
    label = sorted({r["label"] for r in catalog_rows.values()})[1]
    r = client.post(f"/v1/search?k=50&label={label}", data=upload(jpeg_bytes))
    body = r.get_json()
    assert r.status_code == 200 and body["filter"] == {"label": label}
    expected = sum(1 for row in catalog_rows.values() if row["label"] == label)
    assert len(body["neighbors"]) == expected
    assert {n["label"] for n in body["neighbors"]} == {label}


def test_search_filter_any_of_and_json_filter(client, jpeg_bytes, catalog_rows):
    labels = sorted({r["label"] for r in catalog_rows.values()})[:2]
    query = "&".join(f"label={x}" for x in labels)
    r = client.post(f"/v1/search?k=100&{query}", data=upload(jpeg_bytes))
    assert {n["label"] for n in r.get_json()["neighbors"]} == set(labels)
    payload = {"image": base64.b64encode(jpeg_bytes).decode(), "filter": {"label": labels[0]}}
    r = client.post("/v1/search", json=payload)
    assert {n["label"] for n in r.get_json()["neighbors"]} == {labels[0]}


def test_search_matches_the_library_directly(client, jpeg_bytes, tiny_embedder, readonly_index):
    from embedder.images import load_image

    img = load_image(jpeg_bytes, min_side=tiny_embedder.decode_side)
    ref = tiny_embedder.embed_images([img])
    hits = readonly_index.search(ref.embeddings[0], 4)
    body = client.post("/v1/search?k=4", data=upload(jpeg_bytes)).get_json()
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
    assert "image" not in item and item["image_url"].endswith("/image")
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


def test_thumbnails_only_come_from_catalog_folders(tiny_embedder, index_dir, tmp_path, jpeg_bytes):
    """Even an item whose stored path points elsewhere (or at a non-image) serves nothing."""
    from index import CatalogIndex

    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg_bytes)
    with CatalogIndex.open(copy) as ix:
        vec = ix.get_vectors([ix.get(next(ix.ids())).id])
        ix.add(
            ["evil-1", "evil-2"],
            np.repeat(vec, 2, 0),
            [{"image": str(outside)}, {"image": "/etc/passwd"}],
        )
        app = _make_app(ServerConfig(), tiny_embedder, ix)
        c = app.test_client()
        assert_error(c.get("/v1/items/evil-1/image"), 404, "no_image")
        assert_error(c.get("/v1/items/evil-2/image"), 404, "no_image")
        assert_error(c.get("/v1/items/..%2F..%2Fetc%2Fpasswd/image"), 404, "unknown_item")
        assert_error(c.get("/static/..%2F..%2Fapp.py"), 404)
        app.extensions["phonesim"].close()


def test_add_get_search_delete_item(writable, jpeg_bytes):
    app, _ = writable
    c = app.test_client()
    headers = {"X-API-Key": API_KEY}
    rotated = io.BytesIO()
    Image.open(io.BytesIO(jpeg_bytes)).rotate(90).save(rotated, format="PNG")
    form = {
        **upload(rotated.getvalue(), "new.png"),
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
    hits = c.post("/v1/search?k=1", data=upload(rotated.getvalue(), "q.png")).get_json()
    assert hits["neighbors"][0]["id"] == "new/phone 1"
    assert c.get("/v1/info").get_json()["index"]["size"] == 19
    assert_error(c.post("/v1/items", data={**form, **upload(jpeg_bytes)}, headers=headers), 409)

    r = c.delete("/v1/items/new/phone%201", headers=headers)
    assert r.status_code == 200 and r.get_json() == {"id": "new/phone 1", "deleted": True}
    assert_error(c.get("/v1/items/new/phone%201"), 404, "unknown_item")
    assert_error(c.delete("/v1/items/new/phone%201", headers=headers), 404, "unknown_item")
    assert c.get("/v1/info").get_json()["index"]["size"] == 18


def test_writes_are_durable_across_reopen(writable, jpeg_bytes, tiny_embedder):
    from index import CatalogIndex

    app, path = writable
    c = app.test_client()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    payload = {
        "id": "json-item",
        "image": base64.b64encode(jpeg_bytes).decode(),
        "metadata": {"title": "From JSON", "in_stock": True},
    }
    assert c.post("/v1/items", json=payload, headers=headers).status_code == 201
    first = next(i for i in CatalogIndex.open(path, readonly=True).ids() if i != "json-item")
    assert c.delete(f"/v1/items/{first}", headers=headers).status_code == 200
    with CatalogIndex.open(path, readonly=True) as reopened:  # another process's view
        assert "json-item" in reopened and first not in reopened
        assert reopened.get("json-item").metadata["in_stock"] is True


def test_writes_disabled_without_api_key(tiny_embedder, readonly_index, jpeg_bytes, first_id):
    app = _make_app(ServerConfig(), tiny_embedder, readonly_index)
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


def test_a_broken_stored_image_is_a_404_that_keeps_the_path_private(
    tiny_embedder, index_dir, tmp_path, jpeg_bytes
):
    from index import CatalogIndex

    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    images = tmp_path / "images"
    images.mkdir()
    broken = images / "broken.jpg"
    broken.write_bytes(jpeg_bytes[: len(jpeg_bytes) // 3])
    with CatalogIndex.open(copy) as ix:
        ix.add(["broken"], ix.get_vectors([next(ix.ids())]), [{"image": str(broken)}])
        app = _make_app(ServerConfig(image_roots=(str(images),)), tiny_embedder, ix)
        r = app.test_client().get("/v1/items/broken/image")
        assert_error(r, 404, "no_image")
        assert str(images) not in r.get_data(as_text=True)
        app.extensions["phonesim"].close()


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
        ({**upload(jpeg_bytes), "id": "ok", "metadata": "{not json"}, "invalid_metadata"),
        ({**upload(jpeg_bytes), "id": "ok", "metadata": "[1, 2]"}, "invalid_metadata"),
        ({**upload(jpeg_bytes), "id": "ok", "metadata": '{"image": "/x"}'}, "invalid_metadata"),
        ({**upload(jpeg_bytes), "id": "ok", "metadata": '{"a": {"b": 1}}'}, "invalid_request"),
    ]
    for form, code in cases:
        assert_error(c.post("/v1/items", data=form, headers=h), 400, code)
    body = {"id": "ok", "image": base64.b64encode(jpeg_bytes).decode(), "extra": 1}
    assert_error(c.post("/v1/items", json=body, headers=h), 400, "invalid_request")
    assert_error(c.post("/v1/items", data=jpeg_bytes, content_type="image/jpeg", headers=h), 415)
    assert c.get("/v1/info").get_json()["index"]["size"] == 18


# -- info, health, metrics, openapi, page --------------------------------------------------------
def test_info_health_ready(client, tiny_embedder):
    info = client.get("/v1/info").get_json()
    assert info["model"]["name"] == tiny_embedder.model_name
    assert info["classes"] == tiny_embedder.label_names
    assert info["index"]["size"] == 18 and info["index"]["kind"] == "flat"
    assert "image" not in info["index"]["filterable_fields"]
    assert "label" in info["index"]["filterable_fields"]
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_not_ready_and_503_after_shutdown(app, jpeg_bytes):
    c = app.test_client()
    app.extensions["phonesim"].close()
    r = c.get("/readyz")
    assert r.status_code == 503 and r.get_json()["checks"]["batcher"] is False
    assert_error(c.post("/v1/search", data=upload(jpeg_bytes)), 503, "shutting_down")
    assert c.get("/healthz").status_code == 200


def test_app_without_model_is_alive_but_not_ready(jpeg_bytes):
    app = create_app()
    c = app.test_client()
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 503
    assert_error(c.post("/v1/search", data=upload(jpeg_bytes)), 503, "not_ready")
    assert_error(c.get("/v1/info"), 503, "not_ready")


def test_create_app_loads_from_paths_and_checks_the_index(tiny_checkpoint, index_dir, tmp_path):
    from index import IndexMismatchError

    app = create_app({"checkpoint": str(tiny_checkpoint), "index": str(index_dir)})
    state = app.extensions["phonesim"]
    assert state.service.index.readonly  # no API key: read-only, no writer lock taken
    assert app.test_client().get("/readyz").status_code == 200
    state.close()
    bad = tmp_path / "bad"
    shutil.copytree(index_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["model_name"] = "resnet18"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError):
        create_app({"checkpoint": str(tiny_checkpoint), "index": str(bad)})
    with pytest.raises(ValueError, match="unknown server setting"):
        create_app({"no_such_setting": 1})


def test_metrics_count_requests_model_batches_and_index(client, jpeg_bytes):
    client.post("/v1/search", data=upload(jpeg_bytes))
    client.get("/v1/items/missing-id")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'phonesim_http_requests_total{endpoint="/v1/search",method="POST",status="200"} 1.0' in (
        text
    )
    assert 'endpoint="/v1/items/<path:item_id>",method="GET",status="404"' in text
    assert "phonesim_http_request_duration_seconds_bucket" in text
    assert re.search(r"phonesim_model_forward_seconds_count \d", text)
    assert re.search(r"phonesim_model_batch_size_count [1-9]", text)
    assert "phonesim_index_items 18.0" in text


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_documents_exactly_the_routes(app):
    spec = app.test_client().get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    verbs = {"get", "post", "put", "delete", "patch"}
    documented = {
        (path, method.upper())
        for path, ops in spec["paths"].items()
        for method in ops
        if method in verbs
    }
    routed = {
        (_openapi_path(rule.rule), method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routed
    for ops in spec["paths"].values():  # every $ref resolves
        for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(ops)):
            assert ref in spec["components"]["schemas"]


def test_web_page_and_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert 'id="file"' in html and "/static/app.js" in html
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


# -- bad input corpus ---------------------------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bad_requests(jpeg: bytes) -> list[tuple[str, dict, int]]:
    """(id, werkzeug test-client request arguments, expected status): each must get a 4xx
    JSON error; also replayed against a live gunicorn server in test_server_live.py."""
    png = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(png, format="PNG")
    truncated_png = png.getvalue()[: len(png.getvalue()) // 2]
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
    big = jpeg + b"\x00" * int(SMALL_UPLOAD_MB * 2**20)
    huge = b"\x00" * int(SMALL_UPLOAD_MB * 2**20 * 3)
    bomb = _png_header(20_000, 20_000)
    key = {"X-API-Key": "wrong-key"}

    def post(path: str = "/v1/search", **kw) -> dict:
        return {"method": "POST", "path": path, **kw}

    def form(data: bytes, name: str = "phone.jpg") -> dict:
        return {"data": {"image": (io.BytesIO(data), name)}, "content_type": "multipart/form-data"}

    return [
        ("no-body", post(), 400),
        ("multipart-no-file", post(data={"other": "x"}, content_type="multipart/form-data"), 400),
        (
            "multipart-image-as-text",
            post(data={"image": "abc"}, content_type="multipart/form-data"),
            400,
        ),
        ("empty-file", post(**form(b"")), 400),
        ("not-an-image", post(**form(b"hello, this is text")), 400),
        ("truncated-jpeg", post(**form(jpeg[: len(jpeg) // 2])), 400),
        ("truncated-png", post(**form(truncated_png, "a.png")), 400),
        ("jpeg-header-only", post(**form(jpeg[:2])), 400),
        ("svg-unsupported", post(**form(svg, "a.svg")), 400),
        ("pdf-unsupported", post(**form(pdf, "a.pdf")), 400),
        ("decompression-bomb", post(**form(bomb, "bomb.png")), 400),
        ("over-upload-limit", post(**form(big)), 413),
        ("body-over-limit", post(data=huge, content_type="image/jpeg"), 413),
        ("k-zero", post("/v1/search?k=0", **form(jpeg)), 400),
        ("k-too-large", post("/v1/search?k=101", **form(jpeg)), 400),
        ("k-negative", post("/v1/search?k=-3", **form(jpeg)), 400),
        ("k-not-int", post("/v1/search?k=abc", **form(jpeg)), 400),
        ("k-float", post("/v1/search?k=1.5", **form(jpeg)), 400),
        ("k-enormous", post("/v1/search?k=" + "9" * 40, **form(jpeg)), 400),
        ("k-json-bool", post(json={"image": _b64(jpeg), "k": True}), 400),
        ("k-superscript-digit", post("/v1/search?k=%C2%B2", **form(jpeg)), 400),
        ("json-misspelt-field", post(json={"image": _b64(jpeg), "filters": {"a": 1}}), 400),
        (
            "form-unknown-field",
            post(data={**form(jpeg)["data"], "label": "x"}, content_type="multipart/form-data"),
            400,
        ),
        ("embed-unknown-field", post("/v1/embed", json={"image": _b64(jpeg), "k": 3}), 400),
        ("k-double-sign", post("/v1/search?k=--3", **form(jpeg)), 400),
        ("similar-k-superscript", {"method": "GET", "path": "/v1/items/x/similar?k=%C2%B2"}, 400),
        ("unknown-filter", post("/v1/search?color=red", **form(jpeg)), 400),
        ("private-filter", post("/v1/search?image=%2Fetc%2Fpasswd", **form(jpeg)), 400),
        ("json-filter-not-object", post(json={"image": _b64(jpeg), "filter": [1]}), 400),
        ("json-filter-nested", post(json={"image": _b64(jpeg), "filter": {"a": {}}}), 400),
        ("malformed-json", post(data=b'{"image": ', content_type="application/json"), 400),
        ("json-not-object", post(data=b"[1, 2]", content_type="application/json"), 400),
        ("json-missing-image", post(json={"k": 3}), 400),
        ("json-image-number", post(json={"image": 12}), 400),
        ("bad-base64", post(json={"image": "!!!not base64!!!"}), 400),
        ("base64-bad-padding", post(json={"image": "abc"}), 400),
        ("base64-not-image", post(json={"image": _b64(b"plain text")}), 400),
        ("base64-empty", post(json={"image": ""}), 400),
        ("data-url-not-base64", post(json={"image": "data:image/png,abc"}), 400),
        ("wrong-content-type", post(data=b"x=1", content_type="text/plain"), 415),
        ("raw-garbage-image", post(data=b"\xff\xd8garbage", content_type="image/jpeg"), 400),
        ("embed-truncated", post("/v1/embed", **form(truncated_png, "a.png")), 400),
        ("embed-no-file", post("/v1/embed"), 400),
        ("unknown-item", {"method": "GET", "path": "/v1/items/no-such-phone"}, 404),
        ("unknown-item-similar", {"method": "GET", "path": "/v1/items/nope/similar"}, 404),
        ("unknown-item-image", {"method": "GET", "path": "/v1/items/nope/image"}, 404),
        ("similar-bad-k", {"method": "GET", "path": "/v1/items/x/similar?k=0"}, 400),
        ("traversal-image", {"method": "GET", "path": "/v1/items/..%2F..%2Fetc/image"}, 404),
        ("unknown-endpoint", {"method": "GET", "path": "/v2/search"}, 404),
        ("search-wrong-method", {"method": "GET", "path": "/v1/search"}, 405),
        ("item-wrong-method", {"method": "PUT", "path": "/v1/items/x"}, 405),
        ("info-wrong-method", {"method": "POST", "path": "/v1/info"}, 405),
        ("add-no-key", post("/v1/items", **form(jpeg)), 401),
        ("add-wrong-key", post("/v1/items", headers=key, **form(jpeg)), 403),
        ("add-bad-bearer", post("/v1/items", headers={"Authorization": "Bearer x"}), 403),
        ("delete-wrong-key", {"method": "DELETE", "path": "/v1/items/x", "headers": key}, 403),
        ("delete-no-key", {"method": "DELETE", "path": "/v1/items/x"}, 401),
    ]


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
        assert_error(response, status)
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/search", data=upload(jpeg_bytes))
    assert ok.status_code == 200 and ok.get_json()["neighbors"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'status="500"' not in metrics


def test_a_model_failure_is_a_json_500_and_the_server_recovers(app, jpeg_bytes, monkeypatch):
    service = app.extensions["phonesim"].service
    real = service.batcher._forward
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated model failure")
        return real(x)

    monkeypatch.setattr(service.batcher, "_forward", flaky)
    c = app.test_client()
    assert_error(c.post("/v1/search", data=upload(jpeg_bytes)), 500, "internal_error")
    assert c.post("/v1/search", data=upload(jpeg_bytes)).status_code == 200


def test_openapi_request_bodies_list_exactly_the_accepted_fields(app):
    spec = app.test_client().get("/openapi.json").get_json()

    def json_fields(path: str) -> set[str]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return set(body["schema"]["properties"])

    assert json_fields("/v1/search") == {"image", "k", "filter"}
    assert json_fields("/v1/embed") == {"image"}  # k or filter there is a 400
