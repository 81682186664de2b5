"""Prometheus metrics of one app, in a registry of its own (so tests can build many apps).

Under gunicorn every worker counts in files of a folder shared by the server's processes
(``PROMETHEUS_MULTIPROC_DIR``, set by :mod:`server.serve` before the workers start), and
``/metrics`` answers, from any worker, with the sum over all of them: one consistent view in
which counters never go back between scrapes. Gauges say how they combine over processes
(``multiprocess_mode``): requests in flight add up; lag and journal length show the worst
live process; the index size shows the largest (most caught-up) live copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.process_collector import ProcessCollector

from server.log_throttle import LogThrottle

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MODEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
# The methods counted by name (RFC 9110's, and PATCH); any other is "other".
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


# prometheus_client's ProcessCollector names (without "process_"), read from /proc.
_PROCESS_GAUGES = {
    "resident_memory_bytes": "Resident memory in bytes",
    "virtual_memory_bytes": "Virtual memory in bytes",
    "cpu_seconds": "CPU time used, user and system, in seconds",
    "open_fds": "Open file descriptors",
    "max_fds": "The open file descriptor limit",
    "start_time_seconds": "Start time, in seconds since the epoch",
}


def multiprocess_dir() -> str | None:
    """The folder the server's processes share their metrics in (None: this process alone)."""
    return os.environ.get(MULTIPROC_ENV) or None


