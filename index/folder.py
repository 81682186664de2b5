"""The index folder on disk: its files, its lock, and its description.

An index folder holds ``manifest.json`` (identity, :mod:`index.manifest`), the catalog store
``catalog.sqlite`` (:mod:`index.store`), one FAISS snapshot ``vectors-<seq>.faiss``
(:mod:`index.replica`), ``compact.lock`` (the one compactor, :mod:`index.source_sqlite`) and
``writer.lock``, ``flock``ed shared by every process that has the index open, exclusively by
a build replacing the folder.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

from common.fsutil import folder_size, holders_note, names_open_file
from common.mounts import find_mount, mounted_read_only, unchanging_file_system
from index.errors import (
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
    ReadOnlyFolderError,
)
from index.manifest import Manifest, read_manifest
from index.store import STORE_NAME, CatalogStore

LOCK_NAME = "writer.lock"
FAISS_PREFIX = "vectors-"
FAISS_SUFFIX = ".faiss"


def faiss_file_name(seq: int) -> str:
    """The FAISS file holding the vectors as of journal record ``seq``."""
    return f"{FAISS_PREFIX}{seq:012d}{FAISS_SUFFIX}"


def missing_faiss_file(folder: Path, name: str) -> IndexNotFoundError:
    """The error for a FAISS file the catalog store names and the folder lacks."""
    return IndexNotFoundError(
        f"{folder}: FAISS file {name}, which the catalog store names, is missing (deleted, or "
        "left out of a copy of the folder); restore the folder from a snapshot with 'phonesim "
        "index restore', or build it again"
    )


def store_path(path: Path) -> Path:
    """The folder's catalog store; :class:`~index.errors.IndexNotFoundError` if missing."""
    if not (path / STORE_NAME).is_file():
        raise IndexNotFoundError(f"{path}: catalog store {STORE_NAME} is missing")
    return path / STORE_NAME


# What opening the lock file fails with on read-only media or a folder not ours to write.
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def open_lock_file(file: Path) -> int:
    """A descriptor to ``flock`` on ``file``, made if missing. Made with the umask's mode (a
    group-shared folder's users all open it), and opened read-only where it cannot be opened
    for writing (``flock`` needs no write access): a lock file made 0644 by whoever opened
    the index first, a root debug session's ``index info`` say, had shut every other user
    out of the folder, its owner included."""
    try:
        return os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError as refused:
        try:
            return os.open(file, os.O_RDONLY)  # exists, another user's: still lockable
        except OSError:
            raise refused from None  # not there, in a folder this user may not write


def _open_lock(path: Path) -> int:
    try:
        return open_lock_file(path / LOCK_NAME)
    except OSError as exc:  # read-only media: say what to do, not just "denied"
        if exc.errno not in _READ_ONLY:
            raise
        raise ReadOnlyFolderError(
            exc.errno, _not_writable_here(path), str(path / LOCK_NAME)
        ) from None


def _not_writable_here(path: Path) -> str:
    if on_read_only_media(path):  # nothing can change it: only a change is refused
        return "the index folder is on read-only media and cannot be changed there"
    if mounted_read_only(path):
        mount = find_mount(path)
        if mount is not None and "ro" in mount.super_options:  # a network, FUSE or overlay one
            return (
                f"the index folder is on a read-only {mount.fstype} file system, which others "
                "may change meanwhile (phonesim takes only local and image file systems as "
                "unchanging), and following it takes its lock file and SQLite's files beside "
                "its store; copy the folder to a writable place"
            )
        return (
            "the index folder is on a read-only mount of a file system that other mounts may "
            "write (a bind mount, a container's read-only volume): it may change meanwhile, "
            "and following it takes its lock file and SQLite's files beside its store; mount "
            "it read-write (a server without an API key still writes no item), or copy the "
            "folder to a writable place"
        )
    return (
        "the index folder is not writable here (its lock file, and SQLite's beside its "
        "store, are written even to read it); copy the folder to a writable place"
    )


