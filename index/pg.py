"""The PostgreSQL backend: one catalog for processes on several machines (psycopg 3).

The database holds the catalog: ``items(fid, id, metadata, vector)``, ``journal(seq, op, n,
fids, vectors, ts, items)``, ``snapshots(seq, data)`` (the FAISS index as of journal record
``seq``, serialised) and ``state`` (``manifest``, ``next_fid``, ``head_seq``,
``checkpoint_seq``, ``generation``: new at each copy of a folder into it). A write locks the
``head_seq`` row first, so writers serialise and journal records are numbered in commit order
without gaps.

Each replica (any process that opens the store) loads the latest snapshot, the journal after
it and every item into a local in-memory SQLite mirror (:class:`index.store.CatalogStore`),
all from one REPEATABLE READ transaction, then follows the journal by polling ``head_seq``.
Reads are answered from the mirror and the FAISS copy, so they go on while the database is
unreachable; writes then raise :class:`~index.errors.StoreUnavailableError`.
"""

from __future__ import annotations

import json
import logging
import select
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from common.errors import message_line
from index.errors import (
    CatalogReplacedError,
    DuplicateIdError,
    IndexCorruptError,
    IndexNotFoundError,
    ManifestError,
    StoreOutcomeUnknownError,
    StoreRefusedError,
    StoreUnavailableError,
    UnknownIdError,
)
from index.journal import JournalRecord, decode_record, encode_items, fids_blob, vectors_blob
from index.manifest import Manifest, manifest_from_dict
from index.replica import Loaded
from index.store import CatalogStore, StoredItem, merged_metadata

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    fid BIGINT PRIMARY KEY, id TEXT NOT NULL UNIQUE, metadata TEXT NOT NULL, vector BYTEA);
CREATE TABLE IF NOT EXISTS journal (
    seq BIGINT PRIMARY KEY, op TEXT NOT NULL, n INTEGER NOT NULL, fids BYTEA NOT NULL,
    vectors BYTEA, ts DOUBLE PRECISION NOT NULL, items TEXT);
CREATE TABLE IF NOT EXISTS snapshots (seq BIGINT PRIMARY KEY, data BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# One BYTEA value holds at most 1 GB (a 1.1 GB snapshot dropped the connection), about 200,000
# Flat vectors of 1280 floats: a larger snapshot is stored in parts of SNAPSHOT_PART_BYTES in
# snapshot_parts, its row in snapshots left empty. Stores made before parts existed gain the
# table with their first such snapshot.
PARTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot_parts (
    seq BIGINT NOT NULL, part INTEGER NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (seq, part));
"""
SCHEMA += PARTS_SCHEMA
SNAPSHOT_PART_BYTES = 256 * 1024 * 1024
# Up to this a snapshot stays one value, as every phonesim before parts reads it: replicas of an
# older release go on loading the store during a rolling upgrade wherever they could before
# (parts from 256 MiB on had stopped them, with FAISS's "read error"). No more: a value is read
# as hex text, twice its size, and PostgreSQL allocates at most 1 GB (a 600 MiB value was
# written and then could not be read: "invalid memory alloc request size 1258291203").
SNAPSHOT_ONE_VALUE_MAX = 500 * 1024 * 1024
TABLES = ("items", "journal", "snapshots", "snapshot_parts", "state")
_COMPACT_LOCK = 0x7068_6F6E  # the advisory lock of the one compactor ("phon")
# A dead peer (a partition, a crashed host) is noticed within about 30 s instead of the
# kernel's two hours, so a sync does not hang on it (a frozen server the kernel still answers
# for is bounded by the server's follower instead: see server/follower.py).
_CONNECT_OPTIONS = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
# How long a write waits for another writer's lock before answering "unavailable, retry" (the
# SQLite store's busy timeout is the same).
_LOCK_TIMEOUT_S = 30
# A write waits for this process's write connection while its holder has had it this long at
# most; past that the store is taken as not answering (a frozen server, which no timeout of
# the connection notices: its kernel still acknowledges) and the write is a 503. Else every
# request thread of the worker queues behind the stuck one, its health checks included.
WRITE_STALL_S = 5.0


class _Connection:
    """One psycopg connection (opened on first use) and the lock of its users."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.conn: Any = None
        self.since: float | None = None  # monotonic time its current user took it

    @contextmanager
    def held(self, where: str, stall_s: float | None) -> Iterator[None]:
        """Hold the lock; with ``stall_s``, give up waiting (StoreUnavailableError) once the
        current user has held it that long. The lock is re-entrant: the outermost use is
        the one timed."""
        if stall_s is None:
            self.lock.acquire()
        else:
            while not self.lock.acquire(timeout=0.1):
                since = self.since
                waited = 0.0 if since is None else time.monotonic() - since
                if waited > stall_s:
                    raise StoreUnavailableError(
                        f"{where}: not answering (a write has waited {waited:.0f} s for it)"
                    )
        outer = self.since is None
        if outer:
            self.since = time.monotonic()
        try:
            yield
        finally:
            if outer:
                self.since = None
            self.lock.release()

    def drop(self) -> None:
        if self.conn is not None:
            with suppress(Exception):
                self.conn.close()
            self.conn = None


def _has_spoken(conn: Any) -> bool:
    """Whether the server has sent anything on an idle connection (its farewell, or the end
    of the stream), without waiting or a round trip."""
    try:
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError):
        return True  # no usable socket: reconnect


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:
        return "postgresql://?"
    host = parts.get("host", "localhost")
    port = parts.get("port", "5432")
    return f"postgresql://{parts.get('user', '')}@{host}:{port}/{parts.get('dbname', '')}"


