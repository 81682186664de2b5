"""The PostgreSQL backend (work in progress on this branch)."""

from __future__ import annotations

from index.errors import StoreUnavailableError


class PgSource:
    def __init__(self, url: str) -> None:
        raise StoreUnavailableError("the PostgreSQL store is not finished yet")
