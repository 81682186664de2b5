"""Putting a catalog into a PostgreSQL store: from an index folder (``index build --store``,
``index restore``), and the schema."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import ann
from index.errors import BuildInputError
from index.pg import SCHEMA, TABLES, PgSource, catalog_state, write_snapshot

log = logging.getLogger(__name__)
_BATCH = 2000
# The catalog's tables in the order readers and writers take them: state first.
LOCK_ORDER = ("state", "journal", "snapshots", "snapshot_parts", "items")


def _present(c: Any) -> list[str]:
    """The catalog's tables the database holds, in LOCK_ORDER."""
    return [t for t in LOCK_ORDER if c.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0]]


def has_catalog(src: PgSource) -> bool:
    """Whether the database holds a catalog; :class:`BuildInputError` if it holds tables of
    a catalog's names that are another application's (a build would drop them)."""
    with src.conn() as c:
        present = _present(c)
        if not present:
            return False
        manifest = "SELECT 1 FROM state WHERE key='manifest'"
        if "state" in present and catalog_state(c) and c.execute(manifest).fetchone():
            return True
    raise BuildInputError(
        f"{src.where}: holds table(s) {', '.join(present)} that are not a phonesim catalog; "
        "nothing was changed (use another database, or drop them yourself)"
    )


def refuse_existing(url: str, *, overwrite: bool = False) -> None:
    """:class:`StoreUnavailableError` if the database at ``url`` cannot be reached;
    :class:`BuildInputError` if it holds another application's tables of a catalog's names
    or, unless ``overwrite``, already a catalog."""
    src = PgSource(url)
    try:
        if has_catalog(src) and not overwrite:
            raise BuildInputError(
                f"{src.where}: already holds a catalog; use --overwrite (in Python, "
                "overwrite=True) to replace it"
            )
    finally:
        src.close()


def push_folder(folder: str | Path, url: str, *, overwrite: bool = False) -> int:
    """Copy the index folder's catalog (its state now) into the PostgreSQL store at ``url``:
    items, metadata, vectors, the FAISS snapshot and the manifest; the journal starts empty.
    Refuses a database that holds a catalog unless ``overwrite``. Returns the item count."""
    from index.catalog import CatalogIndex

    src = PgSource(url)
    try:
        refuse_existing(url, overwrite=overwrite)
        ix = CatalogIndex.open(folder, readonly=True)
        try:
            with ix._apply_mutex, ix._rw.read():  # one consistent state of the folder
                index = ix._replica.index
                data = faiss.serialize_index(index).tobytes()
                manifest = ix.manifest.with_count(ix._replica.count)
                next_fid = ix._store.next_fid()
                rows = [(r.fid, r.id, r.metadata) for r in _all_items(ix)]
                vecs = _vectors(index, np.array([r[0] for r in rows], np.int64))
        finally:
            ix.close()
        with src.conn() as c, c.transaction():
            # Every table at once, state first as readers and writers take them: dropping them
            # one by one (items first) deadlocked with a replica reading state, then journal.
            present = _present(c)
            if present:
                c.execute(f"LOCK TABLE {', '.join(present)} IN ACCESS EXCLUSIVE MODE")
            for t in TABLES:
                c.execute(f"DROP TABLE IF EXISTS {t}")
            c.execute(SCHEMA)
            with c.cursor() as cur:
                for start in range(0, len(rows), _BATCH):
                    part = rows[start : start + _BATCH]
                    cur.executemany(
                        "INSERT INTO items(fid, id, metadata, vector) VALUES (%s, %s, %s, %s)",
                        [
                            (int(f), i, json.dumps(m, ensure_ascii=False), _blob(vecs, start + j))
                            for j, (f, i, m) in enumerate(part)
                        ],
                    )
                write_snapshot(cur, 0, data)
                cur.executemany(
                    "INSERT INTO state(key, value) VALUES (%s, %s)",
                    [
                        ("manifest", manifest.to_json()),
                        ("next_fid", str(next_fid)),
                        ("head_seq", "0"),
                        ("checkpoint_seq", "0"),
                        ("generation", uuid.uuid4().hex),  # replicas reload a new catalog
                    ],
                )
        log.info("copied %d items of %s into %s", len(rows), folder, src.where)
        return len(rows)
    finally:
        src.close()


def _all_items(ix):  # noqa: ANN001, ANN202 - the folder's items in fid order
    store = ix._store
    fids = store.live_fids()
    for start in range(0, len(fids), _BATCH):
        part = store.lookup(fids[start : start + _BATCH])
        yield from (part[int(f)] for f in fids[start : start + _BATCH])


def _vectors(index: faiss.Index, fids: np.ndarray) -> np.ndarray | None:
    """The stored vectors (kept in the store so that a catalog can be re-indexed); None for
    kinds that cannot give them back."""
    try:
        return ann.reconstruct(index, fids)
    except Exception as exc:  # e.g. a factory kind without a direct map
        log.warning("vectors not stored in the database (%s)", exc)
        return None


def _blob(vecs: np.ndarray | None, row: int) -> bytes | None:
    return None if vecs is None else np.ascontiguousarray(vecs[row], dtype="<f4").tobytes()
