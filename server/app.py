"""The app factory: ``create_app(config)`` builds a Flask app; nothing loads at import time."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app

from server.config import ServerConfig
from server.errors import ApiError
from server.metrics import Metrics
from server.service import LookupService

log = logging.getLogger(__name__)

EXTENSION = "phonesim"


@dataclass
class ServerState:
    """What the views share, kept in ``app.extensions["phonesim"]``."""

    config: ServerConfig
    metrics: Metrics
    service: LookupService | None

    def close(self) -> None:
        if self.service is not None:
            self.service.close()


def create_app(
    config: ServerConfig | Mapping[str, Any] | None = None,
    *,
    embedder: Any = None,
    index: Any = None,
) -> Flask:
    """Build the app.

    ``embedder`` (:class:`embedder.inference.Embedder`) and ``index``
    (:class:`index.CatalogIndex`) are used as given (tests inject tiny ones); otherwise they
    are loaded from ``config.checkpoint`` and ``config.index``, the index opened read-only
    unless an API key enables writes. Without either, the app answers health checks and
    reports itself not ready. Call ``app.extensions["phonesim"].close()`` to stop the batcher.
    """
    if not isinstance(config, ServerConfig):
        config = ServerConfig.from_mapping(config)
    config.validate()
    app = Flask(__name__)
    # Multipart overhead and base64 (4/3) on top of the image itself; the exact image limit
    # is checked again on the decoded bytes.
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes * 4 // 3 + 64 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]

    metrics = Metrics()
    service = None
    if embedder is None and config.checkpoint:
        from embedder.inference import Embedder

        embedder = Embedder.from_checkpoint(config.checkpoint)
    owns_index = False
    if index is None and config.index:
        if embedder is None:
            raise ValueError("serving an index needs a checkpoint to embed queries")
        from index.catalog import CatalogIndex

        index = CatalogIndex.open(
            config.index,
            readonly=not config.writes_enabled,
            expect_model=embedder.model_name,
            expect_checkpoint_hash=embedder.checkpoint_hash,
            expect_dim=embedder.dim,
        )
        owns_index = True
    if embedder is not None and index is not None:
        service = LookupService(config, embedder, index, metrics, owns_index=owns_index)
    elif embedder is not None or index is not None:
        raise ValueError("pass both an embedder and an index, or neither")
    app.extensions[EXTENSION] = ServerState(config, metrics, service)

    from server import api, errors, ops, web

    errors.init_app(app)
    metrics.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(web.bp)
    app.after_request(_security_headers)
    if service is not None:
        log.info(
            "serving %s (%d classes) over %d items",
            service.embedder.model_name,
            len(service.embedder.label_names),
            len(service.index),
        )
    return app


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


def state() -> ServerState:
    return current_app.extensions[EXTENSION]


def service() -> LookupService:
    """The service, or 503 while no model and index are loaded."""
    svc = state().service
    if svc is None:
        raise ApiError(503, "not_ready", "no model and index are loaded")
    return svc
