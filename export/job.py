"""The export job: reader -> mapper (here or on Ray) -> shards -> HDF5 file -> neighbours.

``export_features`` is the one entry point the CLI, the benchmark and the tests call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from common import stopping
from common.fsutil import atomic_write, exclusive_lock, folder_write_problem, replaced_path
from embedder.checkpoint import checkpoint_hash, read_config
from embedder.class_rerank import class_rerank
from embedder.engine_options import EngineOptions, precision, precision_mismatch
from embedder.preprocess import Preprocessor
from embedder.text_reader import TextEvidence
from export import schema
from export.assemble import Assembled, assemble
from export.config import ExportConfig
from export.errors import ExportError
from export.mapper import TEXT_FAILED, TEXT_NAMED, TEXT_NOT_READ, FeatureBatch, read_text
from export.neighbors import (
    FileIndexSearch,
    NeighborSearch,
    auto_factory,
    label_classes,
    write_neighbors,
)
from export.reader import ExportInputs, read_inputs
from export.shards import JobIdentity, PartialDir, ShardWriter
from index import ann

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSummary:
    """What one run did; ``items_per_s`` covers only the inputs embedded by this run."""

    out: Path
    count: int
    failed: int
    dim: int
    neighbors: int
    resumed_from: int
    embedded_now: int
    embed_seconds: float
    total_seconds: float
    runner: str

    #: Seconds until the first results arrived (model loading, worker or Ray start-up).
    startup_seconds: float = 0.0
    #: The inference runtime that embedded this run's inputs.
    runtime: str = ""
    #: With --read-text: the images of this run whose text was read, and those whose text
    #: named a class.
    text_read: int = 0
    text_named: int = 0
    #: Of ``text_read``, the images whose reading failed (each logged): no cue for them.
    text_failed: int = 0
    #: The fewest neighbours any item got: below ``neighbors`` when the catalog holds no more.
    neighbors_found: int = 0

    @property
    def items_per_s(self) -> float:
        """Embedding-stage throughput, start-up included."""
        return self.embedded_now / self.embed_seconds if self.embed_seconds > 0 else 0.0


def _is_features_file(path: Path) -> bool:
    """Whether ``path`` is a phonesim features file: this format, or an older `phonesim embed`
    file (no ``format`` attribute, the same datasets: `index build` reads those too, and
    `embed`/`demo` had refused to replace one). :class:`ExportError` where another process
    holds it open for writing (HDF5's file lock), which had read as "not a features file"."""
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as h5:
            if "format" not in h5.attrs:
                return "ids" in h5 and "embeddings" in h5
            return h5.attrs.get("format") == schema.FORMAT
    except OSError as exc:
        if "unable to lock file" in str(exc).lower():  # not "sblock" of a truncated file
            raise ExportError(
                f"{path}: another process has it open for writing (HDF5 file lock); close it "
                "first, or give another --out"
            ) from exc
        return False


def output_path(out: str | Path) -> Path:
    """The file to write for ``--out``. A link: the file it names is replaced, and the
    progress folder goes beside that file. A name ending in "/" means a folder: ``Path``
    drops the slash, and "newdir/" had been written as a file named newdir."""
    if isinstance(out, str) and out.endswith(("/", os.sep)):
        raise ExportError(f"{out}: names a folder; give a file name such as {out}features.h5")
    return replaced_path(Path(out))


def check_output(out: Path, overwrite: bool) -> None:
    """Fail before any work when the output cannot be written."""
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give a file name such as features.h5")
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and not _is_features_file(out):
        # --overwrite replaces an earlier export, never the input CSV or another file.
        raise ExportError(
            f"{out}: exists and is not a phonesim features file; not replacing it "
            "(give another --out)"
        )
    problem = folder_write_problem(out.parent)
    if problem:
        raise ExportError(f"{out.parent}: {problem}; {out.name} cannot be written there")


class _FirstBatchClock:
    """Notes when the first batch arrives, to tell start-up cost from throughput."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None

    def __call__(self, batches: Iterator[FeatureBatch]) -> Iterator[FeatureBatch]:
        for batch in batches:
            if self.first is None:
                self.first = time.perf_counter() - self.t0
            yield batch


class _TextStage:
    """Reads the text on each embedded image whose classifier prediction is below the gate
    and adds the classes it names to its probabilities, before the batch joins a shard (so
    a resume reads again only the images after the last committed shard). After the
    single-process runner it reads here, one image at a time, decoding the images again at the
    model's decode side as the server decodes an upload; the Ray runner's actors read their
    own batches with the same :func:`export.mapper.read_text`, and this stage only counts."""

    def __init__(self, evidence: TextEvidence, inputs: ExportInputs, decode_side: int) -> None:
        self.evidence = evidence
        self.samples = inputs.samples
        self.decode_side = decode_side
        self.read = self.named = self.failed = 0

    def __call__(self, batches: Iterator[FeatureBatch]) -> Iterator[FeatureBatch]:
        for batch in batches:
            if batch.text is None:  # not read on a worker: read here, as a worker would
                paths = [self.samples[i].path for i in batch.indices]
                probabilities, status = read_text(
                    self.evidence, batch.probabilities, paths, self.decode_side
                )
                batch = replace(batch, probabilities=probabilities, text=status)
            self.read += int((batch.text != TEXT_NOT_READ).sum())
            self.named += int((batch.text == TEXT_NAMED).sum())
            self.failed += int((batch.text == TEXT_FAILED).sum())
            yield batch


def text_identity(evidence: TextEvidence | None) -> str:
    """What a resumed export must read the same way: the setting and the words ("" = none)."""
    if evidence is None:
        return ""
    words = [list(w) for w in evidence.cues.words]
    # The listing words matching passes over are part of how it reads (they came in later).
    generic = sorted(evidence.cues.generic)
    identity = {**evidence.describe(), "words": words, "generic": generic}
    examples = evidence.cues.examples
    if examples is not None:  # the learned examples vote too: the same ones, or a new export
        pairs = json.dumps([examples.documents, examples.labels]).encode()
        identity["examples_sha256"] = hashlib.sha256(pairs).hexdigest()
    return json.dumps(identity, sort_keys=True)


def _embed_stage(
    config: ExportConfig,
    inputs: ExportInputs,
    partial: PartialDir,
    ckpt_hash: str,
    clock: _FirstBatchClock,
    text: _TextStage | None = None,
) -> tuple[int, str]:
    """Embed every input after the committed cursor; returns how many inputs it processed and
    the runtime that embedded them (``config.runtime`` when none was left). ``text``: read
    the unsure images' text into their probabilities before they are committed."""
    start = partial.cursor
    if start >= len(inputs):
        return 0, config.runtime
    writer = ShardWriter(partial, inputs.samples, config.shard_size)
    with_text = text or (lambda batches: batches)
    if config.ray:
        from embedder.runtime import resolve_runtime
        from export.ray_runner import connect, ray_batches

        # Decided (and the graph exported) once here, not in every actor.
        runtime = resolve_runtime(config.checkpoint, config.runtime, config.device)
        writer.runtime = runtime
        session = connect(config.ray, config.ray_ship_code)
        failed = True
        try:
            batches = ray_batches(
                config.checkpoint,
                ckpt_hash,
                inputs.samples,
                start,
                config.batch_size,
                config.ray_actors,
                config.cpus_per_actor,
                config.progress,
                EngineOptions(runtime, config.device),
                text.evidence.plan() if text else None,
            )
            for batch in with_text(clock(batches)):
                writer.write(batch)
            writer.flush()
            failed = False
        finally:
            session.close(failed)
    else:
        from embedder.inference import Embedder
        from export.local_runner import local_batches

        # Sets torch's threads too, where torch runs (see embedder.runtime.load_engine).
        embedder = Embedder.from_checkpoint(
            config.checkpoint, config.runtime, config.device, config.threads
        )
        runtime = embedder.runtime
        writer.runtime = runtime
        batches = local_batches(
            embedder, inputs.samples, start, config.batch_size, config.workers, config.progress
        )
        for batch in with_text(clock(batches)):
            writer.write(batch)
        writer.flush()
    return len(inputs) - start, runtime


def _neighbor_search(
    config: ExportConfig,
    identity: JobIdentity,
    h5: h5py.File,
    row_ids: np.ndarray,
    label_names: list[str],
) -> NeighborSearch:
    if config.index or config.store:
        from export.index_search import IndexDirSearch

        return IndexDirSearch.open(
            config.index,
            identity.model_name,
            identity.checkpoint_hash,
            identity.dim,
            row_ids,
            label_names,
            store=config.store,
        )
    n = h5[schema.EMBEDDINGS].shape[0]
    factory = config.neighbor_index or auto_factory(n, config.exact_limit)
    try:
        classes = None
        if config.class_rerank:  # the re-rank needs each neighbour's class
            classes = label_classes(h5[schema.LABELS].asstr()[:], label_names)
        return FileIndexSearch(h5[schema.EMBEDDINGS], row_ids, factory, row_classes=classes)
    except RuntimeError as exc:  # e.g. more IVF lists than rows to train them on
        raise ExportError(
            f"neighbour index {factory!r} cannot be built over {n} rows ({ann.faiss_reason(exc)}); "
            "the embeddings are kept: re-run with another --neighbor-index to finish"
        ) from None


#: What a valid --neighbor-index looks like, for the message refusing a bad one.
FACTORY_EXAMPLES = "'Flat', 'IVF1024,Flat', 'HNSW32' or 'IVF1024,PQ16'"


def _check_factory(factory: str, dim: int) -> None:
    """A faiss index_factory string that parses for this dimension, checked before embedding."""
    import faiss

    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ExportError(
            f"--neighbor-index {factory!r} is not a faiss index_factory string for "
            f"{dim}-d vectors ({ann.faiss_reason(exc)}); give one such as {FACTORY_EXAMPLES}"
        ) from None


def _check_index(path: str | None, identity: JobIdentity, runtime: str, store: str | None) -> None:
    from index.folder import check_openable_here
    from index.stores import read_store_manifest

    if store is None and not Path(path).is_dir():
        raise ExportError(f"{path}: index folder not found")
    manifest = read_store_manifest(path, store)
    if store is None:  # a read-only folder had failed only once everything was embedded
        check_openable_here(Path(path))
    path = path or "in the store"
    manifest.check(
        expect_model=identity.model_name,
        expect_checkpoint_hash=identity.checkpoint_hash,
        expect_dim=identity.dim,
        where=f"index {path}",
    )
    stored = manifest.source.get("embedding_precision")
    problem = precision_mismatch(f"index {path}", stored, runtime)
    if problem:
        log.warning("%s", problem)


def _write_file(
    tmp: Path,
    config: ExportConfig,
    identity: JobIdentity,
    partial: PartialDir,
    inputs: ExportInputs,
    label_names: list[str],
    runtime: str,
) -> tuple[Assembled, int]:
    """Assemble the shards into ``tmp``, add the neighbours and the attributes; return what
    was assembled and the fewest neighbours any row found."""
    h5, done = assemble(partial, tmp, config.dtype, label_names, inputs.samples)
    try:
        k = found = config.neighbors
        if k:
            row_ids = np.asarray(h5[schema.IDS].asstr()[:], dtype=object)
            search = _neighbor_search(config, identity, h5, row_ids, label_names)
            try:
                found = write_neighbors(
                    h5,
                    k,
                    search,
                    row_ids,
                    progress=config.progress,
                    rerank=class_rerank(config.class_rerank),
                )
            finally:
                search.close()
        h5.attrs.update(
            {
                "format": schema.FORMAT,
                "format_version": schema.FORMAT_VERSION,
                "model_name": identity.model_name,
                "checkpoint_hash": identity.checkpoint_hash,
                "dim": identity.dim,
                "num_classes": identity.num_classes,
                "normalized": True,
                # The runtimes that embedded the rows ("onnx+torch" where a resume switched;
                # the same precision either way, checked on resume).
                "runtime": runtime,
                "precision": identity.precision,
                "dtype": config.dtype,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "count": done.count,
                "failed_count": done.failed,
                "neighbors_k": k,
                "source": str(inputs.source.resolve()),
                "inputs_fingerprint": inputs.fingerprint,
                # JSON, like old `phonesim embed` files, so `phonesim index build` reads both.
                "label_names": json.dumps(label_names),
                # What the probabilities are: the classifier's, or with the text cues added.
                "prediction": "classifier+text" if config.text else "classifier",
                "text_cues": identity.text,
            }
        )
    finally:
        h5.close()
    stopping.check()  # a stop asked meanwhile: the file is not put in place
    return done, found


# What one neighbour entry costs besides its id's text: HDF5's variable-length string
# record, the score and the index (measured: 53.5 bytes an entry for 12-character ids).
_NEIGHBOR_OVERHEAD = 60


def _check_room(partial: PartialDir, k: int, dtype: str) -> None:
    """Refuse to assemble into a disk without room for the file: a full disk while h5py
    writes or closes it ended the process with a segmentation fault (after the error), and
    the shards, kept, let a later run finish once there is room."""
    import shutil

    shard_bytes = 0
    rows = id_chars = 0
    for shard in partial.shards:
        shard_bytes += shard.path.stat().st_size
        rows += shard.rows
        if k and shard.rows:
            with h5py.File(shard.path, "r") as h5:
                id_chars += sum(len(i) for i in h5["ids"][()])  # UTF-8 bytes, as stored
    # The shards hold float32; a float16 file holds about half of that.
    file_bytes = shard_bytes // 2 if dtype == "float16" else shard_bytes
    mean_id = id_chars / rows if rows else 0
    need = file_bytes + int(rows * k * (_NEIGHBOR_OVERHEAD + mean_id)) + 2**20
    free = shutil.disk_usage(partial.path).free
    if free < need:
        raise ExportError(
            f"{partial.path}: about {need / 2**20:.0f} MB are needed to write the file, "
            f"{free / 2**20:.0f} MB are free; the embedded shards are kept: make room and run "
            "the same command again to finish"
        )


def export_features(config: ExportConfig) -> ExportSummary:
    """Run (or resume) an export and atomically write ``config.out``.

    Progress lives in ``<out>.partial/`` until the file is complete; re-running the same
    command after an interruption continues from the last committed shard. One export at a
    time writes a file: a second (a resume started twice) is refused while the first runs;
    it had died on a raw h5py error, once leaving a stale progress folder.
    """
    out = output_path(config.out)
    check_output(out, config.overwrite)  # a missing folder is said as such, before the lock
    busy = f"{out}: another export{{holder}} is writing this file now; wait for it to end"
    with exclusive_lock(out.parent / f".{out.name}.lock", busy):
        return _export(config)


def _export(config: ExportConfig) -> ExportSummary:
    t0 = time.perf_counter()
    out = output_path(config.out)
    check_output(out, config.overwrite)
    ckpt = read_config(config.checkpoint)  # CheckpointError names what is missing
    ckpt_hash = checkpoint_hash(config.checkpoint)
    inputs = read_inputs(config.input, config.input_kind)
    evidence = None
    if config.text is not None:  # a bad cue file or no OCR package fails before the work
        evidence = config.text.build(list(ckpt.label_names), threads=config.threads)
    identity = JobIdentity(
        checkpoint_hash=ckpt_hash,
        model_name=ckpt.architecture,
        dim=int(ckpt.feature_dim),
        num_classes=int(ckpt.num_classes),
        inputs_fingerprint=inputs.fingerprint,
        inputs_count=len(inputs),
        precision=precision(config.runtime),
        text=text_identity(evidence),
    )
    # Before hours of embedding, not after; without neighbours no index or store is read (a
    # $PHONESIM_STORE set for `serve` must not make the database a need of every export).
    if config.neighbors and (config.index or config.store):
        _check_index(config.index, identity, config.runtime, config.store)
    if config.neighbors and config.neighbor_index:
        _check_factory(config.neighbor_index, identity.dim)
    partial = PartialDir.open(out, identity, restart=config.restart)
    partial.check_files_unchanged(inputs.samples)
    resumed_from = partial.cursor
    clock = _FirstBatchClock()
    text = None
    if evidence is not None:
        text = _TextStage(evidence, inputs, Preprocessor(ckpt.data_config).decode_side)
    try:
        embedded_now, runtime = _embed_stage(config, inputs, partial, ckpt_hash, clock, text)
        stopping.check()
    except BaseException:
        if not partial.shards:  # nothing to resume: a corrected command must not be refused
            partial.remove()
        raise
    embed_seconds = time.perf_counter() - clock.t0
    # What embedded the rows, this run's and those it resumed (not "auto" when none was left).
    runtime = partial.runtime() or runtime

    if not any(shard.rows for shard in partial.shards):
        partial.remove()  # nothing worth resuming: a re-run after fixing the images starts over
        raise ExportError(
            f"{config.input}: none of the {len(inputs)} images could be read "
            "(see the warnings above); nothing to export"
        )
    _check_room(partial, config.neighbors, config.dtype)
    # The file is assembled inside the partial folder, so a crash leaves nothing beside --out.
    done, neighbors_found = atomic_write(
        out,
        lambda tmp: _write_file(
            tmp, config, identity, partial, inputs, list(ckpt.label_names), runtime
        ),
        folder=partial.path,
    )
    partial.remove()
    total = time.perf_counter() - t0
    log.info("wrote %s: %d items, %d failed, %.1fs", out, done.count, done.failed, total)
    return ExportSummary(
        out=out,
        count=done.count,
        failed=done.failed,
        dim=identity.dim,
        neighbors=config.neighbors,
        neighbors_found=neighbors_found,
        resumed_from=resumed_from,
        embedded_now=embedded_now,
        embed_seconds=embed_seconds,
        total_seconds=total,
        runner="ray" if config.ray else "local",
        startup_seconds=clock.first or 0.0,
        runtime=runtime,
        text_read=text.read if text else 0,
        text_named=text.named if text else 0,
        text_failed=text.failed if text else 0,
    )
