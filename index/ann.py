"""The FAISS side: index kinds, training, ids, removal, search parameters and their tuning.

Every index stores unit vectors under the inner-product metric (cosine similarity) and carries
the catalog store's int64 ids (``fid``): IVF indexes natively (with a hash-table direct map, so
vectors can be reconstructed and removed), every other kind inside ``IndexIDMap2``.

Kinds:

- ``flat``: exact search (``IDMap2,Flat``). Chosen by ``auto`` below :data:`AUTO_FLAT_MAX` items.
- ``ivf``: inverted file with full vectors, ``IVF{nlist},Flat`` with an HNSW coarse quantizer
  from 1024 lists up. Builds in minutes at 1M x 512 on two cores, supports removal, and its
  ``nprobe`` is tuned at build time. Chosen by ``auto`` from :data:`AUTO_FLAT_MAX` items up.
- ``hnsw``: ``HNSW32`` graph. Fast queries but slow builds at millions of items and no physical
  removal (removed items are hidden and skipped until the next rebuild).
- any other string: a FAISS ``index_factory`` string, for experts.
"""

# ruff: noqa: E741  (faiss vocabulary: D and I are scores and ids)

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common.fsutil import atomic_write
from index.errors import IndexCorruptError, InvalidKindError, InvalidParamsError
from index.evaluation import knn_ground_truth, recall_at_k

log = logging.getLogger(__name__)

AUTO_FLAT_MAX = 50_000
KINDS = ("auto", "flat", "ivf", "hnsw")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
TRAIN_POINTS_PER_LIST = 40
KMEANS_ITERATIONS = 10
TUNING_MARGIN = 0.01
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_PARAM_NAMES = {"nprobe", "efSearch", "k_factor", "quantizer_efSearch"}


