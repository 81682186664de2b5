"""The CORS headers of one answer, without Flask or the app: the HTTP layer (which runs in
gunicorn's master too, where no model or index may be loaded) adds them to the answers it gives
before the app, and :mod:`server.cors` to the app's."""

from __future__ import annotations

from collections.abc import Iterable

EXPOSED_HEADERS = "Location, Retry-After"


def allowed_origins(origins: Iterable[str]) -> frozenset[str]:
    """The ``--cors-origin`` values as :func:`answer_headers` takes them."""
    return frozenset(o.rstrip("/") for o in origins)


def answer_headers(allowed: frozenset[str], origin: str | None) -> list[tuple[str, str]]:
    """The CORS headers of an answer to a request from ``origin`` (None: no Origin header)
    where the ``allowed`` origins may call the API (none: no header at all)."""
    if not allowed:
        return []
    any_origin = "*" in allowed
    # Vary on every answer, with the origin allowed or not: a shared cache must not hand an
    # answer without CORS headers to the allowed origin.
    out = [] if any_origin else [("Vary", "Origin")]
    if origin and (any_origin or origin in allowed):
        out.append(("Access-Control-Allow-Origin", "*" if any_origin else origin))
        out.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
    return out


def unread_origin_headers(allowed: frozenset[str]) -> list[tuple[str, str]]:
    """The CORS headers of an answer to a request whose headers could not be parsed (so its
    Origin is unknown): any origin, or the only allowed one, may still read it. An origin that
    is not the one named cannot, as without the header; with several allowed, none can."""
    if not allowed:
        return []
    if "*" in allowed:
        return answer_headers(allowed, "*")
    if len(allowed) == 1:
        return answer_headers(allowed, next(iter(allowed)))
    return [("Vary", "Origin")]