def enable_multiprocess() -> None:
    """Count in the shared folder from now on, even if prometheus_client was imported before
    ``PROMETHEUS_MULTIPROC_DIR`` was set (it picks its value class once, at import)."""
    if multiprocess_dir() and values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay in the sums)."""
    folder = multiprocess_dir()
    if folder and os.path.isdir(folder):
        multiprocess.mark_process_dead(pid, folder)


class Metrics:
    """Request, model, batching, index and replica metrics."""

    def __init__(self) -> None:
        enable_multiprocess()
        self.shared_dir = multiprocess_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        self._gauge_sources: list[Callable[[], None]] = []
        self._failure_log = LogThrottle(10.0)
        r = self.registry
        self.requests = Counter(
            "phonesim_http_requests",
            "HTTP requests answered, by endpoint (URL rule), method and status.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "phonesim_http_request_duration_seconds",
            "Time to answer a request, by endpoint (URL rule), method and status.",
            ["endpoint", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "phonesim_http_requests_in_flight",
            "Requests being answered now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_seconds = Histogram(
            "phonesim_model_forward_seconds",
            "Time of one batched forward pass of the model.",
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "phonesim_model_batch_size",
            "Images per forward pass (micro-batch size).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "phonesim_model_queue_seconds",
            "Time a request waited for its batch to start.",
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.decode_seconds = Histogram(
            "phonesim_image_decode_seconds",
            "Time to decode and preprocess one uploaded image.",
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.text_photos = Counter(
            "phonesim_text_photos",
            "Uploaded photos of a server that reads text, by whether their text was read "
            "(read: yes) or not (read: no: a sure prediction, read_text=never, the request's "
            "reading budget spent, a busy reader, or a failed reading; each answer's "
            "text_unread says which).",
            ["read"],
            registry=r,
        )
        self.search_seconds = Histogram(
            "phonesim_index_search_seconds",
            "Time of one index search.",
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.index_items = Gauge(
            "phonesim_index_items",
            "Items in the catalog index (the most caught-up process).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.queue_depth = Gauge(
            "phonesim_model_queue_depth",
            "Requests waiting for the model.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.lag_entries = Gauge(
            "phonesim_replica_lag_entries",
            "Journal entries the store has that this server has not applied (worst process).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.lag_seconds = Gauge(
            "phonesim_replica_lag_seconds",
            "Seconds since this server last held every change of the store (worst process; 0: "
            "caught up). Rises while the store cannot be reached: its changes are unknown.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.journal_length = Gauge(
            "phonesim_index_journal_length",
            "Journal entries not yet folded into a FAISS snapshot.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.store_up = Gauge(
            "phonesim_store_up",
            "1 while every process reaches the catalog store, 0 if any cannot.",
            registry=r,
            multiprocess_mode="livemin",
        )
        # prometheus_client's process_* metrics are of the process that renders /metrics
        # only, and not offered at all in multiprocess mode: per worker (pid) here instead.
        self._process = ProcessCollector(registry=None)
        self.process = {
            name: Gauge(
                f"phonesim_worker_{name}",
                f"{text} (per worker process, by pid; refreshed every sync interval).",
                registry=r,
                multiprocess_mode="liveall",
            )
            for name, text in _PROCESS_GAUGES.items()
        }
        self._gauge_sources.append(self._read_process)

    def _read_process(self) -> None:
        for metric in self._process.collect():
            name = metric.name.removeprefix("process_")
            if name in self.process and metric.samples:
                self.process[name].set(metric.samples[0].value)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.model_seconds.observe(seconds)

    def track_index_size(self, size: Callable[[], float]) -> None:
        self._gauge_sources.append(lambda: self.index_items.set(size()))

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        self._gauge_sources.append(lambda: self.queue_depth.set(depth()))

    def observe_sync(self, status: Any) -> None:
        """Record where this process stands against the store (a ``SyncStatus``)."""
        self.lag_entries.set(status.behind_entries)
        self.lag_seconds.set(status.behind_seconds)
        self.journal_length.set(status.journal_length)
        self.index_items.set(status.size)
        self.store_up.set(0 if status.store_error else 1)

    def refresh_gauges(self) -> None:
        """Read this process's gauges from their sources (the follower does it every tick, so
        the other workers' values in a shared view are at most one sync interval old)."""
        for update in self._gauge_sources:
            try:
                update()
            except Exception:  # a damaged catalog's size made /metrics a 500; the follower logs it
                continue  # the gauge keeps its last value; every other metric is still served

    def render(self) -> Response:
        self.refresh_gauges()
        registry = self.registry
        if self.shared_dir:  # every worker's values, summed, from the shared folder
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.shared_dir)
        # content_type, not mimetype: the type names its charset, which mimetype adds again
        # (a repeated parameter that strict scrapers refuse).
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    def count_refused(self, method: str, status: int) -> None:
        """Count a request the HTTP layer answered before the app (a body too large or too
        slow, too many uploads at once, or a request the HTTP parser refused: method "other"),
        under the endpoint label "refused"."""
        method = method if method in HTTP_METHODS else "other"
        self.requests.labels("refused", method, str(status)).inc()

    def init_app(self, app: Flask) -> None:
        """Time every request and count it by URL rule (not raw path: bounded label values)."""

        @app.before_request
        def _start_timer() -> None:
            g.phonesim_t0 = time.perf_counter()
            with self._not_failing_the_request():
                self.in_flight.inc()
                g.phonesim_in_flight = True

        @app.teardown_request
        def _done(_exc: BaseException | None) -> None:
            if g.get("phonesim_in_flight"):
                with self._not_failing_the_request():
                    self.in_flight.dec()

        @app.after_request
        def _record(response: Response) -> Response:
            t0 = g.get("phonesim_t0")
            if t0 is not None:
                rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
                # A client names any method it likes: each new name would be series kept for
                # the worker's life, so names outside HTTP's own are counted as one.
                method = request.method if request.method in HTTP_METHODS else "other"
                labels = (rule, method, str(response.status_code))
                with self._not_failing_the_request():
                    self.requests.labels(*labels).inc()
                    self.latency.labels(*labels).observe(time.perf_counter() - t0)
            return response

    @contextlib.contextmanager
    def _not_failing_the_request(self) -> Iterator[None]:
        """A metric that cannot be recorded (multiprocess mode writes a file per worker: no
        descriptor left, a full disk) is logged, at most every 10 s: it had turned answered
        requests into Flask's own 500s."""
        try:
            yield
        except Exception as exc:
            skipped = self._failure_log.due()
            if skipped is not None:
                log.warning(
                    "a request's metrics could not be recorded (%d more since the last line): %s",
                    skipped,
                    exc,
                )
