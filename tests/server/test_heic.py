"""HEIC (the iPhone camera's default) and AVIF photos through every upload path of the server:
search (multipart, base64 JSON, raw body), embed, add, batch search and batch add; each
answers as the same photo in JPEG does."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from embedder.images import HEIF_SUPPORTED
from tests.server.helpers import b64
from tests.server.test_api_items import KEY

FORMATS = ["HEIF", "AVIF"]


def _encode(jpeg: bytes, fmt: str) -> bytes:
    if fmt == "HEIF" and not HEIF_SUPPORTED:
        pytest.skip("pillow-heif (the 'heif' extra) is not installed")
    buf = io.BytesIO()
    try:
        Image.open(io.BytesIO(jpeg)).convert("RGB").save(buf, format=fmt, quality=95)
    except (KeyError, OSError):
        pytest.skip(f"this Pillow cannot write {fmt}")
    return buf.getvalue()


def _ids(body: dict) -> list[str]:
    return [n["id"] for n in body["neighbors"]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_search_path_takes_the_photo(client, jpeg_bytes, fmt):
    photo = _encode(jpeg_bytes, fmt)
    encoded = b64(photo)
    expected = _ids(client.post("/v1/search?k=3", json={"image": b64(jpeg_bytes)}).get_json())
    multipart = client.post("/v1/search?k=3", data={"image": (io.BytesIO(photo), "IMG_0001.HEIC")})
    assert multipart.status_code == 200, multipart.get_json()
    as_json = client.post("/v1/search?k=3", json={"image": encoded})
    mime = "image/heic" if fmt == "HEIF" else "image/avif"
    raw = client.post("/v1/search?k=3", data=photo, content_type=mime)
    for r in (multipart, as_json, raw):
        assert r.status_code == 200, r.get_json()
        assert _ids(r.get_json())[0] == expected[0]
    embed = client.post("/v1/embed", json={"image": encoded})
    assert embed.status_code == 200 and len(embed.get_json()["embedding"]) > 0
    batch = client.post("/v1/search/batch", json={"queries": [{"image": encoded}], "k": 3})
    result = batch.get_json()["results"][0]
    assert result["status"] == 200 and _ids(result)[0] == expected[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_adds_take_the_photo(writable, jpeg_bytes, fmt):
    app, _ = writable
    c = app.test_client()
    photo = _encode(jpeg_bytes, fmt)
    encoded = b64(photo)
    one = c.post("/v1/items", json={"id": "iphone-1", "image": encoded}, headers=KEY)
    assert one.status_code == 201, one.get_json()
    line = json.dumps({"id": "iphone-2", "image": encoded}).encode()
    many = c.post("/v1/items/batch", data=line, content_type="application/x-ndjson", headers=KEY)
    assert many.get_json()["results"][0]["status"] == 201, many.get_json()
    thumb = c.get("/v1/items/iphone-1/image")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
