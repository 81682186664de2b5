"""Each serving process follows the catalog store: its FAISS copy catches up with the journal.

Both ways run :meth:`index.catalog.CatalogIndex.sync` (a cheap change check, then the new
journal records) on the follower's own thread: every ``interval_s`` seconds (so a process that
gets no requests is not far behind when one comes, and the lag gauges stay current), and when
a request asks, before it is answered (:meth:`IndexFollower.catch_up`: so a write acknowledged
by any process is seen by every request that starts after it). Concurrent requests share one
sync. A request waits for it at most ``wait_s``, and not at all once a sync has been running
that long: a store that stops answering (a frozen server, a network partition the kernel has
not noticed) then costs requests nothing; they are answered from the state this process holds,
and the status says the store is not answering. ``sync`` never raises because the store is
unreachable either: the process keeps answering from the state it holds and the status says
why.

A writing process also folds the journal into a new FAISS snapshot when it is due
(:meth:`~index.catalog.CatalogIndex.compact`: by size or age; one compactor per store), from
a thread of its own: the syncs requests wait for go on meanwhile (on PostgreSQL the snapshot's
upload, seconds for a large catalog, holds no lock of the index either).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

log = logging.getLogger(__name__)

StatusObserver = Callable[[Any], None]
COMPACT_CHECK_S = 1.0  # how often a writer asks the store whether compaction is due
# How long a request waits for the store's changes before it is answered without them.
CATCH_UP_WAIT_S = 2.0


class IndexFollower:
    """Keeps one process's index in step with the store; :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        index: Any,
        interval_s: float,
        *,
        on_status: StatusObserver | None = None,
        compact: bool = False,
        name: str = "phonesim-follower",
        wait_s: float = CATCH_UP_WAIT_S,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"the sync interval must be positive, got {interval_s}")
        self.index = index
        self.interval_s = float(interval_s)
        self.wait_s = float(wait_s)
        self._cond = threading.Condition()
        self._asked = 0  # syncs asked for by requests
        self._covered = 0  # the last ask that a finished sync started after
        self._syncing_since: float | None = None  # monotonic start of the running sync
        self._on_status = on_status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._last_error: str | None = None
        self._last_catalog_error: str | None = None
        self._last_failure: str | None = None  # the last sync's exception, as a line
        self._compactor = (
            threading.Thread(target=self._compact_loop, name=f"{name}-compact", daemon=True)
            if compact
            else None
        )
        self.last_follow = 0.0  # monotonic time of the last background sync that ran

    def start(self) -> IndexFollower:
        self._thread.start()
        if self._compactor is not None:
            self._compactor.start()
        return self

    def catch_up(self) -> Any:
        """Apply what the store has that this process lacks (the check before a request): a
        sync that starts after this call, waited for at most ``wait_s`` (see the module)."""
        if self._stop.is_set():
            # Stopping: answer from the state held. A sync on this thread would have no bound
            # (the follower's wait is gone) and could hold the request on a frozen store past
            # the worker's graceful timeout.
            return self.status
        if not self.alive:  # not started (a test, a tool): sync on the caller's thread
            return self._sync()
        with self._cond:
            self._asked += 1
            mine = self._asked
            self._cond.notify_all()
            left = self.wait_s - self.stalled_s
            if left > 0:
                self._cond.wait_for(lambda: self._covered >= mine or not self.alive, left)
        return self.status

    @property
    def stalled_s(self) -> float:
        """How long the running sync has been waiting for the store (0 when none runs)."""
        since = self._syncing_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    @property
    def status(self) -> Any:
        """Where this process stands (``SyncStatus``), without asking the store; a sync
        running past ``wait_s`` is reported as the store not answering."""
        status = self.index.sync_status
        stalled = self.stalled_s
        if stalled > self.wait_s and not status.store_error:
            late = max(status.behind_seconds, time.monotonic() - status.checked_at)
            status = replace(
                status,
                store_error=f"{self.index.where}: not answering for {stalled:.0f} s",
                behind_seconds=late,
            )
        return status

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout: float = 5.0) -> bool:
        """End the threads (idempotent); a sync or compaction in progress finishes first,
        waited for ``timeout`` seconds in all. False if one is still running then (stuck on a
        store that stopped answering)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        stuck = False
        for thread in (self._thread, self._compactor):
            if thread is None or thread is threading.current_thread() or not thread.ident:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            stuck = stuck or thread.is_alive()
        return not stuck

    def _sync(self) -> Any:
        status = self.index.sync()
        error = getattr(status, "store_error", None)
        if error != self._last_error:  # log changes only: not one line per tick while down
            if error:
                log.warning("catalog store unreachable, answering from the last state: %s", error)
            elif self._last_error:
                log.info("catalog store reachable again")
            self._last_error = error
        refused = getattr(status, "catalog_error", None)
        if refused != self._last_catalog_error:
            if refused:
                log.error("the catalog store's catalog cannot be served here: %s", refused)
            elif self._last_catalog_error:
                log.info("serving the catalog store's catalog again")
            self._last_catalog_error = refused
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:  # gauges must never stop the follower
                log.exception("sync status observer failed")
        return status

    def _log_failure(self, exc: Exception) -> None:
        """The traceback of a sync failure once, then one line when it changes: a damaged
        catalog store logged a traceback every tick (430 lines per 10 s per worker)."""
        failure = f"{type(exc).__name__}: {exc}"
        if failure == self._last_failure:
            return
        if self._last_failure is None:
            log.exception("following the catalog store failed; trying again every tick")
        else:
            log.error("following the catalog store still fails, now with %s", failure)
        self._last_failure = failure

    def _compact_loop(self) -> None:
        while not self._stop.wait(COMPACT_CHECK_S):
            status = self.status
            if status.store_error or getattr(status, "catalog_error", None):
                continue  # the syncs say why; compaction would only fail the same way
            try:
                if self.index.compact():
                    seq = self.index.sync_status.applied_seq
                    log.info("folded the journal into a new snapshot at record %d", seq)
            except Exception as exc:  # not due, another process compacts, the store went away
                if self._stop.is_set():
                    break
                log.warning("compaction failed (the next check tries again): %s", exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(
                    lambda: self._asked > self._covered or self._stop.is_set(), self.interval_s
                )
                if self._stop.is_set():
                    break
                covering = self._asked  # every ask so far is before this sync starts
                self._syncing_since = time.monotonic()
            try:
                self._sync()
                if self._last_failure is not None:
                    log.info("following the catalog store again")
                    self._last_failure = None
            except Exception as exc:  # e.g. the index was closed under us at exit: stop quietly
                if self._stop.is_set():
                    break
                self._log_failure(exc)
            finally:
                with self._cond:
                    self._covered = max(self._covered, covering)
                    self._syncing_since = None
                    self._cond.notify_all()
            self.last_follow = time.monotonic()
