"""Opening a checkpoint and the index built from it, for anything that answers queries.

:func:`open_for_serving` is the one way the app factory and ``phonesim index query`` get an
embedder and an index that belong together; :func:`check_for_serving` is its first half,
which the ``serve`` preflight runs alone. The cheap checks come first (checkpoint readable,
index built with this checkpoint, catalog store readable, writer lock free when writing), each
failing with a one-line :class:`~common.errors.UserError`, and only then are the model and the
FAISS file loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from embedder.checkpoint import checkpoint_hash, read_config
from embedder.inference import Embedder
from index.catalog import CatalogIndex
from index.folder import describe, lock_writer
from index.manifest import read_manifest


def check_for_serving(checkpoint: str | Path, index: str | Path, *, writable: bool = False) -> None:
    """Check that ``index`` can serve queries embedded by ``checkpoint``, loading neither.

    The serve command runs this before forking workers (which must load the model after the
    fork), so a mistake is one line instead of a gunicorn boot traceback per worker.
    """
    config = read_config(checkpoint)
    read_manifest(index).check(
        expect_model=config.architecture,
        expect_checkpoint_hash=checkpoint_hash(checkpoint),
        expect_dim=int(config.feature_dim),
        where=f"index {index}",
    )
    describe(index)  # the catalog store opens and answers
    if writable:
        os.close(lock_writer(Path(index)))


def open_for_serving(
    checkpoint: str | Path, index: str | Path, *, writable: bool = False
) -> tuple[Embedder, CatalogIndex]:
    """Load the embedder of ``checkpoint`` and open ``index`` checked against it.

    ``writable`` takes the index's writer lock; otherwise the index is opened read-only.
    The caller closes the index.
    """
    check_for_serving(checkpoint, index, writable=writable)
    embedder = Embedder.from_checkpoint(checkpoint)
    opened = CatalogIndex.open(
        index,
        readonly=not writable,
        expect_model=embedder.model_name,
        expect_checkpoint_hash=embedder.checkpoint_hash,
        expect_dim=embedder.dim,
    )
    return embedder, opened
