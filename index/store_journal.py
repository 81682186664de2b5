"""The ``journal`` table of a SQLite catalog store (:mod:`index.store`): appending records
and reading them back (:mod:`index.journal` describes them)."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np

from index.journal import JournalRecord, decode_items, decode_record, fids_blob, vectors_blob


class JournalTable:
    """Mixed into :class:`index.store.CatalogStore`, whose connection and lock it uses."""

    _db: sqlite3.Connection
    lock: threading.RLock

    # -- journal ----------------------------------------------------------------------------
    def journal_append(
        self, op: str, fids: np.ndarray, vectors: np.ndarray | None, items: str | None = None
    ) -> JournalRecord:
        """Append one record (call inside :meth:`transaction`); returns it."""
        ts = time.time()
        with self.lock:
            cur = self._db.execute(
                "INSERT INTO journal(op, n, fids, vectors, ts, items) VALUES (?, ?, ?, ?, ?, ?)",
                (op, len(fids), fids_blob(fids), vectors_blob(vectors), ts, items),
            )
            seq = int(cur.lastrowid)
        return JournalRecord(seq, op, np.asarray(fids, np.int64), vectors, decode_items(items), ts)

    def journal_records(self, after: int, dim: int, limit: int = 0) -> list[JournalRecord]:
        """Records with ``seq > after`` in order (at most ``limit`` when positive)."""
        sql = "SELECT seq, op, n, fids, vectors, items, ts FROM journal WHERE seq > ? ORDER BY seq"
        with self.lock:
            rows = self._db.execute(sql + (f" LIMIT {int(limit)}" if limit > 0 else ""), (after,))
            rows = rows.fetchall()
        return [
            decode_record(
                int(r["seq"]),
                str(r["op"]),
                int(r["n"]),
                r["fids"],
                r["vectors"],
                r["items"],
                r["ts"],
                dim,
            )
            for r in rows
        ]

    def journal_head(self) -> int:
        """The last record's seq (0 if none was ever written)."""
        with self.lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='journal'")
            row = row.fetchone()
        return 0 if row is None else int(row[0])

    def journal_stats(self, after: int) -> tuple[int, int, int, float | None]:
        """``(last seq or after, vectors pending, records, oldest ts)`` after ``after``."""
        with self.lock:
            row = self._db.execute(
                "SELECT max(seq) AS last, coalesce(sum(n), 0) AS pending, count(*) AS n, "
                "min(ts) AS oldest FROM journal WHERE seq > ?",
                (after,),
            ).fetchone()
        last = after if row["last"] is None else int(row["last"])
        return last, int(row["pending"]), int(row["n"]), row["oldest"]

    def journal_truncate(self, upto: int) -> None:
        with self.lock:
            self._db.execute("DELETE FROM journal WHERE seq <= ?", (upto,))
