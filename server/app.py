"""The app factory: ``create_app(config)`` builds a Flask app; nothing loads at import time."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, Response, request

from embedder.engine_options import EngineOptions
from index.catalog import IndexOptions
from server import api, api_batch, cors, errors, ops, ratelimit, request_ids, web
from server.config import ServerConfig
from server.limits import MAX_FORM_FIELD_BYTES, MAX_FORM_PARTS
from server.loading import open_for_serving
from server.metrics import Metrics
from server.service import LookupService
from server.state import EXTENSION, ServerState

log = logging.getLogger(__name__)


def create_app(
    config: ServerConfig | Mapping[str, Any] | None = None,
    *,
    embedder: Any = None,
    index: Any = None,
) -> Flask:
    """Build the app.

    ``embedder`` (:class:`embedder.inference.Embedder`) and ``index``
    (:class:`index.CatalogIndex`) are used as given (tests inject tiny ones); otherwise both
    are opened from ``config.checkpoint`` and ``config.index`` by
    :func:`~server.loading.open_for_serving`, the index read-only unless an API key enables
    writes. Without either, the app answers health checks and reports itself not ready. Call
    ``app.extensions["phonesim"].close()`` to stop the batcher.
    """
    if not isinstance(config, ServerConfig):
        config = ServerConfig.from_mapping(config)
    config.validate()
    app = Flask(__name__)
    # Multipart overhead and base64 (4/3) on top of the image itself; the exact image limit
    # is checked again on the decoded bytes.
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes * 4 // 3 + errors.BODY_ALLOWANCE
    # A form's image is its one file part; its text fields are metadata and search options.
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FORM_FIELD_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # "/v1//info" is no endpoint (a JSON 404), not an HTML redirect to "/v1/info": a redirect
    # could name another resource ("/v1/items//similar" -> the item "similar"), and a client
    # following a 308 would send a POST or DELETE again.
    app.url_map.merge_slashes = False

    metrics = Metrics()
    service = None
    owns_index = False
    if embedder is None and index is None and (config.checkpoint or config.index or config.store):
        if not (config.checkpoint and (config.index or config.store)):
            raise ValueError("serving needs both a checkpoint and an index built from it")
        engine = EngineOptions(config.runtime, config.device, config.model_threads)
        embedder, index = open_for_serving(
            config.checkpoint,
            config.index,
            writable=config.writes_enabled,
            engine=engine,
            store=config.store,
            # Compaction runs in the follower thread, never in a request (see server.follower).
            options=IndexOptions(auto_compact=False),
        )
        owns_index = True
    if embedder is not None and index is not None:
        service = LookupService(config, embedder, index, metrics, owns_index=owns_index)
    elif embedder is not None or index is not None:
        raise ValueError("pass both an embedder and an index, or neither")
    app.extensions[EXTENSION] = ServerState(config, metrics, service)

    errors.init_app(app)
    request_ids.init_app(app)
    metrics.init_app(app)
    if config.rate_limit:
        ratelimit.init_app(app, config.rate_limit, config.rate_burst)
    if config.cors_origins:
        cors.init_app(app, config.cors_origins)
    app.before_request(_refuse_coded_bodies)
    app.before_request(_refuse_undecodable_urls)
    app.before_request(_refuse_trailing_slashes)
    app.register_blueprint(api.bp)
    app.register_blueprint(api_batch.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(web.bp)
    app.after_request(_options_say_no_content)
    app.after_request(_security_headers)
    if service is not None:
        log.info(
            "serving %s (%d classes, runtime %s) over %d items",
            service.embedder.model_name,
            len(service.embedder.label_names),
            service.embedder.runtime,  # what "auto" picked: /v1/info had been the only place
            len(service.index),
        )
    return app


def _refuse_coded_bodies() -> Response | None:
    """A gzip (or other) coded body would be read as it is, and fail as a bad image or bad
    JSON with a misleading message: say what is wrong (RFC 9110, section 15.5.16)."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding in ("", "identity"):
        return None
    return errors.error_response(
        415,
        "unsupported_media_type",
        f"Content-Encoding {coding[:40]!r} is not supported: send the body uncompressed",
        {"Accept-Encoding": "identity"},
    )


def _refuse_undecodable_urls() -> Response | None:
    """A path or query string whose percent-escapes are not UTF-8: Werkzeug turns such a path
    into U+FFFD and keeps such a query value as its escapes ("%FF"), so a filter or an id
    would be taken as text the client never sent."""
    env = request.environ
    uri = env.get("RAW_URI") or env.get("REQUEST_URI")  # as sent (gunicorn, Werkzeug)
    if uri:  # the target as sent; an absolute form's scheme and host are ASCII anyway
        raw_path = unquote_to_bytes(uri.split("?", 1)[0].split("#", 1)[0])
    else:  # PEP 3333: the percent-decoded bytes, as latin-1 text
        raw_path = env.get("PATH_INFO", "").encode("latin-1", "replace")
    raw_query = unquote_to_bytes(request.query_string.replace(b"+", b" "))
    for where, raw in (("path", raw_path), ("query string", raw_query)):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return errors.error_response(
                400,
                "invalid_string",
                f"the URL's {where} is not UTF-8 (byte 0x{raw[exc.start]:02X} after "
                "percent-decoding): percent-encode the UTF-8 bytes of the text",
            )
    return None


def _refuse_trailing_slashes() -> Response | None:
    """No URL of the API but the page's ends with "/" (an item id never does): the item route
    took "/v1/items/batch/" as the id "batch/" and answered a POST 405 with its own methods,
    where "/v1/search/" is a 404."""
    if request.path != "/" and request.path.endswith("/"):
        return errors.error_response(404, "not_found", "no such endpoint; see /openapi.json")
    return None


def _options_say_no_content(response: Response) -> Response:
    """Flask answers OPTIONS with an empty 200 typed text/html: the one answer of an API URL
    that was not JSON. No content says the same (its ``Allow`` lists the methods)."""
    if request.method == "OPTIONS" and response.status_code == 200 and not response.data:
        response.status_code = 204
        response.headers.pop("Content-Type", None)
    return response


def _security_headers(response: Response) -> Response:
    if request.endpoint == "static":  # the page is also at /static/index.html
        response.headers.setdefault("Content-Security-Policy", web.CSP)
    for name, value in errors.SECURITY_HEADERS:
        response.headers.setdefault(name, value)
    return response