def catalog_state(c: Any) -> bool:
    """Whether the database's ``state`` table has a catalog's columns (``key``, ``value``), not
    another application's."""
    columns = {
        r[0]
        for r in c.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = 'state'"
        ).fetchall()
    }
    return {"key", "value"} <= columns


class PgSource:
    """Writes, the journal and snapshots of a PostgreSQL store, and this replica's mirror."""

    kind = "postgresql"
    cheap_check = False  # a change check is a round trip: follow by polling (sync) instead
    mirrors_records = True  # the local mirror changes only by the records applied to it
    compactor = ""  # an advisory lock's holder is a server backend, not a process to name

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redact(url)
        # Two connections, each with its own lock: a write waiting for the head_seq row (held
        # by another writer, up to _LOCK_TIMEOUT_S) must not hold up this process's reads of
        # the journal, which every request's catch-up needs.
        self._read = _Connection()
        self._write_conn = _Connection()
        self._compact = _Connection()  # snapshot uploads, opened on the first compaction
        self._head: int | None = None
        self._generation: str | None = None
        self._replaced = False
        # (seq, ts) of the last journal record this replica holds: a database restored from
        # a dump keeps its generation, but numbers its later records anew, so a record of
        # that number with another time means this replica follows a catalog that is gone.
        self._last: tuple[int, float] | None = None
        self.store = CatalogStore(":memory:", create=True)  # replaced at each load

    # -- connection ---------------------------------------------------------------------------
    def _connect(self, held: _Connection) -> Any:
        import psycopg

        if held.conn is not None and not held.conn.closed and _has_spoken(held.conn):
            # An idle connection the server has written to has been ended by it (a restart,
            # pg_terminate_backend): found now, a fresh one serves this use instead of the
            # write failing, or a request's catch-up answering from an old state.
            held.drop()
        if held.conn is None or held.conn.closed:
            try:
                held.conn = psycopg.connect(self.url, autocommit=True, **_CONNECT_OPTIONS)
            except psycopg.ProgrammingError as exc:  # a malformed URL: its text holds the password
                raise StoreUnavailableError(
                    f"{self.where}: not a valid PostgreSQL URL ({type(exc).__name__}; "
                    "write it as postgresql://user:password@host:port/dbname)"
                ) from None
        return held.conn

    @contextmanager
    def conn(self, *, write: bool = False, compacting: bool = False) -> Iterator[Any]:
        """This process's reading (or writing, or compaction's) connection, reconnecting as
        needed. A database that cannot be reached, or whose catalog tables are gone (a restore
        between its DROP and CREATE), becomes :class:`StoreUnavailableError` and drops the
        connection; a statement the database refuses for its data is a
        :class:`StoreRefusedError`. A write waits for the writing connection at most while
        its holder has had it :data:`WRITE_STALL_S`."""
        import psycopg
        from psycopg import errors

        held = self._compact if compacting else self._write_conn if write else self._read
        with held.held(self.where, WRITE_STALL_S if write and not compacting else None):
            try:
                yield self._connect(held)
            except (errors.ProgramLimitExceeded, psycopg.DataError) as exc:
                raise StoreRefusedError(f"{self.where}: refused ({message_line(exc)})") from exc
            except StoreOutcomeUnknownError:
                held.drop()
                raise
            except errors.UndefinedColumn as exc:  # tables of the name, not of this schema
                held.drop()
                raise IndexCorruptError(
                    f"{self.where}: its catalog tables are not those phonesim writes "
                    f"({message_line(exc)}); push the catalog again ('phonesim index build "
                    "--store URL --overwrite') or restore it from a snapshot"
                ) from exc
            except (
                psycopg.OperationalError,
                psycopg.InterfaceError,
                errors.UndefinedTable,
            ) as exc:
                held.drop()
                msg = message_line(exc)
                raise StoreUnavailableError(f"{self.where}: unavailable ({msg})") from exc

    def close(self) -> None:
        for held in (self._read, self._write_conn, self._compact):
            with held.lock:
                held.drop()
        self.store.close()

    def manifest(self) -> Manifest:
        with self.conn() as c:
            manifest = "SELECT value FROM state WHERE key='manifest'"
            # No state table, or another application's: no catalog either way.
            row = c.execute(manifest).fetchone() if catalog_state(c) else None
        return self._parse_manifest(row[0] if row else None)

    def _parse_manifest(self, text: str | None) -> Manifest:
        """The catalog's manifest from ``state``'s value (None: no catalog in the database)."""
        if text is None:
            raise IndexNotFoundError(f"{self.where}: no catalog in this database")
        where = f"{self.where} (state.manifest)"
        try:
            found = json.loads(text)
        except ValueError as exc:
            raise ManifestError(f"{where}: not valid JSON ({exc})") from None
        return manifest_from_dict(found, where)

    # -- following ------------------------------------------------------------------------------
    def head(self) -> tuple[int, int]:
        last_seq, last_ts = self._last or (-1, None)
        with self.conn() as c:
            found = c.execute(
                "SELECT key, value, (SELECT ts FROM journal WHERE seq = %s) FROM state "
                "WHERE key IN ('head_seq', 'checkpoint_seq', 'generation')",
                (last_seq,),
            ).fetchall()
        rows = {key: value for key, value, _ in found}
        ts_now = found[0][2] if found else None
        self._head = int(rows.get("head_seq", 0))
        self._replaced = rows.get("generation") != self._generation or (
            ts_now is not None and last_ts is not None and ts_now != last_ts
        )
        return self._head, int(rows.get("checkpoint_seq", 0))

    def replaced(self) -> bool:
        """Whether the catalog was replaced since this replica loaded it: by ``restore``, or
        by a database restore from a dump (``pg_restore --clean``)."""
        return self._replaced

    def changed(self) -> bool:
        before = self._head
        # A restore leaves head_seq as it may have been (0 after 0): the generation tells.
        return self.head()[0] != before or self._replaced

    def records(self, after: int, dim: int) -> list[JournalRecord]:
        with self.conn() as c:
            rows = c.execute(
                "SELECT seq, op, n, fids, vectors, items, ts FROM journal WHERE seq > %s "
                "ORDER BY seq",
                (after,),
            ).fetchall()
        return [decode_record(r[0], r[1], r[2], r[3], r[4], r[5], r[6], dim) for r in rows]

    def disk_bytes(self) -> int:
        """What the catalog's tables take in the database, indexes and TOAST included
        (``index info`` had shown 0 B for a store)."""
        with self.conn() as c:
            row = c.execute(
                "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) FROM "
                "unnest(ARRAY['items', 'journal', 'snapshots', 'snapshot_parts', 'state']) AS t"
            ).fetchone()
        return int(row[0])

    def journal_stats(self) -> tuple[int, int, float | None]:
        with self.conn() as c:
            row = c.execute(
                "SELECT count(*), coalesce(sum(n), 0), min(ts) FROM journal WHERE seq > "
                "(SELECT value::bigint FROM state WHERE key='checkpoint_seq')"
            ).fetchone()
        return int(row[0]), int(row[1]), row[2]

    def load(self, dim: int, expect: Manifest | None = None) -> Loaded:
        """The snapshot, the journal after it and every item, from one MVCC snapshot, with the
        catalog's manifest. A catalog built with another embedder than ``expect``'s (model,
        checkpoint, dimension: a restore or rebuild replaced it) is an
        :class:`~index.errors.IndexMismatchError`, raised before anything is read."""
        mirror = CatalogStore(":memory:", create=True)
        mirror.set_synchronous("OFF")
        with self.conn() as c, c.transaction():
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            state = dict(c.execute("SELECT key, value FROM state").fetchall())
            manifest = self._parse_manifest(state.get("manifest"))
            if expect is not None:
                manifest.check(
                    expect_model=expect.model_name,
                    expect_checkpoint_hash=expect.checkpoint_hash,
                    expect_dim=expect.dim,
                    where=f"the catalog now in {self.where}",
                    from_checkpoint=False,  # the catalog it loaded is the expectation
                    fix="This process keeps answering from the catalog it loaded and refuses "
                    "writes: restart it with the new catalog's checkpoint, or restore a "
                    "catalog of its own.",
                )
            ck = int(state.get("checkpoint_seq", 0))
            data = read_snapshot(c, ck)
            if data is None:
                raise IndexNotFoundError(f"{self.where}: snapshot of record {ck} is missing")
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
            del data
            recs = c.execute(
                "SELECT seq, op, n, fids, vectors, items, ts FROM journal WHERE seq > %s "
                "ORDER BY seq",
                (ck,),
            ).fetchall()
            records = [decode_record(*r[:7], dim) for r in recs]
            at_ck = c.execute("SELECT ts FROM journal WHERE seq=%s", (ck,)).fetchone()
            n = 0
            with c.cursor(name="phonesim_items") as cur, mirror.transaction():
                cur.itersize = 5000
                cur.execute("SELECT fid, id, metadata FROM items ORDER BY fid")
                while batch := cur.fetchmany(5000):
                    fids = [r[0] for r in batch]
                    mirror.insert_items(
                        fids, [r[1] for r in batch], [json.loads(r[2]) for r in batch]
                    )
                    n += len(batch)
                next_fid = int(state.get("next_fid", 0))
                mirror.set_state(next_fid=next_fid)
        self._head = int(state.get("head_seq", 0))
        self._generation, self._replaced = state.get("generation"), False
        if records:
            self._last = (records[-1].seq, records[-1].ts)
        else:  # the snapshot's own record, while compaction keeps it
            self._last = (ck, at_ck[0]) if at_ck is not None else None
        live = mirror.live_fids()
        name = f"snapshot {ck}"
        return Loaded(index, name, ck, records, n, live, next_fid, mirror, manifest)

    def installed(self, loaded: Loaded) -> None:
        """Read from the mirror loaded with the replica (the old one goes with its readers)."""
        if loaded.mirror is not None:
            self.store = loaded.mirror

    def apply_local(self, rec: JournalRecord) -> None:
        self.store.apply(rec)
        self._last = (rec.seq, rec.ts)

    # -- writes ---------------------------------------------------------------------------------
    @contextmanager
    def _write_transaction(self, compacting: bool = False) -> Iterator[Any]:
        """A transaction on the writing connection (``compacting``: compaction's own) whose
        lock waits end after ``_LOCK_TIMEOUT_S`` as "unavailable, retry" (a 503), not a hang.
        (Set per transaction: a session option would replace the ``options`` a store URL may
        carry.)"""
        import psycopg

        with self.conn(write=True, compacting=compacting) as c:
            committing = False
            try:
                with c.transaction():
                    c.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT_S}s'")
                    yield c
                    committing = True  # the COMMIT is sent as the block ends
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not committing or not (c.broken or c.closed):
                    # Before the COMMIT, or an answer to it (a failed commit is rolled back):
                    # nothing was written, and conn() says "unavailable".
                    raise
                # No answer to the COMMIT: the server may have made it before the break.
                raise StoreOutcomeUnknownError(
                    f"{self.where}: the connection broke while the write was committing "
                    f"({message_line(exc)}); it may have been made"
                ) from exc

    @contextmanager
    def _write(self) -> Iterator[tuple[Any, int]]:
        """A write transaction holding the ``head_seq`` row: ``(connection, next seq)``. Only
        into the catalog this replica loaded: one that a restore or rebuild replaced since
        (the write may have waited for it) is :class:`CatalogReplacedError`, nothing written.
        Its record would have been numbered in the new catalog's journal and applied here on
        top of the old one (a 1280-d record in a 64-d catalog broke every later open)."""
        with self._write_transaction() as c:
            head = int(
                c.execute("SELECT value FROM state WHERE key='head_seq' FOR UPDATE").fetchone()[0]
            )
            row = c.execute("SELECT value FROM state WHERE key='generation'").fetchone()
            if (row[0] if row else None) != self._generation:
                self._replaced = True  # the next sync reloads (or reports another embedder)
                raise CatalogReplacedError(
                    f"{self.where}: the catalog was replaced (index restore or build "
                    "--overwrite) since this process loaded it; nothing was written: try again "
                    "once it has reloaded the new one"
                )
            yield c, head + 1

    def _journal(self, c: Any, seq: int, op: str, fids: np.ndarray, vectors: Any, items: Any):
        ts = time.time()
        c.execute(
            "INSERT INTO journal(seq, op, n, fids, vectors, ts, items) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (seq, op, len(fids), fids_blob(fids), vectors_blob(vectors), ts, items),
        )
        c.execute("UPDATE state SET value=%s WHERE key='head_seq'", (str(seq),))
        return ts

    def commit_add(
        self, ids: Sequence[str], xb: np.ndarray, mds: Sequence[Mapping[str, Any]]
    ) -> JournalRecord:
        with self._write() as (c, seq):
            rows = c.execute("SELECT id FROM items WHERE id = ANY(%s)", (list(ids),)).fetchall()
            if rows:
                shown = ", ".join(repr(r[0]) for r in rows[:5])
                raise DuplicateIdError(
                    f"{len(rows)} id(s) already in the index: {shown}; remove them first"
                )
            start = int(c.execute("SELECT value FROM state WHERE key='next_fid'").fetchone()[0])
            fids = np.arange(start, start + len(ids), dtype=np.int64)
            vec = np.ascontiguousarray(xb, dtype="<f4")
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO items(fid, id, metadata, vector) VALUES (%s, %s, %s, %s)",
                    [
                        (int(f), i, json.dumps(m, ensure_ascii=False), vec[j].tobytes())
                        for j, (f, i, m) in enumerate(zip(fids, ids, mds, strict=True))
                    ],
                )
            items = encode_items(ids, mds)
            ts = self._journal(c, seq, "add", fids, xb, items)
            c.execute("UPDATE state SET value=%s WHERE key='next_fid'", (str(start + len(ids)),))
        return JournalRecord(seq, "add", fids, xb, json_items(items), ts)

    def commit_remove(self, ids: Sequence[str]) -> JournalRecord:
        with self._write() as (c, seq):
            found = dict(
                c.execute("SELECT id, fid FROM items WHERE id = ANY(%s)", (list(ids),)).fetchall()
            )
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownIdError(missing, "remove")
            fids = np.array([found[i] for i in ids], dtype=np.int64)
            c.execute("DELETE FROM items WHERE fid = ANY(%s)", (fids.tolist(),))
            ts = self._journal(c, seq, "remove", fids, None, None)
        return JournalRecord(seq, "remove", fids, None, None, ts)

    def commit_meta(
        self,
        id_: str,
        metadata: Mapping[str, Any],
        merge: bool,
        check: Callable[[Mapping[str, Any]], None] | None = None,
        keep: Collection[str] = (),
    ) -> tuple[JournalRecord, StoredItem]:
        with self._write() as (c, seq):
            row = c.execute("SELECT fid, metadata FROM items WHERE id=%s", (id_,)).fetchone()
            if row is None:
                raise UnknownIdError([id_], "update")
            md = merged_metadata(json.loads(row[1]), metadata, merge, keep)
            if check is not None:
                check(md)
            c.execute(
                "UPDATE items SET metadata=%s WHERE fid=%s",
                (json.dumps(md, ensure_ascii=False), row[0]),
            )
            fids = np.array([row[0]], np.int64)
            items = encode_items([id_], [md])
            ts = self._journal(c, seq, "meta", fids, None, items)
        return JournalRecord(seq, "meta", fids, None, json_items(items), ts), StoredItem(
            int(row[0]), id_, md
        )

    # -- snapshots ------------------------------------------------------------------------------
    @contextmanager
    def compaction_lock(self) -> Iterator[bool]:
        """The session advisory lock of the one compactor (never waits)."""
        with self.conn(write=True) as c:
            got = bool(c.execute("SELECT pg_try_advisory_lock(%s)", (_COMPACT_LOCK,)).fetchone()[0])
        try:
            yield got
        finally:
            if got:
                try:
                    with self.conn(write=True) as c:
                        c.execute("SELECT pg_advisory_unlock(%s)", (_COMPACT_LOCK,))
                except StoreUnavailableError:
                    pass  # the session is gone, and its lock with it

    # The snapshot is serialised under the caller's locks (freeze) and uploaded without them.
    snapshot_outside_apply = True

    def freeze(self, index: faiss.Index) -> FrozenSnapshot:
        """``index`` serialised, as :meth:`commit_snapshot` stores it, with the catalog it
        belongs to (call under the apply lock, where index and catalog agree)."""
        return FrozenSnapshot(faiss.serialize_index(index).tobytes(), self._generation, self._last)

    def commit_snapshot(self, index: faiss.Index | FrozenSnapshot, seq: int) -> bool:
        """Store ``index`` (as of record ``seq``; or its :meth:`freeze`) as the snapshot and
        drop the journal up to the previous one, unless a snapshot as new exists, or the
        catalog was replaced since the freeze (a restore during the upload: the old snapshot
        would have overwritten the restored one). Replicas loading meanwhile keep their MVCC
        view."""
        frozen = index if isinstance(index, FrozenSnapshot) else self.freeze(index)
        # Its own connection: an upload of seconds must not hold up this process's writes.
        with self._write_transaction(compacting=True) as c:
            state = dict(
                c.execute(
                    "SELECT key, value FROM state WHERE key IN ('checkpoint_seq', 'generation') "
                    "FOR UPDATE"
                ).fetchall()
            )
            cur = int(state["checkpoint_seq"])
            if cur >= seq:
                return False
            if not self._same_catalog(c, frozen, state.get("generation"), seq):
                log.info(
                    "%s: catalog replaced during a compaction; its snapshot dropped", self.where
                )
                return False
            write_snapshot(c, seq, frozen.data)
            c.execute("UPDATE state SET value=%s WHERE key='checkpoint_seq'", (str(seq),))
            c.execute("DELETE FROM snapshots WHERE seq < %s", (seq,))
            if _has_parts_table(c):
                c.execute("DELETE FROM snapshot_parts WHERE seq < %s", (seq,))
            # Records since the previous snapshot stay, for replicas a little behind.
            c.execute("DELETE FROM journal WHERE seq <= %s", (cur,))
        return True

    @staticmethod
    def _same_catalog(c: Any, frozen: FrozenSnapshot, generation: str | None, seq: int) -> bool:
        """Whether the database still holds the catalog ``frozen`` was taken from: the same
        generation (``restore``) and, for its last record, the same time (a dump restored with
        ``pg_restore --clean`` keeps the generation but numbers its later records anew)."""
        if generation != frozen.generation:
            return False
        if frozen.last is None or frozen.last[0] != seq:
            return True
        row = c.execute("SELECT ts FROM journal WHERE seq = %s", (seq,)).fetchone()
        return row is not None and row[0] == frozen.last[1]

    def clean_up(self, current: str) -> None:
        """Nothing is left behind in the database by an interrupted compaction."""


