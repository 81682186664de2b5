"""The catalog store: items read back by column name, lookups beyond SQLite's variable limit."""

from __future__ import annotations

import numpy as np
import pytest

from index.store import CatalogStore


def test_lookups_of_more_ids_than_one_query_binds(tmp_path):
    store = CatalogStore(tmp_path / "catalog.sqlite", create=True)
    n = 2500  # ~3 chunks of bound variables
    fids = np.arange(n, dtype=np.int64) * 3
    ids = [f"id-{i}" for i in range(n)]
    with store.transaction():
        store.insert_items(fids, ids, [{"shelf": f"s{i % 1000}"} for i in range(n)])
    assert store.fids_for_ids([*ids, "unknown"]) == dict(zip(ids, fids.tolist(), strict=True))
    items = store.lookup(fids[::-1])
    assert len(items) == n and items[9].id == "id-3" and items[9].metadata == {"shelf": "s3"}
    assert store.get("id-3") == items[9]
    shelves = {"shelf": [f"s{i}" for i in range(1000)]}  # one filter value per bound variable
    np.testing.assert_array_equal(store.filter_fids(shelves), fids)
    store.close()


def test_a_failed_commit_is_rolled_back_and_the_next_write_works(tmp_path):
    """SQLite leaves the transaction open when some commits fail (here a deferred foreign key,
    really checked at COMMIT): every later write of the process had failed "within a
    transaction" until a restart."""
    import sqlite3

    import pytest

    store = CatalogStore(tmp_path / "catalog.sqlite", create=True)
    store._db.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), store.transaction():
        store.insert_items(np.array([1]), ["lost"], [{}])
        store._db.execute("CREATE TEMP TABLE parent (id INTEGER PRIMARY KEY)")
        store._db.execute(
            "CREATE TEMP TABLE child (p REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        store._db.execute("INSERT INTO child VALUES (5)")
    assert not store._db.in_transaction
    with store.transaction():
        store.insert_items(np.array([2]), ["kept"], [{}])
    assert store.get("lost") is None and store.get("kept") is not None
    store.close()


def test_the_wal_file_is_cut_back_once_checkpointed(tmp_path):
    """It kept its largest size for good: 12.7 MB beside a 6.5 MB store after a compaction."""
    import os

    from index.store import WAL_SIZE_LIMIT

    store = CatalogStore(tmp_path / "catalog.sqlite", create=True)
    n = 8000
    with store.transaction():
        store.insert_items(np.arange(n, dtype=np.int64), [f"i{i}" for i in range(n)], [{}] * n)
        store.set_state(note="x" * 4_000_000)
    wal = tmp_path / "catalog.sqlite-wal"
    assert os.path.getsize(wal) > WAL_SIZE_LIMIT
    store.checkpoint_wal()
    with store.transaction():  # the next write starts the WAL over, then truncates it
        store.set_state(note="y")
    store.checkpoint_wal()
    assert os.path.getsize(wal) <= WAL_SIZE_LIMIT
    store.close()


def test_filtered_pages_are_the_same_whichever_way_the_store_reads_them(tmp_path):
    """A rare filter's page is read from its matching fids, a common one by walking the ids;
    both must page like a walk over every id (ids past ``after``, by code point)."""
    store = CatalogStore(tmp_path / "catalog.sqlite", create=True)
    rng = np.random.default_rng(5)
    n = 3000
    ids = [f"{chr(0x61 + i % 26)}{chr(0x4E00 + i % 7)}-{i}" for i in rng.permutation(n)]
    with store.transaction():
        store.insert_items(np.arange(n, dtype=np.int64), ids, [{"i": i} for i in range(n)])
        store.set_state(next_fid=n)
    by_id = sorted(range(n), key=lambda f: ids[f])
    for matches, limit in ((0, 10), (3, 10), (40, 7), (1000, 50), (n, 100)):
        allowed = np.sort(rng.choice(n, matches, replace=False)).astype(np.int64)
        expected = [ids[f] for f in by_id if f in set(allowed.tolist())]
        pages, after = [], None
        while page := store.list_items(after, limit, allowed):
            assert len(page) <= limit
            pages += [item.id for item in page]
            after = page[-1].id
        assert pages == expected, (matches, limit)
    store.close()


def test_metadata_that_is_not_json_is_a_corrupt_store_error_naming_the_item(tmp_path):
    """A hand-edited row was a JSONDecodeError traceback from 'index query'."""
    import pytest

    from index.errors import IndexCorruptError

    store = CatalogStore(tmp_path / "catalog.sqlite", create=True)
    with store.transaction():
        store.insert_items(np.array([1]), ["edited"], [{"brand": "x"}])
    store._db.execute("UPDATE items SET metadata='{brand: x' WHERE id='edited'")
    with pytest.raises(IndexCorruptError, match="metadata of item 'edited' is not JSON"):
        store.get("edited")
    store.close()


def test_a_journal_record_of_an_unknown_op_says_what_to_do():
    """It said only "has unknown op 'upsert'": a newer phonesim's record, or a damaged one."""
    import pytest

    from index.errors import IndexCorruptError
    from index.journal import decode_record

    fids = np.array([1], "<i8").tobytes()
    with pytest.raises(IndexCorruptError, match="unknown op 'upsert'.*newer phonesim.*upgrade"):
        decode_record(2, "upsert", 1, fids, None, None, 0.0, 4)


def test_no_descriptor_left_to_open_the_store_is_no_damaged_store(tmp_path, monkeypatch):
    """`index build` under `ulimit -n 5`: "not a readable catalog store (unable to open
    database file)", exit 2, as if the store were damaged."""
    import errno
    import os
    import sqlite3

    from common.errors import OutOfResourcesError
    from index import store as store_module

    def cannot_open(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise sqlite3.OperationalError("unable to open database file")

    real_open = os.open

    def no_descriptor(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path) == str(tmp_path):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(store_module.sqlite3, "connect", cannot_open)
    monkeypatch.setattr(store_module.os, "open", no_descriptor)
    with pytest.raises(OutOfResourcesError, match="Too many open files.*ulimit -n") as caught:
        store_module.CatalogStore(tmp_path / "catalog.sqlite", create=True)
    assert caught.value.exit_code == 1


def test_files_take_the_umasks_mode_and_a_shared_folders_group(tmp_path):
    """SQLite made the store 0644 whatever the umask, and lock files were made 0644 by
    whoever opened the index first: in a group-shared folder another user of the group could
    not write to the store, nor open the index at all. And a setgid folder's bit was dropped
    from a build's folder."""
    import os
    import stat

    from index import build_index, open_index
    from tests.index.synthetic import HASH, MODEL, make_catalog

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    xb, _, ids, md = make_catalog(20, d=8)
    before = os.umask(0o002)
    try:
        build_index(shared / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="flat")
        with open_index(shared / "ix") as ix:
            ix.add(["late"], xb[:1])
            assert ix.compact(force=True)
    finally:
        os.umask(before)
    folder = shared / "ix"
    assert folder.stat().st_mode & stat.S_ISGID
    for name in ("catalog.sqlite", "writer.lock", "compact.lock"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o664, name


def test_a_lock_file_another_user_made_can_still_be_locked(tmp_path, monkeypatch):
    """flock needs no write access: a lock file this user may not write is opened read-only
    (it had refused the index as "not writable here")."""
    import fcntl
    import os

    from index import folder as folder_module

    lock = tmp_path / "writer.lock"
    lock.write_text("")
    real_open = os.open

    def not_writable(path, flags, *args):  # noqa: ANN001, ANN002, ANN202
        if flags & os.O_RDWR:  # as another user's 0644 file refuses this one
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(folder_module.os, "open", not_writable)
    fd = folder_module.open_lock_file(lock)
    monkeypatch.undo()
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    (tmp_path / "missing.lock").unlink(missing_ok=True)
    monkeypatch.setattr(folder_module.os, "open", not_writable)
    with pytest.raises(PermissionError):  # none there to lock, none to be made: as before
        folder_module.open_lock_file(tmp_path / "missing.lock")
