"""Opt-in CORS (``--cors-origin``): a web page on another origin may call the API.

Only listed origins (or any, with ``*``) get ``Access-Control-Allow-Origin``; the preflight
(``OPTIONS`` with ``Access-Control-Request-Method``) is answered with the methods the URL
serves and the headers a client sends (``Content-Type``, ``X-API-Key``, ``Authorization``).
No cookies are used, so credentials are never allowed. Without the option no CORS header is
sent and browsers keep other origins out.
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Flask, Response, request

from server.auth import API_KEY_HEADER
from server.cors_headers import allowed_origins, answer_headers

ALLOWED_HEADERS = f"Content-Type, {API_KEY_HEADER}, Authorization"
MAX_AGE_S = 600


def init_app(app: Flask, origins: Iterable[str]) -> None:
    allowed = allowed_origins(origins)

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        headers = answer_headers(allowed, origin)
        for name, value in headers:
            if name == "Vary":
                response.vary.add(value)
            else:
                response.headers[name] = value
        if not any(name == "Access-Control-Allow-Origin" for name, _ in headers):
            return response
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if preflight and response.status_code < 400:  # a URL the API lacks keeps its 404
            # Flask answers OPTIONS with an empty text/html 200: say "no content" instead.
            response.status_code = 204
            response.set_data(b"")
            response.headers.pop("Content-Type", None)
            methods = response.headers.get("Allow") or ", ".join(sorted(response.allow))
            response.headers["Access-Control-Allow-Methods"] = methods
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
        return response
