"""Each serving process follows the catalog store: its FAISS copy catches up with the journal.

Two ways, both through :meth:`index.catalog.CatalogIndex.sync` (a cheap change check, then the
new journal records): :meth:`IndexFollower.catch_up` before a request is answered (so a write
acknowledged by any process is seen by every request that starts after it), and a background
thread every ``interval_s`` seconds (so a process that gets no requests is not far behind when
one comes, and the lag gauges stay current). ``sync`` never raises because the store is
unreachable: the process keeps answering from the state it holds and the status says why.

A writing process also folds the journal into a new FAISS snapshot when it is due
(:meth:`~index.catalog.CatalogIndex.compact`: by size or age; one compactor per store), from
this thread, so no request ever waits for a compaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

StatusObserver = Callable[[Any], None]
COMPACT_CHECK_S = 1.0  # how often a writer asks the store whether compaction is due


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
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"the sync interval must be positive, got {interval_s}")
        self.index = index
        self.interval_s = float(interval_s)
        self._on_status = on_status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._last_error: str | None = None
        self._compact = compact
        self._compact_checked = 0.0
        self.last_follow = 0.0  # monotonic time of the last background sync that ran

    def start(self) -> IndexFollower:
        self._thread.start()
        return self

    def catch_up(self) -> Any:
        """Apply what the store has that this process lacks (the check before a request)."""
        return self._sync()

    @property
    def status(self) -> Any:
        """Where this process stands (``SyncStatus``), without asking the store."""
        return self.index.sync_status

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (idempotent); a sync in progress finishes first."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _sync(self) -> Any:
        status = self.index.sync()
        error = getattr(status, "store_error", None)
        if error != self._last_error:  # log changes only: not one line per tick while down
            if error:
                log.warning("catalog store unreachable, answering from the last state: %s", error)
            elif self._last_error:
                log.info("catalog store reachable again")
            self._last_error = error
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:  # gauges must never stop the follower
                log.exception("sync status observer failed")
        return status

    def _maybe_compact(self, status: Any) -> None:
        now = time.monotonic()
        if not self._compact or status.store_error or now - self._compact_checked < COMPACT_CHECK_S:
            return
        self._compact_checked = now
        try:
            if self.index.compact():
                log.info("folded the journal into a new snapshot at record %d", status.head_seq)
        except Exception as exc:  # not due, another process compacts, or the store went away
            log.warning("compaction failed (the next check tries again): %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._maybe_compact(self._sync())
            except Exception:  # e.g. the index was closed under us at exit: stop quietly then
                if self._stop.is_set():
                    break
                log.exception("following the catalog store failed; trying again")
            self.last_follow = time.monotonic()
