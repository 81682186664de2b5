"""Log lines that come in floods are let through at most once per interval, with a count."""

from __future__ import annotations

import logging

from server.log_throttle import LogThrottle, ThrottledMessages
from server.worker import ACCEPT_OUT_OF_RESOURCES


def test_a_flooding_message_passes_once_per_interval_with_the_count(caplog, monkeypatch):
    """Out of descriptors, asyncio logged "socket.accept() out of system resource" with its
    traceback thousands of times a second (43 MB of log in 10 s)."""
    clock = [100.0]
    monkeypatch.setattr("server.log_throttle.time.monotonic", lambda: clock[0])
    logger = logging.getLogger("test.flood")
    logger.addFilter(ThrottledMessages(ACCEPT_OUT_OF_RESOURCES, every_s=10))
    with caplog.at_level(logging.ERROR, logger="test.flood"):
        for _ in range(500):
            logger.error("%s\nprotocol: x", ACCEPT_OUT_OF_RESOURCES)
            logger.error("another error")  # other lines are never held back
        clock[0] += 11
        logger.error(ACCEPT_OUT_OF_RESOURCES)
    flood = [r.getMessage() for r in caplog.records if ACCEPT_OUT_OF_RESOURCES in r.getMessage()]
    assert len(flood) == 2 and flood[1].endswith("(499 more since the last such line)")
    assert sum(r.getMessage() == "another error" for r in caplog.records) == 500


def test_the_throttle_counts_what_it_held_back(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("server.log_throttle.time.monotonic", lambda: clock[0])
    throttle = LogThrottle(5)
    assert [throttle.due() for _ in range(3)] == [0, None, None]
    clock[0] = 6
    assert throttle.due() == 2 and throttle.due() is None
