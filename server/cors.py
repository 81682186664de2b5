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

ALLOWED_HEADERS = f"Content-Type, {API_KEY_HEADER}, Authorization"
EXPOSED_HEADERS = "Location, Retry-After"
MAX_AGE_S = 600


def init_app(app: Flask, origins: Iterable[str]) -> None:
    allowed = frozenset(o.rstrip("/") for o in origins)
    any_origin = "*" in allowed

    @app.after_request
    def _cors(response: Response) -> Response:
        if not any_origin:
            # On every answer, with the origin allowed or not: a shared cache must not hand
            # an answer without CORS headers to the allowed origin.
            response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if not origin or not (any_origin or origin in allowed):
            return response
        response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            methods = response.headers.get("Allow") or ", ".join(sorted(response.allow))
            response.headers["Access-Control-Allow-Methods"] = methods
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
        return response
