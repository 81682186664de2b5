"""An index folder on read-only media (a container's read-only volume, a squashfs image) is
searched, served and copied as it is; it had refused to open at all, SQLite and the folder
lock both writing beside the store even to read."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from index import CatalogIndex, open_index
from index.errors import IndexCorruptError, ReadOnlyFolderError
from index.folder import check_index_files, describe
from index.snapshot import restore, snapshot
from tests.conftest import REPO


def _with_journal(flat_dir, small):
    """``flat_dir`` with changes in its journal, not yet in its FAISS file."""
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        ix.add(["new-a", "new-b"], xq[:2], [{"brand": "zz"}, {"brand": "zz"}])
        ix.remove(["sku-0"])
        expected = ix.search(xq[:5], k=10)
    return xq, expected


def test_searched_as_where_it_was_written(flat_dir, small, read_only_mount):
    xq, expected = _with_journal(flat_dir, small)
    ro = read_only_mount(flat_dir)
    with CatalogIndex.open(ro, readonly=True) as ix:
        assert len(ix) == 3001  # 3000 + 2 - 1: the journal was read
        got = ix.search(xq[:5], k=10)
        assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in expected]
        assert ix.get("new-a").metadata == {"brand": "zz"}
        assert ix.search(xq[:1], k=3, filter={"brand": "zz"})[0][0].id in {"new-a", "new-b"}
    info = describe(ro)
    assert info["count"] == 3001 and info["journal_pending"] == 3 and info["read_only_media"]
    assert describe(flat_dir)["read_only_media"] is False
    assert check_index_files(ro)["faiss_file"] == info["faiss_file"]


def test_changing_it_is_refused_in_one_line(flat_dir, small, read_only_mount):
    _with_journal(flat_dir, small)
    ro = read_only_mount(flat_dir)
    with pytest.raises(ReadOnlyFolderError, match="read-only media.*copy it to a writable"):
        CatalogIndex.open(ro)
    done = subprocess.run(
        [sys.executable, "-m", "phonesim", "index", "remove", "--index", str(ro), "--id", "sku-1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "read-only media" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["snapshot", "restore"])
def test_snapshot_and_restore_copy_it_out(flat_dir, small, read_only_mount, tmp_path, how):
    """A backup on read-only media is restored; a read-only index is snapshotted."""
    xq, expected = _with_journal(flat_dir, small)
    ro = read_only_mount(flat_dir)
    if how == "snapshot":
        snapshot(ro, tmp_path / "copy")
    else:
        restore(ro, path=tmp_path / "copy")
    with open_index(tmp_path / "copy") as ix:  # writable, as any folder of ours
        assert len(ix) == 3001
        got = ix.search(xq[:5], k=10)
        assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in expected]
        ix.add(["after"], xq[:1])


def _copied_while_open(flat_dir, small, tmp_path):
    """A copy of ``flat_dir`` taken while a writer had it open: the latest changes sit in
    SQLite's -wal file, with its -shm file beside it (a copy of a live folder, or a crash)."""
    _, xq, _, _ = small
    copy = tmp_path / "live-copy"
    with open_index(flat_dir) as ix:
        ix.store.checkpoint_wal(truncate=True)
        ix.store._db.execute("PRAGMA wal_autocheckpoint=0")
        ix.add(["in-wal"], xq[:1])
        shutil.copytree(flat_dir, copy)
    assert (copy / "catalog.sqlite-wal").stat().st_size > 0
    return copy


def test_a_store_with_commits_in_its_wal_is_read_whole(flat_dir, small, read_only_mount, tmp_path):
    """Opening a store immutable skips its WAL: the last commits would be silently missing."""
    copy = _copied_while_open(flat_dir, small, tmp_path)
    with CatalogIndex.open(read_only_mount(copy), readonly=True) as ix:
        assert ix.get("in-wal").id == "in-wal" and len(ix) == 3001


def test_a_wal_without_its_shm_file_is_named(flat_dir, small, read_only_mount, tmp_path):
    copy = _copied_while_open(flat_dir, small, tmp_path)
    (copy / "catalog.sqlite-shm").unlink()
    with pytest.raises(IndexCorruptError, match="-wal file is not empty.*-shm file is missing"):
        CatalogIndex.open(read_only_mount(copy), readonly=True)


def test_a_writable_folder_still_takes_the_lock(flat_dir):
    """The lock stays for folders that can change: a build must not replace one in use."""
    from index.errors import IndexLockedError
    from index.folder import lock_writer

    with open_index(flat_dir, readonly=True), pytest.raises(IndexLockedError):
        lock_writer(flat_dir)
    assert describe(flat_dir)["count"] == 3000


def test_a_read_only_mount_of_a_writable_file_system_is_not_taken_as_unchanging(
    flat_dir, small, read_only_mount
):
    """``docker -v vol:/index:ro`` while another container writes the volume: a reader that
    took the folder as unchanging served removed items and called itself in sync. Such a
    mount is refused, naming why, as before read-only media could be read."""
    _, xq, _, _ = small
    ro = read_only_mount(flat_dir, media=False)
    for opening in (
        lambda: CatalogIndex.open(ro, readonly=True),
        lambda: describe(ro),
        lambda: check_index_files(ro),
    ):
        with pytest.raises(ReadOnlyFolderError, match="read-only mount of a file system that"):
            opening()
    with open_index(flat_dir) as ix:  # the writable side goes on meanwhile
        ix.remove(["sku-5"])
    assert describe(flat_dir)["count"] == 2999


def test_a_job_that_opens_the_index_last_asks_first_only_where_it_must(flat_dir, read_only_mount):
    """``export --index`` checks the folder before hours of embedding: read-only media had been
    refused there too, though the export only reads the index."""
    from index.folder import check_openable_here

    check_openable_here(read_only_mount(flat_dir))
    with pytest.raises(ReadOnlyFolderError, match="read-only mount"):
        check_openable_here(read_only_mount(flat_dir, media=False))


def test_a_damaged_store_on_read_only_media_is_called_damaged(flat_dir, read_only_mount):
    """Every failure to open a store there had been reported as a WAL left without its -shm."""
    (flat_dir / "catalog.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(IndexCorruptError, match="not a readable catalog store"):
        CatalogIndex.open(read_only_mount(flat_dir), readonly=True)


def test_a_store_opened_read_only_under_any_folder_name(flat_dir, tmp_path):
    """The read-only URI took '?', '#' and '%' in a folder's name as its own syntax."""
    from index.snapshot import snapshot
    from index.store import CatalogStore

    folder = tmp_path / "odd ?#%20 name"
    shutil.copytree(flat_dir, folder)
    store = CatalogStore(folder / "catalog.sqlite", readonly=True)
    try:
        assert store.count() == 3000
    finally:
        store.close()
    snapshot(folder, tmp_path / "copy")
    assert describe(tmp_path / "copy")["count"] == 3000


def test_a_store_linked_to_a_writable_file_system_is_not_taken_as_unchanging(
    flat_dir, read_only_mount, tmp_path
):
    """A folder on read-only media whose catalog.sqlite links to a writable disk had been
    opened immutable: another process's removals left searches finding removed items."""
    import os

    live = tmp_path / "live"
    live.mkdir()
    (flat_dir / "catalog.sqlite").rename(live / "catalog.sqlite")
    os.symlink(live / "catalog.sqlite", flat_dir / "catalog.sqlite")
    with pytest.raises(ReadOnlyFolderError, match="read-only"):
        CatalogIndex.open(read_only_mount(flat_dir), readonly=True)
