"""Request ids: each request gets one, answered in the ``X-Request-ID`` header, written in
the access log and in the log lines the request causes, so a client's report ("a 500 at
10:04") and the server's log meet. A proxy's id (nginx's ``$request_id``) is kept when it
is plain enough to log; otherwise, or without one, the server makes its own.
"""

from __future__ import annotations

import re
import uuid

from flask import Flask, Response, g, has_request_context, request

HEADER = "X-Request-ID"
# What a given id may be: no spaces, quotes or control characters in a log line.
_PLAIN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def given_id(value: str | None) -> str | None:
    """A client's or proxy's ``X-Request-ID`` where it is plain enough to log, else None."""
    return value if value and _PLAIN.fullmatch(value) else None


def request_id() -> str:
    """The current request's id; "-" outside a request."""
    if not has_request_context():
        return "-"
    return getattr(g, "request_id", None) or "-"


def init_app(app: Flask) -> None:
    """Register the id's hooks (first, so every later hook and handler can log it)."""

    @app.before_request
    def _assign() -> None:
        g.request_id = given_id(request.headers.get(HEADER)) or uuid.uuid4().hex

    @app.after_request
    def _answer(response: Response) -> Response:
        response.headers[HEADER] = request_id()
        return response
