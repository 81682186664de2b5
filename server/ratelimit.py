"""Optional per-client rate limit (``--rate-limit``): a token bucket per client address.

A client may make ``rate`` requests per second on average and ``burst`` at once; beyond that
it gets 429 with ``Retry-After`` (whole seconds until its next request is allowed). Health,
readiness and metrics are never limited (probes must see the truth), nor CORS preflights.
Buckets live in one worker's memory: with several workers each counts its own share. The
client is the TCP peer address; behind a proxy every client shares the proxy's bucket, so
limit there instead.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

from flask import Flask, request

from server.errors import ApiError

# Probes, and the web page with its own files (no model work; counted, they used the page's
# budget before its first search: at --rate-limit 1 app.js itself was a 429).
EXEMPT_ENDPOINTS = frozenset(
    {"ops.healthz", "ops.readyz", "ops.metrics", "web.index_page", "static"}
)
MAX_CLIENTS = 10_000  # buckets kept; the least recently seen client is forgotten first


class TokenBucket:
    """Per-key token buckets, thread-safe, with a bounded number of keys."""

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_CLIENTS) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token of ``key``: 0.0 when allowed, else seconds until a token is back."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait


def init_app(app: Flask, rate: float, burst: int | None = None) -> TokenBucket:
    """Refuse requests over ``rate`` per second per client address with 429."""
    bucket = TokenBucket(rate, burst or max(1, math.ceil(2 * rate)))

    @app.before_request
    def _limit() -> None:
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if request.endpoint in EXEMPT_ENDPOINTS or preflight:  # as the README says: not
            return  # every OPTIONS, which any client may send as often as it likes
        wait = bucket.take(request.remote_addr or "-")
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"more than {rate:g} requests per second from this client; retry later",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )

    return bucket
