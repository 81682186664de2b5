"""Shared pieces of the server tests: the test API key, request helpers, an index builder and
the corpus of bad requests (replayed through Flask's test client and against live gunicorn)."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from server.app import create_app
from server.config import ServerConfig

API_KEY = "test-secret-key-0123456"
SMALL_UPLOAD_MB = 0.05  # 51 KiB: lets a test exceed the limit cheaply


def build_test_index(
    embedder: Any, rows: Mapping[str, Mapping[str, str]], out: Path, **kwargs: Any
) -> Path:
    """The catalog ``rows`` (``read_catalog_csv`` output) embedded by ``embedder``, indexed at
    ``out``."""
    from index import build_index

    ids = list(rows)
    batch = embedder.embed_paths([rows[i]["image"] for i in ids])
    build_index(
        out,
        ids,
        batch.embeddings,
        [rows[i] for i in ids],
        model_name=embedder.model_name,
        checkpoint_hash=embedder.checkpoint_hash,
        **kwargs,
    )
    return out


def make_app(config: ServerConfig, embedder: Any, index: Any):
    app = create_app(config, embedder=embedder, index=index)
    app.config["TESTING"] = True
    return app


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


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    """``data`` as the base64 text a JSON ``image`` field carries."""
    return base64.b64encode(data).decode()


def bad_requests(jpeg: bytes) -> list[tuple[str, dict, int]]:
    """(id, werkzeug test-client request arguments, expected status): each must get a 4xx
    JSON error; also replayed against a live gunicorn server in test_live.py."""
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
    other_cursor = base64.urlsafe_b64encode(b'{"offset": 24}').decode()

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
        # werkzeug answers these 413 too, though the body is within the upload limit.
        (
            "form-300-parts",
            post(
                data={**{f"f{i}": "x" for i in range(300)}, "image": (io.BytesIO(jpeg), "a.jpg")},
                content_type="multipart/form-data",
            ),
            400,
        ),
        ("k-zero", post("/v1/search?k=0", **form(jpeg)), 400),
        ("k-too-large", post("/v1/search?k=101", **form(jpeg)), 400),
        ("k-negative", post("/v1/search?k=-3", **form(jpeg)), 400),
        ("k-not-int", post("/v1/search?k=abc", **form(jpeg)), 400),
        ("k-float", post("/v1/search?k=1.5", **form(jpeg)), 400),
        ("k-enormous", post("/v1/search?k=" + "9" * 40, **form(jpeg)), 400),
        ("k-json-bool", post(json={"image": b64(jpeg), "k": True}), 400),
        ("k-superscript-digit", post("/v1/search?k=%C2%B2", **form(jpeg)), 400),
        ("json-misspelt-field", post(json={"image": b64(jpeg), "filters": {"a": 1}}), 400),
        (
            "form-unknown-field",
            post(data={**form(jpeg)["data"], "label": "x"}, content_type="multipart/form-data"),
            400,
        ),
        ("embed-unknown-field", post("/v1/embed", json={"image": b64(jpeg), "k": 3}), 400),
        ("embed-unknown-query", post("/v1/embed?k=3", **form(jpeg)), 400),
        ("read-text-unknown-mode", post("/v1/search?read_text=sometimes", **form(jpeg)), 400),
        ("read-text-long", post("/v1/embed?read_text=" + "a" * 1000, **form(jpeg)), 400),
        # The corpus's servers read no text: "always" asks for what they cannot do.
        ("read-text-always-unread", post(json={"image": b64(jpeg), "read_text": "always"}), 400),
        (
            "read-text-on-similar",
            {"method": "GET", "path": "/v1/items/x/similar?read_text=never"},
            400,
        ),
        ("k-double-sign", post("/v1/search?k=--3", **form(jpeg)), 400),
        ("similar-k-superscript", {"method": "GET", "path": "/v1/items/x/similar?k=%C2%B2"}, 400),
        ("unknown-filter", post("/v1/search?color=red", **form(jpeg)), 400),
        ("private-filter", post("/v1/search?image=%2Fetc%2Fpasswd", **form(jpeg)), 400),
        ("json-filter-not-object", post(json={"image": b64(jpeg), "filter": [1]}), 400),
        ("json-filter-nested", post(json={"image": b64(jpeg), "filter": {"a": {}}}), 400),
        ("malformed-json", post(data=b'{"image": ', content_type="application/json"), 400),
        ("json-not-object", post(data=b"[1, 2]", content_type="application/json"), 400),
        ("json-missing-image", post(json={"k": 3}), 400),
        ("json-image-number", post(json={"image": 12}), 400),
        ("bad-base64", post(json={"image": "!!!not base64!!!"}), 400),
        ("base64-bad-padding", post(json={"image": "abc"}), 400),
        ("base64-not-image", post(json={"image": b64(b"plain text")}), 400),
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
        ("list-limit-zero", {"method": "GET", "path": "/v1/items?limit=0"}, 400),
        ("list-limit-too-large", {"method": "GET", "path": "/v1/items?limit=101"}, 400),
        ("list-limit-not-int", {"method": "GET", "path": "/v1/items?limit=ten"}, 400),
        ("list-cursor-not-base64", {"method": "GET", "path": "/v1/items?cursor=%21%21%21"}, 400),
        (
            "list-cursor-not-ours",
            {"method": "GET", "path": f"/v1/items?cursor={other_cursor}"},
            400,
        ),
        ("list-cursor-empty", {"method": "GET", "path": "/v1/items?cursor="}, 400),
        ("list-unknown-param", {"method": "GET", "path": "/v1/items?page=2"}, 400),
    ]


def delete_right_after_adding(app, monkeypatch) -> None:
    """Make every add of ``app``'s catalog be overtaken by a delete of the same items, as
    when another client deletes them between the write and its answer."""
    index = app.extensions["phonesim"].service.index
    add = type(index).add

    def add_then_deleted(self, ids, vectors, metadata):
        add(self, ids, vectors, metadata)
        self.remove(ids)

    monkeypatch.setattr(type(index), "add", add_then_deleted)


def rotated_png(jpeg: bytes) -> bytes:
    """Another photo made from ``jpeg``: turned a quarter and saved as PNG."""
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).rotate(90).save(out, format="PNG")
    return out.getvalue()


def large_png(size: tuple[int, int] = (3000, 2000)) -> bytes:
    """A flat PNG of ``size``: small to send, large once decoded."""
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def watch_batch_held_images(svc: Any, size: tuple[int, int], monkeypatch: Any) -> list[int]:
    """Record, at each forward pass the batcher is given, how many decoded images of
    ``size`` are still alive (what a batch holds until its model pass)."""
    import gc

    counts: list[int] = []
    real = svc.batcher.submit_many

    def counted(x: Any) -> Any:
        gc.collect()
        counts.append(
            sum(1 for o in gc.get_objects() if isinstance(o, Image.Image) and o.size == size)
        )
        return real(x)

    monkeypatch.setattr(svc.batcher, "submit_many", counted)
    return counts
