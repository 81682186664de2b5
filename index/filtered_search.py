"""Filtered k-NN over one FAISS index: free functions on numpy arrays, in faiss vocabulary.

``xq``: queries (nq x d, unit rows), ``k``: neighbours wanted, ``D``/``I``: scores and ids
(nq x k), best first; a row with fewer than ``k`` results is padded with id -1. Ids are the
catalog's ``fid``s. A filter arrives as ``allowed`` (the sorted ids it matches, None for no
filter), ``exclude_ids`` as ``excluded`` (sorted ids); :class:`Live` says what else the plan
needs to know of the catalog.

The plan: flat, IVF and HNSW indexes take the candidates as a FAISS id selector (a bitmap for
filters, a negated set for exclusions and hidden removed items). A filter matching at most
``exact_limit`` items is searched exactly; a broader one approximately. IVF probes the lists
holding matches in rounds until each query's top ``k`` settles (:mod:`index.ivf_probe`), so a
filter whose matches lie far from the query (another brand than the photo's) probes as far as
it takes; HNSW widens ``efSearch`` by the selectivity, and a query whose answer reaches past
the graph's neighbourhood of it is searched exactly over the matches. A query the approximate
search leaves short is re-run exactly. Other kinds over-fetch, filter and retry.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from index.ann import reconstruct
from index.errors import InvalidParamsError
from index.ivf_probe import ivf_list_counts, probe_until_settled, search_lists
from index.tuning import search_params

log = logging.getLogger(__name__)

NO_IDS = np.zeros(0, np.int64)


@dataclass(frozen=True)
class Live:
    """The catalog's live items, as far as a search plan needs them.

    ``n``: how many; ``fids``: their sorted ids, called only when a plan needs them all;
    ``id_bound``: every id is below it; ``hidden``: sorted ids still in a FAISS kind that cannot
    delete but removed from the catalog, never to be returned.
    """

    n: int
    fids: Callable[[], np.ndarray]
    id_bound: int
    hidden: np.ndarray = field(default_factory=lambda: NO_IDS)


class SearchCache:
    """FAISS objects reused between searches of one loaded index: search parameters without
    a selector (building them costs ~0.1 ms) and the bitmap selectors of recent filters."""

    def __init__(self) -> None:
        self._params: dict[tuple, tuple[Any, list]] = {}
        self._bitmaps: list[tuple[np.ndarray, Any, np.ndarray]] = []
        self._counts: list[tuple[np.ndarray, np.ndarray]] = []
        self._centroids: np.ndarray | None = None
        self._hidden: tuple[np.ndarray, Any, list] | None = None
        self._lock = threading.Lock()

    def params(self, index: faiss.Index, params: Mapping[str, Any]) -> Any:
        """``SearchParameters`` for ``params`` (validated: bad names or values raise)."""
        key = tuple(sorted(params.items()))
        try:
            cached = self._params.get(key)
        except TypeError:
            raise InvalidParamsError(f"search parameters must be integers: {params!r}") from None
        if cached is None:
            cached = search_params(index, params)
            if len(self._params) > 64:
                self._params.clear()
            self._params[key] = cached
        return cached[0]

    def bitmap(self, cand: np.ndarray, key: np.ndarray | None, size: int) -> tuple[Any, np.ndarray]:
        """A bitmap selector of ``cand``, reused while the caller passes the same array ``key``
        (the catalog store's cached filter result, which lives until the next write)."""
        with self._lock:
            for arr, sel, bitmap in self._bitmaps:
                if arr is key:
                    return sel, bitmap
        sel, bitmap = bitmap_selector(cand, size)
        if key is not None:
            with self._lock:
                self._bitmaps = [*self._bitmaps[-15:], (key, sel, bitmap)]
        return sel, bitmap

    def list_counts(self, index: faiss.IndexIVF, allowed: np.ndarray, size: int) -> np.ndarray:
        """Matching items per IVF list, reused while the caller passes the same ``allowed``
        (which, like the bitmaps', lives until the next write changes the lists)."""
        with self._lock:
            for arr, counts in self._counts:
                if arr is allowed:
                    return counts
        counts = ivf_list_counts(index, allowed, size)
        with self._lock:
            self._counts = [*self._counts[-15:], (allowed, counts)]
        return counts

    def hidden_selector(self, hidden: np.ndarray) -> tuple[Any, list]:
        """The selector of every id but ``hidden`` (and the objects to keep), reused while the
        replica holds the same array: a removal makes a new one. Built per search, it cost
        16 ms at 40,000 removed items, doubling a search of 80,000."""
        with self._lock:
            if self._hidden is not None and self._hidden[0] is hidden:
                return self._hidden[1], self._hidden[2]
        sel, objs = not_selector(hidden)
        with self._lock:
            self._hidden = (hidden, sel, objs)
        return sel, objs

    def centroids(self, index: faiss.IndexIVF) -> np.ndarray:
        """The IVF centroids (nlist x d); fixed once trained, so kept for the loaded index."""
        if self._centroids is None:
            self._centroids = index.quantizer.reconstruct_n(0, index.nlist)
        return self._centroids


def knn_search(
    index: faiss.Index,
    xq: np.ndarray,
    k: int,
    live: Live,
    *,
    params: Mapping[str, Any],
    allowed: np.ndarray | None = None,
    excluded: np.ndarray = NO_IDS,
    exact_limit: int = 50_000,
    cache: SearchCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``D, I`` of the best ``k`` allowed, non-excluded live items per query (see the module
    docstring for the plan). ``k`` above the number of candidates is cut down to it;
    ``excluded`` ids need not be allowed or live."""
    cache = cache or SearchCache()
    if allowed is not None:
        excluded = np.intersect1d(excluded, allowed, assume_unique=True)
        n_cand = len(allowed) - len(excluded)
    else:
        n_cand = live.n - len(excluded)
    k = min(k, n_cand)
    if k <= 0:
        return np.zeros((len(xq), 0), np.float32), np.zeros((len(xq), 0), np.int64)
    how = selector_kind(index)
    if how is None:
        return _overfetch(index, xq, k, live, params, allowed, excluded, exact_limit)
    keep: list[Any] = []  # FAISS objects the search reads through raw pointers
    cand = None
    if allowed is not None:
        cand = np.setdiff1d(allowed, excluded, assume_unique=True)
        sel, bitmap = cache.bitmap(cand, allowed if len(excluded) == 0 else None, live.id_bound)
        keep.append(bitmap)
        if n_cand <= exact_limit:
            return _exact_selected(index, xq, k, how, sel, cand)
        if how == "ivf":
            counts = cache.list_counts(index, allowed, live.id_bound)
            # the first round scans as many matches as an unfiltered search scans items
            first = cache.params(index, params).nprobe * live.n / index.nlist
            D, I = probe_until_settled(index, xq, k, sel, counts, cache.centroids(index), first)
            return _finish_short(index, xq, k, D, I, how, sel, cand)
        params = widen(index, params, n_cand / max(live.n, 1))
        if how == "hnsw":
            D, I = hnsw_filtered(index, xq, k, sel, cand, params, cache)
            return _finish_short(index, xq, k, D, I, how, sel, cand)
    elif len(excluded):
        sel, objs = not_selector(np.union1d(excluded, live.hidden))
        keep += objs
    elif len(live.hidden):
        sel, objs = cache.hidden_selector(live.hidden)
        keep += objs
    else:
        sel = None
    if sel is None:
        sp = cache.params(index, params)
    else:
        sp, objs = search_params(index, params, sel=sel)
        keep += objs
    D, I = index.search(xq, k, params=sp)
    if cand is None and how == "hnsw" and (I < 0).any():
        cand = np.setdiff1d(live.fids(), excluded, assume_unique=True)
    return _finish_short(index, xq, k, D, I, how, sel, cand)


# A filtered HNSW search walks the graph toward the query, so it finds the matches near the
# query well and the matches away from it (a brand other than the photo's) hardly at all: at
# 300,000 items and a brand of 20 % away from the query, recall@10 0.67 at 4x efSearch. Its
# walk explores the ``efSearch`` nearest items of any kind, so it walks at least ``2 k /
# share`` (where the k-th match falls when matches are spread evenly; at most HNSW_MAX_REACH),
# and its answer is trusted when its k-th hit lies among the nearest items of any kind that
# an unfiltered walk of the same width finds reliably (HNSW_TRUSTED_PART). A query whose
# answer reaches past them is searched exactly over the matches, scanning the graph's own
# vector storage (no copy), when that reads at most HNSW_EXACT_FLOATS floats (256M: 200,000
# matches at d = 1280, 500,000 at d = 512); beyond, once more at 4x efSearch.
HNSW_MAX_REACH = 2048
# The answer is trusted within the first 1/HNSW_TRUSTED_PART of that width (bench_index's
# clustered 50,000 x 512, 20 % filters, efSearch 95-101: recall@10 0.810 and 0.814 when
# trusted to the walk's last place, 0.998 and 1.000 to its first quarter; 145 and 169 of
# 200 queries then searched exactly).
HNSW_TRUSTED_PART = 4
HNSW_EXACT_FLOATS = 256_000_000
# From this many far queries in one call, exact_knn answers them (100k x 512, half matching:
# 1 query 6.7 ms scanned against 17.0, 8 even, 16 51.3 against 40.5, 32 99.3 against 66.3).
HNSW_SCAN_QUERIES = 16


def hnsw_filtered(
    index: faiss.Index,
    xq: np.ndarray,
    k: int,
    sel: Any,
    cand: np.ndarray,
    params: Mapping[str, Any],
    cache: SearchCache,
) -> tuple[np.ndarray, np.ndarray]:
    """``D, I`` of a filtered HNSW search (``sel`` selects ``cand``), with the queries whose
    matches lie away from them searched again (see :data:`HNSW_EXACT_FLOATS`)."""
    share = len(cand) / max(index.ntotal, 1)
    ef = int(cache.params(index, params).efSearch)
    ef = max(ef, min(math.ceil(2 * k / share), HNSW_MAX_REACH))
    walk = {**params, "efSearch": ef}
    sp, keep = search_params(index, walk, sel=sel)
    D, I = index.search(xq, k, params=sp)
    reach = max(ef, k)  # FAISS walks max(efSearch, k) wide
    D_near, I_near = index.search(xq, reach, params=cache.params(index, walk))
    # The walk's list is exact near its head only: its last places miss items nearer than
    # them, and a filtered answer reaching there missed matches as well.
    p = max(k, reach // HNSW_TRUSTED_PART) - 1
    edge = np.where(I_near[:, p] >= 0, D_near[:, p], -np.inf)  # fewer items: no edge
    far = np.flatnonzero((I[:, k - 1] >= 0) & (D[:, k - 1] < edge))
    if len(far) == 0:
        return D, I
    if len(cand) * index.d <= HNSW_EXACT_FLOATS:
        log.debug("%d filtered HNSW queries reach past the graph's reach: exact", len(far))
        # The storage scan takes one query at a time; many at once go faster as one product
        # of matrices over the matches' vectors, read back in chunks.
        exact = hnsw_storage_knn if len(far) < HNSW_SCAN_QUERIES else exact_knn
        D[far], I[far] = exact(index, xq[far], k, cand)
    else:
        log.debug("%d filtered HNSW queries reach past the graph's reach: wider", len(far))
        wider = {**params, "efSearch": 4 * int(sp.efSearch)}
        sp, keep = search_params(index, wider, sel=sel)
        D[far], I[far] = index.search(xq[far], k, params=sp)
    del keep  # the selector's FAISS objects lived through the searches
    return D, I


def hnsw_storage_knn(
    index: faiss.IndexIDMap2, xq: np.ndarray, k: int, cand: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``D, I`` among the ids ``cand`` of an ``IDMap2,HNSW…Flat`` index, scanning its
    flat vector storage with a selector of their positions: nothing is copied, and the cost
    is one inner product per match (where :func:`exact_knn` copies each match's vector)."""
    ids = faiss.vector_to_array(index.id_map)  # position -> id (removed items included)
    top = max(int(ids.max()) if len(ids) else 0, int(cand.max()) if len(cand) else 0)
    wanted = np.zeros(top + 1, dtype=bool)
    wanted[cand] = True
    bitmap = np.packbits(wanted[ids], bitorder="little")
    params = faiss.SearchParameters()
    params.sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
    storage = faiss.downcast_index(faiss.downcast_index(index.index).storage)
    D, I = storage.search(xq, k, params=params)
    found = I >= 0  # fewer matches than k: padded as exact_knn pads
    return np.where(found, D, -np.inf).astype(np.float32), np.where(
        found, ids[np.maximum(I, 0)], -1
    )


# How far past ``k`` a tie at the k-th place is fetched: more than any page the server serves
# (k + offset <= 1,100), and a bound on the cost of a photo copied thousands of times.
TIE_REACH = 1024


def in_tie_order(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], nq: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of ``search(rows, n)`` (``D, I`` of the best ``n`` for those query rows)
    per query, ordered by score and equal scores by id.

    A k-NN search orders equal scores (copies of one photo) arbitrarily, and which of them
    make the cut can change with ``k``: pages of ``k + offset`` then repeat some and never
    reach others. So the queries whose tie at the ``k``-th place may go on are searched
    again, wider, until it is whole or ``TIE_REACH`` past ``k`` (beyond that the order holds
    within what was fetched).
    """
    rows = np.arange(nq)
    D, I = search(rows, k + 1)
    kept = min(k, D.shape[1])  # the search cuts k down to the candidates there are
    D_out = np.full((nq, kept), -np.inf, np.float32)
    I_out = np.full((nq, kept), -1, np.int64)
    n = k + 1
    while True:
        order = np.lexsort((I, -D, I < 0), axis=1)  # the last key sorts first: padding last
        width = min(kept, D.shape[1])
        D_out[rows, :width] = np.take_along_axis(D, order, axis=1)[:, :width]
        I_out[rows, :width] = np.take_along_axis(I, order, axis=1)[:, :width]
        if D.shape[1] < n or n >= k + TIE_REACH:  # every candidate is in, or far enough
            break
        still = (I[:, -1] >= 0) & (D[:, -1] >= D[:, k - 1])
        if not still.any():
            break
        rows, n = rows[still], min(2 * n, k + TIE_REACH)
        D, I = search(rows, n)
    return D_out, I_out


def _finish_short(
    index: faiss.Index,
    xq: np.ndarray,
    k: int,
    D: np.ndarray,
    I: np.ndarray,
    how: str,
    sel: Any,
    cand: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``D, I`` with the queries the approximate search left short re-run exactly."""
    short = np.flatnonzero((I < 0).any(axis=1))
    if len(short):
        log.debug("%d queries fall back to exact search", len(short))
        D[short], I[short] = _exact_selected(index, xq[short], k, how, sel, cand)
    return D, I


def exact_knn(
    index: faiss.Index, xq: np.ndarray, k: int, cand: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``D, I`` among the ids ``cand``, reading their vectors back from ``index``."""
    nq = len(xq)
    best_s = np.zeros((nq, 0), np.float32)
    best_f = np.zeros((nq, 0), np.int64)
    kc = min(k, len(cand))
    for start in range(0, len(cand), 65_536):
        fids = cand[start : start + 65_536]
        D, I = faiss.knn(
            xq, reconstruct(index, fids), min(kc, len(fids)), faiss.METRIC_INNER_PRODUCT
        )
        best_s = np.concatenate([best_s, D], axis=1)
        best_f = np.concatenate([best_f, fids[I]], axis=1)
        if best_s.shape[1] > kc:
            top = np.argpartition(-best_s, kc - 1, axis=1)[:, :kc]
            best_s = np.take_along_axis(best_s, top, axis=1)
            best_f = np.take_along_axis(best_f, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    D[:, :kc] = np.take_along_axis(best_s, order, axis=1)
    I[:, :kc] = np.take_along_axis(best_f, order, axis=1)
    return D, I


def _exact_selected(
    index: faiss.Index, xq: np.ndarray, k: int, how: str, sel: Any, cand: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` among the ids ``sel`` selects (``cand`` lists them, or None: all).

    IVF scans every list, checking each id against ``sel``, unless the candidates are few
    (at most 1 % of the items) and the index maps ids to vectors: reading those vectors back
    is then cheaper (at 300k items: 0.4 ms against 4 ms for 1,000 candidates).
    """
    if how == "flat":
        sp, _keep = search_params(index, None, sel=sel)
        return index.search(xq, k, params=sp)
    if how == "ivf":
        mapped = faiss.extract_index_ivf(index).direct_map.type != faiss.DirectMap.NoMap
        if cand is not None and mapped and len(cand) * 100 <= index.ntotal:
            return exact_knn(index, xq, k, cand)
        return search_all_lists(index, xq, k, sel)
    assert cand is not None
    return exact_knn(index, xq, k, cand)


def _overfetch(
    index: faiss.Index,
    xq: np.ndarray,
    k: int,
    live: Live,
    params: Mapping[str, Any],
    allowed: np.ndarray | None,
    excluded: np.ndarray,
    exact_limit: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The plan for kinds without id selectors: over-fetch, filter, retry, then exact.

    ``k`` is at most the number of candidates; ``excluded`` lies within ``allowed``.
    """
    if allowed is not None and len(allowed) <= exact_limit:
        return exact_knn(index, xq, k, np.setdiff1d(allowed, excluded, assume_unique=True))
    blocked = np.union1d(excluded, live.hidden)
    ntotal = index.ntotal
    if allowed is not None:  # over-fetch by the inverse of the filter's selectivity
        kk = math.ceil(1.5 * k * ntotal / max(len(allowed), 1)) + len(blocked)
    else:
        kk = k + len(blocked)
    kk = min(kk, ntotal)
    sp, _keep = search_params(index, params)
    D_out = np.full((len(xq), k), -np.inf, np.float32)
    I_out = np.full((len(xq), k), -1, np.int64)
    pending = np.arange(len(xq))
    exhausted: list[int] = []
    while len(pending):
        D, I = index.search(xq[pending], kk, params=sp)
        ok = I >= 0
        if allowed is not None:
            ok &= np.isin(I, allowed)
        if len(blocked):
            ok &= ~np.isin(I, blocked)
        retry = []
        for row, q in enumerate(pending.tolist()):
            sel = np.flatnonzero(ok[row])
            if len(sel) >= k:
                D_out[q], I_out[q] = D[row, sel[:k]], I[row, sel[:k]]
            elif kk >= ntotal or (I[row] < 0).any():  # the approximate search ran dry
                exhausted.append(q)
            else:
                retry.append(q)
        pending = np.array(retry, dtype=np.int64)
        kk = min(ntotal, kk * 4)
    if exhausted:
        log.debug("%d queries fall back to exact search", len(exhausted))
        cand = live.fids() if allowed is None else allowed
        cand = np.setdiff1d(cand, excluded, assume_unique=True)
        D_out[exhausted], I_out[exhausted] = exact_knn(index, xq[exhausted], k, cand)
    return D_out, I_out


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
    """Search parameters for a filtered HNSW search where ``fraction`` of the items qualify:
    ``efSearch`` widened by ``1/fraction``, at most 4x, as its cost grows with it; an answer
    that still reaches past the graph's neighbourhood of the query is searched again
    (:func:`hnsw_filtered`). (IVF plans filtered searches in :mod:`index.ivf_probe` instead.)"""
    fraction = min(1.0, max(fraction, 1e-9))
    out = dict(params)
    if fraction >= 1.0:
        return out
    if "efSearch" in out:
        out["efSearch"] = math.ceil(out["efSearch"] * min(1.0 / fraction, 4.0))
    return out


def search_all_lists(
    index: faiss.IndexIVF, xq: np.ndarray, k: int, sel: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of an IVF index restricted to ``sel``: every list, no coarse quantizer."""
    nq, nlist = len(xq), index.nlist
    assign = np.ascontiguousarray(np.broadcast_to(np.arange(nlist, dtype=np.int64), (nq, nlist)))
    return search_lists(index, xq, k, sel, assign)


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
