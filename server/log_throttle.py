"""At most one log line per interval for failures that come in floods."""

from __future__ import annotations

import threading
import time


class LogThrottle:
    """At most one log line per ``every_s`` seconds (a machine out of descriptors fails
    thousands of requests a second, and each had logged its own traceback)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._skipped = 0
        self._next = 0.0
        self._lock = threading.Lock()

    def due(self) -> int | None:
        """None while a line is held back; else how many were held back since the last."""
        with self._lock:
            now = time.monotonic()
            if now < self._next:
                self._skipped += 1
                return None
            self._next = now + self.every_s
            skipped, self._skipped = self._skipped, 0
            return skipped
