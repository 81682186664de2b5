"""Server fixtures: the tiny model and an index of the tiny catalog, built once per session;
each test gets a fresh app with them injected (the Flask tutorial's pattern)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from server.config import ServerConfig
from tests.server.helpers import API_KEY, SMALL_UPLOAD_MB, build_test_index, make_app


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
    out = tmp_path_factory.mktemp("server-index") / "index"
    source = {"catalog": str(tiny_catalog / "catalog.csv")}
    return build_test_index(tiny_embedder, catalog_rows, out, source=source)


@pytest.fixture(scope="session")
def readonly_index(index_dir):
    from index import CatalogIndex

    ix = CatalogIndex.open(index_dir, readonly=True)
    yield ix
    ix.close()


@pytest.fixture
def app(tiny_embedder, readonly_index):
    """Read-only app with an API key configured and a small upload limit."""
    app = make_app(
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
    app = make_app(config, tiny_embedder, ix)
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
