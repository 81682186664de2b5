"""The demo web page: plain HTML, CSS and JS from ``server/static`` (no build step)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

bp = Blueprint("web", __name__)

# The page only talks to this server; images come from it or from the user's own file (blob:).
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@bp.get("/")
def index_page() -> Response:
    response = current_app.send_static_file("index.html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-cache"
    return response
