"""``phonesim index snapshot | restore``: a consistent copy of a catalog while servers run.

A snapshot is an ordinary index folder (manifest, ``catalog.sqlite``, one FAISS file, an empty
journal), whatever the store: so it can be opened, searched, copied to another machine, pushed
into PostgreSQL, or restored.

- SQLite: SQLite's online backup API copies the catalog as of one committed transaction; the
  compaction lock is held meanwhile, so the FAISS file it names is not deleted under us.
- PostgreSQL: the store is loaded as a replica does (one REPEATABLE READ transaction), and its
  mirror and FAISS copy are written out.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.fsutil import (
    folder_write_problem,
    fsync_dir,
    fsync_path,
    replaced_path,
    temporary_folder,
)
from index import ann
from index.build import check_index_target, index_state, move_into_place, rename_unless_taken
from index.errors import BuildInputError, IndexLockedError, StoreMachineError
from index.folder import faiss_file_name
from index.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from index.store import STORE_NAME, machine_failure, read_only_uri

log = logging.getLogger(__name__)

_LOCK_WAIT_S = 60.0


def _fresh_folder(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise BuildInputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise BuildInputError(f"{out}: already exists and is not empty")
    problem = folder_write_problem(out.parent)
    if problem:
        raise BuildInputError(f"{out.parent}: {problem}")
    return temporary_folder(out, "snapshot-")


def snapshot(path: str | Path | None, out: str | Path, *, store: str | None = None) -> dict:
    """Copy the catalog at ``path`` (or in ``store``) to the new index folder ``out``."""
    out = Path(out)
    if path is not None and out.resolve().is_relative_to(Path(path).resolve()):
        # A backup inside the index goes with it: a restore --overwrite of that very index
        # (or of the folder by hand) deletes it.
        raise BuildInputError(f"{out}: inside the index {path}; keep a snapshot beside it")
    if not store:
        from index.folder import check_index_files

        # A damaged store is copied page for page: the snapshot had been made, exit 0, and
        # was as damaged as the index, whose error says to restore it from a snapshot.
        check_index_files(path)
    tmp = _fresh_folder(out)
    try:
        info = _snapshot_pg(store, tmp) if store else _snapshot_sqlite(Path(path), tmp)
        _check_opens(tmp)  # a backup is only as good as the restore it allows
        fsync_dir(tmp)
        rename_unless_taken(
            tmp, out, "another snapshot was put there while this one was made; not replacing "
            "it (give another --out)",
        )  # fmt: skip
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**info, "out": str(out)}


def _check_opens(folder: Path) -> int:
    """The number of items in the index folder, which must open as any index does."""
    from index.catalog import CatalogIndex

    with CatalogIndex.open(folder, readonly=True) as ix:
        return len(ix)


def _snapshot_sqlite(path: Path, tmp: Path) -> dict[str, Any]:
    from index.stores import open_folder_source

    # The folder lock, shared, for the whole copy: a build or restore swapping the folder
    # between reading the manifest, the store and the FAISS file would mix two indexes.
    source, manifest = open_folder_source(path)
    try:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            with source.compaction_lock() as got:
                if got:
                    src = (
                        sqlite3.connect(read_only_uri(path / STORE_NAME, True), uri=True)
                        if source.frozen
                        else sqlite3.connect(path / STORE_NAME)
                    )
                    dst = sqlite3.connect(tmp / STORE_NAME)
                    try:
                        src.backup(dst)  # one step: the state of one committed transaction
                        name, seq = dst.execute(
                            "SELECT (SELECT value FROM state WHERE key='checkpoint_file'), "
                            "(SELECT max(seq) FROM journal)"
                        ).fetchone()
                    except sqlite3.Error as exc:
                        if not machine_failure(exc):
                            raise
                        raise StoreMachineError.of(f"{tmp.parent}: copying it", exc) from exc
                    finally:
                        src.close()
                        dst.close()
                    shutil.copyfile(path / name, tmp / name)
                    break
            if time.monotonic() > deadline:
                raise IndexLockedError(f"{path}: a compaction held the index for too long")
            time.sleep(0.05)
    finally:
        source.close()
    fsync_path(tmp / STORE_NAME)
    fsync_path(tmp / name)
    write_manifest(tmp, manifest)
    return {"store": str(path), "seq": int(seq or 0)}


def _snapshot_pg(store: str, tmp: Path) -> dict[str, Any]:
    from index.catalog import CatalogIndex

    ix = CatalogIndex.open(None, store=store, readonly=True)
    try:
        with ix._apply_mutex, ix._rw.read():  # one state: nothing applied meanwhile
            seq = ix._replica.applied_seq
            mirror = ix._store
            dst = sqlite3.connect(tmp / STORE_NAME)
            try:
                with mirror.lock:
                    mirror._db.backup(dst)
                name = faiss_file_name(0)
                dst.execute(
                    "INSERT OR REPLACE INTO state(key, value) VALUES "
                    "('checkpoint_file', ?), ('checkpoint_seq', '0')",
                    (name,),
                )
                dst.execute("PRAGMA journal_mode=WAL")
                dst.commit()
            finally:
                dst.close()
            ann.write(ix._replica.index, tmp / name)
            count = ix._replica.count
            source = {**ix.manifest.source, "snapshot_of": {"store": ix.where, "seq": seq}}
            manifest = ix.manifest.with_count(count)
        write_manifest(tmp, replace(manifest, source=source))
        fsync_path(tmp / STORE_NAME)
        return {"store": ix.where, "seq": seq}
    finally:
        ix.close()


def restore(
    snapshot_dir: str | Path,
    *,
    path: str | Path | None = None,
    store: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Bring back a snapshot folder: as the index folder ``path`` (no process may have it
    open), or into the PostgreSQL ``store`` (replicas reload from it)."""
    snap = Path(snapshot_dir)
    if path is not None:
        # Before opening the snapshot; one kept inside the index would be replaced with it.
        check_index_target(Path(path), overwrite=overwrite, inputs=(snap,))
    if not (snap / MANIFEST_NAME).is_file():
        raise BuildInputError(f"{snap}: not a snapshot (no {MANIFEST_NAME})")
    count = _check_opens(snap)
    if store is not None:
        from index.pg import redact
        from index.pg_admin import push_folder

        push_folder(snap, store, overwrite=overwrite)
        return {"count": count, "store": redact(store)}
    dest = replaced_path(Path(path))  # a link: the index it names
    # Two restores to one folder both said "restored", the last one winning: the swap refuses
    # another index put there after this point. Items added meanwhile are not kept: replacing
    # what the index holds is what a restore is for.
    replaced = index_state(dest, journal=False) if overwrite else None
    try:
        tmp = temporary_folder(dest, "restoring-")
    except BaseException:
        if replaced is not None:
            replaced.close()
        raise
    try:
        # Copied as a snapshot is taken, not file by file: a snapshot is an index folder that
        # a server may have open, and its latest commits may still be in SQLite's WAL file.
        _snapshot_sqlite(snap, tmp)
        count = _check_opens(tmp)  # what was restored, not before
        _warn_if_other_embedder(dest, read_manifest(tmp))
        fsync_dir(tmp)
        move_into_place(tmp, dest, overwrite=overwrite, expect=replaced)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if replaced is not None:
            replaced.close()
    return {"count": count, "path": str(path)}


def _warn_if_other_embedder(dest: Path, restored: Manifest) -> None:
    """Say so when the restore replaces an index of another model, checkpoint or dimension:
    servers and commands started with the replaced index's checkpoint will refuse it."""
    try:
        old = read_manifest(dest)
    except UserError:
        return  # nothing there, or nothing readable: nothing to compare with
    was = (old.model_name, old.checkpoint_hash, old.dim)
    now = (restored.model_name, restored.checkpoint_hash, restored.dim)
    if was != now:
        log.warning(
            "%s: the restored index is of another embedder (model %s, checkpoint %s, %d-d) "
            "than the one it replaces (model %s, checkpoint %s, %d-d); serve and query it "
            "with the checkpoint that made it",
            dest,
            *now,
            *was,
        )
