"""The journal's records and where a process stands in following it.

Every change to a catalog store (add, remove, metadata update) commits one journal record in
the same transaction, numbered ``seq`` 1, 2, 3, ... with no gaps (writers serialise on the
store), so a follower that has applied record ``n`` applies ``n + 1`` next, and a missing
``n + 1`` means the journal was compacted past it: reload from the newer snapshot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

OPS = ("add", "remove", "meta")


class JournalRecord(NamedTuple):
    """One committed change: ``fids`` added (with ``vectors``), removed, or given new metadata.

    ``items``: ``[(id, metadata), ...]`` per fid for ``add`` and ``meta`` (what a store mirror
    needs to apply it), None for ``remove``; ``ts``: commit time (Unix seconds).
    """

    seq: int
    op: str
    fids: np.ndarray
    vectors: np.ndarray | None
    items: list[tuple[str, dict[str, Any]]] | None
    ts: float


def encode_items(ids: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([[i, dict(m)] for i, m in zip(ids, metadata, strict=True)])


def decode_items(text: str | None) -> list[tuple[str, dict[str, Any]]] | None:
    if text is None:
        return None
    return [(str(i), dict(m)) for i, m in json.loads(text)]


def fids_blob(fids: np.ndarray) -> bytes:
    return np.ascontiguousarray(fids, dtype="<i8").tobytes()


def vectors_blob(vectors: np.ndarray | None) -> bytes | None:
    return None if vectors is None else np.ascontiguousarray(vectors, dtype="<f4").tobytes()


def decode_record(
    seq: int, op: str, n: int, fids: bytes, vectors: bytes | None, items: Any, ts: Any, dim: int
) -> JournalRecord:
    from index.errors import IndexCorruptError

    f = np.frombuffer(bytes(fids), dtype="<i8").astype(np.int64)
    if len(f) != n:
        raise IndexCorruptError(f"journal record {seq} is truncated")
    if op not in OPS:
        raise IndexCorruptError(
            f"journal record {seq} has unknown op {op!r} (this phonesim writes "
            f"{', '.join(OPS)}): a newer phonesim wrote it, so upgrade this one, or the record "
            "is damaged: restore the index from a snapshot"
        )
    v = None
    if vectors is not None:
        raw = bytes(vectors)
        if len(raw) != n * dim * 4:  # another dimension than the manifest's, or cut short
            raise IndexCorruptError(
                f"journal record {seq} holds {len(raw)} bytes of vectors, not {n} x {dim} float32"
            )
        v = np.frombuffer(raw, dtype="<f4").reshape(n, dim).copy()
    return JournalRecord(seq, op, f, v, decode_items(items), float(ts or 0.0))


@dataclass(frozen=True)
class SyncStatus:
    """How far this process's copy is behind the store, as of its last :meth:`sync`.

    ``applied_seq``: the last journal record applied here; ``head_seq``: the store's last
    record when last reached; ``behind_entries``: their difference; ``behind_seconds``: time
    since this process last was fully caught up (0 when it is); ``journal_length``: records
    not yet folded into a snapshot; ``size``: live items here; ``store_error``: why the last
    attempt to reach the store failed (None when it succeeded); ``catalog_error``: why the
    catalog the store now holds cannot be taken up here (built with another embedder, say),
    while this process answers from the one it loaded; ``checked_at``: :func:`time.monotonic`
    when the store was last asked (0 before).
    """

    applied_seq: int
    head_seq: int
    behind_entries: int
    behind_seconds: float
    journal_length: int
    size: int
    store_error: str | None = None
    checked_at: float = 0.0
    catalog_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.store_error is None and self.catalog_error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied_seq": self.applied_seq,
            "head_seq": self.head_seq,
            "behind_entries": self.behind_entries,
            "behind_seconds": round(self.behind_seconds, 3),
            "journal_length": self.journal_length,
            "size": self.size,
            "store_error": self.store_error,
            "catalog_error": self.catalog_error,
        }


def now() -> float:
    return time.time()
