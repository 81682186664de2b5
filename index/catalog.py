"""``CatalogIndex``: k-NN search over a catalog of phones that can be updated while in use.

An index folder holds ``manifest.json`` (identity, see :mod:`index.manifest`), the catalog store
``catalog.sqlite`` (ids, metadata, journal, see :mod:`index.store`) and one FAISS file
``vectors-<seq>.faiss``: the vectors as of journal record ``<seq>``.

Durability: ``add`` and ``remove`` commit one SQLite transaction (fsynced) holding the metadata
change *and* a journal record with the vectors, then apply it to the in-memory FAISS index.
Opening replays the journal records newer than the FAISS file, so a change that returned
survives SIGKILL or power loss. :meth:`CatalogIndex.checkpoint` (automatic every
``checkpoint_every`` journaled vectors) writes a new FAISS file atomically, then commits its
name and truncates the journal in one transaction.

Concurrency: in one process, searches run in parallel and see an update either entirely or not
at all (readers-writer lock). One process at a time may open an index for writing (a ``flock``
on ``writer.lock``); any number may open it read-only, each pinning the snapshot it opened
until :meth:`CatalogIndex.refresh`.
"""

# ruff: noqa: E741  (faiss vocabulary: D and I are scores and ids)

from __future__ import annotations

import fcntl
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common.fsutil import folder_size, fsync_dir
from index import ann
from index.errors import (
    DuplicateIdError,
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    InvalidMetadataError,
    InvalidParamsError,
    ReadOnlyIndexError,
    UnknownIdError,
)
from index.manifest import Manifest, read_manifest, write_manifest
from index.rwlock import RWLock
from index.store import STORE_NAME, CatalogStore, clean_metadata
from index.vectors import prepare_ids, prepare_vectors

log = logging.getLogger(__name__)

LOCK_NAME = "writer.lock"
FAISS_PREFIX = "vectors-"
FAISS_SUFFIX = ".faiss"


def faiss_file_name(seq: int) -> str:
    return f"{FAISS_PREFIX}{seq:012d}{FAISS_SUFFIX}"


