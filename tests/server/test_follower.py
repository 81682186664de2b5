"""The follower bounds what a stalled store costs requests: a real PostgreSQL server frozen
(SIGSTOP: the kernel still answers for it, so no connection error ever comes) holds no request
longer than the wait, and the status says the store is not answering."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.follower import IndexFollower
from tests.index.test_following import build, vec

WAIT_S = 1.0


def _server_pids(postmaster: int) -> list[int]:
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    return [postmaster, *map(int, children)]


def timed(fn: Callable[[], Any], limit_s: float = 10.0) -> tuple[Any, float]:
    """``fn()`` and its seconds, on a thread: a call that hangs fails the test, not the run."""
    out: list[Any] = []
    t0 = time.monotonic()
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(limit_s)
    if not out:
        pytest.fail(f"still waiting after {limit_s} s")
    return out[0], time.monotonic() - t0


def test_a_frozen_store_holds_requests_at_most_the_wait(tmp_path, pg_server):
    from tests.pg import PgServer

    own = PgServer(pg_server.bindir)  # a server of its own, to freeze mid-test
    own.start()
    frozen: list[int] = []
    try:
        spec = build(tmp_path / "ix", own.create_db())
        ix = spec.open()
        follower = IndexFollower(ix, 0.2, wait_s=WAIT_S).start()
        try:
            assert follower.catch_up().store_error is None
            postmaster = own.pid()
            assert postmaster is not None
            frozen = _server_pids(postmaster)
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            _, took = timed(follower.catch_up)  # waits for the sync it asked for, only WAIT_S
            assert WAIT_S * 0.8 < took < WAIT_S + 1.0
            status, took = timed(follower.catch_up)  # the store is stalled: no wait at all
            assert took < 0.2
            assert status.store_error and "not answering" in status.store_error
            assert ix.search(vec(1), 1)[0]  # reads answer from the state held
            deadline = time.monotonic() + 15
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            frozen = []
            while follower.catch_up().store_error is not None:
                if time.monotonic() > deadline:
                    pytest.fail("the follower did not recover after the store came back")
                time.sleep(0.1)
            for pid in _server_pids(postmaster):  # frozen again: a SIGTERM must not hang
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
            timed(follower.catch_up)
            # The stuck sync is reported, so the server leaves the index to the process exit
            # instead of waiting for its lock (SIGTERM took gunicorn's whole 30 s).
            assert follower.stop(timeout=0.5) is False
            # A request still in flight while the worker stops is answered from the state
            # held, not held by a sync of its own on the frozen store.
            status, took = timed(follower.catch_up, limit_s=5.0)
            assert took < 0.5
            assert status.store_error and "not answering" in status.store_error
        finally:
            for pid in frozen:  # first: closing waits for the sync the freeze holds
                os.kill(pid, signal.SIGCONT)
            follower.stop()
            ix.close()
    finally:
        own.stop()


def test_a_slow_snapshot_upload_holds_no_request(tmp_path, pg_url, monkeypatch):
    """A compaction held the index's apply lock while it uploaded the snapshot (9-14 s for a
    60k-item catalog): requests waited out the 2 s bound and answered without writes other
    replicas had acknowledged, and no status said so."""
    from index.pg import PgSource

    upload = PgSource.commit_snapshot

    def slow_upload(self, index, seq):  # noqa: ANN001, ANN202
        time.sleep(3)
        return upload(self, index, seq)

    monkeypatch.setattr(PgSource, "commit_snapshot", slow_upload)
    spec = build(tmp_path / "ix", pg_url)
    a, b = spec.open(), spec.open()
    follower = IndexFollower(a, 0.2, wait_s=WAIT_S).start()
    compaction = threading.Thread(target=lambda: a.compact(force=True))
    try:
        a.add(["before"], vec(4))  # something to fold
        compaction.start()
        time.sleep(0.5)  # uploading now
        b.add(["during"], vec(5))  # acknowledged by another replica
        status, took = timed(follower.catch_up)
        assert took < WAIT_S and status.store_error is None
        assert "during" in a and a.search(vec(5), 1)[0][0].id == "during"
        compaction.join(10)
        assert not compaction.is_alive()
        assert follower.catch_up().journal_length < 2  # the snapshot took "before" in
    finally:
        compaction.join(10)
        follower.stop()
        a.close()
        b.close()


def test_a_catalog_of_another_checkpoint_takes_the_server_out_of_service(
    tiny_embedder,
    catalog_rows,
    jpeg_bytes,
    tmp_path,
    pg_url,
):
    """A catalog restored from another checkpoint's embeddings: the server went on embedding
    queries with its own checkpoint against the new vectors, and /readyz said ready."""
    import numpy as np

    from index import CatalogIndex, build_index
    from index.pg_admin import push_folder
    from server.config import ServerConfig
    from tests.server.helpers import API_KEY, assert_error, build_test_index, make_app, upload

    build_test_index(tiny_embedder, catalog_rows, tmp_path / "index", store=pg_url)
    ix = CatalogIndex.open(None, store=pg_url)
    config = ServerConfig(api_key=API_KEY, image_dir=str(tmp_path / "up"), sync_interval_s=0.1)
    app = make_app(config, tiny_embedder, ix)
    try:
        c = app.test_client()
        assert c.get("/readyz").status_code == 200
        xb = np.random.default_rng(3).standard_normal((4, tiny_embedder.dim)).astype(np.float32)
        other = tmp_path / "other"
        ids = [f"o-{i}" for i in range(4)]
        build_index(other, ids, xb, None, model_name="m", checkpoint_hash="another", kind="flat")
        push_folder(other, pg_url, overwrite=True)
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.get("/readyz")
        body = r.get_json()
        assert r.status_code == 503 and body["checks"]["catalog"] is False
        assert "built with a different embedder" in body["replica"]["catalog_error"]
        key = {"X-API-Key": API_KEY}
        r = c.post("/v1/items", data={**upload(jpeg_bytes), "id": "late"}, headers=key)
        assert "nothing was written" in assert_error(r, 503, "catalog_replaced")["message"]
        assert c.post("/v1/search", data=upload(jpeg_bytes)).status_code == 200
    finally:
        app.extensions["phonesim"].close()
        ix.close()
    with CatalogIndex.open(None, store=pg_url, readonly=True) as fresh:
        assert len(fresh) == 4 and "late" not in fresh


def test_a_failing_catalog_logs_its_traceback_once_and_metrics_still_answer(
    tiny_embedder, catalog_rows, tmp_path, caplog, monkeypatch
):
    """A catalog store overwritten with other bytes under a running server (SQLite's "file
    is not a database" at every read) logged a traceback at every sync tick (430 lines per
    10 s per worker), and /metrics answered 500 (the index size gauge read the store),
    losing every metric when they were needed."""
    import logging
    import sqlite3

    from index import CatalogIndex
    from server.config import ServerConfig
    from tests.server.helpers import build_test_index, make_app

    folder = build_test_index(tiny_embedder, catalog_rows, tmp_path / "index")
    ix = CatalogIndex.open(folder)
    app = make_app(ServerConfig(sync_interval_s=0.02), tiny_embedder, ix)
    state = app.extensions["phonesim"]

    def damaged(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.DatabaseError("file is not a database")

    try:
        c = app.test_client()
        with caplog.at_level(logging.INFO, logger="server.follower"):
            monkeypatch.setattr(ix, "sync", damaged)
            state.metrics.track_index_size(damaged)
            time.sleep(1.0)  # about 50 ticks
            r = c.get("/metrics")
            assert r.status_code == 200 and b"phonesim_http_requests_total" in r.data
            failed = [r for r in caplog.records if "following the catalog store" in r.message]
            assert len(failed) == 1 and failed[0].exc_info, [r.message for r in failed]
            monkeypatch.undo()
            time.sleep(0.5)
        said = [r.message for r in caplog.records if "following the catalog store" in r.message]
        assert said[1:] == ["following the catalog store again"], said
    finally:
        state.close()
        ix.close()


def test_a_catalog_deleted_under_the_server_takes_it_out_of_service(
    tiny_embedder, catalog_rows, jpeg_bytes, tmp_path
):
    """`rm catalog.sqlite*` under a running server: /readyz stayed 200 "ready", and
    `POST /v1/items` answered 201 for a write into the deleted file, lost at the restart."""
    from index import CatalogIndex
    from server.config import ServerConfig
    from tests.server.helpers import API_KEY, assert_error, build_test_index, make_app, upload

    folder = build_test_index(tiny_embedder, catalog_rows, tmp_path / "index")
    ix = CatalogIndex.open(folder)
    config = ServerConfig(api_key=API_KEY, image_dir=str(tmp_path / "up"), sync_interval_s=0.05)
    app = make_app(config, tiny_embedder, ix)
    try:
        c = app.test_client()
        assert c.get("/readyz").status_code == 200
        for f in folder.glob("catalog.sqlite*"):
            f.unlink()
        r = c.post(
            "/v1/items", data={**upload(jpeg_bytes), "id": "late"}, headers={"X-API-Key": API_KEY}
        )
        assert "removed or replaced on disk" in assert_error(r, 503, "catalog_replaced")["message"]
        r = c.get("/readyz")
        assert r.status_code == 503 and r.get_json()["checks"]["catalog"] is False
        assert c.post("/v1/search", data=upload(jpeg_bytes)).status_code == 200
        r = c.post(
            "/v1/items", data={**upload(jpeg_bytes), "id": "later"}, headers={"X-API-Key": API_KEY}
        )
        said = assert_error(r, 503, "catalog_replaced")["message"]
        # Once, not "index: nothing was written: index: catalog.sqlite was removed ...".
        assert said.count(str(folder)) == 1 and said.endswith("; nothing was written"), said
        assert "with the checkpoint that catalog was built from" in said
    finally:
        app.extensions["phonesim"].close()
        ix.close()
