"""The FAISS side of the catalog index: kinds, training, ids, adding, removing, files.

Every index stores unit vectors under the inner-product metric (cosine similarity) and carries
the catalog store's int64 ids (``fid``): IVF indexes natively (with a hash-table direct map, so
vectors can be reconstructed and removed), every other kind inside ``IndexIDMap2``.

Kinds:

- ``flat``: exact search (``IDMap2,Flat``). Chosen by ``auto`` below :data:`AUTO_FLAT_MAX` items.
- ``ivf``: inverted file with full vectors, ``IVF{nlist},Flat`` (lists sized by
  :func:`index.sizing.ivf_nlist`) with an HNSW coarse quantizer from 1024 lists up. Builds in
  minutes at 1M x 512 on two cores, supports removal, and its ``nprobe`` is tuned at build
  time (:mod:`index.tuning`). Chosen by ``auto`` from :data:`AUTO_FLAT_MAX` items up.
- ``hnsw``: ``HNSW32`` graph. Fast queries but slow builds at millions of items and no physical
  removal (removed items are hidden and skipped until the next rebuild).
- any other string: a FAISS ``index_factory`` string, for experts.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common.fsutil import atomic_write
from index.errors import IndexCorruptError, InvalidKindError
from index.sizing import HNSW_M, IVF_HNSW_QUANTIZER_FROM, TRAIN_POINTS_PER_LIST, ivf_nlist

log = logging.getLogger(__name__)

AUTO_FLAT_MAX = 50_000
KINDS = ("auto", "flat", "ivf", "hnsw")
HNSW_EF_CONSTRUCTION = 64
KMEANS_ITERATIONS = 10

# FAISS says "Error in <C++ signature> at <file>:<line>: <reason>", the reason sometimes after
# "Error: '<failed condition>' failed: ": a user needs only the reason.
_FAISS_WHERE = re.compile(r"^Error in .*? at \S+:\d+: ", re.S)
_FAISS_ASSERTION = re.compile(r"^Error: '.*?' failed: ", re.S)


def faiss_reason(exc: Exception) -> str:
    """FAISS's reason for an error, without its C++ signature and source location."""
    text = " ".join(str(exc).split())
    reason = _FAISS_ASSERTION.sub("", _FAISS_WHERE.sub("", text)).strip()
    return reason or type(exc).__name__


def resolve_kind(kind: str, n: int) -> tuple[str, str]:
    """``(kind, factory string)`` for a requested kind and catalog size ``n``."""
    kind = kind.strip()
    if kind == "auto":
        kind = "flat" if n < AUTO_FLAT_MAX else "ivf"
    if kind == "flat":
        return kind, "Flat"
    if kind == "hnsw":
        return kind, f"HNSW{HNSW_M}"
    if kind == "ivf":
        nlist = ivf_nlist(n)
        quantizer = "_HNSW32" if nlist >= IVF_HNSW_QUANTIZER_FROM else ""
        return kind, f"IVF{nlist}{quantizer},Flat"
    if not kind:
        raise InvalidKindError(f"empty index kind; use one of {', '.join(KINDS)} or a factory")
    if kind.startswith("IDMap,"):
        # IDMap cannot hand stored vectors back (item-to-item search needs them); IDMap2 can.
        kind = "IDMap2," + kind.removeprefix("IDMap,")
    return "factory", kind


def create(factory: str, dim: int) -> faiss.Index:
    """An empty index for ``factory`` that takes int64 ids; see the module docstring."""
    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InvalidKindError(
            f"cannot build FAISS index {factory!r} (dimension {dim}): {faiss_reason(exc)}; "
            "use one of "
            f"{', '.join(KINDS)} or a valid faiss.index_factory string"
        ) from exc
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if isinstance(index, faiss.IndexIVF):
        index.cp.niter = KMEANS_ITERATIONS
        if not isinstance(index.quantizer, faiss.IndexFlat):  # k-means itself runs exactly
            index.clustering_index = faiss.IndexFlatIP(int(dim))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return index
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.make_direct_map()  # sequential ids inside IDMap2, so an array map works
    return faiss.IndexIDMap2(index)


def unwrap(index: faiss.Index) -> faiss.Index:
    """The index under ``IDMap``/``IDMap2``/``PreTransform`` wrappers."""
    while True:
        if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        else:
            return index


def supports_remove(index: faiss.Index) -> bool:
    """Whether ``remove_ids`` physically deletes vectors and keeps the id mapping right. Not
    fast-scan IVF (its block lists refuse a removal: applied from the journal on every open,
    one remove made such an index impossible to open); removed items are hidden instead."""
    if isinstance(index, faiss.IndexIVF):
        return not isinstance(faiss.downcast_index(index), faiss.IndexIVFFastScan)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return isinstance(faiss.downcast_index(index.index), faiss.IndexFlat)
    return False


