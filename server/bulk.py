"""Many images in one request: decoded side by side, embedded in one forward pass, answered
one result or one error per entry (a bad entry does not fail the others)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.machine import available_cores
from embedder.errors import ImageError
from index.errors import (
    CatalogReplacedError,
    DuplicateIdError,
    StoreOutcomeUnknownError,
    StoreUnavailableError,
)
from server.batcher import model_result
from server.errors import ApiError, entry_error
from server.service import Embedded, LookupService

# Threads decoding the images of one batch (PIL and the resize release the GIL).
DECODE_THREADS = min(4, available_cores())
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _decoder() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="phonesim-decode")
        return _pool


def embed_many(
    svc: LookupService,
    images: list[bytes],
    predicted: bool = True,
    text_modes: list[str] | None = None,
) -> list[Embedded | dict]:
    """Each image's embedding, or the entry error (see :func:`server.errors.entry_error`) of an
    image that cannot be read; the readable ones share one forward pass. ``predicted``: the
    caller predicts them, so a server that reads text keeps each decoded photo with it for its
    prediction to read if unsure (a batch add predicts nothing and keeps none).
    ``text_modes``: each image's ``read_text`` (see :class:`Embedded`); default "auto"."""

    modes = ["auto"] * len(images) if text_modes is None else text_modes
    if len(modes) != len(images):
        raise ValueError(f"{len(modes)} text modes for {len(images)} images")

    def prepare(data: bytes, mode: str) -> tuple[np.ndarray, Image.Image | None] | dict:
        try:
            image = svc.decode(data)
            # Held until the one forward pass: the model's input, and only what a text read
            # needs of the photo (64 decoded 40 MP PNGs held whole took about 10 GB).
            kept = svc.kept_for_reading(image, mode) if predicted else None
            return svc.embedder.preprocess_array(image), kept
        except ImageError as exc:
            return entry_error(exc) or {}

    t0 = time.perf_counter()
    if len(images) > 1:
        prepared = list(_decoder().map(prepare, images, modes))
    else:
        prepared = [prepare(images[0], modes[0])]
    t1 = time.perf_counter()
    rows = [i for i, p in enumerate(prepared) if isinstance(p, tuple)]
    # Decoded images are replaced by their embeddings below; errors stay.
    out: list[Any] = list(prepared)
    if not rows:
        return out
    future = svc.batcher.submit_many(np.stack([out[i][0] for i in rows]))
    results = model_result(future, svc.config.request_timeout_s)
    t2 = time.perf_counter()
    svc.metrics.decode_seconds.observe(t1 - t0)
    for i, result in zip(rows, results, strict=True):
        out[i] = svc.embedded(
            result, decode_s=t1 - t0, total_s=t2 - t0, image=out[i][1], text_mode=modes[i]
        )
    return out


@dataclass
class NewItem:
    """One entry of a batch add, checked (``error`` set when it cannot be added)."""

    id: str | None
    data: bytes | None = None
    metadata: dict[str, Any] | None = None
    error: dict | None = None


def add_many(svc: LookupService, entries: list[NewItem]) -> list[dict]:
    """Embed and add every entry without an error, durably, in one write; one answer per
    entry: ``{"id", "status": 201, "metadata"}`` (as stored) or ``{"id", "status", "error"}``."""
    for e in entries:
        if e.error is None and e.id in svc.index:
            e.error = entry_error(ApiError(409, "item_exists", f"item {e.id!r} already exists"))
    todo = [e for e in entries if e.error is None]
    embedded = embed_many(svc, [e.data or b"" for e in todo], predicted=False) if todo else []
    ready: list[tuple[NewItem, Embedded]] = []
    seen: set[str] = set()
    for e, emb in zip(todo, embedded, strict=True):
        if not isinstance(emb, Embedded):
            e.error = emb
        elif e.id in seen:  # the first entry that can be added wins, not a refused one
            message = f"item {e.id!r} is given by an earlier entry of this batch"
            e.error = entry_error(ApiError(409, "item_exists", message))
        else:
            seen.add(e.id or "")
            ready.append((e, emb))
    _write(svc, ready)
    answers = []
    for e in entries:
        if e.error is not None:
            answers.append({"id": e.id, **e.error})
        else:
            answers.append({"id": e.id, "status": 201, "metadata": e.metadata or {}})
    return answers


def _write(svc: LookupService, ready: list[tuple[NewItem, Any]]) -> None:
    """One durable add for all; if another request added one of the ids meanwhile, each
    item is added on its own so only that one fails."""
    if not ready:
        return
    saved: list[Path | None] = []
    try:
        for e, _ in ready:
            saved.append(svc.keep_image(e.id or "", e.data or b""))
    except ApiError:  # the images cannot be kept: nothing is added, the request says why
        for path in saved:
            svc.drop_image(path)
        raise
    metadata = []
    for (e, _), path in zip(ready, saved, strict=True):
        md = dict(e.metadata or {})
        if path is not None:
            md["image"] = str(path)
        metadata.append(md)
    ids = [e.id or "" for e, _ in ready]
    vectors = np.stack([emb.embedding for _, emb in ready])
    try:
        svc.index.add(ids, vectors, metadata)
        for (e, _), md in zip(ready, metadata, strict=True):
            e.metadata = md  # as stored: the answer needs no read that a delete could beat
        return
    except DuplicateIdError:
        pass
    except StoreOutcomeUnknownError:
        raise  # the items may be in the store: their images stay
    except BaseException:
        for path in saved:
            svc.drop_image(path)
        raise
    done = 0
    try:
        for (e, emb), md, path in zip(ready, metadata, saved, strict=True):
            try:
                svc.index.add([e.id or ""], emb.embedding[None, :], [md])
                e.metadata = md
            except DuplicateIdError as exc:
                svc.drop_image(path)
                e.error = entry_error(exc)
            done += 1
    except StoreUnavailableError as exc:
        added = any(e.error is None for e, _ in ready[:done])
        if not added and not isinstance(exc, StoreOutcomeUnknownError):
            for path in saved[done:]:
                svc.drop_image(path)
            raise  # nothing of this request is in the store: the whole request is a 503
        # Items before this one are in the store: a whole-request 503 would tell the client
        # "nothing was changed". Each entry says what became of it instead.
        _store_failed_from(svc, ready[done:], saved[done:], exc)


def _store_failed_from(
    svc: LookupService,
    rest: list[tuple[NewItem, Any]],
    saved: list[Any],
    exc: StoreUnavailableError,
) -> None:
    """Entry errors for the items from the one whose add failed with ``exc`` on."""
    unknown = isinstance(exc, StoreOutcomeUnknownError)
    for n, ((e, _), path) in enumerate(zip(rest, saved, strict=True)):
        if n == 0 and unknown:  # it may be in the store: its photo stays
            e.error = {"status": 502, "error": {"code": "store_outcome_unknown",
                       "message": "the store broke off while this item was committing; it "
                       "may have been added: read it before sending it again"}}  # fmt: skip
            continue
        svc.drop_image(path)
        if isinstance(exc, CatalogReplacedError):
            e.error = {"status": 503, "error": {"code": "catalog_replaced",
                       "message": f"not added: {exc}"}}  # fmt: skip
            continue
        why = "the store cannot be reached" if n == 0 else "the store failed on an earlier item"
        e.error = {"status": 503, "error": {"code": "store_unavailable",
                   "message": f"not added: {why}; send it again"}}  # fmt: skip
