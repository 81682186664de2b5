"""How an opened index follows its store: sync, read-your-writes, compaction.

:class:`Following` is the base of :class:`index.catalog.CatalogIndex`: it holds this process's
:class:`~index.replica.Replica` and applies the store's journal to it. Locks: ``_rw`` (searches
read, applying a change writes), ``_apply_mutex`` (one thread applies or reloads at a time),
``_compact_mutex`` (one compaction per process; the store's lock makes it one per store).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index.errors import (
    CatalogReplacedError,
    IndexCorruptError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    ManifestError,
    ReadOnlyIndexError,
    StoreUnavailableError,
)
from index.filtered_search import SearchCache
from index.journal import JournalRecord, SyncStatus
from index.manifest import Manifest, write_manifest
from index.replica import Loaded, Replica
from index.rwlock import RWLock

if TYPE_CHECKING:
    from index.catalog import IndexOptions

log = logging.getLogger(__name__)

# What a reload may meet in the store that this process cannot take up: another embedder's
# catalog, one it cannot read, or a manifest of a newer phonesim (a rolling upgrade).
_CATALOG_REFUSED = (IndexMismatchError, IndexCorruptError, IndexNotFoundError, ManifestError)

_COMPACT_CHECK_S = 1.0  # how often automatic compaction asks the store whether it is due
_COMPACT_BACKOFF_MAX_S = 300.0  # the longest wait after failed automatic compactions
_COMPACT_DOUBLINGS_MAX = 16
_SNAPSHOT_POLL_S = 0.02  # how often a read waiting to sync looks for a snapshot being written


class Following:
    """State and journal-following of an opened index (see :mod:`index.following`)."""

    def __init__(
        self,
        path: Path | None,
        manifest: Manifest,
        source: Any,
        *,
        readonly: bool,
        options: IndexOptions,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.readonly = readonly
        self.options = options
        self._source = source
        self._store = source.store
        self._rw = RWLock()
        self._apply_mutex = threading.RLock()
        self._compact_mutex = threading.Lock()
        self._writing_snapshot = False  # a compaction writes its file under _apply_mutex
        self._replica: Replica = None  # type: ignore[assignment]  # set by _start
        self._cache = SearchCache()
        self._closed = False
        self._head = 0
        self._store_ck = 0
        self._error: str | None = None
        self._error_kind: type[StoreUnavailableError] = StoreUnavailableError
        # Why the store's catalog cannot be taken up (another embedder's, or unreadable): this
        # process answers from the catalog it holds, refuses writes, and is not ready.
        self._catalog_error: str | None = None
        self._dirty = True
        # Durations in this process run on the monotonic clock: a wall clock stepped back an
        # hour (NTP, a VM resumed) stopped automatic compaction checks for that hour, and one
        # stepped forward reported an hour of replica lag. The journal's own timestamps are
        # wall-clock times, as other machines write them.
        self._caught_up_at = time.monotonic()
        self._checked_at = 0.0
        self._compact_checked_at = 0.0
        self._compact_failures = 0  # automatic compactions failed in a row
        self._compact_retry_at = 0.0  # monotonic time before which none is tried
        self._loads = 0

    @property
    def where(self) -> str:
        return self._source.where

    def _start(self) -> None:
        self._source.changed()  # remember the store's version before reading it
        self._install(self._source.load(self.dim, self.manifest))
        self._head = self._replica.applied_seq
        self._store_ck = self._replica.ck_seq
        self._dirty = False
        if not self.readonly:
            self._source.clean_up(self._replica.ck_name)

    def _install(self, loaded: Loaded) -> None:
        replica = Replica(loaded, self.dim, self.where)  # built aside: searches go on
        with self._rw.write():
            self._source.installed(loaded)
            if loaded.manifest is not None:  # a restored catalog's kind and search defaults
                self.manifest = loaded.manifest
            self._store = self._source.store
            self._replica = replica
            self._loads += 1
            self._cache = SearchCache()
            self._store.invalidate_caches()

    # -- following --------------------------------------------------------------------------
    def sync(self) -> SyncStatus:
        """Apply the store's new journal records here (reloading if a newer snapshot
        superseded what this process holds); compact when due. Never raises because the store
        is unreachable: the status carries the error. Thread-safe with searches."""
        if self._closed:
            raise IndexNotFoundError(f"{self.where}: index is closed")
        self._sync_now()
        if self.options.auto_compact and not self.readonly:
            self._maybe_compact()
        return self.sync_status

    def refresh(self) -> bool:
        """:meth:`sync`; True if this process's state changed."""
        before = (self._replica.ck_seq, self._replica.applied_seq)
        self.sync()
        return (self._replica.ck_seq, self._replica.applied_seq) != before

    @property
    def version(self) -> tuple[int, int]:
        """Changes whenever what this process answers may have changed (a journal record
        applied, a reload): caches derived from the catalog (typed filters, metadata) key on
        it. Call :meth:`sync` (or any read, on SQLite) first to see other processes' writes."""
        return self._loads, self._replica.applied_seq

    @property
    def sync_status(self) -> SyncStatus:
        r = self._replica
        now = time.monotonic()
        behind = max(0, self._head - r.applied_seq)
        late = 0.0 if (behind == 0 and self._error is None) else now - self._caught_up_at
        return SyncStatus(
            applied_seq=r.applied_seq,
            head_seq=self._head,
            behind_entries=behind,
            behind_seconds=late,
            journal_length=max(0, self._head - self._store_ck),
            size=r.count,
            store_error=self._error,
            checked_at=self._checked_at,
            catalog_error=self._catalog_error,
        )

    def _sync_now(self) -> None:
        with self._apply_mutex:
            self._sync_locked()

    def _sync_locked(self) -> None:
        """:meth:`_sync_now`'s work (caller holds ``_apply_mutex``)."""
        if self._closed:
            return
        try:
            if self._source.changed() or self._dirty:
                self._dirty = True
                self._catch_up()
                self._dirty = False
            elif self._replica.applied_seq >= self._head:
                # Nothing new is caught up too: behind_seconds counts from the last time
                # this process was known current, not from the last change it applied.
                self._caught_up_at = time.monotonic()
            self._error = self._catalog_error = None
        except StoreUnavailableError as exc:
            self._error = str(exc)
            self._error_kind = type(exc)  # a full disk stays one (exit 1, 507) when re-raised
        except _CATALOG_REFUSED as exc:
            # The store holds a catalog this process cannot take up (a restore of another
            # embedder's, say): it keeps answering from the one it holds and says why;
            # raising would only repeat a traceback at every sync.
            self._error, self._catalog_error = None, str(exc)
        self._checked_at = time.monotonic()

    def _fresh(self) -> None:
        """The cheap change check before a read, where the backend has one. While this process
        writes a snapshot file under the apply lock (seconds for a large catalog), a read
        answers from its copy, as between two syncs, instead of waiting out the write: at
        80,000 items every search waited as long as the compaction."""
        if not (self.options.sync_on_read and self._source.cheap_check and not self._closed):
            return
        while not self._apply_mutex.acquire(timeout=_SNAPSHOT_POLL_S):
            if self._writing_snapshot:
                return
        try:
            self._sync_locked()
        finally:
            self._apply_mutex.release()

    def _catch_up(self) -> None:
        """Bring the replica to the store's head (caller holds ``_apply_mutex``)."""
        head, ck = self._source.head()
        self._head, self._store_ck = head, ck
        r = self._replica
        if ck > r.ck_seq and r.applied_seq >= ck:  # another process compacted what we hold
            r.ck_seq, r.pending = ck, 0
        touched: np.ndarray | None = np.zeros(0, np.int64)  # fids the records applied name
        if head < r.applied_seq or self._source.replaced():  # a restored catalog
            self._install(self._source.load(self.dim, self.manifest))
            touched = None
        elif head > r.applied_seq:
            # Compaction keeps the records since the previous snapshot, so a copy a little
            # behind goes on from the journal; one further behind reloads the snapshot.
            recs = self._source.records(r.applied_seq, self.dim)
            if not recs or recs[0].seq != r.applied_seq + 1:
                self._install(self._source.load(self.dim, self.manifest))
                touched = None
            else:
                with self._rw.write():
                    for rec in recs:
                        self._apply_one(rec)
                touched = np.concatenate([rec.fids for rec in recs])
        with self._rw.write():
            if self._source.mirrors_records:
                # A mirror changed only through the records it applied: its store tracked
                # the rows they changed.
                self._store.invalidate_caches(known=True)
            else:
                # A shared SQLite file, changed by other processes, each change with its
                # journal record in the same transaction: the records' items are all that
                # changed, and the store reads their rows again.
                self._store.invalidate_caches(touched=touched)
        self._head = max(self._head, self._replica.applied_seq)
        if self._replica.applied_seq >= self._head:
            self._caught_up_at = time.monotonic()

    def _apply_one(self, rec: JournalRecord) -> None:
        """Apply one record here (caller holds ``_rw`` for writing); a failure closes the
        index (reopening replays the record)."""
        try:
            self._source.apply_local(rec)
            self._replica.apply(rec)
        except BaseException:
            log.exception("journal record %d could not be applied; closing the index", rec.seq)
            self._close_now()
            raise

    def _applied_own(self, rec: JournalRecord) -> None:
        """Make this process's committed write visible here at once (read-your-writes)."""
        with self._apply_mutex:
            r = self._replica
            if rec.seq == r.applied_seq + 1:
                with self._rw.write():
                    self._apply_one(rec)
                    self._store.invalidate_caches(known=True)  # its own commit's fields
                self._head = max(self._head, rec.seq)
                if r.applied_seq >= self._head:
                    self._caught_up_at = time.monotonic()
            elif rec.seq > r.applied_seq:  # others wrote in between: take theirs too
                try:
                    self._catch_up()
                except StoreUnavailableError as exc:  # durable, shown after the next sync
                    self._error = str(exc)
                    self._dirty = True
                except _CATALOG_REFUSED as exc:  # replaced right after this write: as a sync
                    self._catalog_error = str(exc)
                    self._dirty = True
        if self.options.auto_compact:
            self._maybe_compact()

    # -- compaction -------------------------------------------------------------------------
    def compact(self, force: bool = False, refuse_busy: bool = False) -> bool:
        """Fold the journal into a new snapshot when due (always when ``force``), written
        atomically while searches go on; one compactor at a time across processes. True if
        this call wrote one; False if not due, nothing to fold, or another process compacts
        (:class:`IndexLockedError` instead with ``refuse_busy``: an operator who asked for it).
        """
        self._check_writable()
        with self._compact_mutex:
            if not force and not self._compaction_due():
                return False
            with self._source.compaction_lock() as got:
                if not got and refuse_busy:
                    raise IndexLockedError(
                        f"{self.where}: another process{self._source.compactor} is compacting "
                        "it or taking a snapshot of it; try again when it has finished"
                    )
                if not got:
                    return False
                self._sync_now()
                if self._error is not None:
                    raise self._error_kind(self._error)
                outside = self._source.snapshot_outside_apply
                with self._apply_mutex:
                    r = self._replica
                    seq = r.applied_seq
                    if seq <= self._store_ck and seq == r.ck_seq:
                        return False
                    with self._rw.read():  # searches go on; applying waits
                        if outside:
                            frozen, folded = self._source.freeze(r.index), r.pending
                        else:
                            self._writing_snapshot = True
                            try:
                                done = self._source.commit_snapshot(r.index, seq)
                            finally:
                                self._writing_snapshot = False
                if outside:
                    # The upload (seconds for a large catalog) holds no lock of this process:
                    # the journal is still applied meanwhile, so requests see acknowledged
                    # writes (holding it, they waited out the upload or answered without them).
                    done = self._source.commit_snapshot(frozen, seq)
                with self._apply_mutex:
                    if r is self._replica and r.ck_seq < seq:
                        r.ck_seq = seq
                        # What was applied during the upload is still pending.
                        r.pending = max(0, r.pending - folded) if outside else 0
                    self._store_ck = max(self._store_ck, seq)
                self._update_manifest_count()
        log.debug("compacted %s at journal record %d", self.where, seq)
        return done

    def checkpoint(self) -> None:
        """:meth:`compact` now (kept for older callers)."""
        self.compact(force=True)

    def _compaction_due(self) -> bool:
        n, pending, oldest = self._source.journal_stats()
        o = self.options
        old = oldest is not None and time.time() - oldest >= o.compact_age_s
        return n > 0 and (n >= o.compact_entries or pending >= o.checkpoint_every or old)

    def _maybe_compact(self) -> None:
        """Automatic compaction: asks the store at most once a second, and after a failure
        waits longer before the next try (doubling to :data:`_COMPACT_BACKOFF_MAX_S`); never
        raises."""
        now = time.monotonic()
        due_by_count = self._replica.pending >= self.options.checkpoint_every
        if now < self._compact_retry_at:
            return
        if not due_by_count and now - self._compact_checked_at < _COMPACT_CHECK_S:
            return
        self._compact_checked_at = now
        try:
            self.compact()
        except StoreUnavailableError as exc:  # sync_status reports it already
            log.debug("automatic compaction of %s skipped: %s", self.where, exc)
        except Exception as exc:  # the write itself succeeded; the next try may too
            # A full disk failed every try after writing most of a snapshot file: once a
            # second, for each write, that was the disk's whole bandwidth.
            # The exponent stops growing once the wait is at its longest (2**1024 overflows).
            doubling = min(self._compact_failures, _COMPACT_DOUBLINGS_MAX)
            wait = min(_COMPACT_BACKOFF_MAX_S, _COMPACT_CHECK_S * 2**doubling)
            self._compact_failures += 1
            self._compact_retry_at = time.monotonic() + wait
            log.warning(
                "automatic compaction of %s failed: %s; next try in %g s", self.where, exc, wait
            )
        else:
            self._compact_failures, self._compact_retry_at = 0, 0.0

    def _update_manifest_count(self) -> None:
        if self.path is None or self._source.kind != "sqlite":
            return
        if self.manifest.count != self._replica.count:
            self.manifest = self.manifest.with_count(self._replica.count)
            write_manifest(self.path, self.manifest)

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the store. Nothing is lost: the journal is in the store."""
        with self._apply_mutex, self._rw.write():
            self._close_now()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._source.close()
        if self._replica is not None:
            self._replica.index = None

    def _check_open(self) -> None:
        if self._closed:
            raise IndexNotFoundError(f"{self.where}: index is closed")

    def _check_writable(self) -> None:
        if self.readonly:
            raise ReadOnlyIndexError(f"{self.where}: index was opened read-only")
        self._check_open()
        if self._catalog_error is not None:
            said = self._catalog_error  # most name the folder or store already
            where = "" if said.startswith(f"{self.where}:") else f"{self.where}: "
            raise CatalogReplacedError(f"{where}{said}; nothing was written")

    @property
    def dim(self) -> int:
        return self.manifest.dim
