"""The catalog store: string ids, FAISS ids, metadata and the write-ahead journal in SQLite.

One SQLite database (WAL mode, ``synchronous=FULL``) holds:

- ``items(fid, id, metadata)``: the FAISS int64 id (``fid``) of every live item, its catalog id
  and its metadata as a JSON object;
- ``attrs(field, value, fid)``: every scalar metadata value as text, the index behind filters;
- ``fields(name)``: the filterable field names;
- ``journal(seq, op, n, fids, vectors, ts, items)``: changes not yet folded into the FAISS
  file (:mod:`index.journal`);
- ``state(key, value)``: the next free fid and which FAISS file holds the last checkpoint.

An add, remove or metadata update is one SQLite transaction that changes ``items``/``attrs``
and appends its journal record, so a committed change is durable and complete or absent after
a crash. The same class, in memory, is a PostgreSQL replica's local mirror (:mod:`index.pg`).
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from common.errors import OutOfResourcesError, resources_exhausted
from common.fsutil import share_file
from index.errors import SQLITE_FULL, IndexCorruptError, StoreMachineError
from index.filters import FilterEngine, RowChanges
from index.inputs import canonical_value
from index.journal import JournalRecord
from index.store_journal import JournalTable

log = logging.getLogger(__name__)

STORE_NAME = "catalog.sqlite"
BUSY_TIMEOUT_MS = 30_000  # how long a write waits for another writer's lock
_CHANGES_KEPT = 64  # bumps whose changes row_changes_since remembers
_CHANGE_ROWS_KEPT = 200_000  # ... holding at most this many rows in all
_ROWS_TRACKED = 100_000  # filter rows a write may change and still say which
_TOUCHED_READ = 2_000  # items others changed whose rows are read again (~40 ms, searches wait)
_CHUNK = 900  # stay under SQLite's bound-variable limit on every build
_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    fid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attrs (
    field TEXT NOT NULL, value TEXT NOT NULL, fid INTEGER NOT NULL,
    PRIMARY KEY (field, value, fid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fields (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL, n INTEGER NOT NULL,
    fids BLOB NOT NULL,
    vectors BLOB, ts REAL, items TEXT);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

_NEW_COLS = {"ts": "REAL", "items": "TEXT"}
_TABLES = frozenset({"items", "attrs", "fields", "journal", "state"})


# SQLite's primary result codes for a machine that failed the write, not a damaged file,
# and for a damaged file.
_SQLITE_IOERR = 10
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _descriptors_exhausted(path: str | Path) -> str | None:
    """Why no file can be opened here now (``Too many open files``), or None: SQLite reports
    it as "unable to open database file", which read as a damaged store (exit 2)."""
    try:
        fd = os.open(Path(path).parent, os.O_RDONLY)
    except OSError as exc:
        return exc.strerror if resources_exhausted(exc) else None
    os.close(fd)
    return None


def machine_failure(exc: sqlite3.Error) -> bool:
    """Whether SQLite failed for the machine's sake (disk full, I/O error), not the file's."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (_SQLITE_IOERR, SQLITE_FULL)