def on_read_only_media(path: Path) -> bool:
    """Whether nothing can change the folder's catalog store (a squashfs or EROFS image, a DVD,
    a local file system mounted or remounted ``ro``: :func:`common.mounts.unchanging_file_system`),
    so readers need neither the folder's lock nor SQLite's shared-memory file. The folder and
    its store files are asked each: a store linked to another file system follows that one.

    A read-only bind mount of a writable file system (``docker -v vol:/index:ro``, a Kubernetes
    ``readOnly`` volume) is not, nor is a read-only NFS, CIFS or FUSE mount: others may write
    the folder meanwhile, and a reader that took it as unchanging served items removed long
    before and called itself in sync."""
    files = [path / STORE_NAME, *(path / f"{STORE_NAME}{end}" for end in ("-wal", "-shm"))]
    return unchanging_file_system(path) and all(
        unchanging_file_system(f) for f in files if f.exists()
    )


def open_store(path: Path, frozen: bool) -> CatalogStore:
    """The folder's catalog store, opened to write unless ``frozen`` (:func:`on_read_only_media`),
    where it is opened as the unchanging file it is (:class:`CatalogStore` ``frozen``)."""
    return CatalogStore(store_path(path), frozen=frozen)


def check_openable_here(path: Path) -> None:
    """Raise what opening the folder would where this process cannot write its lock file (a
    read-only mount of a writable file system, another user's folder): a job that opens the
    index only after its long work (``export --index``, hours of embedding) asks first. A
    folder on read-only media opens without it."""
    if not on_read_only_media(path):
        os.close(_open_lock(path))


