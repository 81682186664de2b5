"""An index folder described on disk and by the opened index, in one vocabulary."""

from __future__ import annotations

from index import open_index
from index.folder import describe


def test_describe_and_info_agree(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        ix.add(["new"], xq[:1])
        info = ix.info()
        on_disk = describe(flat_dir)
    assert info == {**on_disk, "hidden_removed": 0, "disk_bytes": info["disk_bytes"]}
    assert on_disk["count"] == 3001 and on_disk["journal_pending"] == 1
    assert on_disk["faiss_file"] == "vectors-000000000000.faiss"


def test_lock_shared_holds_the_folder_at_the_path_after_a_swap(flat_dir, monkeypatch):
    """A build that swaps the folder between opening its lock file and locking it left the
    opener holding the old folder's lock, which stops no later build: the opener then read
    one index's manifest and another's store."""
    import os
    import shutil

    from index import folder

    fresh = flat_dir.parent / "fresh"
    shutil.copytree(flat_dir, fresh)
    real_open, swapped = folder._open_lock, []

    def open_then_swap(path):  # noqa: ANN001, ANN202
        fd = real_open(path)
        if not swapped:  # as a build's rename lands just after the lock file was opened
            flat_dir.rename(flat_dir.parent / "old")
            fresh.rename(flat_dir)
            swapped.append(True)
        return fd

    monkeypatch.setattr(folder, "_open_lock", open_then_swap)
    fd = folder.lock_shared(flat_dir, frozen=False)
    try:
        held, named = os.fstat(fd), os.stat(flat_dir / folder.LOCK_NAME)
        assert (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
    finally:
        os.close(fd)


def test_a_full_disk_is_told_from_a_damaged_store(tmp_path):
    import sqlite3

    import pytest

    from index.store import machine_failure

    db = sqlite3.connect(tmp_path / "small.sqlite")
    db.execute("PRAGMA max_page_count=2")  # SQLite's own "disk" is full after two pages
    db.execute("CREATE TABLE t (x BLOB)")
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert "full" in str(full.value) and machine_failure(full.value)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as junk:
        sqlite3.connect(tmp_path / "junk.sqlite").execute("SELECT * FROM sqlite_master")
    assert not machine_failure(junk.value)


def test_describe_waits_for_no_build(flat_dir):
    """`index info` read the manifest and the store without the folder lock, so a build
    swapping the folder between the two gave one index's manifest with another's counts."""
    import os

    import pytest

    from index.errors import IndexLockedError
    from index.folder import lock_writer

    fd = lock_writer(flat_dir)  # as a build replacing the folder holds it
    try:
        with pytest.raises(IndexLockedError, match="a build or restore is replacing"):
            describe(flat_dir)
    finally:
        os.close(fd)
    assert describe(flat_dir)["count"] == 3000


def test_describe_reads_a_folder_on_read_only_media(flat_dir, monkeypatch):
    """Opening the lock file on a read-only file system fails with EROFS, no PermissionError:
    `index info` stopped at "writer.lock: Read-only file system"."""
    import errno
    import os

    from index import folder

    real_open = os.open

    def read_only(path, flags, *args):  # noqa: ANN001, ANN202
        if str(path).endswith(folder.LOCK_NAME):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(folder.os, "open", read_only)
    assert describe(flat_dir)["count"] == 3000
