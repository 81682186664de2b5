"""A real PostgreSQL store under faults: another application's tables, a writer holding the
lock, tables gone mid-restore, a malformed URL, values the database cannot hold."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from index import open_index
from index.errors import (
    BuildInputError,
    InvalidMetadataError,
    StoreUnavailableError,
)
from tests.index.test_following import build, vec


def test_a_build_never_drops_another_applications_tables(tmp_path, pg_url):
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE items (sku TEXT, qty INT)")
        c.execute("INSERT INTO items SELECT 'sku' || g, g FROM generate_series(1, 1000) g")
    for overwrite in (False, True):
        with pytest.raises(BuildInputError, match="items that are not a phonesim catalog"):
            from index.pg_admin import push_folder

            spec = build(tmp_path / f"ix{overwrite}", None)
            push_folder(spec.path, pg_url, overwrite=overwrite)
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == 1000


def test_a_foreign_state_table_is_no_catalog(pg_url):
    from index.errors import IndexNotFoundError

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE state (name TEXT)")
    with pytest.raises(IndexNotFoundError, match="no catalog in this database"):
        open_index(None, store=pg_url)


def test_reads_go_on_while_a_write_waits_for_another_writers_lock(
    tmp_path,
    pg_url,
    monkeypatch,
):
    import index.pg

    monkeypatch.setattr(index.pg, "_LOCK_TIMEOUT_S", 2)
    spec = build(tmp_path / "ix", pg_url)
    ix = spec.open()
    other = spec.open()
    try:
        blocker = psycopg.connect(pg_url)  # a long `index add` elsewhere holds the lock
        blocker.execute("SELECT value FROM state WHERE key='head_seq' FOR UPDATE")
        failed: list[BaseException] = []
        writer = threading.Thread(
            target=lambda: _record(failed, lambda: ix.add(["waiting"], vec(1)))
        )
        t0 = time.monotonic()
        writer.start()
        time.sleep(0.5)
        other_seen = other.sync()  # another process: not held up
        assert ix.sync().store_error is None  # this process's reads: not held up either
        assert time.monotonic() - t0 < 1.8 and other_seen.store_error is None
        assert ix.search(vec(2), 1)[0]
        writer.join(10)
        blocker.rollback()
        blocker.close()
        # The write gave up after the lock timeout, as "unavailable, retry", and wrote nothing.
        assert failed and isinstance(failed[0], StoreUnavailableError), failed
        assert 1.8 < time.monotonic() - t0 < 8
        assert "waiting" not in ix
        ix.add(["waiting"], vec(1))  # the lock is free again
        assert "waiting" in ix
    finally:
        ix.close()
        other.close()


def _record(errors: list[BaseException], fn) -> None:  # noqa: ANN001
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_tables_gone_mid_restore_leave_reads_answering(tmp_path, pg_url):
    spec = build(tmp_path / "ix", pg_url)
    ix = spec.open()
    try:
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute("ALTER TABLE state RENAME TO state_moved")
            st = ix.sync()
            assert st.store_error and "unavailable" in st.store_error
            assert len(ix) > 0 and ix.search(vec(3), 1)[0]
            with pytest.raises(StoreUnavailableError):
                ix.add(["new"], vec(4))
            c.execute("ALTER TABLE state_moved RENAME TO state")
        assert ix.sync().store_error is None
        ix.add(["new"], vec(4))
        assert "new" in ix
    finally:
        ix.close()


def test_a_malformed_url_never_shows_its_password():
    url = "postgresql://postgres:S3cretPW@[::1:55432/cat1"
    with pytest.raises(StoreUnavailableError) as caught:
        open_index(None, store=url)
    assert "S3cretPW" not in str(caught.value) and "valid PostgreSQL URL" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    "ids, metadata, message",
    [
        (["a\x00b"], None, "NUL"),
        (["a\ud800"], None, "lone surrogate"),
        (["x" * 1025], None, "at most 1024 bytes"),
        (["ok"], [{"title": "\udcff"}], "lone surrogate"),
        (["ok"], [{"ti\x00tle": "x"}], "NUL"),
    ],
)
def test_values_no_store_can_hold_are_refused_before_writing(
    tmp_path,
    pg_url,
    ids,
    metadata,
    message,
):
    spec = build(tmp_path / "ix", pg_url)
    with spec.open() as ix:
        n = len(ix)
        with pytest.raises(InvalidMetadataError, match=message):
            ix.add(ids, vec(5), metadata)
        assert len(ix) == n


def test_a_replica_reloads_after_the_database_is_restored_from_a_dump(
    tmp_path,
    pg_server,
    pg_url,
):
    """A dump keeps the catalog's generation. A replica that held records written after the
    dump kept them after `pg_restore --clean`, and applied the records written after the
    restore on top: removed items answered, new ones never did, and no error said so."""
    import subprocess

    spec = build(tmp_path / "ix", pg_url)
    x = spec.open()
    try:
        x.add([f"kept-{i}" for i in range(3)], vec(1).repeat(3, 0))
        dump = tmp_path / "catalog.dump"
        bindir = pg_server.bindir
        subprocess.run([bindir / "pg_dump", "-Fc", "-f", dump, pg_url], check=True, timeout=60)
        with spec.open() as w:
            for i in range(3):
                w.add([f"lost-{i}"], vec(10 + i))
        x.sync()
        assert "lost-2" in x
        subprocess.run(
            [bindir / "pg_restore", "--clean", "-d", pg_url, dump], check=True, timeout=60
        )
        with spec.open() as w:
            for i in range(4):
                w.add([f"after-{i}"], vec(20 + i))
        assert x.sync().store_error is None
        assert all(f"after-{i}" in x for i in range(4)), "records written after the restore"
        assert not any(f"lost-{i}" in x for i in range(3)), "records the restore undid"
        assert x.search(vec(21), 1)[0][0].id == "after-1"
    finally:
        x.close()


def test_restores_while_replicas_follow_never_deadlock(tmp_path, pg_url):
    """`index restore --store` dropped the tables one by one, items first, while replicas read
    state, then journal: PostgreSQL broke the cycle by failing the restore ("deadlock
    detected"), 2-3 times in 25."""
    from index.pg_admin import push_folder

    spec = build(tmp_path / "ix", pg_url)
    replicas = [spec.open(readonly=True) for _ in range(3)]
    stop = threading.Event()
    errors: list[str] = []

    def follow(ix) -> None:  # noqa: ANN001
        while not stop.is_set():
            status = ix.sync()
            if status.store_error and "deadlock" in status.store_error:
                errors.append(status.store_error)
            time.sleep(0.005)

    threads = [threading.Thread(target=follow, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    try:
        for _ in range(25):
            push_folder(spec.path, pg_url, overwrite=True)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for r in replicas:
            r.close()
    assert not errors, errors[:3]


def test_a_replica_reloads_a_restore_that_left_head_seq_as_it_was(tmp_path, pg_url):
    """Both catalogs at journal record 0: the replica compared head_seq only, and answered
    from the replaced catalog for ever."""
    import numpy as np

    from index import build_index
    from index.pg_admin import push_folder
    from tests.index.synthetic import HASH, MODEL

    spec = build(tmp_path / "ix", pg_url)
    x = spec.open(readonly=True)
    try:
        other = tmp_path / "other"
        xb = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
        ids = [f"other-{i}" for i in range(5)]
        build_index(other, ids, xb, None, model_name=MODEL, checkpoint_hash=HASH, kind="flat")
        push_folder(other, pg_url, overwrite=True)
        assert x.sync().store_error is None
        assert len(x) == 5 and "other-0" in x
    finally:
        x.close()


def test_updates_and_removes_of_ids_no_store_holds_are_unknown(tmp_path, pg_url):
    """PATCH /v1/items/a%00b reached PostgreSQL, which refused the NUL: a logged 500."""
    from index.errors import UnknownIdError

    spec = build(tmp_path / "ix", pg_url)
    with spec.open() as ix:
        for bad in ("a\x00b", "a\ud800"):
            with pytest.raises(UnknownIdError):
                ix.update_metadata(bad, {"x": 1})
            with pytest.raises(UnknownIdError):
                ix.remove([bad])


def test_writes_during_a_snapshot_upload_stay_pending(tmp_path, pg_url, monkeypatch):
    """The upload runs outside the apply lock: what was applied meanwhile is not in the
    snapshot, so it stays pending (it was counted as folded, or never as folded)."""
    import numpy as np

    from index.pg import PgSource

    upload = PgSource.commit_snapshot
    spec = build(tmp_path / "ix", pg_url)
    with spec.open() as ix:
        ix.add(["a", "b"], np.vstack([vec(1), vec(3)]))

        def upload_beside_a_write(self, index, seq):  # noqa: ANN001, ANN202
            threading.Thread(target=lambda: ix.add(["during"], vec(2))).start()
            time.sleep(0.5)
            return upload(self, index, seq)

        monkeypatch.setattr(PgSource, "commit_snapshot", upload_beside_a_write)
        assert ix.compact(force=True)
        time.sleep(0.5)
        assert "during" in ix
        assert ix._replica.pending == 1  # the one vector added during the upload


def _upload_after(monkeypatch, replace_catalog) -> None:  # noqa: ANN001
    """Make the next snapshot upload wait for ``replace_catalog()`` to run first."""
    from index.pg import PgSource

    upload = PgSource.commit_snapshot

    def replaced_first(self, index, seq):  # noqa: ANN001, ANN202
        replace_catalog()
        return upload(self, index, seq)

    monkeypatch.setattr(PgSource, "commit_snapshot", replaced_first)


def _snapshots(pg_url: str) -> tuple[list[int], str]:
    with psycopg.connect(pg_url) as c:
        seqs = [r[0] for r in c.execute("SELECT seq FROM snapshots ORDER BY seq").fetchall()]
        ck = c.execute("SELECT value FROM state WHERE key='checkpoint_seq'").fetchone()[0]
    return seqs, ck


def test_a_restore_during_a_snapshot_upload_keeps_the_restored_catalog(
    tmp_path,
    pg_url,
    monkeypatch,
):
    """The upload runs outside the apply lock: an `index restore --store` landing in it was
    overwritten by the old catalog's snapshot (and the restored one deleted), so replicas
    loaded the old vectors beside the restored items."""
    import numpy as np

    from index import build_index
    from index.pg_admin import push_folder
    from tests.index.synthetic import HASH, MODEL

    spec = build(tmp_path / "ix", pg_url)
    other = tmp_path / "other"
    xb = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
    ids = [f"other-{i}" for i in range(5)]
    build_index(other, ids, xb, None, model_name=MODEL, checkpoint_hash=HASH, kind="flat")
    with spec.open() as ix:
        ix.add(["a", "b"], np.vstack([vec(1), vec(3)]))
        _upload_after(monkeypatch, lambda: push_folder(other, pg_url, overwrite=True))
        assert not ix.compact(force=True)  # dropped: the catalog is not the one frozen
    assert _snapshots(pg_url) == ([0], "0")
    with spec.open(readonly=True) as fresh:
        assert len(fresh) == 5 and "a" not in fresh
        assert fresh.search(xb[3:4], 1)[0][0].id == "other-3"


def test_a_dump_restored_during_a_snapshot_upload_keeps_the_restored_catalog(
    tmp_path,
    pg_server,
    pg_url,
    monkeypatch,
):
    """A dump keeps the catalog's generation, and its records after the dump are others:
    the frozen snapshot's last record must still be the one in the database."""
    import subprocess

    spec = build(tmp_path / "ix", pg_url)
    dump = tmp_path / "catalog.dump"
    bindir = pg_server.bindir
    with spec.open() as ix:
        ix.add(["kept"], vec(1))
        subprocess.run([bindir / "pg_dump", "-Fc", "-f", dump, pg_url], check=True, timeout=60)
        ix.add(["lost"], vec(2))

        def restore() -> None:
            subprocess.run(
                [bindir / "pg_restore", "--clean", "-d", pg_url, dump], check=True, timeout=60
            )
            with spec.open() as w:  # the restored catalog goes on: its record 2 is another
                w.add(["after"], vec(3))

        _upload_after(monkeypatch, restore)
        assert not ix.compact(force=True)
    assert _snapshots(pg_url) == ([0], "0")
    with spec.open(readonly=True) as fresh:
        assert "kept" in fresh and "after" in fresh and "lost" not in fresh
        assert fresh.search(vec(3), 1)[0][0].id == "after"


def test_after_a_database_restart_the_first_write_and_catch_up_succeed(tmp_path, pg_server):
    """A connection the restarted server had ended was found only on its next use: each
    process's first write failed (a 503), and a catch-up answered from the old state, missing
    a write another process had acknowledged."""
    from tests.pg import PgServer

    own = PgServer(pg_server.bindir)
    own.start()
    try:
        spec = build(tmp_path / "ix", own.create_db())
        from index.catalog import IndexOptions

        with spec.open() as writer, spec.open(options=IndexOptions(sync_on_read=False)) as reader:
            writer.update_metadata("sku-1", {"v": 1})
            reader.sync()
            assert reader.get("sku-1").metadata["v"] == 1
            own.stop(remove=False)  # pg_ctl stop -m fast: every session is ended
            own.start()
            writer.update_metadata("sku-1", {"v": 2})  # no StoreUnavailableError
            status = reader.sync()
            assert status.store_error is None
            assert reader.get("sku-1").metadata["v"] == 2
    finally:
        own.stop()


def test_a_frozen_database_holds_one_write_and_fails_the_others_quickly(
    tmp_path,
    pg_server,
    monkeypatch,
):
    """Every write queued behind one stuck on a frozen server (SIGSTOP: no connection timeout
    notices), until the worker had no thread left for anything, /healthz included."""
    import os
    import signal

    import index.pg
    from tests.pg import PgServer
    from tests.server.test_follower import _server_pids, timed

    monkeypatch.setattr(index.pg, "WRITE_STALL_S", 1.0)
    own = PgServer(pg_server.bindir)
    own.start()
    frozen: list[int] = []
    try:
        spec = build(tmp_path / "ix", own.create_db())
        ix = spec.open()
        ix.update_metadata("sku-1", {"v": 0})  # connections open before the freeze
        frozen = _server_pids(own.pid())
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        stuck = threading.Thread(target=ix.update_metadata, args=("sku-1", {"v": 1}), daemon=True)
        stuck.start()
        time.sleep(0.3)

        def second() -> BaseException | None:
            try:
                ix.update_metadata("sku-2", {"v": 1})
            except StoreUnavailableError as exc:
                return exc
            return None

        error, took = timed(second, limit_s=10.0)  # a hang fails the test, not the run
        assert error is not None and "not answering" in str(error)
        assert took < 2.5  # the stall limit, not the freeze
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        frozen = []
        stuck.join(30)
        assert not stuck.is_alive()
        ix.sync()
        assert ix.get("sku-1").metadata["v"] == 1 and "v" not in ix.get("sku-2").metadata
        ix.update_metadata("sku-2", {"v": 2})  # writes go on once the database answers
        ix.close()
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        own.stop()


def test_a_commit_whose_answer_never_came_is_an_unknown_outcome(tmp_path, pg_server):
    """The connection broke while the COMMIT waited (here: for a synchronous standby that never
    comes, the session then ended by an administrator). The commit had been made, but the
    write raised "unavailable", which the server answered as "nothing was changed", and an
    add deleted the photo of the item it had just stored."""
    from index.errors import StoreOutcomeUnknownError
    from tests.pg import PgServer

    own = PgServer(pg_server.bindir)  # its own server: the setting below is server-wide
    own.start()
    try:
        url = own.create_db()
        spec = build(tmp_path / "ix", url)
        with spec.open() as ix, psycopg.connect(url, autocommit=True) as admin:
            ix.update_metadata("sku-1", {"v": 0})  # the writing connection is open
            admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
            admin.execute("SELECT pg_reload_conf()")
            # The reload reaches each session by a signal: wait until the server has it (a new
            # session sees it), then a moment for the writer's session, or its commit may not
            # wait at all on a busy machine.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with psycopg.connect(url) as probe:
                    shown = probe.execute("SHOW synchronous_standby_names").fetchone()[0]
                if shown == "ghost":
                    break
                time.sleep(0.05)
            time.sleep(0.5)
            failed: list[BaseException] = []
            writer = threading.Thread(target=_record, args=(failed, lambda: ix.remove(["sku-2"])))
            writer.start()
            waiting: list = []
            deadline = time.monotonic() + 20
            while not waiting and time.monotonic() < deadline:
                time.sleep(0.05)
                waiting = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                ).fetchall()
            assert waiting, "the commit never waited for the standby"
            admin.execute("SELECT pg_terminate_backend(%s)", (waiting[0][0],))
            writer.join(20)
            admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
            admin.execute("SELECT pg_reload_conf()")
            assert len(failed) == 1 and isinstance(failed[0], StoreOutcomeUnknownError), failed
            assert "may have been made" in str(failed[0])
            ix.sync()
            assert "sku-2" not in ix  # it was made, and this process follows it
            ix.update_metadata("sku-1", {"v": 1})  # and writes go on, on a new connection
            assert ix.get("sku-1").metadata["v"] == 1
    finally:
        own.stop()
