"""Opening a catalog store by where it is: an index folder (SQLite) or a PostgreSQL URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.argtypes import STORE_ENV, store_from_environment
from index.errors import InvalidParamsError
from index.manifest import Manifest, read_manifest

PG_SCHEMES = ("postgresql://", "postgres://")


def is_pg_url(store: str | None) -> bool:
    return isinstance(store, str) and store.startswith(PG_SCHEMES)


def check_one_catalog(folder: str | Path | None, store: str | None) -> None:
    """InvalidParamsError when a command is given both an index folder and a store: with a
    store it works on the store alone, so the folder was ignored, and without a word where
    ``$PHONESIM_STORE`` gave the store (`index query --index DIR` answered from the shared
    catalog; `index restore --index DIR` replaced it)."""
    if not (folder and store):
        return
    if store_from_environment(store):
        raise InvalidParamsError(
            f"--index {folder}: ${STORE_ENV} is set, and this command would work on that "
            "store, not on the folder; pass --store '' to work on the folder, or leave out "
            "--index to work on the store"
        )
    raise InvalidParamsError(
        "give --index INDEX_DIR or --store URL, not both: with a store the command works on "
        "the store alone"
    )


def open_source(path: str | Path | None, store: str | None) -> tuple[Any, Manifest, str]:
    """``(source, manifest, where)`` for :meth:`index.catalog.CatalogIndex.open`."""
    if store is None:
        if path is None:
            raise InvalidParamsError("give an index folder, or a store URL")

        source, manifest = open_folder_source(Path(path))
        return source, manifest, str(path)
    if is_pg_url(store):
        from index.pg import PgSource

        source = PgSource(store)
        try:
            manifest = source.manifest()
        except BaseException:
            source.close()
            raise
        return source, manifest, source.where
    raise InvalidParamsError(f"store must be a postgresql:// URL or omitted, got {store!r}")


def open_folder_source(path: Path) -> tuple[Any, Manifest]:
    """``(SqliteSource, manifest)`` of the index folder ``path``, the source holding the
    folder's lock shared (released when it closes): no build replaces the folder meanwhile."""
    import os

    from index.folder import lock_shared, on_read_only_media, open_store
    from index.source_sqlite import SqliteSource

    read_manifest(path)  # a folder that is no index: say so before creating its lock file
    frozen = on_read_only_media(path)  # once, for the lock and the store alike
    fd = lock_shared(path, frozen)
    try:
        # Read under the lock: before it, a build could swap the folder between the reads.
        manifest = read_manifest(path)
        return SqliteSource(path, open_store(path, frozen), lock_fd=fd), manifest
    except BaseException:
        os.close(fd)
        raise


def read_store_manifest(path: str | Path | None, store: str | None) -> Manifest:
    """The manifest of the index at ``path`` or in ``store``, without loading it."""
    if store is None:
        if path is None:
            raise InvalidParamsError("give an index folder, or a store URL")
        return read_manifest(path)
    source, manifest, _ = open_source(None, store)
    source.close()
    return manifest
