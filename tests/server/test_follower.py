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
from tests.pg import pg_server  # noqa: F401 - fixture

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


def test_a_frozen_store_holds_requests_at_most_the_wait(tmp_path, pg_server):  # noqa: F811
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
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            frozen = []
            deadline = time.monotonic() + 15
            while follower.catch_up().store_error is not None:
                if time.monotonic() > deadline:
                    pytest.fail("the follower did not recover after the store came back")
                time.sleep(0.1)
        finally:
            for pid in frozen:  # first: closing waits for the sync the freeze holds
                os.kill(pid, signal.SIGCONT)
            follower.stop()
            ix.close()
    finally:
        own.stop()
