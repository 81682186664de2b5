"""This process's FAISS copy of the catalog, following the catalog store's journal.

A snapshot (a FAISS index as of journal record ``ck_seq``: the file ``vectors-<seq>.faiss`` of
an index folder, or the blob a PostgreSQL store keeps) plus the journal records after it make
the current state. A :class:`Replica` is loaded from one consistent read of the store
(:class:`Loaded`), then applies each newer record in order. Callers
(:class:`index.catalog.CatalogIndex`) hold the locks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index import ann
from index.errors import IndexCorruptError
from index.journal import JournalRecord

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """What one consistent read of a store gives to start a replica: the snapshot ``index`` as
    of record ``ck_seq`` (named ``ck_name``), the records after it, and the store's live items
    (count, sorted fids, next fid) as of the last of those records."""

    index: faiss.Index
    ck_name: str
    ck_seq: int
    records: list[JournalRecord]
    count: int
    live: np.ndarray
    next_fid: int
    mirror: Any = None  # a PostgreSQL replica's local store, loaded alongside
    manifest: Any = None  # the catalog's manifest, where the store holds it (PostgreSQL)


class Replica:
    """The FAISS index and where it stands in the journal.

    ``ck_seq``: the snapshot's journal record; ``applied_seq``: the last record applied in
    memory; ``pending``: vectors journaled since the snapshot; ``dead``: ids a kind that cannot
    delete still holds, removed from the catalog; ``count``/``id_bound``: live items and a
    bound above every fid applied here.
    """

    def __init__(self, loaded: Loaded, dim: int, where: str) -> None:
        index = loaded.index
        if index.d != dim:
            raise IndexCorruptError(f"{where}: FAISS dimension {index.d}, manifest says {dim}")
        self.index: faiss.Index | None = index
        self.ck_name = loaded.ck_name
        self.ck_seq = self.applied_seq = loaded.ck_seq
        self.pending = 0
        self.dead = np.zeros(0, np.int64)
        self.id_bound = 0
        self.count = 0
        for rec in loaded.records:
            self.apply(rec)
        self.count = loaded.count
        self.id_bound = max(self.id_bound, loaded.next_fid)
        stored = None if ann.supports_remove(index) else ann.stored_fids(index)
        if stored is not None:
            self.dead = np.setdiff1d(stored, loaded.live)
        if index.ntotal - len(self.dead) != loaded.count:
            raise IndexCorruptError(
                f"{where}: FAISS holds {index.ntotal - len(self.dead)} live vectors "
                f"but the catalog store {loaded.count} items; rebuild the index"
            )
        if loaded.records:
            log.info("replayed %d journal record(s) of %s", len(loaded.records), where)

    def apply(self, rec: JournalRecord) -> None:
        """Apply journal record ``rec`` (the next one: ``applied_seq + 1``)."""
        if rec.op == "add":
            assert rec.vectors is not None
            ann.add(self.index, rec.vectors, rec.fids)
            self.count += len(rec.fids)
            self.id_bound = max(self.id_bound, int(rec.fids.max(initial=-1)) + 1)
        elif rec.op == "remove":
            if not ann.remove(self.index, rec.fids):
                self.dead = np.union1d(self.dead, rec.fids)
            self.count -= len(rec.fids)
        if rec.op != "meta":
            self.pending += len(rec.fids)
        self.applied_seq = rec.seq
