"""The SQLite backend: an index folder's ``catalog.sqlite`` as the one source of truth.

Every process on the machine opens the same file: writes serialise on SQLite's write lock
(``BEGIN IMMEDIATE``), each process follows the journal into its own FAISS copy, and the cheap
change check is ``PRAGMA data_version``. Snapshots are ``vectors-<seq>.faiss`` files in the
folder, written by one compactor at a time (an ``flock`` on ``compact.lock``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common.fsutil import fsync_dir, holders_note
from index import ann
from index.errors import (
    CatalogReplacedError,
    DuplicateIdError,
    IndexNotFoundError,
    StoreMachineError,
    StoreUnavailableError,
    UnknownIdError,
)
from index.folder import (
    FAISS_PREFIX,
    checkpoint_size,
    faiss_file_name,
    missing_faiss_file,
    open_lock_file,
)
from index.journal import JournalRecord
from index.manifest import Manifest
from index.replica import Loaded
from index.store import STORE_NAME, CatalogStore, StoredItem, machine_failure, merged_metadata

log = logging.getLogger(__name__)

COMPACT_LOCK = "compact.lock"


def _file_id(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of ``path``, None where nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextmanager
def _reachable(where: Path) -> Iterator[None]:
    """SQLite failures other than bad input (locked past the busy timeout, I/O errors) mean
    the store cannot take the change now."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if machine_failure(exc):  # a full disk: exit 1 (the machine), saying nothing changed
            raise StoreMachineError.of(where, exc) from exc
        raise StoreUnavailableError(f"{where}: catalog store unavailable ({exc})") from exc