def lock_writer(path: Path) -> int:
    """Take the folder's lock exclusively (released when the fd closes or we die): a build
    replacing the folder holds it. Opened indexes hold it shared (:func:`lock_shared`), not
    exclusively: any number of processes write, through the store's transactions."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holders = holders_note(fd)
        os.close(fd)
        raise IndexLockedError(
            f"{path}: another process has this index open{holders}; close it first"
        ) from None
    return fd


def lock_shared(path: Path, frozen: bool) -> int:
    """Take the folder's lock shared, as every opener does, so that a build cannot replace
    the folder under a process that has it open (the build takes it exclusively).

    Read the folder's files only after this returns: a build may swap the folder between
    opening the lock file and locking it, and then the lock held is the old folder's. That
    is checked (the path must still name the locked file) and the lock taken again.

    ``frozen`` (:func:`on_read_only_media`, asked once by the caller for the lock and the
    store alike): no build can replace the folder and its lock file cannot be made; the
    descriptor returned is the folder's own, held for the same lifetime, locking nothing."""
    if frozen:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(_SWAP_RETRIES):
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if names_open_file(path / LOCK_NAME, fd):
                return fd
        except BlockingIOError:
            holders = holders_note(fd)
            os.close(fd)
            raise IndexLockedError(
                f"{path}: a build or restore{holders} is replacing this index; try again"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the folder was swapped meanwhile: lock the one there now
    raise IndexLockedError(f"{path}: builds keep replacing this index; try again")


_SWAP_RETRIES = 5


def describe(path: str | Path) -> dict[str, Any]:
    """What ``phonesim index info`` shows, read without loading the FAISS file."""
    path = Path(path)
    read_manifest(path)  # a folder that is no index: say so before creating its lock file
    try:
        # Under the lock, as an opener: a build swapping the folder between the reads below
        # gave one index's manifest with another's counts.
        frozen = on_read_only_media(path)
        fd: int | None = lock_shared(path, frozen)
    except PermissionError as exc:  # a read-only mount, another user's folder: read what we can
        fd, unlocked = None, exc
    else:
        unlocked = None
    try:
        manifest = read_manifest(path)
        try:
            store = open_store(path, frozen)
        except IndexCorruptError:  # SQLite could not write beside it either: say why, once
            if unlocked is not None and unlocked.errno == errno.EROFS:
                raise unlocked from None
            raise
        try:
            with store.read_txn():
                ck_seq = int(store.get_state("checkpoint_seq", "0") or 0)
                _, pending, _, _ = store.journal_stats(ck_seq)
                faiss_file = store.get_state("checkpoint_file")
                return summary(path, manifest, store, store.count(), pending, faiss_file)
        finally:
            store.close()
    finally:
        if fd is not None:
            os.close(fd)


def check_index_files(path: str | Path) -> dict[str, Any]:
    """Read the whole catalog store (SQLite's ``quick_check``) and the FAISS file it names:
    :class:`IndexCorruptError` where either is damaged, one line, before a server's workers
    or an ``index info`` report take the folder as sound (the store's schema check at open
    reads only its first pages). Another process compacting meanwhile deletes the named FAISS
    file after naming its successor: the successor is checked then ("could not open" had read
    as a damaged index). Returns the :func:`describe` of the files checked."""
    from index import ann

    path = Path(path)
    info = describe(path)  # a folder that is no index: said first
    store = open_store(path, info["read_only_media"])  # as describe decided it
    try:
        store.check_integrity()
        with store.read_txn():  # the size written with the file it names (older folders: none)
            written = store.get_state("checkpoint_file"), store.get_state("checkpoint_size")
    finally:
        store.close()
    for attempt in range(3):
        if not info["faiss_file"]:
            return info
        try:
            _check_size(path / info["faiss_file"], written)
            dim = ann.check_file(path / info["faiss_file"])
        except IndexCorruptError:
            again = describe(path)
            if attempt == 2 or again["faiss_file"] == info["faiss_file"]:
                if not (path / info["faiss_file"]).exists():
                    raise missing_faiss_file(path, info["faiss_file"]) from None
                raise
            info = again
            continue
        if dim != info["dim"]:  # a hand-edited manifest: every search would fail on it
            raise IndexCorruptError(
                f"{path / info['faiss_file']}: FAISS dimension {dim}, manifest says {info['dim']}"
            )
        return info
    return info


def checkpoint_size(name: str, size: int) -> str:
    """The ``checkpoint_size`` state value of FAISS file ``name``: ``name:size``. The name is
    part of the value because an older phonesim's compaction names its new file in
    ``checkpoint_file`` and leaves this key as it was: a bare size then described the file
    before, and every newer open refused the folder as "cut short"."""
    return f"{name}:{size}"


def _check_size(file: Path, written: tuple[str | None, str | None]) -> None:
    """:class:`IndexCorruptError` where ``file`` is not the size it was written at: FAISS's
    mapped read of a file cut short (a partial copy) could crash the process (exit 139).
    Not checked where the recorded size is another file's (an older writer's compaction) or
    bare (written before sizes named their file: it cannot tell)."""
    name, recorded = written
    sized, _, size = (recorded or "").rpartition(":")
    if name != file.name or sized != file.name or not size.isdigit():
        return
    try:
        actual = file.stat().st_size
    except OSError:
        return  # missing: said by the read
    if actual != int(size):
        raise IndexCorruptError(
            f"{file}: {actual} bytes, but {size} were written (cut short or changed: a partial "
            "copy?); restore the folder from a snapshot with 'phonesim index restore', or "
            "build it again"
        )


def summary(
    path: Path | None,
    manifest: Manifest,
    store: CatalogStore,
    count: int,
    journal_pending: int,
    faiss_file: str | None,
) -> dict[str, Any]:
    """The description of :func:`describe` and :meth:`index.catalog.CatalogIndex.info`."""
    return {
        "path": str(path.resolve()) if path is not None else None,
        "kind": manifest.kind,
        "factory": manifest.factory,
        "count": count,
        "dim": manifest.dim,
        "metric": manifest.metric,
        "model_name": manifest.model_name,
        "checkpoint_hash": manifest.checkpoint_hash,
        "format_version": manifest.format_version,
        "search_defaults": dict(manifest.search_defaults),
        "tuned_recall": manifest.tuning.get("recall"),
        "journal_pending": journal_pending,
        "faiss_file": faiss_file,
        "filterable_fields": sorted(store.fields()),
        "disk_bytes": folder_size(path) if path is not None else 0,
        # Opened as an unchanging file (on_read_only_media): not locked, changes not followed.
        "read_only_media": store.frozen,
    }
