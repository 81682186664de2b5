"""The lookup server: a Flask app that wires an embedder and a catalog index into HTTP.

``server.create_app(config)`` builds the app (:mod:`server.app`); ``server.serve.serve`` runs it
under gunicorn. Importing this package loads nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.app import create_app
    from server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:  # lazy: ``phonesim --help`` should not import torch
    if name == "create_app":
        from server.app import create_app

        return create_app
    if name == "ServerConfig":
        from server.config import ServerConfig

        return ServerConfig
    raise AttributeError(f"module 'server' has no attribute {name!r}")