class SqliteSource:
    """Writes, the journal and snapshots of an index folder's SQLite store."""

    kind = "sqlite"

    def __init__(self, folder: Path, store: CatalogStore, lock_fd: int | None = None) -> None:
        self.folder = folder
        self.store = store  # also the read store: the shared file is the current state
        self._lock_fd = lock_fd  # the folder lock, shared: no build replaces it under us
        self._dv: int | None = None
        self.compactor = ""  # " (pid N)" of the last compactor that refused this one
        self._store_file = _file_id(folder / STORE_NAME)  # the file this process writes to

    @property
    def where(self) -> str:
        return str(self.folder)

    @property
    def frozen(self) -> bool:
        """On read-only media: searched and copied, never changed (:func:`open_store`)."""
        return self.store.frozen

    def close(self) -> None:
        self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- following ------------------------------------------------------------------------
    def changed(self) -> bool:
        """Whether another connection committed since the last call (microseconds)."""
        self._check_in_place(IndexNotFoundError)
        with _reachable(self.folder):
            dv = self.store.data_version()
        changed, self._dv = dv != self._dv, dv
        return changed

    def _check_in_place(self, error: type[Exception]) -> None:
        """Raise ``error`` when the folder's store is no longer the file this process opened
        (deleted or replaced by hand: phonesim never replaces a store a process has open).
        Its writes went on into the deleted file, acknowledged and then lost, and /readyz
        said ready."""
        if _file_id(self.folder / STORE_NAME) != self._store_file:
            raise error(
                f"{self.folder}: {STORE_NAME} was removed or replaced on disk since this "
                "process opened it; it answers from what it holds and writes nothing: "
                "restart it, with the checkpoint that catalog was built from, to serve what is "
                "there now"
            )

    def head(self) -> tuple[int, int]:
        """``(last journal seq, snapshot seq)``."""
        with _reachable(self.folder), self.store.read_txn():
            return self.store.journal_head(), self._ck()[1]

    def _ck(self) -> tuple[str, int]:
        name = self.store.get_state("checkpoint_file") or ""
        return name, int(self.store.get_state("checkpoint_seq", "0") or 0)

    def records(self, after: int, dim: int) -> list[JournalRecord]:
        with _reachable(self.folder):
            return self.store.journal_records(after, dim)

    def journal_stats(self) -> tuple[int, int, float | None]:
        """``(records, vectors, oldest commit time)`` not yet in a snapshot."""
        with _reachable(self.folder), self.store.read_txn():
            _, pending, n, oldest = self.store.journal_stats(self._ck()[1])
        return n, pending, oldest

    def load(self, dim: int, expect: Manifest | None = None) -> Loaded:
        """The snapshot file plus the journal after it, read in one short transaction (retried
        when a compactor replaced the file between reading its name and opening it).
        ``expect`` is not checked: a folder is never restored while a process has it open."""
        for _ in range(20):
            with _reachable(self.folder), self.store.read_txn():
                name, seq = self._ck()
                if not name:
                    raise IndexNotFoundError(f"{self.folder}: catalog store names no FAISS file")
                if not (self.folder / name).is_file():
                    continue
                try:
                    index = ann.read(self.folder / name)
                except Exception:
                    if (self.folder / name).is_file():
                        raise
                    continue  # deleted while we read it
                records = self.store.journal_records(seq, dim)
                live = self.store.live_fids()
                return Loaded(index, name, seq, records, len(live), live, self.store.next_fid())
        raise missing_faiss_file(self.folder, name)

    # -- writes -----------------------------------------------------------------------------
    def commit_add(
        self, ids: Sequence[str], xb: np.ndarray, mds: Sequence[Mapping[str, Any]]
    ) -> JournalRecord:
        self._check_in_place(CatalogReplacedError)
        s = self.store
        with _reachable(self.folder), s.transaction():
            existing = s.fids_for_ids(ids)
            if existing:
                shown = ", ".join(repr(i) for i in list(existing)[:5])
                raise DuplicateIdError(
                    f"{len(existing)} id(s) already in the index: {shown}; remove them first"
                )
            start = s.next_fid()
            fids = np.arange(start, start + len(ids), dtype=np.int64)
            s.insert_items(fids, ids, mds)
            rec = s.journal_append("add", fids, xb)
            s.set_state(next_fid=start + len(ids))
        return rec

    def commit_remove(self, ids: Sequence[str]) -> JournalRecord:
        self._check_in_place(CatalogReplacedError)
        s = self.store
        with _reachable(self.folder), s.transaction():
            found = s.fids_for_ids(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownIdError(missing, "remove")
            fids = np.array([found[i] for i in ids], dtype=np.int64)
            s.delete_items(fids)
            return s.journal_append("remove", fids, None)

    def commit_meta(
        self,
        id_: str,
        metadata: Mapping[str, Any],
        merge: bool,
        check: Callable[[Mapping[str, Any]], None] | None = None,
        keep: Collection[str] = (),
    ) -> tuple[JournalRecord, StoredItem]:
        self._check_in_place(CatalogReplacedError)
        s = self.store
        with _reachable(self.folder), s.transaction():
            row = s.get(id_)
            if row is None:
                raise UnknownIdError([id_], "update")
            md = merged_metadata(row.metadata, metadata, merge, keep)
            if check is not None:
                check(md)
            fids = np.array([row.fid], np.int64)
            s.delete_items(fids)
            s.insert_items(fids, [id_], [md])
            rec = s.journal_append("meta", fids, None)
        return rec, StoredItem(row.fid, id_, md)

    # -- snapshots --------------------------------------------------------------------------
    @contextmanager
    def compaction_lock(self) -> Iterator[bool]:
        """Whether this process got the one compactor's lock (never waits); when not,
        :attr:`compactor` names the process holding it."""
        if self.frozen:  # nothing compacts a folder on read-only media, nor makes its lock file
            yield True
            return
        fd = open_lock_file(self.folder / COMPACT_LOCK)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.compactor = holders_note(fd)
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def commit_snapshot(self, index: faiss.Index, seq: int) -> bool:
        """Write ``index`` (the state as of record ``seq``) as the new snapshot and drop the
        journal up to the previous one; False if a snapshot as new exists. Hold the lock."""
        name = faiss_file_name(seq)
        ann.write(index, self.folder / name)  # temporary name, fsync, rename, fsync folder
        size = (self.folder / name).stat().st_size
        with _reachable(self.folder), self.store.transaction():
            old, old_seq = self._ck()
            if old_seq >= seq:
                stale = True
            else:
                stale = False
                self.store.set_state(
                    checkpoint_file=name,
                    checkpoint_seq=seq,
                    checkpoint_size=checkpoint_size(name, size),
                )
                # Records since the previous snapshot stay, for copies a little behind.
                self.store.journal_truncate(old_seq)
        self.remove_stale_files(old if stale else name)
        try:  # tidying: the snapshot is committed whatever befalls these
            self.store.release_free_pages()  # the truncated journal's pages, removed items'
            # Emptied, not only folded: the WAL kept the size of the journal just dropped
            # (160 MB beside a 7.7 MB store) until the next write, for good on a catalog only
            # read.
            self.store.checkpoint_wal(truncate=True, wait_s=0.25)
        except (sqlite3.Error, OSError) as exc:  # a full disk: was a traceback after the commit
            log.warning(
                "%s: snapshot %s committed; tidying the store failed: %s", self.folder, name, exc
            )
        return not stale

    def clean_up(self, current: str) -> None:
        """Delete what an interrupted compaction left, unless a compactor is at work."""
        with self.compaction_lock() as got:
            if got:
                self.remove_stale_files(self._ck()[0] or current)

    def remove_stale_files(self, keep: str) -> None:
        """Delete FAISS files other than ``keep``: superseded or interrupted snapshots (only
        the compactor writes them, so hold the lock)."""
        removed = False
        for p in self.folder.iterdir():
            if (p.name.startswith(FAISS_PREFIX) and p.name != keep) or p.name.startswith(
                f".{FAISS_PREFIX}"
            ):
                p.unlink(missing_ok=True)
                removed = True
        if removed:
            fsync_dir(self.folder)

    # -- what a PostgreSQL source does differently --------------------------------------------
    cheap_check = True  # data_version costs microseconds: check before every read
    mirrors_records = False  # others' records are in the shared file already, fields unknown
    snapshot_outside_apply = False  # the snapshot is written from the live index, under lock

    def replaced(self) -> bool:
        """A folder is never replaced under an opener (the shared folder lock)."""
        return False

    def installed(self, loaded: Loaded) -> None:
        """A replica was loaded (the shared file needs no local mirror)."""

    def apply_local(self, rec: JournalRecord) -> None:
        """The record is in the shared file already; only caches go stale."""