def damaged_file(exc: sqlite3.Error) -> bool:
    """Whether SQLite found the file damaged ("database disk image is malformed")."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


#: Bytes SQLite's WAL file is truncated to after a checkpoint resets it.
WAL_SIZE_LIMIT = 4 * 2**20


class StoredItem(NamedTuple):
    """One row of ``items``: FAISS id, catalog id and metadata."""

    fid: int
    id: str
    metadata: dict[str, Any]


def merged_metadata(
    stored: Mapping[str, Any], given: Mapping[str, Any], merge: bool, keep: Collection[str]
) -> dict[str, Any]:
    """An item's new metadata: ``given`` over the ``stored`` fields (``merge``), or ``given``
    and the ``keep`` fields the item has."""
    if merge:
        return {**stored, **given}
    return {**given, **{k: stored[k] for k in keep if k in stored}}


class CatalogStore(JournalTable):
    """SQLite-backed catalog: an index folder's store, or a PostgreSQL replica's local mirror
    (``path=":memory:"``); every method is thread-safe.

    No read transaction stays open between calls (one would keep SQLite from checkpointing its
    WAL, which then grows without bound): each call is its own short transaction, and
    :meth:`read_txn` groups the reads that must agree (loading a replica).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        create: bool = False,
        frozen: bool = False,
    ) -> None:
        memory = str(path) == ":memory:"
        self.path = Path(path)
        self.readonly = readonly or frozen
        self.frozen = frozen
        self.lock = threading.RLock()
        if not memory and not create and not self.path.is_file():
            raise IndexCorruptError(f"{self.path}: catalog store is missing")
        try:
            if self.readonly:
                self._db = sqlite3.connect(
                    read_only_uri(self.path, frozen),
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                made = create and not memory and not self.path.exists()
                self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
                if made:
                    # SQLite makes its files 0644 whatever the umask (its -wal and -shm take the
                    # store's mode): in a group-shared folder another user of the group could
                    # not write to a store one had built (every write a 503).
                    share_file(self.path)
                if create:
                    # Before WAL and the tables, or it does not take: pages freed by removes
                    # and by the journal truncated at compaction go back to the file system
                    # (release_free_pages); an index emptied by add/remove cycles had kept
                    # 296 MiB. A store that already has tables keeps its setting.
                    self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                if not memory:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    # Once checkpointed, the WAL file is cut back to this: it kept its largest
                    # size for good (12.7 MB after a compaction in a review's soak).
                    self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.row_factory = sqlite3.Row  # columns read by name
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if create:
                self._db.executescript(_SCHEMA)
            # Read the schema now: a damaged or foreign file fails here, as one clear error,
            # rather than as an sqlite3 traceback at the first query.
            tables = {r["name"] for r in self._db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            if getattr(self, "_db", None) is not None:
                self._db.close()
            if machine_failure(exc):  # a full disk or an I/O error: the file is not at fault
                raise StoreMachineError.of(self.path, exc) from exc
            exhausted = _descriptors_exhausted(self.path)
            if exhausted:  # SQLite says only "unable to open database file"
                raise OutOfResourcesError(
                    f"{self.path}: cannot open the catalog store: {exhausted} (raise the "
                    "open-file limit, ulimit -n); nothing was changed"
                ) from exc
            if frozen and _wal_without_shm(self.path):  # on read-only media (see read_only_uri)
                raise IndexCorruptError(
                    f"{self.path}: the store's -wal file is not empty and its -shm file is "
                    "missing (a copy of a folder in use, or a crash), and on read-only media "
                    "SQLite cannot read the one without the other, while the store alone may "
                    "lack the last changes; open the folder once where it is writable, or copy "
                    "it to a writable place"
                ) from exc
            if not frozen and not os.access(Path(self.path).parent, os.W_OK):  # not ours to write
                raise IndexCorruptError(
                    f"{Path(self.path).parent}: the index folder is not writable here, and SQLite "
                    "needs to write beside its store even to read it; copy the folder to a "
                    "writable place"
                ) from exc
            raise IndexCorruptError(f"{self.path}: not a readable catalog store ({exc})") from exc
        missing = sorted(_TABLES - tables)
        if missing:
            self._db.close()
            raise IndexCorruptError(f"{self.path}: catalog store lacks table(s) {missing}")
        self.generation = 0  # bumped whenever cached reads may be stale (index.filters)
        # The filter rows (field, value, fid) this store's own deletes and inserts wrote since
        # the last bump, and per bump the rows changed (None: unknown): filter caches are
        # updated by them (rebuilding a field's was O(items) after every write: 0.45 s at
        # 200,000 items). A metadata update deletes and inserts an item's rows: only the
        # rows whose values differ changed.
        self._deleted_rows: set[tuple[str, str, int]] | None = set()
        self._inserted_rows: set[tuple[str, str, int]] | None = set()
        self._changes: list[tuple[int, RowChanges | None]] = []
        self._filters = FilterEngine(self)
        self._fields: frozenset[str] | None = None
        # (field, texts) -> (generation, sorted fids): equality matches, followed through
        # row_changes_since when next read
        self._filter_cache: dict[tuple, tuple[int, np.ndarray]] = {}
        self._migrate()

    def _migrate(self) -> None:
        """Folders written before the journal carried commit times and item rows get the two
        columns (NULL in old records: nothing reads them there)."""
        cols = {r["name"] for r in self._db.execute("PRAGMA table_info(journal)")}
        todo = [c for c in ("ts", "items") if c not in cols]
        if not todo:
            return
        if self.readonly:
            where = "copy the folder to a writable place and " if self.frozen else ""
            raise IndexCorruptError(
                f"{self.path}: written by an older phonesim; {where}run "
                f"'phonesim index compact --index {self.path.parent}' once to upgrade it"
            )
        with self.transaction():
            for col in todo:
                self._db.execute(f"ALTER TABLE journal ADD COLUMN {col} {_NEW_COLS[col]}")
        log.info("%s: upgraded the journal (columns %s)", self.path, ", ".join(todo))

    # -- lifecycle and transactions -------------------------------------------------------
    def close(self) -> None:
        with self.lock:
            self._db.close()

    def set_synchronous(self, mode: str) -> None:
        """``FULL`` (durable commits, the default) or ``OFF`` (bulk loads into a fresh folder)."""
        with self.lock:
            self._db.execute(f"PRAGMA synchronous={mode}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; committed (and fsynced) on success, rolled back on error.

        ``BEGIN IMMEDIATE`` takes SQLite's write lock at once, so writers of every process
        serialise here (waiting up to the busy timeout)."""
        with self.lock, self._damage_named():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                # SQLite has rolled back already after some failures (a full disk): a second
                # ROLLBACK raised "no transaction is active" in place of the real error.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._forget_rows()
                raise
            try:
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite keeps the transaction open after some failed commits: every later
                # BEGIN on this connection, shared by the process, would fail ("within a
                # transaction") until a restart.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                self._forget_rows()
                raise
            self.invalidate_caches(known=True)

    def _forget_rows(self) -> None:
        """After a rollback the rows tracked no longer say what changed (its rows were never
        written, and a row it deleted and re-inserted would cancel a later real change): the
        next bump drops every filter cache."""
        self._deleted_rows = self._inserted_rows = None

    @contextmanager
    def read_txn(self) -> Iterator[None]:
        """Group reads into one consistent view, released on exit (never held between calls)."""
        with self.lock, self._damage_named():
            self._db.execute("BEGIN")
            try:
                yield
            finally:
                if self._db.in_transaction:  # a failed read may have ended it
                    self._db.execute("COMMIT")

    @contextmanager
    def _damage_named(self) -> Iterator[None]:
        """A damaged page found while reading or writing is :class:`IndexCorruptError`, one
        line naming the file; it was an sqlite3 traceback in every command and server worker
        (the schema check at open reads only the first pages)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if not damaged_file(exc):
                raise
            raise self._damaged(str(exc)) from exc

    def release_free_pages(self) -> None:
        """Give the store's free pages back to the file system, where it was created with
        incremental auto-vacuum (a no-op for older stores). Outside a transaction: through
        ``executescript``, which steps the pragma to its end (``execute`` frees one page)."""
        try:
            with self.lock:
                self._db.executescript("PRAGMA incremental_vacuum;")
        except sqlite3.Error as exc:  # a saving, not a change: the compaction stands
            log.warning("%s: free pages not given back this time (%s)", self.path, exc)

    def check_integrity(self) -> None:
        """Read every page (SQLite's ``quick_check``): :class:`IndexCorruptError` where one is
        damaged. For ``index info``, the health check; a query reads only what it needs."""
        with self.lock, self._damage_named():
            rows = [r[0] for r in self._db.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise self._damaged(" ".join("; ".join(rows).split())[:300])  # rows hold line breaks

    def _damaged(self, what: str) -> IndexCorruptError:
        return IndexCorruptError(
            f"{self.path}: the catalog store is damaged ({what}); restore the index from a "
            "snapshot or build it again"
        )

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes whenever another connection commits."""
        with self.lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def invalidate_caches(self, known: bool = False, touched: np.ndarray | None = None) -> None:
        """Bump :attr:`generation`: cached reads may be stale. ``known``: every change since
        the last bump went through this store (its own inserts and deletes), which tracked
        the rows changed. ``touched``: the fids whose items other processes changed (the
        journal records just applied); their rows are read again here. Neither: any row may
        have changed, every filter cache goes."""
        with self.lock:
            changes = None
            if not (self._filter_cache or self._filters.holds_caches()):
                pass  # nothing cached to update: not worked out (an engine racing drops all)
            elif touched is not None:
                changes = self._rows_now(touched)
            elif known and self._deleted_rows is not None and self._inserted_rows is not None:
                changes = _row_changes(self._deleted_rows, self._inserted_rows)
            self._deleted_rows, self._inserted_rows = set(), set()
            self.generation += 1
            self._changes = [*self._changes[-(_CHANGES_KEPT - 1) :], (self.generation, changes)]
            held = 0
            for i in range(len(self._changes) - 1, -1, -1):  # the newest kept, in a budget
                change = self._changes[i][1]
                held += 0 if change is None else change.size
                if held > _CHANGE_ROWS_KEPT:
                    self._changes[i] = (self._changes[i][0], None)
            self._fields = None
            if changes is None:
                self._filter_cache.clear()

    def _rows_now(self, touched: np.ndarray) -> RowChanges | None:
        """The filter rows the items ``touched`` hold now, as the change that gives them
        (None where they are too many to read: a rebuild is then cheaper, or where they
        cannot be read: every cache goes, as before this was known)."""
        touched = np.unique(np.asarray(touched, np.int64))
        if len(touched) > _TOUCHED_READ:
            return None
        try:
            items = self.lookup(touched.tolist())
        except (sqlite3.Error, OSError) as exc:
            log.warning("%s: filter caches dropped (%s)", self.path, exc)
            return None
        rows = [row for item in items.values() for row in _attr_rows(item.fid, item.metadata)]
        return RowChanges({}, touched, _by_field(rows))

    def row_changes_since(self, generation: Any) -> list[RowChanges] | None:
        """What changed after ``generation``, a :class:`RowChanges` per bump, in order; None
        when unknown (some change's rows were not known, or ``generation`` is older than the
        changes kept)."""
        with self.lock:
            if not isinstance(generation, int) or not self._changes:
                return None
            if generation < self._changes[0][0] - 1:
                return None
            out = []
            for gen, changes in self._changes:
                if gen > generation:
                    if changes is None:
                        return None
                    out.append(changes)
            return out

    def checkpoint_wal(self, truncate: bool = False, wait_s: float | None = None) -> None:
        """Fold SQLite's own WAL into the database file.

        PASSIVE (the default) never waits; as no reader holds a transaction open between
        calls, it gets through and the WAL stays bounded. ``truncate`` also empties the WAL
        file, waiting for readers (at most ``wait_s``, else the busy timeout: a TRUNCATE
        that cannot get through leaves the file for the next write to cut back); for fresh
        builds and compactions.
        """
        with self.lock:
            mode = "TRUNCATE" if truncate else "PASSIVE"
            if wait_s is not None:
                self._db.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
            try:
                self._db.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
            finally:
                if wait_s is not None:
                    self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    # -- state ----------------------------------------------------------------------------
    def get_state(self, key: str, default: str | None = None) -> str | None:
        with self.lock:
            row = self._db.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return default if row is None else row["value"]

    def set_state(self, **values: Any) -> None:
        with self.lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO state(key, value) VALUES (?, ?)",
                [(k, str(v)) for k, v in values.items()],
            )

    # -- items ----------------------------------------------------------------------------
    def count(self) -> int:
        with self.lock:
            return int(self._db.execute("SELECT count(*) AS n FROM items").fetchone()["n"])

    def insert_items(
        self, fids: Sequence[int], ids: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> None:
        """Insert rows (call inside :meth:`transaction`); metadata must be cleaned already."""
        item_rows = []
        attr_rows = []
        names: set[str] = set()
        for fid, id_, md in zip(fids, ids, metadata, strict=True):
            item_rows.append((int(fid), id_, json.dumps(md, ensure_ascii=False)))
            rows = _attr_rows(int(fid), md)
            attr_rows += rows
            names.update(key for key, _, _ in rows)
        with self.lock:
            try:
                self._db.executemany(
                    "INSERT INTO items(fid, id, metadata) VALUES (?, ?, ?)", item_rows
                )
            except sqlite3.IntegrityError as exc:  # callers check first; this is the backstop
                raise IndexCorruptError(f"catalog store rejected the insert: {exc}") from exc
            self._db.executemany(
                "INSERT OR IGNORE INTO attrs(field, value, fid) VALUES (?, ?, ?)", attr_rows
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO fields(name) VALUES (?)", [(n,) for n in sorted(names)]
            )
            self._inserted_rows = _tracked(self._inserted_rows, self._deleted_rows, attr_rows)

    def delete_items(self, fids: Sequence[int]) -> None:
        """Delete rows by fid (call inside :meth:`transaction`)."""
        attr_rows = [
            row
            for item in self.lookup(fids).values()
            for row in _attr_rows(item.fid, item.metadata)
        ]
        with self.lock:
            self._deleted_rows = _tracked(self._deleted_rows, self._inserted_rows, attr_rows)
            self._db.executemany("DELETE FROM attrs WHERE field=? AND value=? AND fid=?", attr_rows)
            self._db.executemany("DELETE FROM items WHERE fid=?", [(int(f),) for f in fids])

    def fids_for_ids(self, ids: Sequence[str]) -> dict[str, int]:
        """Map the ids that exist to their fids (unknown ids are absent from the result)."""
        unique = list(dict.fromkeys(ids))
        with self.lock:
            rows = self._select_in("SELECT id, fid FROM items WHERE id IN ({marks})", unique)
            return {r["id"]: int(r["fid"]) for r in rows}

    def lookup(self, fids: Iterable[int]) -> dict[int, StoredItem]:
        """Map fids to their stored items; fids that are not live are absent."""
        unique = list(dict.fromkeys(int(f) for f in fids))
        with self.lock:
            rows = self._select_in(
                "SELECT fid, id, metadata FROM items WHERE fid IN ({marks})", unique
            )
            return {int(r["fid"]): _stored_item(r) for r in rows}

    def get(self, id_: str) -> StoredItem | None:
        with self.lock:
            row = self._db.execute(
                "SELECT fid, id, metadata FROM items WHERE id=?", (id_,)
            ).fetchone()
        return None if row is None else _stored_item(row)

    def live_fids(self) -> np.ndarray:
        """All live fids, sorted."""
        with self.lock:
            cur = self._db.execute("SELECT fid FROM items ORDER BY fid")
            return np.fromiter((r["fid"] for r in cur), dtype=np.int64)

    def iter_ids(self, batch: int = 10_000) -> Iterator[str]:
        """Ids in fid order, paged so that writers are not blocked while a caller iterates."""
        last = -1
        while True:
            with self.lock:
                rows = self._db.execute(
                    "SELECT fid, id FROM items WHERE fid > ? ORDER BY fid LIMIT ?", (last, batch)
                ).fetchall()
            if not rows:
                return
            last = rows[-1]["fid"]
            yield from (r["id"] for r in rows)

    def _select_in(self, sql: str, values: Sequence[Any], *before: Any) -> list[sqlite3.Row]:
        """Rows of ``sql``, whose ``IN ({marks})`` takes ``values``, queried in chunks under
        SQLite's bound-variable limit; ``before`` binds the placeholders ahead of the list.
        The caller holds :attr:`lock`."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(values), _CHUNK):
            part = values[start : start + _CHUNK]
            cur = self._db.execute(sql.format(marks=",".join("?" * len(part))), (*before, *part))
            rows += cur.fetchall()
        return rows

    # -- filters ----------------------------------------------------------------------------
    def fields(self) -> frozenset[str]:
        """Names usable in filters: every metadata field that any item has ever had."""
        with self.lock:
            if self._fields is None:
                rows = self._db.execute("SELECT name FROM fields").fetchall()
                self._fields = frozenset(r["name"] for r in rows)
            return self._fields

    def filter_fids(self, flt: Mapping[str, Any]) -> np.ndarray:
        """Sorted fids of the live items matching the filter ``flt``: equality, any of and
        ranges on numeric fields (grammar and errors: :mod:`index.filters`). The same array
        object answers the same filter until the next change."""
        return self._filters.fids(flt)

    def field_type(self, field: str) -> str:
        """``number``, ``boolean``, ``text`` or ``empty``: what filters may do with a field."""
        return self._filters.field_type(field)

    def equal_fids(self, field: str, texts: Sequence[str]) -> np.ndarray:
        """Sorted fids of the items whose ``field`` is stored as one of ``texts``."""
        return self._fids_with(field, tuple(sorted(set(texts))))

    def _fids_with(self, field_name: str, texts: tuple[str, ...]) -> np.ndarray:
        key = (field_name, texts)
        with self.lock:
            held = self._filter_cache.get(key)
            if held is not None:
                fids: np.ndarray | None = held[1]
                if held[0] != self.generation:
                    fids = self._followed(field_name, texts, held[1], held[0])
                if fids is not None:
                    self._filter_cache[key] = (self.generation, fids)
                    return fids
            rows = self._select_in(
                "SELECT fid FROM attrs WHERE field=? AND value IN ({marks})", texts, field_name
            )
            fids = np.unique(np.fromiter((r["fid"] for r in rows), dtype=np.int64))
            if len(self._filter_cache) > 256:
                self._filter_cache.clear()
            self._filter_cache[key] = (self.generation, fids)
            return fids

    def _followed(
        self, name: str, texts: tuple[str, ...], fids: np.ndarray, generation: int
    ) -> np.ndarray | None:
        """The matches ``fids`` of ``name`` in ``texts`` as of ``generation``, brought up to
        now by the rows changed since (None where they are not known: read again). The same
        array where no match came or went (caches downstream key on it)."""
        changes = self.row_changes_since(generation)
        if changes is None:
            return None
        for change in changes:
            gone, (added, added_texts) = change.gone_in(name), change.added_in(name)
            pairs = zip(added.tolist(), added_texts, strict=True)
            came = np.sort(np.array([f for f, t in pairs if t in texts], np.int64))
            left = np.setdiff1d(gone[_members(fids, gone)], came, assume_unique=True)
            came = came[~_members(fids, came)]
            if len(left):
                fids = np.delete(fids, np.searchsorted(fids, left))
            if len(came):
                fids = np.insert(fids, np.searchsorted(fids, came), came)
        return fids

    def field_texts(self, field_name: str, limit: int = 10_000) -> list[str]:
        """The distinct texts ``field_name`` holds (at most ``limit``, in order): one index
        seek per text (a DISTINCT read every row of the field: 25 ms at 200,000 items)."""
        with self.lock:
            rows = self._db.execute(
                "WITH RECURSIVE t(v) AS (SELECT min(value) FROM attrs WHERE field=:f "
                "UNION ALL SELECT (SELECT min(value) FROM attrs WHERE field=:f AND value > t.v) "
                "FROM t WHERE t.v IS NOT NULL LIMIT :n) SELECT v FROM t WHERE v IS NOT NULL",
                {"f": field_name, "n": int(limit) + 1},
            ).fetchall()
        return [r["v"] for r in rows][:limit]

    def field_values(self, field_name: str) -> tuple[np.ndarray, list[str]]:
        """Every ``(fid, stored text)`` of ``field_name``, by fid (empty for unknown fields):
        what typed range filters are built from."""
        with self.lock:
            rows = self._db.execute(
                "SELECT fid, value FROM attrs WHERE field=? ORDER BY fid, value", (field_name,)
            ).fetchall()
        return np.fromiter((r["fid"] for r in rows), np.int64, len(rows)), [
            r["value"] for r in rows
        ]

    def list_items(
        self, after: str | None, limit: int, allowed: np.ndarray | None = None
    ) -> list[StoredItem]:
        """Up to ``limit`` items with ``id > after``, by id; only fids in sorted ``allowed``."""
        if allowed is not None and len(allowed) ** 2 <= limit * max(self.next_fid(), 1):
            # Reading the matches costs len(allowed) rows; walking the ids to find ``limit``
            # of them costs about limit x items / matches (next_fid bounds the items): a rare
            # filter's page had read the whole table (0.6 s at 80,000 items for no match).
            return self._list_among(after, limit, allowed)
        out: list[StoredItem] = []
        cursor = "" if after is None else after
        page = max(limit, 256)
        while len(out) < limit:
            with self.lock:
                rows = self._db.execute(
                    "SELECT fid, id, metadata FROM items WHERE id > ? ORDER BY id LIMIT ?",
                    (cursor, page),
                ).fetchall()
            if not rows:
                break
            cursor = rows[-1]["id"]
            for r in rows:
                if allowed is None or _member(allowed, int(r["fid"])):
                    out.append(_stored_item(r))
                    if len(out) == limit:
                        break
        return out

    def _list_among(self, after: str | None, limit: int, allowed: np.ndarray) -> list[StoredItem]:
        """:meth:`list_items` read from the matching fids: each chunk's first ``limit`` ids
        past ``after``, of which the first ``limit`` overall (Python orders strings as SQLite's
        binary collation does: by code point)."""
        cursor = "" if after is None else after
        best: list[sqlite3.Row] = []
        for start in range(0, len(allowed), _CHUNK):
            part = [int(f) for f in allowed[start : start + _CHUNK]]
            marks = ",".join("?" * len(part))
            with self.lock:
                best += self._db.execute(
                    f"SELECT fid, id, metadata FROM items WHERE fid IN ({marks}) AND id > ? "
                    "ORDER BY id LIMIT ?",
                    (*part, cursor, limit),
                ).fetchall()
            best = heapq.nsmallest(limit, best, key=lambda r: r["id"])
        return [_stored_item(r) for r in best]

    # -- applying journal records (a PostgreSQL replica's mirror) ---------------------------
    def apply(self, rec: JournalRecord) -> None:
        """Make a journal record's change here (the mirror follows the remote store)."""
        with self.transaction():
            if rec.op in ("remove", "meta"):
                self.delete_items(rec.fids)
            if rec.op in ("add", "meta"):
                assert rec.items is not None
                self.insert_items(rec.fids, [i for i, _ in rec.items], [m for _, m in rec.items])
            self.set_state(next_fid=max(self.next_fid(), int(rec.fids.max(initial=-1)) + 1))

    def next_fid(self) -> int:
        return int(self.get_state("next_fid", "0") or 0)


def read_only_uri(path: Path, frozen: bool) -> str:
    """The SQLite URI opening ``path`` read-only (quoted: a ``?`` or ``#`` in a folder name
    would end the path). ``frozen`` (read-only media: the file cannot change) adds
    ``immutable=1``, without which SQLite cannot open a WAL store there at all (it makes its
    -shm file even to read), unless the WAL holds commits: immutable reads skip them, so such
    a store is opened as usual, which works where the -shm file was left beside it."""
    # file:// and an absolute path: "file:" + "//x" would name a host; the path's bytes as
    # they are (a name that is not UTF-8 stays openable).
    where = urllib.parse.quote(os.fsencode(os.path.abspath(path)))
    uri = f"file://{where}?mode=ro"
    if frozen and not _wal_holds_pages(path):
        uri += "&immutable=1"
    return uri


def _wal_holds_pages(path: Path) -> bool:
    wal = Path(f"{path}-wal")
    return wal.is_file() and wal.stat().st_size > 0


def _wal_without_shm(path: Path) -> bool:
    return _wal_holds_pages(path) and not Path(f"{path}-shm").exists()


def _tracked(
    rows: set[tuple[str, str, int]] | None,
    undone: set[tuple[str, str, int]] | None,
    more: list[tuple[str, str, int]],
) -> set[tuple[str, str, int]] | None:
    """``rows`` (inserted, or deleted) with ``more`` added, net of ``undone`` (the other
    kind): a row deleted and inserted again since the last bump did not change. None (fields
    unknown: every cache goes) past :data:`_ROWS_TRACKED`, so that a bulk load does not hold
    its rows twice. ``undone`` loses the rows taken from it."""
    if rows is None or undone is None or len(rows) + len(more) > _ROWS_TRACKED:
        return None
    for row in more:
        if row in undone:
            undone.discard(row)
        else:
            rows.add(row)
    return rows


def _attr_rows(fid: int, metadata: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """An item's filter rows ``(field, text, fid)``: its scalar values as the index holds them."""
    rows = []
    for key, value in metadata.items():
        text = canonical_value(value)
        if text is not None:
            rows.append((key, text, fid))
    return rows


def _row_changes(
    deleted: set[tuple[str, str, int]], inserted: set[tuple[str, str, int]]
) -> RowChanges:
    gone = {name: np.unique(np.asarray(f, np.int64)) for name, (f, _) in _by_field(deleted).items()}
    return RowChanges(gone, np.zeros(0, np.int64), _by_field(inserted))


def _by_field(
    rows: Iterable[tuple[str, str, int]],
) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """``(field, text, fid)`` rows as ``{field: (fids, texts)}``."""
    grouped: dict[str, list[tuple[int, str]]] = {}
    for name, text, fid in rows:
        grouped.setdefault(name, []).append((fid, text))
    return {
        name: (np.array([f for f, _ in pairs], np.int64), tuple(t for _, t in pairs))
        for name, pairs in grouped.items()
    }


def _members(sorted_fids: np.ndarray, fids: np.ndarray) -> np.ndarray:
    """Which of ``fids`` are in ``sorted_fids`` (binary searches: no pass over the first)."""
    at = np.minimum(np.searchsorted(sorted_fids, fids), max(len(sorted_fids) - 1, 0))
    return sorted_fids[at] == fids if len(sorted_fids) else np.zeros(len(fids), bool)


def _member(sorted_fids: np.ndarray, fid: int) -> bool:
    i = int(np.searchsorted(sorted_fids, fid))
    return i < len(sorted_fids) and int(sorted_fids[i]) == fid


def _stored_item(row: sqlite3.Row) -> StoredItem:
    try:
        metadata = json.loads(row["metadata"])
    except (TypeError, ValueError) as exc:  # only a hand edit or damage writes this
        raise IndexCorruptError(
            f"catalog store: the metadata of item {row['id']!r} is not JSON ({exc}); restore "
            "the index from a snapshot or set the item's metadata again"
        ) from exc
    return StoredItem(int(row["fid"]), row["id"], metadata)
