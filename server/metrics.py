"""Prometheus metrics of one app, in a registry of its own (so tests can build many apps)."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MODEL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """Request, model, batching and index metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
            "phonesim_http_requests_in_flight", "Requests being answered now.", registry=r
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
        self.search_seconds = Histogram(
            "phonesim_index_search_seconds",
            "Time of one index search.",
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.index_items = Gauge("phonesim_index_items", "Items in the catalog index.", registry=r)
        self.queue_depth = Gauge(
            "phonesim_model_queue_depth", "Requests waiting for the model.", registry=r
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.model_seconds.observe(seconds)

    def track_index_size(self, size: Callable[[], float]) -> None:
        self.index_items.set_function(size)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), mimetype=CONTENT_TYPE_LATEST)

    def init_app(self, app: Flask) -> None:
        """Time every request and count it by URL rule (not raw path: bounded label values)."""

        @app.before_request
        def _start_timer() -> None:
            g.phonesim_t0 = time.perf_counter()
            self.in_flight.inc()

        @app.teardown_request
        def _done(_exc: BaseException | None) -> None:
            if "phonesim_t0" in g:
                self.in_flight.dec()

        @app.after_request
        def _record(response: Response) -> Response:
            t0 = g.get("phonesim_t0")
            if t0 is not None:
                rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
                labels = (rule, request.method, str(response.status_code))
                self.requests.labels(*labels).inc()
                self.latency.labels(*labels).observe(time.perf_counter() - t0)
            return response
