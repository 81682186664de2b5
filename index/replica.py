"""This process's FAISS copy of the catalog, following the catalog store's journal.

The FAISS file ``vectors-<seq>.faiss`` holds the vectors as of journal record ``<seq>``; the
journal (:mod:`index.store`) holds every committed change since. Loading reads the file and
replays the newer records, so a change that was committed survives SIGKILL or power loss; a
checkpoint writes a new file atomically, then commits its name and truncates the journal in
one transaction. Callers (:class:`index.catalog.CatalogIndex`) hold the locks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faiss
import numpy as np

from common.fsutil import fsync_dir
from index import ann
from index.errors import IndexCorruptError, IndexNotFoundError
from index.folder import FAISS_PREFIX, faiss_file_name
from index.store import CatalogStore

log = logging.getLogger(__name__)


class Replica:
    """The FAISS index of an index folder and where it stands in the journal.

    ``ck_file``/``ck_seq``: the FAISS file loaded or last written and its journal record;
    ``applied_seq``: the last record applied in memory; ``pending``: vectors journaled since
    the file; ``dead``: ids a kind that cannot delete still holds, removed from the catalog.
    """

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self.index: faiss.Index | None = None
        self.ck_file = ""
        self.ck_seq = 0
        self.applied_seq = 0
        self.pending = 0
        self.dead = np.zeros(0, np.int64)

    @property
    def position(self) -> tuple[str, int]:
        """``(FAISS file, last applied journal record)``: changes whenever the state does."""
        return self.ck_file, self.applied_seq

    def load(self, store: CatalogStore, *, keep_snapshot: bool) -> None:
        """Load the checkpointed FAISS file and replay the journal, from one store snapshot
        (kept open afterwards if ``keep_snapshot``, as read-only openers pin it)."""
        for attempt in range(5):
            store.begin_snapshot()
            try:
                ck_file = store.get_state("checkpoint_file")
                ck_seq = int(store.get_state("checkpoint_seq", "0") or 0)
                if not ck_file:
                    raise IndexCorruptError(f"{self.path}: catalog store names no FAISS file")
                if not (self.path / ck_file).is_file():
                    if attempt < 4:  # a writer checkpointed after our snapshot: take a new one
                        store.end_snapshot()
                        continue
                    raise IndexNotFoundError(f"{self.path}: FAISS file {ck_file} is missing")
                index = ann.read(self.path / ck_file)
                if index.d != self.dim:
                    raise IndexCorruptError(
                        f"{self.path / ck_file}: dimension {index.d}, manifest says {self.dim}"
                    )
                self.index = index
                self.ck_file, self.ck_seq = ck_file, ck_seq
                self.applied_seq, self.pending = ck_seq, 0
                self.dead = np.zeros(0, np.int64)
                self.replay(store)
                return
            finally:
                if not keep_snapshot:
                    store.end_snapshot()
        raise IndexNotFoundError(f"{self.path}: FAISS file vanished while opening")  # unreachable

    def replay(self, store: CatalogStore) -> None:
        """Apply the journal records newer than :attr:`applied_seq`."""
        replayed = 0
        for seq, op, fids, vectors in store.journal_records(self.applied_seq, self.dim):
            if op == "add":
                assert vectors is not None
                self.add(seq, vectors, fids)
            elif op == "remove":
                self.remove(seq, fids)
            else:
                raise IndexCorruptError(f"journal record {seq} has unknown op {op!r}")
            replayed += 1
        if replayed:
            log.info("replayed %d journal record(s) in %s", replayed, self.path)

    def add(self, seq: int, xb: np.ndarray, fids: np.ndarray) -> None:
        """Apply journal record ``seq``, an add of ``xb`` under ``fids``."""
        ann.add(self.index, xb, fids)
        self.applied_seq = seq
        self.pending += len(fids)

    def remove(self, seq: int, fids: np.ndarray) -> None:
        """Apply journal record ``seq``, a removal (hiding ``fids`` where FAISS cannot)."""
        if not ann.remove(self.index, fids):
            self.dead = np.union1d(self.dead, fids)
        self.applied_seq = seq
        self.pending += len(fids)

    def find_dead(self, store: CatalogStore, count: int) -> None:
        """Find the ids a kind that cannot delete still holds, and check the live count."""
        stored = None if ann.supports_remove(self.index) else ann.stored_fids(self.index)
        if stored is not None:
            self.dead = np.setdiff1d(stored, store.live_fids())
        if self.index.ntotal - len(self.dead) != count:
            raise IndexCorruptError(
                f"{self.path}: FAISS holds {self.index.ntotal - len(self.dead)} live vectors "
                f"but the catalog store {count} items; rebuild the index"
            )

    def write_checkpoint(self) -> str | None:
        """Write the FAISS index as of :attr:`applied_seq` to a new file (atomically); its name,
        or None if the last checkpoint is current. :meth:`commit_checkpoint` makes it count."""
        if self.applied_seq == self.ck_seq:
            return None
        name = faiss_file_name(self.applied_seq)
        ann.write(self.index, self.path / name)
        return name

    def commit_checkpoint(self, store: CatalogStore, name: str) -> None:
        """Name ``name`` the checkpoint and empty the journal up to it, in one transaction;
        then delete the previous file."""
        seq = self.applied_seq
        with store.transaction():
            store.set_state(checkpoint_file=name, checkpoint_seq=seq)
            store.journal_truncate(seq)
        old, self.ck_file, self.ck_seq, self.pending = self.ck_file, name, seq, 0
        if old != name:
            (self.path / old).unlink(missing_ok=True)
            fsync_dir(self.path)

    def remove_stale_files(self) -> None:
        """Delete FAISS files from interrupted or superseded checkpoints (writers only)."""
        removed = False
        for p in self.path.iterdir():
            stale_ckpt = p.name.startswith(FAISS_PREFIX) and p.name != self.ck_file
            if stale_ckpt or p.name.startswith(f".{FAISS_PREFIX}"):
                p.unlink(missing_ok=True)
                removed = True
        if removed:
            fsync_dir(self.path)
