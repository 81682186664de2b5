"""The API key that write endpoints require (``X-API-Key`` or ``Authorization: Bearer``)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import request

from server.errors import ApiError
from server.state import state

API_KEY_HEADER = "X-API-Key"

F = TypeVar("F", bound=Callable[..., Any])


def require_api_key(view: F) -> F:
    """Writes need the configured key in ``X-API-Key`` (or ``Authorization: Bearer``)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        expected = state().config.api_key
        if not expected:
            raise ApiError(403, "writes_disabled", "writes are disabled: no API key configured")
        # An empty X-API-Key (a client's unset variable) is no key: the Bearer token counts.
        given = request.headers.get(API_KEY_HEADER, "").strip() or None
        if given is None:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if not given:
            raise ApiError(
                401,
                "missing_api_key",
                f"this endpoint needs the API key in the {API_KEY_HEADER} header",
                {"WWW-Authenticate": 'Bearer realm="phonesim"'},
            )
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(403, "invalid_api_key", "the API key is not valid")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