def ivf_nlist(n: int) -> int:
    """Lists for an IVF index of ``n`` vectors: the power of two nearest ``2 * sqrt(n)``,
    at most ``n / 40`` (k-means needs ~40 training points per list), at least 1.

    k-means costs grow with the square of the list count (points x centroids), so 2048 lists
    at 1M vectors train in a quarter of the time of 4096, for slightly longer lists to scan.
    """
    target = max(1.0, 2.0 * math.sqrt(max(n, 1)))
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and nlist * TRAIN_POINTS_PER_LIST > n:
        nlist //= 2
    return int(nlist)


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
        quantizer = "_HNSW32" if nlist >= 1024 else ""
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
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "error"
        raise InvalidKindError(
            f"cannot build FAISS index {factory!r} (dimension {dim}): {msg}; use one of "
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


def _inner(index: faiss.Index) -> faiss.Index:
    """The index under ``IDMap``/``IDMap2``/``PreTransform`` wrappers."""
    while True:
        if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        else:
            return index


def supports_remove(index: faiss.Index) -> bool:
    """Whether ``remove_ids`` physically deletes vectors and keeps the id mapping right."""
    if isinstance(index, faiss.IndexIVF):
        return True
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
    try:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as exc:
        raise InvalidKindError(f"cannot train the index on {len(sample)} vectors: {exc}") from exc


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
    removed = index.remove_ids(faiss.IDSelectorArray(len(arr), faiss.swig_ptr(arr)))
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
        raise IndexCorruptError(f"cannot read vectors back from the FAISS index: {exc}") from exc
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


def tunable_param(index: faiss.Index) -> str | None:
    """The speed/recall knob of this index: ``nprobe``, ``efSearch`` or None (exact)."""
    core = _inner(index)
    if isinstance(core, faiss.IndexRefine):
        core = _inner(faiss.downcast_index(core.base_index))
    if isinstance(core, faiss.IndexIVF):
        return "nprobe"
    if isinstance(core, faiss.IndexHNSW):
        return "efSearch"
    return None


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidParamsError(f"search parameter {name!r} must be a positive integer: {value!r}")
    return int(value)


def search_params(
    index: faiss.Index, params: Mapping[str, Any] | None, sel: Any = None
) -> tuple[Any, list]:
    """FAISS ``SearchParameters`` for ``params``, plus objects that must outlive the search.

    Known names: ``nprobe`` (IVF), ``quantizer_efSearch`` (IVF with HNSW quantizer),
    ``efSearch`` (HNSW), ``k_factor`` (refine). A name the index does not use is an error.
    ``sel`` (an ``IDSelector``, for kinds where :func:`selector_kind` is not None) restricts
    the search to the ids it selects.
    """
    unknown = sorted(set(params or {}) - _PARAM_NAMES)
    if unknown:
        raise InvalidParamsError(
            f"unknown search parameter(s) {', '.join(unknown)}; known: "
            + ", ".join(sorted(_PARAM_NAMES))
        )
    if not params and sel is None:
        return None, []
    sp, keep = _params_for(_inner(index), dict(params or {}))
    if sel is not None:
        if sp is None:
            sp = faiss.SearchParameters()
        sp.sel = sel
        keep.append(sel)
    return sp, keep


def selector_kind(index: faiss.Index) -> str | None:
    """``flat``, ``ivf`` or ``hnsw`` when FAISS can restrict a search of ``index`` to selected
    ids (``SearchParameters.sel``); None for other factory kinds, which over-fetch instead."""
    if isinstance(index, faiss.IndexIVF):
        return None if isinstance(index, faiss.IndexIVFFastScan) else "ivf"
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if type(inner) in (faiss.IndexFlat, faiss.IndexFlatIP):
            return "flat"
        if isinstance(inner, faiss.IndexHNSWFlat):
            return "hnsw"
    return None


def widen(index: faiss.Index, params: Mapping[str, Any], fraction: float) -> dict[str, Any]:
    """Search parameters for a filtered search where ``fraction`` of the items qualify.

    The nearest qualifying items can lie far from the query (a filter on another brand than
    the photo's), so IVF probes ``1/fraction**2`` times more lists; with the selector skipping
    the other items it computes ``1/fraction`` times the distances of an unfiltered search.
    HNSW widens ``efSearch`` by ``1/fraction``, at most 4x, as its cost grows with it.
    """
    fraction = min(1.0, max(fraction, 1e-9))
    out = dict(params)
    if fraction >= 1.0:
        return out
    if "nprobe" in out:
        nlist = faiss.extract_index_ivf(index).nlist
        out["nprobe"] = min(nlist, math.ceil(out["nprobe"] / fraction**2))
    if "efSearch" in out:
        out["efSearch"] = math.ceil(out["efSearch"] * min(1.0 / fraction, 4.0))
    return out


def search_all_lists(index: faiss.IndexIVF, xq: np.ndarray, k: int, sel: Any) -> tuple:
    """Exact search of an IVF index restricted to ``sel``: every list, no coarse quantizer."""
    nq, nlist = len(xq), index.nlist
    sp = faiss.SearchParametersIVF()
    sp.nprobe = nlist
    if sel is not None:
        sp.sel = sel
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    assign = np.ascontiguousarray(np.broadcast_to(np.arange(nlist, dtype=np.int64), (nq, nlist)))
    coarse = np.zeros((nq, nlist), dtype=np.float32)
    x = np.ascontiguousarray(xq, dtype=np.float32)
    # the Python wrapper of search_preassigned drops params; call the C++ method directly
    index.search_preassigned_c(
        nq,
        faiss.swig_ptr(x),
        k,
        faiss.swig_ptr(assign),
        faiss.swig_ptr(coarse),
        faiss.swig_ptr(D),
        faiss.swig_ptr(I),
        False,
        sp,
    )
    return D, I


def bitmap_selector(fids: np.ndarray, size: int) -> tuple[Any, np.ndarray]:
    """An ``IDSelectorBitmap`` selecting ``fids`` (all < ``size``), and its buffer to keep."""
    mask = np.zeros(max(size, 1), dtype=bool)
    mask[fids] = True
    bitmap = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


def not_selector(fids: np.ndarray) -> tuple[Any, list]:
    """An ``IDSelector`` selecting every id except ``fids``, and the objects to keep."""
    arr = np.ascontiguousarray(fids, dtype=np.int64)
    inner = faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr))
    return faiss.IDSelectorNot(inner), [inner, arr]


