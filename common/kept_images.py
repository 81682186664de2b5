"""The photos the server keeps for items added through its API (``serve --image-dir``): their
names, and which file there belongs to an item. Shared by the server, which writes and deletes
them, and ``phonesim index remove --image-dir``, which removes items beside a running server."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

# <24 hex of sha256(id)>-<16 hex of a uuid4>.img: unique per add, not per id, so that two
# concurrent adds (or a delete and a re-add) of one id never overwrite each other's file.
_NAME = re.compile(r"[0-9a-f]{24}-[0-9a-f]{16}\.img")


def _stem(item_id: str) -> str:
    return hashlib.sha256(item_id.encode()).hexdigest()[:24]


def new_image_path(folder: str | Path, item_id: str) -> Path:
    """A fresh path in ``folder`` for a photo of ``item_id`` (the folder is not created)."""
    return Path(folder) / f"{_stem(item_id)}-{uuid.uuid4().hex[:16]}.img"


def kept_image(folder: str | Path, item_id: str, image: object) -> Path | None:
    """``image`` (an item's ``image`` metadata) when it is a photo kept for ``item_id`` in
    ``folder``, else None: a catalog's own photos are never the server's to delete, even when
    ``folder`` is (wrongly) their folder."""
    if not isinstance(image, str) or not image:
        return None
    path = Path(image)
    if not (_NAME.fullmatch(path.name) and path.name.startswith(_stem(item_id) + "-")):
        return None
    if Path(path.parent).resolve() != Path(folder).resolve():
        return None
    return path
