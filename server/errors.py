"""Every failure becomes a JSON answer ``{"error": {"code", "message"}}``, never HTML.

Views raise :class:`ApiError` (or let library errors through); the handlers registered by
:func:`init_app` map them to a status code. Only a bug gives a 500, and it is logged.
"""

from __future__ import annotations

import json
import logging
import math
import re

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from common.errors import OutOfResourcesError, resources_exhausted
from embedder.errors import ImageError
from index.errors import (
    CatalogReplacedError,
    DuplicateIdError,
    IndexLockedError,
    InvalidFilterError,
    InvalidMetadataError,
    InvalidParamsError,
    InvalidVectorsError,
    ReadOnlyIndexError,
    StoreMachineError,
    StoreOutcomeUnknownError,
    StoreRefusedError,
    StoreUnavailableError,
    UnknownIdError,
)
from server.batcher import BatcherClosedError, ModelTimeoutError, OverloadedError
from server.log_throttle import LogThrottle
from server.request_ids import request_id

log = logging.getLogger(__name__)

# On every answer: the app's, and those the HTTP layer gives before the app (413, 408, 503).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
)


class ApiError(Exception):
    """A client-facing error with an HTTP status and a stable machine-readable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


# Every body over a size limit gets this code, wherever it is refused (the HTTP layer before
# reading it, Flask's request limit, or the decoded image's check).
PAYLOAD_TOO_LARGE = "payload_too_large"
#: What a body may hold beyond one base64 image: the other fields of the request.
BODY_ALLOWANCE = 64 * 1024


def mib(n_bytes: int) -> str:
    """``n_bytes`` in MiB as the shortest decimal that gives them back: the --max-upload-mb
    value the limit was made from (0.015, not 0.0149994 or a rounded 0.01)."""
    for places in range(7):
        value = round(n_bytes / 2**20, places)
        if int(value * 2**20) == n_bytes:
            return f"{value:g}"
    return f"{n_bytes / 2**20:g}"


def too_large_body(limit: int, path: str = "") -> str:
    """The 413 message of a body over ``limit`` bytes (``MAX_CONTENT_LENGTH``: one
    ``--max-upload-mb`` image as base64, plus room for the fields). It names the image limit
    too, the one a client of a single-image endpoint meets; a batch's (``path``) images count
    together, so a batch of large photos meets it before any photo does."""
    image = math.ceil((limit - BODY_ALLOWANCE) * 3 / 4)  # limit = image * 4 // 3 + allowance
    # The image limit first: "larger than the limit (13.4 MiB)" beside "at most 10 MiB" read
    # as two limits to someone uploading a 14 MB photo from the web page.
    text = (
        f"too large: an image may be at most {mib(image)} MiB (--max-upload-mb), and a request "
        f"body at most {limit / 2**20:.1f} MiB (room for one image as base64)"
    )
    if path.rstrip("/").endswith("/batch"):
        text += "; a batch's images count together: send large photos in several requests"
    return text


# The 503 of a request the machine ran out of memory, descriptors or threads for: the app's
# handlers and the HTTP bridge (no thread to run the app in) give the same answer.
OUT_OF_RESOURCES = (
    "out_of_resources",
    "the server ran out of memory, file descriptors or threads; try again",
)
STORE_RETRY_AFTER_S = 2  # seconds a client waits before retrying a write the store refused
MAX_MESSAGE = 500  # characters: a message may quote the request, never all of it


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def error_json(code: str, message: str) -> bytes:
    """The error body as bytes, for answers given outside Flask (the HTTP layer)."""
    return json.dumps({"error": {"code": code, "message": _short(message)}}).encode()


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": _short(message)}})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "error"


def _form_bound_broken() -> bool:
    """Whether werkzeug's 413 is for a multipart form's parts or text fields, not the body:
    it raises the same exception for both."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    length = request.content_length
    return (
        request.mimetype == "multipart/form-data"
        and length is not None
        and (limit is None or length <= limit)
    )


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {k: v for k, v in exc.get_headers() if k.lower() not in ("content-type",)}
        messages = {
            404: "no such endpoint; see /openapi.json",
        }
        if status == 413 and current_app.config.get("MAX_CONTENT_LENGTH"):
            messages[413] = too_large_body(current_app.config["MAX_CONTENT_LENGTH"], request.path)
        message = messages.get(status) or exc.description or exc.name
        code = PAYLOAD_TOO_LARGE if status == 413 else _snake(exc.name)
        if status == 413 and _form_bound_broken():
            status, code = 400, "form_too_large"
            message = (
                f"a multipart form may have at most {current_app.config['MAX_FORM_PARTS']} "
                f"parts and {current_app.config['MAX_FORM_MEMORY_SIZE'] // 1024} KiB in each "
                "text field; send the image as a file part"
            )
        return error_response(status, code, message, headers)

    @app.errorhandler(ImageError)
    def _image_error(exc: ImageError) -> Response:
        return error_response(400, "invalid_image", _strip_name(str(exc)))

    @app.errorhandler(UnknownIdError)
    def _unknown_id(exc: UnknownIdError) -> Response:
        return error_response(404, "unknown_item", str(exc))

    @app.errorhandler(InvalidFilterError)
    def _bad_filter(exc: InvalidFilterError) -> Response:
        return error_response(400, "invalid_filter", str(exc))

    @app.errorhandler(InvalidMetadataError)
    @app.errorhandler(InvalidVectorsError)
    @app.errorhandler(InvalidParamsError)
    @app.errorhandler(StoreRefusedError)  # a value beyond the store's limits: retrying cannot help
    def _bad_value(exc: Exception) -> Response:
        return error_response(400, "invalid_request", str(exc))

    @app.errorhandler(ReadOnlyIndexError)
    def _read_only(exc: ReadOnlyIndexError) -> Response:
        return error_response(403, "writes_disabled", "the index is open read-only")

    @app.errorhandler(IndexLockedError)
    def _locked(exc: IndexLockedError) -> Response:
        return error_response(503, "index_locked", str(exc))

    @app.errorhandler(StoreOutcomeUnknownError)
    def _store_broke_off(exc: StoreOutcomeUnknownError) -> Response:
        # Not a 503: clients retry those as "nothing was changed". The store is upstream of
        # this server, and its answer never came: a bad gateway.
        log.warning("catalog store broke off during a commit (request %s): %s", request_id(), exc)
        return error_response(
            502,
            "store_outcome_unknown",
            "the connection to the catalog store broke while the change was committing; it "
            "may have been made: read the item before sending the change again",
        )

    @app.errorhandler(CatalogReplacedError)
    def _catalog_replaced(exc: CatalogReplacedError) -> Response:
        # Nothing was written: the store's catalog is not the one this process serves.
        log.warning("write refused (request %s): %s", request_id(), exc)
        return error_response(
            503, "catalog_replaced", str(exc), {"Retry-After": str(STORE_RETRY_AFTER_S)}
        )

    @app.errorhandler(StoreMachineError)
    def _store_machine(exc: StoreMachineError) -> Response:
        # A full disk is no unreachable store: "try again" alone does not mend it.
        log.warning("catalog store failed (request %s): %s", request_id(), exc)
        if exc.disk_full:
            return error_response(
                507,
                "insufficient_storage",
                "the catalog store's disk is full; nothing was changed",
            )
        return _unreachable()

    def _unreachable() -> Response:
        return error_response(
            503,
            "store_unavailable",
            "the catalog store cannot be reached; nothing was changed, try again",
            {"Retry-After": str(STORE_RETRY_AFTER_S)},
        )

    @app.errorhandler(StoreUnavailableError)
    def _store_down(exc: StoreUnavailableError) -> Response:
        # The write changed nothing; reads go on from this process's last state.
        log.warning("catalog store unreachable (request %s): %s", request_id(), exc)
        return _unreachable()

    @app.errorhandler(OutOfResourcesError)
    def _out_of_resources(exc: OutOfResourcesError) -> Response:
        # Memory or descriptors ran out: the image was not at fault (it had been a 400
        # invalid_image, which clients do not retry, naming the server's install path).
        skipped = _resource_log.due()
        if skipped is not None:
            log.warning(
                "out of resources (request %s; %d more since the last line): %s",
                request_id(),
                skipped,
                exc,
            )
        return _resources_503()

    def _resources_503() -> Response:
        return error_response(503, *OUT_OF_RESOURCES, {"Retry-After": "1"})

    @app.errorhandler(OverloadedError)
    def _overloaded(exc: OverloadedError) -> Response:
        return error_response(503, "overloaded", str(exc), {"Retry-After": "1"})

    @app.errorhandler(BatcherClosedError)
    def _closed(exc: BatcherClosedError) -> Response:
        return error_response(503, "shutting_down", str(exc), {"Retry-After": "1"})

    @app.errorhandler(ModelTimeoutError)
    def _timeout(exc: ModelTimeoutError) -> Response:
        log.warning("%s: answered %s %s 503 model_timeout (request %s)", exc, *_where())
        return error_response(503, "model_timeout", "the model did not answer in time")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if resources_exhausted(exc):  # anywhere: a library importing a module on first use
            skipped = _resource_log.due()
            if skipped is not None:  # with its traceback: where it ran out
                log.warning(
                    "out of resources in %s %s (request %s; %d more since the last line)",
                    *_where(),
                    skipped,
                    exc_info=exc,
                )
            return _resources_503()
        log.exception("unhandled error in %s %s (request %s)", *_where())
        return error_response(500, "internal_error", "internal server error (logged)")


