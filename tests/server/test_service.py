"""Thumbnails: only images inside the image roots are served, whatever the index says."""

from __future__ import annotations

import csv
import shutil

import numpy as np

from server.config import ServerConfig
from tests.server.helpers import assert_error, build_test_index, make_app


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
        app = make_app(ServerConfig(), tiny_embedder, ix)
        c = app.test_client()
        assert_error(c.get("/v1/items/evil-1/image"), 404, "no_image")
        assert_error(c.get("/v1/items/evil-2/image"), 404, "no_image")
        assert_error(c.get("/v1/items/..%2F..%2Fetc%2Fpasswd/image"), 404, "unknown_item")
        assert_error(c.get("/static/..%2F..%2Fapp.py"), 404)
        app.extensions["phonesim"].close()


def test_an_item_whose_image_is_a_url_offers_no_thumbnail(tiny_embedder, index_dir, tmp_path):
    """A catalog's CDN address is kept as written; it is no file of the server's, so no
    image_url leads to a thumbnail that can only fail, and the address stays private."""
    from index import CatalogIndex

    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    with CatalogIndex.open(copy) as ix:
        vec = ix.get_vectors([ix.get(next(ix.ids())).id])
        ix.add(["cdn-1"], vec, [{"image": "https://cdn.example.com/p/1.jpg", "title": "t"}])
        app = make_app(ServerConfig(image_roots=(str(tmp_path),)), tiny_embedder, ix)
        try:
            c = app.test_client()
            item = c.get("/v1/items/cdn-1").get_json()
            assert item["title"] == "t" and "image_url" not in item and "image" not in item
            assert_error(c.get("/v1/items/cdn-1/image"), 404, "no_image")
        finally:
            app.extensions["phonesim"].close()


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
        app = make_app(ServerConfig(image_roots=(str(images),)), tiny_embedder, ix)
        r = app.test_client().get("/v1/items/broken/image")
        assert_error(r, 404, "no_image")
        assert str(images) not in r.get_data(as_text=True)
        app.extensions["phonesim"].close()


def test_thumbnails_of_an_image_store_outside_the_catalog_folder(
    tiny_embedder, catalog_rows, tmp_path, jpeg_bytes
):
    """A catalog CSV whose image paths point into an image store elsewhere: the index records
    the store's folders and the server serves them, and ``--image-root`` folders, but nothing
    outside them, not through ``..`` nor through a symlink."""
    from index import CatalogIndex, read_catalog_csv

    store = tmp_path / "store" / "phones"
    catalog = tmp_path / "csv" / "catalog.csv"
    catalog.parent.mkdir()
    with catalog.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "label", "title"])
        for n, (item_id, row) in enumerate(catalog_rows.items()):
            path = store / str(n % 3) / f"{n}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(row["image"], path)
            writer.writerow([item_id, path, row["label"], row["title"]])
    index = tmp_path / "index"
    rows = read_catalog_csv(catalog)
    build_test_index(tiny_embedder, rows, index, source={"catalog": str(catalog)})

    secret = tmp_path / "store" / "secret.jpg"  # beside the image folders, not in one
    secret.write_bytes(jpeg_bytes)
    (store / "0" / "link.jpg").symlink_to(secret)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x.jpg").write_bytes(jpeg_bytes)
    with CatalogIndex.open(index) as ix:
        assert sorted(ix.manifest.image_roots) == [str((store / d).resolve()) for d in "012"]
        vec = ix.get_vectors([next(ix.ids())])
        escapes = {
            "dotdot": f"{store}/0/../../secret.jpg",
            "symlink": str(store / "0" / "link.jpg"),
            "extra": str(extra / "x.jpg"),
        }
        ix.add(list(escapes), np.repeat(vec, 3, 0), [{"image": p} for p in escapes.values()])
        for roots in ((), (str(extra),)):  # without and with --image-root EXTRA
            app = make_app(ServerConfig(image_roots=roots), tiny_embedder, ix)
            c = app.test_client()
            for item_id in catalog_rows:
                assert c.get(f"/v1/items/{item_id}/image").mimetype == "image/jpeg", item_id
            assert_error(c.get("/v1/items/dotdot/image"), 404, "no_image")
            assert_error(c.get("/v1/items/symlink/image"), 404, "no_image")
            r = c.get("/v1/items/extra/image")
            assert r.status_code == (200 if roots else 404)
            app.extensions["phonesim"].close()
