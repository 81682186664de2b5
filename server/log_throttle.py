"""At most one log line per interval for failures that come in floods."""

from __future__ import annotations

import logging
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


class ThrottledMessages(logging.Filter):
    """Lets a record whose message contains ``text`` through at most every ``every_s``
    seconds, saying how many were held back. For asyncio's "socket.accept() out of system
    resource": out of descriptors, a worker logged its 6-line traceback thousands of times a
    second (43 MB of log in 10 s)."""

    def __init__(self, text: str, every_s: float = 10.0) -> None:
        super().__init__()
        self.text = text
        self._throttle = LogThrottle(every_s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        skipped = self._throttle.due()
        if skipped is None:
            return False
        if skipped:
            record.msg = f"{record.getMessage()} ({skipped} more since the last such line)"
            record.args = ()
        return True
