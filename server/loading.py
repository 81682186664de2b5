"""Opening a checkpoint and the index built from it, for anything that answers queries.

:func:`open_for_serving` is the one way the app factory and ``phonesim index query`` get an
embedder and an index that belong together; :func:`check_for_serving` is its first half,
which the ``serve`` preflight runs alone (in a child process: :mod:`server.preflight`). The
cheap checks come first (checkpoint readable, index built with this checkpoint, catalog store
reachable, no build replacing the folder), each failing with a one-line
:class:`~common.errors.UserError`, and only then are the model and the FAISS file loaded.

Any number of processes open one store, writable or not: the store serialises the writes and
each process follows the others' (see :mod:`server.follower`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from common.errors import UserError
from common.extras import install_hint
from embedder.checkpoint import checkpoint_hash, read_config
from embedder.engine_options import EngineOptions, precision_mismatch
from embedder.errors import EngineError
from embedder.inference import Embedder
from embedder.runtime import check_device, check_runtime
from embedder.text_cues import TextCues
from index.build import warn_labels_unknown
from index.catalog import CatalogIndex, IndexOptions
from index.folder import check_index_files, lock_shared, on_read_only_media
from index.manifest import Manifest, read_manifest
from index.stores import open_source

log = logging.getLogger(__name__)


def check_for_serving(
    checkpoint: str | Path,
    index: str | Path | None,
    *,
    writable: bool = False,
    runtime: str = "auto",
    store: str | None = None,
    read_text: bool = False,
    text_cues: str | None = None,
    device: str | None = None,
) -> None:
    """Check that ``index`` (or the catalog ``store``: a ``postgresql://`` URL) can serve
    queries embedded by ``checkpoint`` on ``runtime``, loading neither; with ``read_text``,
    that the OCR package is installed and the ``text_cues`` file names the model's classes;
    that an explicit ``device`` exists here.

    The serve command runs this before forking workers (which must load the model after the
    fork), so a mistake is one line instead of a gunicorn boot traceback per worker.
    ``writable`` (writes enabled, an API key): an index folder's store must be writable by
    this user, else every write would be a 503 "try again" that never succeeds.
    """
    config = read_config(checkpoint)
    manifest = _store_manifest(index, store)
    if writable and store is None and index is not None:
        _check_store_writable(Path(index))
    manifest.check(
        expect_model=config.architecture,
        expect_checkpoint_hash=checkpoint_hash(checkpoint),
        expect_dim=int(config.feature_dim),
        where=f"index {store or index}",
    )
    check_runtime(checkpoint, runtime)  # an int8 graph that 'phonesim optimize' has not made
    if device is not None:  # a GPU this machine lacks: one line, not a traceback per worker
        check_device(runtime, device)
    if read_text:
        if importlib.util.find_spec("rapidocr") is None:
            raise EngineError(f"--read-text needs RapidOCR: {install_hint('ocr')}")
        if text_cues:
            TextCues.load(text_cues, config.label_names)


def _check_store_writable(index: Path) -> None:
    """UserError where this user may not write the folder's catalog store (or beside it)."""
    from index.store import STORE_NAME

    if on_read_only_media(index):
        raise UserError(
            f"{index}: writes are enabled (an API key), but the index folder is on read-only "
            "media; serve it without an API key (read-only), or copy it to a writable place"
        )
    for path in (index / STORE_NAME, index):
        if not os.access(path, os.W_OK):
            info = path.stat()
            raise UserError(
                f"{path}: writes are enabled (an API key), but this user (uid {os.getuid()}) "
                f"may not write it (owner uid {info.st_uid}, group {info.st_gid}, mode "
                f"{stat.S_IMODE(info.st_mode):o}); give it the server's user or group, or "
                "serve without an API key (read-only)"
            )


def _store_manifest(index: str | Path | None, store: str | None) -> Manifest:
    """The index's manifest, once its store has answered (and no build replaces the folder)."""
    if store is None:
        manifest = read_manifest(index)
        # A damaged file: one line here, not in each worker.
        info = check_index_files(Path(index))
        os.close(lock_shared(Path(index), info["read_only_media"]))
        return manifest
    source, manifest, _ = open_source(index, store)
    source.close()
    return manifest


def open_for_serving(
    checkpoint: str | Path,
    index: str | Path | None,
    *,
    writable: bool = False,
    engine: EngineOptions | None = None,
    store: str | None = None,
    options: IndexOptions | None = None,
) -> tuple[Embedder, CatalogIndex]:
    """Load the embedder of ``checkpoint`` and open ``index`` (or ``store``) checked against it.

    ``writable=False`` opens the index read-only. ``engine``: runtime, device and threads of
    the model (default: auto, best device, all cores). An index of fp32 embeddings searched
    with int8 queries (or the other way round) works, a little less exactly, and is logged as
    a warning. ``options``: the index's run-time settings. The caller closes the index.
    """
    engine = engine or EngineOptions()
    check_for_serving(checkpoint, index, runtime=engine.runtime, store=store)
    embedder = Embedder.from_checkpoint(checkpoint, **asdict(engine))
    opened = CatalogIndex.open(
        index,
        readonly=not writable,
        store=store,
        expect_model=embedder.model_name,
        expect_checkpoint_hash=embedder.checkpoint_hash,
        expect_dim=embedder.dim,
        options=options,
    )
    stored = opened.manifest.source.get("embedding_precision")
    problem = precision_mismatch(f"index {store or index}", stored, embedder.runtime)
    if problem:
        log.warning("%s", problem)
    warn_if_classes_renamed(f"index {store or index}", opened.manifest, embedder.label_names)
    labels = opened.store.field_texts("label", LABELS_READ)
    where = f"index {store or index}"
    warn_labels_unknown(where, labels, embedder.label_names, more=len(labels) >= LABELS_READ)
    return embedder, opened


LABELS_READ = 10_000  # distinct catalog labels compared with the checkpoint's classes


def warn_if_classes_renamed(where: str, manifest: Manifest, names: Sequence[str]) -> None:
    """The index's build recorded the checkpoint's class names; the same weights (the hash is
    checked) naming them otherwise mean an edited config.json: predictions then carry the new
    names and the catalog's labels the old ones, and the kNN vote counts them apart."""
    built = manifest.source.get("label_names")
    if not isinstance(built, list) or not built or built == list(names):
        return
    changed = [f"{old!r} -> {new!r}" for old, new in zip(built, names, strict=False) if old != new]
    if len(built) != len(names):
        changed.append(f"{len(built)} classes -> {len(names)}")
    log.warning(
        "%s was built when this checkpoint named its classes otherwise (%s%s): its config.json "
        "was edited since; predictions use the new names, the catalog's labels the old ones",
        where,
        ", ".join(changed[:3]),
        f" and {len(changed) - 3} more" if len(changed) > 3 else "",
    )