def _params_for(core: faiss.Index, params: dict[str, Any]) -> tuple[Any, list]:
    keep: list = []
    if isinstance(core, faiss.IndexRefine):
        sp = faiss.IndexRefineSearchParameters()
        if "k_factor" in params:
            k_factor = params.pop("k_factor")
            if not isinstance(k_factor, int | float) or k_factor < 1:
                raise InvalidParamsError(f"k_factor must be a number >= 1: {k_factor!r}")
            sp.k_factor = float(k_factor)
        base, keep = _params_for(_inner(faiss.downcast_index(core.base_index)), params)
        if base is not None:
            sp.base_index_params = base
            keep.append(base)
        return sp, keep
    if isinstance(core, faiss.IndexIVF):
        sp = faiss.SearchParametersIVF()
        if "nprobe" in params:
            sp.nprobe = _positive_int("nprobe", params.pop("nprobe"))
        else:
            sp.nprobe = core.nprobe
        quantizer = faiss.downcast_index(core.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            # the graph must explore well beyond nprobe lists to find the nprobe nearest
            ef = params.pop("quantizer_efSearch", max(quantizer.hnsw.efSearch, 2 * sp.nprobe))
            qp = faiss.SearchParametersHNSW()
            qp.efSearch = _positive_int("quantizer_efSearch", ef)
            sp.quantizer_params = qp
            keep.append(qp)
        elif "quantizer_efSearch" in params:
            raise InvalidParamsError("quantizer_efSearch needs an HNSW coarse quantizer")
    elif isinstance(core, faiss.IndexHNSW):
        sp = faiss.SearchParametersHNSW()
        ef = params.pop("efSearch", core.hnsw.efSearch)
        sp.efSearch = _positive_int("efSearch", ef)
    else:
        sp = None
    if params:
        raise InvalidParamsError(
            f"search parameter(s) {', '.join(sorted(params))} do not apply to a "
            f"{type(core).__name__} index"
        )
    return sp, keep


def tuning_split(n: int, n_queries: int = 500, seed: int = 4321) -> np.ndarray:
    """Rows held out of the index while tuning, to serve as queries (empty if too few)."""
    m = min(n_queries, n // 10)
    if m < 20:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


def tune(
    index: faiss.Index,
    xb: np.ndarray,
    fids: np.ndarray,
    held: np.ndarray,
    k: int = 10,
    target_recall: float = 0.95,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Pick the smallest ``nprobe``/``efSearch`` whose recall@k reaches the target.

    ``index`` holds ``xb`` under ``fids`` except the rows ``held``, which serve as queries: held
    out of the build until tuning is done, they behave like new photos of catalogued phones.
    The goal is ``target_recall + TUNING_MARGIN``, the margin covering sampling noise.
    Returns ``(search_defaults, tuning report)``; both empty for exact kinds.
    """
    name = tunable_param(index)
    if name is None or len(held) == 0 or len(xb) - len(held) <= k:
        return {}, {}
    goal = min(1.0, target_recall + TUNING_MARGIN)
    xq = np.ascontiguousarray(xb[held], dtype=np.float32)
    # exact neighbours among the indexed rows: search all rows, drop the held-out ones
    _, I_rows = knn_ground_truth(xq, xb, k + len(held))
    is_held = np.zeros(len(xb), dtype=bool)
    is_held[held] = True
    I_gt = np.stack([row[~is_held[row]][:k] for row in I_rows])
    I_gt = fids[I_gt]
    if name == "nprobe":
        grid = [v for v in NPROBE_GRID if v <= faiss.extract_index_ivf(index).nlist]
    else:
        grid = list(EF_SEARCH_GRID)
    best, curve = grid[-1], []
    for value in grid:
        sp, _keep = search_params(index, {name: value})
        _, I = index.search(xq, k, params=sp)
        recall = recall_at_k(I, I_gt, k)
        curve.append((value, round(recall, 4)))
        if recall >= goal:
            best = value
            break
    else:
        log.warning("recall %.3f not reached at %s=%d; using it anyway", goal, name, best)
    report = {
        "param": name,
        "value": best,
        "target_recall": target_recall,
        "tuned_for": goal,
        "recall": curve[-1][1],
        "k": k,
        "queries": len(xq),
        "curve": curve,
    }
    log.info(
        "tuned %s=%d: recall@%d %.3f on %d held-out catalog vectors",
        name,
        best,
        k,
        curve[-1][1],
        len(xq),
    )
    return {name: best}, report


def write(index: faiss.Index, path: str | Path) -> None:
    """Write the index file atomically (temporary name, fsync, rename, fsync folder)."""
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))


def read(path: str | Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexCorruptError(f"{path}: cannot read FAISS index: {exc}") from exc