def stored_fids(index: faiss.Index) -> np.ndarray | None:
    """Ids held by an ``IDMap`` wrapper (None for IVF, which cannot list them cheaply)."""
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    return None


def train(index: faiss.Index, xb: np.ndarray, seed: int = 1234) -> None:
    """Train on a seeded sample of ``xb`` (about 40 points per IVF list) when needed."""
    if index.is_trained:
        return
    try:
        nlist = faiss.extract_index_ivf(index).nlist
        n_train = min(len(xb), max(nlist * TRAIN_POINTS_PER_LIST, 10_000))
    except RuntimeError:
        n_train = min(len(xb), 100_000)
    if n_train < len(xb):
        rows = np.sort(np.random.default_rng(seed).choice(len(xb), n_train, replace=False))
        sample = xb[rows]
    else:
        sample = xb
    log.info("training %s on %d vectors", type(index).__name__, len(sample))
    rotations = _rotation_quantizers(index)
    _warn_few_training_points(index, len(sample), [pq for _, pq in rotations])
    try:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as exc:
        raise InvalidKindError(
            f"cannot train the index on {len(sample)} vectors: {faiss_reason(exc)}"
        ) from exc
    finally:
        for opq, _ in rotations:
            opq.pq = None  # it pointed at a quantizer Python frees; training alone used it


def _rotation_quantizers(index: faiss.Index) -> list[tuple[Any, faiss.ProductQuantizer]]:
    """``(rotation, quantizer)`` for each OPQ rotation of ``index``'s chain, the rotation set
    to train with that quantizer (FAISS makes its own otherwise, whose k-means warnings cannot
    be reached: 408 stderr lines for ``OPQ8,IVF16,PQ8`` on 3,000 vectors). The caller keeps
    the quantizers alive while training and unsets them after."""
    found = []
    while isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            step = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(step, faiss.OPQMatrix) and step.pq is None:
                pq = faiss.ProductQuantizer(step.d_out, step.M, 8)
                step.pq = pq
                found.append((step, pq))
    return found


def _clusterings(
    index: faiss.Index, rotations: Sequence[faiss.ProductQuantizer] = ()
) -> Iterator[tuple[str, faiss.ClusteringParameters, int]]:
    """``(name, parameters, centroids)`` of each k-means that training ``index`` runs, the
    quantizers of its OPQ ``rotations`` included."""
    for pq in rotations:
        yield "OPQ rotation's quantizer", pq.cp, pq.ksub
    index = unwrap(index)
    if isinstance(index, faiss.IndexIVF):
        yield "coarse quantizer", index.cp, index.nlist
    pq = getattr(index, "pq", None)
    if isinstance(pq, faiss.ProductQuantizer):
        yield "product quantizer", pq.cp, pq.ksub


def _warn_few_training_points(
    index: faiss.Index, n: int, rotations: Sequence[faiss.ProductQuantizer] = ()
) -> None:
    """One warning through logging (``-q`` keeps it, the log format holds it) where FAISS
    would print its own to stderr once per k-means, eight lines for a ``PQ8``."""
    for name, cp, k in _clusterings(index, rotations):
        advised = k * cp.min_points_per_centroid
        if k <= n < advised:  # fewer than k fails training with FAISS's own reason
            log.warning(
                "training the %s (%d centroids) on %d vectors; FAISS advises at least %d, "
                "so its lists or codes may fit the catalog poorly",
                name,
                k,
                n,
                advised,
            )
        cp.min_points_per_centroid = 1  # FAISS's own warning is the one above


def add(
    index: faiss.Index,
    xb: np.ndarray,
    fids: np.ndarray,
    rows: np.ndarray | None = None,
    progress: Any = None,
) -> None:
    """Add ``xb[rows]`` (all rows by default) under ``fids[rows]``, in chunks.

    Large adds to an IVF index with an HNSW coarse quantizer assign vectors to lists with an
    exact flat copy of the centroids (a matrix product, faster than graph searches and never
    wrong). ``progress`` is an optional tqdm bar, advanced per chunk.
    """
    chunk = 65_536
    n = len(xb) if rows is None else len(rows)
    if n < 1000:  # a small add is no work for threads, but waking them can cost milliseconds
        with omp_threads(1):
            _add_chunks(index, xb, fids, rows, n, chunk, None, progress)
    else:
        assigner = _flat_assigner(index) if n >= 10_000 else None
        _add_chunks(index, xb, fids, rows, n, chunk, assigner, progress)


