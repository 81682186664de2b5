"""``CatalogIndex``: k-NN search over a catalog of phones that can be updated while in use.

It opens an index folder (:mod:`index.folder`): the catalog store of ids, metadata and journal
(:mod:`index.store`) and this process's FAISS copy (:mod:`index.replica`). Searches are
planned by :mod:`index.filtered_search`.

Durability: ``add`` and ``remove`` commit one SQLite transaction (fsynced) holding the metadata
change *and* a journal record with the vectors, then apply it to the in-memory FAISS index.
Opening replays the journal records newer than the FAISS file, so a change that returned
survives SIGKILL or power loss. :meth:`CatalogIndex.checkpoint` (automatic every
``checkpoint_every`` journaled vectors) folds the journal into a new FAISS file.

Concurrency: in one process, searches run in parallel and see an update either entirely or not
at all (readers-writer lock). One process at a time may open an index for writing (a ``flock``
on ``writer.lock``); any number may open it read-only, each pinning the snapshot it opened
until :meth:`CatalogIndex.refresh`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index import ann
from index.errors import (
    DuplicateIdError,
    IndexNotFoundError,
    InvalidParamsError,
    ReadOnlyIndexError,
    UnknownIdError,
)
from index.filtered_search import Live, SearchCache, knn_search
from index.filters import FilterEngine
from index.folder import lock_writer, store_path, summary
from index.inputs import clean_metadata_rows, prepare_ids, prepare_vectors
from index.manifest import Manifest, read_manifest, write_manifest
from index.replica import Replica
from index.results import Hit, Item, hits_of
from index.rwlock import RWLock
from index.store import CatalogStore

log = logging.getLogger(__name__)


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
        self._replica = Replica(path, manifest.dim)
        self._cache = SearchCache()
        self._filters = FilterEngine(store)
        self._closed = False
        self._count = 0
        self._next_fid = 0

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
        db = store_path(path)
        lock_fd = None if readonly else lock_writer(path)
        store = None
        try:
            store = CatalogStore(db, readonly=readonly)
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
                self._replica.remove_stale_files()
        except BaseException:
            if store is not None:
                store.close()
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        log.debug("opened %s: %d items, kind %s", path, self._count, manifest.kind)
        return self

    def _load(self) -> None:
        """Load the FAISS copy and the catalog counters from one store snapshot."""
        self._replica.load(self._store, keep_snapshot=self.readonly)
        self._cache = SearchCache()
        self._read_counters()
        self._replica.find_dead(self._store, self._count)

    def _read_counters(self) -> None:
        self._count = self._store.count()
        self._next_fid = int(self._store.get_state("next_fid", "0") or 0)

    def refresh(self) -> bool:
        """Move a read-only index to the latest committed state; True if anything changed."""
        with self._rw.write():
            self._check_open()
            before = self._replica.position
            if not self.readonly:
                return False
            self._store.end_snapshot()
            self._store.begin_snapshot()
            if self._store.get_state("checkpoint_file") != self._replica.ck_file:
                self._load()
            else:
                self._replica.replay(self._store)
                self._read_counters()
            return self._replica.position != before

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
        return Item(row.id, row.metadata)

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored unit vectors of ``ids`` (len(ids) x dim float32), e.g. to query by item."""
        ids = list(ids)
        with self._rw.read():
            self._check_open()
            found = self._store.fids_for_ids(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownIdError(missing, "get vectors of")
            fids = np.array([found[i] for i in ids], np.int64)
            return ann.reconstruct(self._replica.index, fids)

    def info(self) -> dict[str, Any]:
        """A summary for humans and ``phonesim index info --json``."""
        with self._rw.read():
            self._check_open()
            r = self._replica
            info = summary(self.path, self.manifest, self._store, self._count, r.pending, r.ck_file)
            return {**info, "hidden_removed": int(len(r.dead))}

    # -- search -----------------------------------------------------------------------------
    def search(
        self,
        xq: np.ndarray,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` most similar catalog items to each query, best first: one list per query.

        ``xq``: queries as rows (2-D), or one query as a 1-D vector (still one list of hits
        per query: ``search(v, k)[0]``). Queries are L2-normalised, so ``Hit.score`` is the
        cosine similarity.
        ``k`` larger than the matching items returns all of them; an empty catalog returns
        empty lists. ``filter``: ``{field: value}`` equality, a list for any of,
        ``{field: {"lt": 300, "gte": 100}}`` ranges on numeric fields, ``eq``/``in`` operators;
        several fields mean all of (grammar: :mod:`index.filters`); unknown fields, operators
        or a range on a text field raise :class:`~index.errors.InvalidFilterError`.
        ``exclude_ids``: ids never returned (unknown ones are ignored). ``params``: per-query
        ``nprobe``/``efSearch`` overriding :attr:`search_defaults`. Filters matching at most
        ``options.exact_filter_limit`` items are searched exactly. Results are never silently
        short: when the approximate search cannot supply ``k`` matching items, the rest of the
        search is exact.
        """
        xq = prepare_vectors(xq, self.dim, what="queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidParamsError(f"k must be a positive integer, got {k!r}")
        merged = {**self.manifest.search_defaults, **(params or {})}
        with self._rw.read():
            self._check_open()
            index = self._replica.index
            self._cache.params(index, merged)  # validate even where the search is exact
            allowed = None if filter is None else self._filters.fids(filter)
            excluded = np.zeros(0, np.int64)
            if exclude_ids is not None:
                ids = [exclude_ids] if isinstance(exclude_ids, str) else list(exclude_ids)
                excluded = np.unique(np.fromiter(self._store.fids_for_ids(ids).values(), np.int64))
            live = Live(self._count, self._store.live_fids, self._next_fid, self._replica.dead)
            D, I = knn_search(
                index,
                xq,
                int(k),
                live,
                params=merged,
                allowed=allowed,
                excluded=excluded,
                exact_limit=self.options.exact_filter_limit,
                cache=self._cache,
            )
            rows = self._store.lookup(I[I >= 0])
        return hits_of(D, I, rows)

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
        mds = clean_metadata_rows(metadata, len(ids))
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
                self._count += len(ids)
                self._apply(lambda: self._replica.add(seq, xb, fids))
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
                self._count -= len(ids)
                self._apply(lambda: self._replica.remove(seq, fids))
            self._maybe_checkpoint()

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
        if self._replica.pending >= self.options.checkpoint_every:
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
        with self._rw.read():  # searches go on; writes wait for the write mutex
            name = self._replica.write_checkpoint()
        if name is not None:
            self._replica.commit_checkpoint(self._store, name)
        if self.manifest.count != self._count:
            self.manifest = self.manifest.with_count(self._count)
            write_manifest(self.path, self.manifest)
        self._store.checkpoint_wal()
        log.debug("checkpointed %s at journal record %d", self.path, self._replica.ck_seq)

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
        self._replica.index = None
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


def open_index(path: str | Path, **kwargs: Any) -> CatalogIndex:
    """Shorthand for :meth:`CatalogIndex.open`."""
    return CatalogIndex.open(path, **kwargs)