_resource_log = LogThrottle(10.0)


def _where() -> tuple[str, str, str]:
    """The request's method, path and id, for a log line."""
    return request.method, request.path, request_id()


# Errors one entry of a batch may get while the others go on (the request's own fault); any
# other exception fails the whole request through the handlers above.
ENTRY_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (ImageError, 400, "invalid_image"),
    (UnknownIdError, 404, "unknown_item"),
    (InvalidFilterError, 400, "invalid_filter"),
    (DuplicateIdError, 409, "item_exists"),
    (InvalidMetadataError, 400, "invalid_request"),
    (InvalidVectorsError, 400, "invalid_request"),
    (InvalidParamsError, 400, "invalid_request"),
    (StoreRefusedError, 400, "invalid_request"),
)


def entry_error(exc: Exception) -> dict | None:
    """``{"status", "error": {"code", "message"}}`` for an error a batch entry may carry, or
    None for one that must fail the whole request."""
    if isinstance(exc, ApiError) and 400 <= exc.status < 500 and exc.status not in (401, 403):
        return {"status": exc.status, "error": {"code": exc.code, "message": _short(exc.message)}}
    for kind, status, code in ENTRY_ERRORS:
        if isinstance(exc, kind):
            message = _short(_strip_name(str(exc)))
            return {"status": status, "error": {"code": code, "message": message}}
    return None


def _strip_name(message: str) -> str:
    """ImageError messages start with the source name; for uploads that is just ``<bytes>``."""
    return message.removeprefix("<bytes>: ")
