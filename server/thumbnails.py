"""Thumbnails of catalog items: only from the item's own stored image, only inside image roots."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image

from common.text import is_uri
from embedder.errors import ImageError
from embedder.images import load_image
from index.manifest import Manifest
from server.config import ServerConfig
from server.errors import ApiError
from server.files import inside

log = logging.getLogger(__name__)

THUMBNAIL_CACHE = 512


class Thumbnails:
    """Makes (and caches, by file, modification time and size) JPEG thumbnails."""

    def __init__(self, config: ServerConfig, manifest: Manifest) -> None:
        self.size = config.thumbnail_px
        self.roots = image_roots(config, manifest)
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def make(self, item_id: str, metadata: dict[str, Any]) -> bytes:
        """A JPEG thumbnail of the item with ``metadata``, found by id only.

        The path comes from the index metadata (never from the client), must lie inside an
        image root (symlinks resolved; none: nothing is served), and is decoded and
        re-encoded, so only images ever leave.
        """
        raw = metadata.get("image")
        if not raw:
            raise ApiError(404, "no_image", f"item {item_id!r} has no image")
        if is_uri(raw):  # the catalog's address of it (a CDN URL): no file of this server
            raise ApiError(404, "no_image", f"item {item_id!r} has no image file on this server")
        path = Path(os.path.realpath(raw))  # checked and read as resolved: no "..", no links
        if not inside(path, self.roots):
            log.warning("refusing thumbnail of %r: %s is outside the image roots", item_id, raw)
            raise ApiError(404, "no_image", f"item {item_id!r} has no servable image")
        try:
            stat = path.stat()
        except OSError:
            raise ApiError(404, "no_image", f"the image of item {item_id!r} is missing") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        try:
            img = load_image(path, min_side=self.size)
        except ImageError as exc:
            # The stored file is broken: the server's problem, and its path stays private.
            log.warning("cannot make a thumbnail of %r: %s", item_id, exc)
            raise ApiError(
                404, "no_image", f"the image of item {item_id!r} cannot be read"
            ) from None
        img.thumbnail((self.size, self.size), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > THUMBNAIL_CACHE:
                self._cache.popitem(last=False)
        return data


def image_roots(config: ServerConfig, manifest: Manifest) -> list[Path]:
    """Folders thumbnails may be read from: those the index was built from, the folder of API
    uploads, ``--image-root`` folders, and the catalog CSV's folder (all an index built before
    image roots were recorded has)."""
    roots = [Path(p) for p in (*config.image_roots, *manifest.image_roots)]
    if config.image_dir:
        roots.append(Path(config.image_dir))
    catalog = manifest.source.get("catalog")
    if catalog:
        roots.append(Path(catalog).parent)
    return [p.resolve() for p in roots]