@dataclass(frozen=True)
class FrozenSnapshot:
    """A replica's index serialised under its apply lock (:meth:`PgSource.freeze`), with the
    catalog generation and the (seq, ts) of the last journal record it holds."""

    data: bytes
    generation: str | None
    last: tuple[int, float] | None


def json_items(text: str) -> list[tuple[str, dict[str, Any]]]:
    return [(str(i), dict(m)) for i, m in json.loads(text)]


def write_snapshot(c: Any, seq: int, data: bytes) -> None:
    """Store the serialised FAISS index ``data`` as snapshot ``seq`` (in the caller's
    transaction): in one row of ``snapshots``, or in parts when one value could not hold it."""
    if _has_parts_table(c):
        # Parts of this record or later can only be left over: an older phonesim's push with
        # --overwrite numbers records from 0 again and drops only the tables it knows.
        c.execute("DELETE FROM snapshot_parts WHERE seq >= %s", (seq,))
    if len(data) <= SNAPSHOT_ONE_VALUE_MAX:
        c.execute("INSERT INTO snapshots(seq, data) VALUES (%s, %s)", (seq, data))
        return
    c.execute(PARTS_SCHEMA)
    c.execute("INSERT INTO snapshots(seq, data) VALUES (%s, %s)", (seq, b""))
    view = memoryview(data)
    for part, start in enumerate(range(0, len(data), SNAPSHOT_PART_BYTES)):
        c.execute(
            "INSERT INTO snapshot_parts(seq, part, data) VALUES (%s, %s, %s)",
            (seq, part, view[start : start + SNAPSHOT_PART_BYTES]),
        )


def read_snapshot(c: Any, seq: int) -> bytearray | bytes | None:
    """Snapshot ``seq``'s bytes (None when there is none), a stored-in-parts one read part by
    part into one buffer, so that memory holds it once and one part."""
    row = c.execute("SELECT data FROM snapshots WHERE seq=%s", (seq,)).fetchone()
    if row is None:
        return None
    if len(row[0]):
        return bytes(row[0])
    sizes = (
        c.execute(
            "SELECT part, length(data) FROM snapshot_parts WHERE seq=%s ORDER BY part", (seq,)
        ).fetchall()
        if _has_parts_table(c)
        else []
    )
    if [part for part, _ in sizes] != list(range(len(sizes))) or not sizes:
        raise IndexCorruptError(f"snapshot of record {seq}: its parts are missing")
    buffer = bytearray(sum(size for _, size in sizes))
    at = 0
    for part, size in sizes:
        data = c.execute(
            "SELECT data FROM snapshot_parts WHERE seq=%s AND part=%s", (seq, part)
        ).fetchone()[0]
        buffer[at : at + size] = data
        at += size
    return buffer


def _has_parts_table(c: Any) -> bool:
    return c.execute("SELECT to_regclass('snapshot_parts')").fetchone()[0] is not None