@dataclass(frozen=True)
class Hit:
    """One search result: catalog id, cosine similarity (higher is closer) and metadata."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    """One catalog item as stored: its id and metadata."""

    id: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexOptions:
    """Run-time settings of an opened index (not stored in the folder).

    ``checkpoint_every``: journaled vectors (added or removed) after which a write writes a new
    FAISS file and empties the journal. ``exact_filter_limit``: filters matching at most this
    many items are answered by exact search over just those items.
    """

    checkpoint_every: int = 50_000
    exact_filter_limit: int = 50_000


class CatalogIndex:
    """An opened index folder. Use :meth:`open` (or :func:`index.build.build_index`)."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        store: CatalogStore,
        *,
        readonly: bool,
        options: IndexOptions,
        lock_fd: int | None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.readonly = readonly
        self.options = options
        self._store = store
        self._lock_fd = lock_fd
        self._rw = RWLock()
        self._write_mutex = threading.Lock()
        self._index: faiss.Index | None = None
        self._closed = False
        self._count = 0
        self._next_fid = 0
        self._ck_file = ""
        self._ck_seq = 0
        self._applied_seq = 0
        self._pending = 0
        self._dead = np.zeros(0, np.int64)
        self._sp_cache: dict[tuple, tuple[Any, list]] = {}
        self._bitmaps: list[tuple[np.ndarray, Any, np.ndarray]] = []
        self._bitmap_lock = threading.Lock()

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        readonly: bool = False,
        expect_model: str | None = None,
        expect_checkpoint_hash: str | None = None,
        expect_dim: int | None = None,
        options: IndexOptions | None = None,
    ) -> CatalogIndex:
        """Open an index folder, checking it against the embedder that will query it.

        ``expect_*`` (None: not checked) must match the manifest, else
        :class:`~index.errors.IndexMismatchError` names each difference. ``readonly=True``
        takes no lock and pins a consistent snapshot; otherwise this process becomes the only
        writer (:class:`~index.errors.IndexLockedError` if another process is).
        """
        path = Path(path)
        manifest = read_manifest(path)
        manifest.check(
            expect_model=expect_model,
            expect_checkpoint_hash=expect_checkpoint_hash,
            expect_dim=expect_dim,
            where=f"index {path}",
        )
        if not (path / STORE_NAME).is_file():
            raise IndexNotFoundError(f"{path}: catalog store {STORE_NAME} is missing")
        lock_fd = None if readonly else lock_writer(path)
        store = None
        try:
            store = CatalogStore(path / STORE_NAME, readonly=readonly)
            self = cls(
                path,
                manifest,
                store,
                readonly=readonly,
                options=options or IndexOptions(),
                lock_fd=lock_fd,
            )
            self._load()
            if not readonly:
                self._remove_stale_files()
        except BaseException:
            if store is not None:
                store.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        log.debug("opened %s: %d items, kind %s", path, self._count, manifest.kind)
        return self

    def _load(self) -> None:
        """Load the checkpointed FAISS file and replay the journal, from one snapshot."""
        for attempt in range(5):
            self._store.begin_snapshot()
            try:
                ck_file = self._store.get_state("checkpoint_file")
                ck_seq = int(self._store.get_state("checkpoint_seq", "0") or 0)
                if not ck_file:
                    raise IndexCorruptError(f"{self.path}: catalog store names no FAISS file")
                if not (self.path / ck_file).is_file():
                    if attempt < 4:  # a writer checkpointed after our snapshot: take a new one
                        self._store.end_snapshot()
                        continue
                    raise IndexNotFoundError(f"{self.path}: FAISS file {ck_file} is missing")
                index = ann.read(self.path / ck_file)
                if index.d != self.manifest.dim:
                    raise IndexCorruptError(
                        f"{self.path / ck_file}: dimension {index.d}, manifest says "
                        f"{self.manifest.dim}"
                    )
                self._index = index
                self._sp_cache = {}
                self._ck_file, self._ck_seq = ck_file, ck_seq
                self._applied_seq, self._pending = ck_seq, 0
                self._dead = np.zeros(0, np.int64)
                self._replay()
                self._count = self._store.count()
                self._next_fid = int(self._store.get_state("next_fid", "0") or 0)
                self._find_dead()
                return
            finally:
                if not self.readonly:
                    self._store.end_snapshot()
        raise IndexNotFoundError(f"{self.path}: FAISS file vanished while opening")  # unreachable

    def _replay(self) -> None:
        replayed = 0
        for seq, op, fids, vectors in self._store.journal_records(
            self._applied_seq, self.manifest.dim
        ):
            if op == "add":
                assert vectors is not None
                ann.add(self._index, vectors, fids)
            elif op == "remove":
                if not ann.remove(self._index, fids):
                    self._dead = np.union1d(self._dead, fids)
            else:
                raise IndexCorruptError(f"journal record {seq} has unknown op {op!r}")
            self._applied_seq = seq
            self._pending += len(fids)
            replayed += 1
        if replayed:
            log.info("replayed %d journal record(s) in %s", replayed, self.path)

    def _find_dead(self) -> None:
        """Ids still in a FAISS kind that cannot delete, but removed from the catalog."""
        stored = None if ann.supports_remove(self._index) else ann.stored_fids(self._index)
        if stored is not None:
            self._dead = np.setdiff1d(stored, self._store.live_fids())
        if self._index.ntotal - len(self._dead) != self._count:
            raise IndexCorruptError(
                f"{self.path}: FAISS holds {self._index.ntotal - len(self._dead)} live vectors "
                f"but the catalog store {self._count} items; rebuild the index"
            )

    def _remove_stale_files(self) -> None:
        """Delete FAISS files from interrupted or superseded checkpoints."""
        removed = False
        for p in self.path.iterdir():
            stale_ckpt = p.name.startswith(FAISS_PREFIX) and p.name != self._ck_file
            if stale_ckpt or p.name.startswith(f".{FAISS_PREFIX}"):
                p.unlink(missing_ok=True)
                removed = True
        if removed:
            fsync_dir(self.path)

    def refresh(self) -> bool:
        """Move a read-only index to the latest committed state; True if anything changed."""
        with self._rw.write():
            self._check_open()
            before = (self._ck_file, self._applied_seq)
            if not self.readonly:
                return False
            self._store.end_snapshot()
            self._store.begin_snapshot()
            ck_file = self._store.get_state("checkpoint_file")
            if ck_file != self._ck_file:
                self._load()
            else:
                self._replay()
                self._count = self._store.count()
                self._next_fid = int(self._store.get_state("next_fid", "0") or 0)
            return (self._ck_file, self._applied_seq) != before

    # -- basic accessors ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def search_defaults(self) -> dict[str, int]:
        """Search parameters used when a query gives none (tuned at build time)."""
        return dict(self.manifest.search_defaults)

    @property
    def filterable_fields(self) -> frozenset[str]:
        """Metadata fields usable in ``search(filter=...)``."""
        with self._rw.read():
            self._check_open()
            return self._store.fields()

    def __len__(self) -> int:
        return self._count

    def __contains__(self, id_: object) -> bool:
        if not isinstance(id_, str):
            return False
        with self._rw.read():
            self._check_open()
            return self._store.get(id_) is not None

    def ids(self) -> Iterator[str]:
        """Iterate over the catalog ids (in insertion order)."""
        self._check_open()
        return self._store.iter_ids()

    def get(self, id_: str) -> Item:
        """The stored item; :class:`~index.errors.UnknownIdError` (a ``KeyError``) if absent."""
        with self._rw.read():
            self._check_open()
            row = self._store.get(id_) if isinstance(id_, str) else None
        if row is None:
            raise UnknownIdError([str(id_)], "get")
        return Item(id_, row[1])

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored unit vectors of ``ids`` (len(ids) x dim float32), e.g. to query by item."""
        ids = list(ids)
        with self._rw.read():
            self._check_open()
            found = self._store.fids_for_ids(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownIdError(missing, "get vectors of")
            return ann.reconstruct(self._index, np.array([found[i] for i in ids], np.int64))

    def info(self) -> dict[str, Any]:
        """A summary for humans and ``phonesim index info --json``."""
        with self._rw.read():
            self._check_open()
            return {
                "path": str(self.path),
                "kind": self.manifest.kind,
                "factory": self.manifest.factory,
                "count": self._count,
                "dim": self.manifest.dim,
                "metric": self.manifest.metric,
                "model_name": self.manifest.model_name,
                "checkpoint_hash": self.manifest.checkpoint_hash,
                "search_defaults": self.search_defaults,
                "journal_pending": self._pending,
                "hidden_removed": int(len(self._dead)),
                "filterable_fields": sorted(self._store.fields()),
                "disk_bytes": folder_size(self.path),
            }

    # -- search -----------------------------------------------------------------------------
    def search(
        self,
        xq: np.ndarray,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """The ``k`` most similar catalog items to each query, best first.

        ``xq``: one query (1-D, returns ``list[Hit]``) or many (2-D, returns one list per
        row). Queries are L2-normalised, so ``Hit.score`` is the cosine similarity.
        ``k`` larger than the matching items returns all of them; an empty catalog returns
        empty lists. ``filter``: ``{field: value}`` equality on metadata (a list value means
        any of; several fields mean all of); unknown fields raise
        :class:`~index.errors.InvalidFilterError`. ``exclude_ids``: ids never returned
        (unknown ones are ignored). ``params``: per-query ``nprobe``/``efSearch`` overriding
        :attr:`search_defaults`. Filters matching at most ``options.exact_filter_limit``
        items are searched exactly. Results are never silently short: when the approximate
        search cannot supply ``k`` matching items, the rest of the search is exact.
        """
        single = np.ndim(xq) == 1
        xq = prepare_vectors(xq, self.dim, what="queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidParamsError(f"k must be a positive integer, got {k!r}")
        merged = {**self.manifest.search_defaults, **(params or {})}
        with self._rw.read():
            self._check_open()
            self._search_params(merged)  # validate even where the search is exact
            allowed = None if filter is None else self._store.filter_fids(filter)
            excluded = np.zeros(0, np.int64)
            if exclude_ids is not None:
                ids = [exclude_ids] if isinstance(exclude_ids, str) else list(exclude_ids)
                excluded = np.unique(np.fromiter(self._store.fids_for_ids(ids).values(), np.int64))
            found = self._knn(xq, int(k), allowed, excluded, merged)
            rows = self._store.lookup(np.concatenate([f for f, _ in found]) if found else [])
        results = []
        for fids, scores in found:
            hits = []
            for fid, score in zip(fids.tolist(), scores.tolist(), strict=True):
                row = rows.get(fid)
                if row is None:  # cannot happen while store and FAISS agree
                    log.warning("search returned fid %d that is not in the catalog", fid)
                    continue
                hits.append(Hit(row[1], float(score), dict(row[2])))
            results.append(hits)
        return results[0] if single else results

    def _knn(
        self,
        xq: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        excluded: np.ndarray,
        params: Mapping[str, Any],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query ``(fids, scores)`` of the best ``k`` allowed, non-excluded live items.

        Flat, IVF and HNSW indexes take the candidates as a FAISS id selector (a bitmap for
        filters, a negated set for exclusions and hidden removed items): a filter matching at
        most ``exact_filter_limit`` items is searched exactly, a broader one approximately
        with ``nprobe``/``efSearch`` widened by its selectivity; a query the approximate
        search leaves short is re-run exactly. Other kinds over-fetch instead.
        """
        nq = len(xq)
        if allowed is not None:
            excluded = np.intersect1d(excluded, allowed, assume_unique=True)
            n_cand = len(allowed) - len(excluded)
        else:
            n_cand = self._count - len(excluded)
        k = min(k, n_cand)
        if k <= 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(nq)]
        how = ann.selector_kind(self._index)
        if how is None:
            return self._knn_overfetch(xq, k, allowed, excluded, params)
        keep: list[Any] = []
        cand = None
        if allowed is not None:
            cand = np.setdiff1d(allowed, excluded, assume_unique=True)
            sel, bitmap = self._bitmap(cand, allowed if len(excluded) == 0 else None)
            keep.append(bitmap)
            if n_cand <= self.options.exact_filter_limit:
                return self._exact_selected(xq, k, how, sel, cand)
            params = ann.widen(self._index, params, n_cand / max(self._count, 1))
        elif len(excluded) or len(self._dead):
            sel, objs = ann.not_selector(np.union1d(excluded, self._dead))
            keep += objs
        else:
            sel = None
        if sel is None:
            sp = self._search_params(params)
        else:
            sp, objs = ann.search_params(self._index, params, sel=sel)
            keep += objs
        D, I = self._index.search(xq, k, params=sp)
        results = [(I[i], D[i]) for i in range(nq)]
        short = np.flatnonzero((I < 0).any(axis=1))
        if len(short):  # the approximate search ran dry: finish those queries exactly
            log.debug("%d queries fall back to exact search", len(short))
            if cand is None and how == "hnsw":
                cand = np.setdiff1d(self._store.live_fids(), excluded, assume_unique=True)
            exact = self._exact_selected(xq[short], k, how, sel, cand)
            for q, res in zip(short.tolist(), exact, strict=True):
                results[q] = res
        return results

    def _bitmap(self, cand: np.ndarray, key: np.ndarray | None) -> tuple[Any, np.ndarray]:
        """A bitmap selector of ``cand``, reused while the store returns the same filter
        array ``key`` (its filter cache lives until the next write)."""
        with self._bitmap_lock:
            for arr, sel, bitmap in self._bitmaps:
                if arr is key:
                    return sel, bitmap
        sel, bitmap = ann.bitmap_selector(cand, self._next_fid)
        if key is not None:
            with self._bitmap_lock:
                self._bitmaps = [*self._bitmaps[-15:], (key, sel, bitmap)]
        return sel, bitmap

    def _search_params(self, params: Mapping[str, Any]) -> Any:
        """Cached FAISS search parameters without a selector (building them costs ~0.1 ms)."""
        key = tuple(sorted(params.items()))
        try:
            cached = self._sp_cache.get(key)
        except TypeError:
            raise InvalidParamsError(f"search parameters must be integers: {params!r}") from None
        if cached is None:
            cached = ann.search_params(self._index, params)
            if len(self._sp_cache) > 64:
                self._sp_cache.clear()
            self._sp_cache[key] = cached
        return cached[0]

    def _exact_selected(
        self, xq: np.ndarray, k: int, how: str, sel: Any, cand: np.ndarray | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact top-``k`` among the ids ``sel`` selects (``cand`` lists them for HNSW)."""
        if how == "flat":
            sp, _keep = ann.search_params(self._index, None, sel=sel)
            D, I = self._index.search(xq, k, params=sp)
        elif how == "ivf":
            D, I = ann.search_all_lists(self._index, xq, k, sel)
        else:
            assert cand is not None
            return self._exact(xq, k, cand)
        return [(I[i][I[i] >= 0], D[i][I[i] >= 0]) for i in range(len(xq))]

    def _knn_overfetch(
        self,
        xq: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        excluded: np.ndarray,
        params: Mapping[str, Any],
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The generic path for kinds without id selectors: over-fetch, filter, retry.

        ``k`` is at most the number of candidates; ``excluded`` lies within ``allowed``.
        """
        nq = len(xq)
        if allowed is not None and len(allowed) <= self.options.exact_filter_limit:
            cand = np.setdiff1d(allowed, excluded, assume_unique=True)
            return self._exact(xq, k, cand)

        blocked = np.union1d(excluded, self._dead)
        ntotal = self._index.ntotal
        if allowed is not None:  # over-fetch by the inverse of the filter's selectivity
            kk = math.ceil(1.5 * k * ntotal / max(len(allowed), 1)) + len(blocked)
        else:
            kk = k + len(blocked)
        kk = min(kk, ntotal)
        sp, _keep = ann.search_params(self._index, params)
        results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * nq
        pending = np.arange(nq)
        exhausted: list[int] = []
        while len(pending):
            D, I = self._index.search(xq[pending], kk, params=sp)
            ok = I >= 0
            if allowed is not None:
                ok &= np.isin(I, allowed)
            if len(blocked):
                ok &= ~np.isin(I, blocked)
            retry = []
            for row, q in enumerate(pending.tolist()):
                sel = np.flatnonzero(ok[row])
                if len(sel) >= k:
                    results[q] = (I[row, sel[:k]].astype(np.int64), D[row, sel[:k]])
                elif kk >= ntotal or (I[row] < 0).any():  # the approximate search ran dry
                    exhausted.append(q)
                else:
                    retry.append(q)
            pending = np.array(retry, dtype=np.int64)
            kk = min(ntotal, kk * 4)
        if exhausted:
            log.debug("%d queries fall back to exact search", len(exhausted))
            cand = self._store.live_fids() if allowed is None else allowed
            cand = np.setdiff1d(cand, excluded, assume_unique=True)
            for q, res in zip(exhausted, self._exact(xq[exhausted], k, cand), strict=True):
                results[q] = res
        return results  # type: ignore[return-value]

    def _exact(
        self, xq: np.ndarray, k: int, cand: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact top-``k`` over the candidate fids, reading their vectors back from FAISS."""
        nq = len(xq)
        k = min(k, len(cand))
        best_s = np.zeros((nq, 0), np.float32)
        best_f = np.zeros((nq, 0), np.int64)
        for start in range(0, len(cand), 65_536):
            fids = cand[start : start + 65_536]
            D, I = faiss.knn(
                xq,
                ann.reconstruct(self._index, fids),
                min(k, len(fids)),
                faiss.METRIC_INNER_PRODUCT,
            )
            best_s = np.concatenate([best_s, D], axis=1)
            best_f = np.concatenate([best_f, fids[I]], axis=1)
            if best_s.shape[1] > k:
                top = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
                best_s = np.take_along_axis(best_s, top, axis=1)
                best_f = np.take_along_axis(best_f, top, axis=1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        best_s = np.take_along_axis(best_s, order, axis=1)
        best_f = np.take_along_axis(best_f, order, axis=1)
        return [(best_f[i], best_s[i]) for i in range(nq)]

    # -- updates -----------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        xb: np.ndarray,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Add items durably: when this returns, the change survives a crash.

        ``xb``: ``len(ids) x dim`` floats, re-normalised to unit length. ``metadata``: one
        mapping (field -> str/number/bool/None) per id, or None. Raises
        :class:`~index.errors.DuplicateIdError` if an id is already present or repeated,
        and ``ValueError`` subclasses for bad vectors or metadata; on error nothing is added.
        """
        self._check_writable()
        ids = prepare_ids(ids)
        xb = prepare_vectors(xb, self.dim, n=len(ids))
        if metadata is None:
            mds: list[dict[str, Any]] = [{} for _ in ids]
        else:
            metadata = list(metadata)
            if len(metadata) != len(ids):
                raise InvalidMetadataError(f"got {len(metadata)} metadata rows for {len(ids)} ids")
            mds = [clean_metadata(m, f"metadata[{i}]") for i, m in enumerate(metadata)]
        if not ids:
            return
        with self._write_mutex:
            self._check_open()
            existing = self._store.fids_for_ids(ids)
            if existing:
                shown = ", ".join(repr(i) for i in list(existing)[:5])
                raise DuplicateIdError(
                    f"{len(existing)} id(s) already in the index: {shown}; remove them first"
                )
            fids = np.arange(self._next_fid, self._next_fid + len(ids), dtype=np.int64)
            with self._rw.write():
                with self._store.transaction():
                    self._store.insert_items(fids, ids, mds)
                    seq = self._store.journal_append("add", fids, xb)
                    self._store.set_state(next_fid=int(fids[-1]) + 1)
                self._next_fid = int(fids[-1]) + 1
                self._applied(seq, len(ids), +len(ids))
                self._apply(lambda: ann.add(self._index, xb, fids))
            self._maybe_checkpoint()

    def remove(self, ids: Iterable[str]) -> None:
        """Remove items durably. Unknown ids raise :class:`~index.errors.UnknownIdError`
        (a ``KeyError``) and nothing is removed; repeated ids count once."""
        self._check_writable()
        ids = list(dict.fromkeys([ids] if isinstance(ids, str) else ids))
        if not ids:
            return
        with self._write_mutex:
            self._check_open()
            found = self._store.fids_for_ids(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownIdError(missing, "remove")
            fids = np.array([found[i] for i in ids], dtype=np.int64)
            with self._rw.write():
                with self._store.transaction():
                    self._store.delete_items(fids)
                    seq = self._store.journal_append("remove", fids, None)
                self._applied(seq, len(ids), -len(ids))

                def apply() -> None:
                    if not ann.remove(self._index, fids):
                        self._dead = np.union1d(self._dead, fids)

                self._apply(apply)
            self._maybe_checkpoint()

    def _applied(self, seq: int, n_vectors: int, delta: int) -> None:
        self._applied_seq = seq
        self._pending += n_vectors
        self._count += delta

    def _apply(self, change: Any) -> None:
        """Apply a committed change to FAISS; if that fails, close (reopening replays it)."""
        try:
            change()
        except BaseException:
            log.exception("committed change could not be applied in memory; closing the index")
            self._close_now()
            raise

    def _maybe_checkpoint(self) -> None:
        """Checkpoint once enough changes are journaled (caller holds the write mutex)."""
        if self._pending >= self.options.checkpoint_every:
            self._checkpoint_locked()

    def checkpoint(self) -> None:
        """Write the FAISS index to a new file atomically and empty the journal.

        Searches continue meanwhile; other writes wait. Cheap when nothing changed.
        """
        self._check_writable()
        with self._write_mutex:
            self._check_open()
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        seq = self._applied_seq
        if seq != self._ck_seq:
            name = faiss_file_name(seq)
            with self._rw.read():
                ann.write(self._index, self.path / name)
            with self._store.transaction():
                self._store.set_state(checkpoint_file=name, checkpoint_seq=seq)
                self._store.journal_truncate(seq)
            old, self._ck_file, self._ck_seq, self._pending = self._ck_file, name, seq, 0
            if old != name:
                (self.path / old).unlink(missing_ok=True)
                fsync_dir(self.path)
        if self.manifest.count != self._count:
            self.manifest = self.manifest.with_count(self._count)
            write_manifest(self.path, self.manifest)
        self._store.checkpoint_wal()
        log.debug("checkpointed %s at journal record %d", self.path, seq)

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the store and the writer lock. Nothing is lost without a checkpoint:
        the next open replays the journal."""
        with self._write_mutex, self._rw.write():
            self._close_now()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store.close()
        self._index = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> CatalogIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._count} items"
        return f"CatalogIndex({str(self.path)!r}, kind={self.kind!r}, {state})"

    def _check_open(self) -> None:
        if self._closed:
            raise IndexNotFoundError(f"{self.path}: index is closed")

    def _check_writable(self) -> None:
        if self.readonly:
            raise ReadOnlyIndexError(f"{self.path}: index was opened read-only")
        self._check_open()


def lock_writer(path: Path) -> int:
    """Take the folder's exclusive writer lock (released when the fd closes or we die)."""
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexLockedError(
            f"{path}: another process has this index open for writing; close it or open read-only"
        ) from None
    return fd


def open_index(path: str | Path, **kwargs: Any) -> CatalogIndex:
    """Shorthand for :meth:`CatalogIndex.open`."""
    return CatalogIndex.open(path, **kwargs)


def describe(path: str | Path) -> dict[str, Any]:
    """What ``phonesim index info`` shows, read without loading the FAISS file."""
    path = Path(path)
    manifest = read_manifest(path)
    if not (path / STORE_NAME).is_file():
        raise IndexNotFoundError(f"{path}: catalog store {STORE_NAME} is missing")
    store = CatalogStore(path / STORE_NAME, readonly=True)
    try:
        store.begin_snapshot()
        count = store.count()
        ck_seq = int(store.get_state("checkpoint_seq", "0") or 0)
        _, pending = store.journal_stats(ck_seq)
        fields = sorted(store.fields())
        ck_file = store.get_state("checkpoint_file")
    finally:
        store.close()
    return {
        "path": str(path.resolve()),
        "kind": manifest.kind,
        "factory": manifest.factory,
        "count": count,
        "dim": manifest.dim,
        "metric": manifest.metric,
        "model_name": manifest.model_name,
        "checkpoint_hash": manifest.checkpoint_hash,
        "format_version": manifest.format_version,
        "search_defaults": dict(manifest.search_defaults),
        "tuned_recall": manifest.tuning.get("recall"),
        "journal_pending": pending,
        "faiss_file": ck_file,
        "filterable_fields": fields,
        "disk_bytes": folder_size(path),
    }
