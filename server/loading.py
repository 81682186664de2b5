"""Opening a checkpoint and the index built from it, for anything that answers queries.

:func:`open_for_serving` is the one way the app factory and ``phonesim index query`` get an
embedder and an index that belong together; :func:`check_for_serving` is its first half,
which the ``serve`` preflight runs alone. The cheap checks come first (checkpoint readable,
index built with this checkpoint, catalog store readable, writer lock free when writing), each
failing with a one-line :class:`~common.errors.UserError`, and only then are the model and the
FAISS file loaded.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from embedder.checkpoint import checkpoint_hash, read_config
from embedder.engine_options import EngineOptions, precision_mismatch
from embedder.inference import Embedder
from embedder.runtime import check_runtime
from index.catalog import CatalogIndex
from index.folder import describe
from index.manifest import read_manifest

log = logging.getLogger(__name__)


def check_for_serving(
    checkpoint: str | Path, index: str | Path, *, writable: bool = False, runtime: str = "auto"
) -> None:
    """Check that ``index`` can serve queries embedded by ``checkpoint`` on ``runtime``,
    loading neither.

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
    check_runtime(checkpoint, runtime)  # an int8 graph that 'phonesim optimize' has not made
    describe(index)  # the catalog store opens and answers
    # ``writable`` needs no lock: any number of processes write one store (index/README.md).


def open_for_serving(
    checkpoint: str | Path,
    index: str | Path,
    *,
    writable: bool = False,
    engine: EngineOptions | None = None,
) -> tuple[Embedder, CatalogIndex]:
    """Load the embedder of ``checkpoint`` and open ``index`` checked against it.

    ``writable`` takes the index's writer lock; otherwise the index is opened read-only.
    ``engine``: runtime, device and threads of the model (default: auto, best device, all
    cores). An index of fp32 embeddings searched with int8 queries (or the other way round)
    works, a little less exactly, and is logged as a warning. The caller closes the index.
    """
    engine = engine or EngineOptions()
    check_for_serving(checkpoint, index, writable=writable, runtime=engine.runtime)
    embedder = Embedder.from_checkpoint(checkpoint, **asdict(engine))
    stored = read_manifest(index).source.get("embedding_precision")
    problem = precision_mismatch(f"index {index}", stored, embedder.runtime)
    if problem:
        log.warning("%s", problem)
    opened = CatalogIndex.open(
        index,
        readonly=not writable,
        expect_model=embedder.model_name,
        expect_checkpoint_hash=embedder.checkpoint_hash,
        expect_dim=embedder.dim,
    )
    return embedder, opened
