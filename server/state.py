"""What the views share: one :class:`ServerState` per app, kept in ``app.extensions``.

Views reach it through :func:`state` and :func:`service`; :mod:`server.app` puts it there.
Keeping it here, below the blueprints and the app factory, lets both import it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from server.config import ServerConfig
from server.errors import ApiError
from server.metrics import Metrics
from server.service import LookupService

EXTENSION = "phonesim"


@dataclass
class ServerState:
    """The app's settings, metrics and (once a model and index are loaded) its service."""

    config: ServerConfig
    metrics: Metrics
    service: LookupService | None

    def close(self) -> None:
        if self.service is not None:
            self.service.close()


def state() -> ServerState:
    """The current app's state (inside a request or app context)."""
    return current_app.extensions[EXTENSION]


def service() -> LookupService:
    """The service, or 503 while no model and index are loaded."""
    svc = state().service
    if svc is None:
        raise ApiError(503, "not_ready", "no model and index are loaded")
    return svc