def _add_chunks(
    index: faiss.Index,
    xb: np.ndarray,
    fids: np.ndarray,
    rows: np.ndarray | None,
    n: int,
    chunk: int,
    assigner: faiss.Index | None,
    progress: Any,
) -> None:
    for start in range(0, n, chunk):
        if rows is None:
            part, ids = xb[start : start + chunk], fids[start : start + chunk]
        else:
            sel = rows[start : start + chunk]
            part, ids = xb[sel], fids[sel]
        part = np.ascontiguousarray(part, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if assigner is None:
            index.add_with_ids(part, ids)
        else:
            _, lists = assigner.search(part, 1)
            lists = np.ascontiguousarray(lists[:, 0], dtype=np.int64)
            index.add_core(
                len(part), faiss.swig_ptr(part), faiss.swig_ptr(ids), faiss.swig_ptr(lists)
            )
        if progress is not None:
            progress.update(len(part))


def _flat_assigner(index: faiss.Index) -> faiss.Index | None:
    if not isinstance(index, faiss.IndexIVF) or isinstance(index.quantizer, faiss.IndexFlat):
        return None
    quantizer = faiss.downcast_index(index.quantizer)
    if isinstance(quantizer, faiss.IndexFlat):
        return None
    flat = faiss.IndexFlat(index.d, index.metric_type)
    flat.add(quantizer.reconstruct_n(0, index.nlist))
    return flat


def remove(index: faiss.Index, fids: np.ndarray) -> bool:
    """Delete vectors by fid; False (nothing done) where the kind cannot remove."""
    if not supports_remove(index) or len(fids) == 0:
        return False
    arr = np.ascontiguousarray(fids, dtype=np.int64)
    if isinstance(unwrap(index), faiss.IndexIVF):
        # IVF looks each id up in its direct map when given an array: m lookups.
        selector = faiss.IDSelectorArray(len(arr), faiss.swig_ptr(arr))
    else:
        # Flat and the like test every stored id against the selector: an array is a linear
        # scan each time (removing 200,000 of 200,000 took 9.95 s), a batch a hash lookup.
        selector = faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr))
    removed = index.remove_ids(selector)
    if removed != len(arr):
        raise IndexCorruptError(f"FAISS removed {removed} of {len(arr)} vectors")
    return True


def reconstruct(index: faiss.Index, fids: np.ndarray) -> np.ndarray:
    """Stored vectors of ``fids`` (n x d float32; approximate for compressed kinds).

    Read in batches of 1000, below FAISS's threshold for an OpenMP region: a copy this small
    gains nothing from threads, and on a busy machine waking them costs milliseconds.
    """
    arr = np.ascontiguousarray(fids, dtype=np.int64)
    if len(arr) == 0:
        return np.zeros((0, index.d), np.float32)
    out = np.empty((len(arr), index.d), dtype=np.float32)
    try:
        for i in range(0, len(arr), 1000):
            index.reconstruct_batch(arr[i : i + 1000], out[i : i + 1000])
    except RuntimeError as exc:
        raise IndexCorruptError(
            f"cannot read vectors back from the FAISS index: {faiss_reason(exc)}"
        ) from exc
    return out


@contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Run this thread's FAISS calls with ``n`` OpenMP threads (a per-thread setting)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def write(index: faiss.Index, path: str | Path) -> None:
    """Write the index file atomically (temporary name, fsync, rename, fsync folder). A
    failed write (a full disk) is an ``OSError`` naming the file, as any other file's."""

    def write_to(tmp: Path) -> None:
        # Through Python's file, not FAISS's own writer: that one only printed a failed close
        # ("close error: No space left on device") and returned, and a compaction then
        # committed the short file as the snapshot and deleted the one before it.
        written = 0
        with open(tmp, "wb") as fh:

            def put(chunk: bytes) -> None:
                nonlocal written
                fh.write(chunk)
                written += len(chunk)

            try:
                faiss.write_index(index, faiss.PyCallbackIOWriter(put))
            except RuntimeError as exc:  # FAISS's own: "... write error ...: 4014 != N (REASON)"
                said = _WRITE_FAILURE.search(str(exc))
                raise OSError(errno.EIO, said[1] if said else str(exc), str(path)) from exc
        size = tmp.stat().st_size
        if size != written:
            raise OSError(errno.EIO, f"wrote {written} bytes but the file holds {size}", str(path))

    atomic_write(path, write_to)


_WRITE_FAILURE = re.compile(r"\(([^()]+)\)\s*$")


def check_file(path: str | Path) -> int:
    """The dimension of the FAISS file at ``path``; :class:`IndexCorruptError` when it
    cannot be read. Its vectors are mapped, not loaded (``IO_FLAG_MMAP_IFC``: a 782 MB Flat
    file in 0.01 s, against 0.41 s with ``IO_FLAG_MMAP``, which reads Flat and HNSW whole; a
    review measured 41 MB against 841 MB resident); a kind FAISS cannot map, or a damaged
    file, is read whole to tell."""
    try:
        return int(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC).d)
    except RuntimeError:
        return int(read(path).d)


def read(path: str | Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexCorruptError(f"{path}: cannot read FAISS index: {faiss_reason(exc)}") from exc
