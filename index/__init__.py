"""The catalog side of similarity search: vectors, ids and metadata in FAISS + SQLite.

Typical use::

    from index import build_index, open_index

    build_index("idx", ids, xb, metadata, model_name="resnet18", checkpoint_hash=h)
    with open_index("idx", expect_model="resnet18", expect_dim=512) as ix:
        hits = ix.search(xq, k=10, filter={"brand": "Acme"})

This package never imports torch or timm: it takes float32 numpy arrays. Other stages that
build a FAISS index of their own size it with :func:`knn_factory` / :func:`ivf_nlist`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from index.errors import (
    BuildInputError,
    CatalogIndexError,
    DuplicateIdError,
    IndexCorruptError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    InvalidFilterError,
    InvalidKindError,
    InvalidMetadataError,
    InvalidParamsError,
    InvalidVectorsError,
    ItemNotFoundError,
    ManifestError,
    ReadOnlyIndexError,
    StoreOutcomeUnknownError,
    StoreUnavailableError,
    UnknownIdError,
)
from index.sizing import ivf_nlist, knn_factory

if TYPE_CHECKING:
    from index.build import (
        BuildReport,
        Embeddings,
        build_from_files,
        build_index,
        create_index,
        read_catalog_csv,
        read_embeddings,
    )
    from index.catalog import CatalogIndex, IndexOptions, open_index
    from index.journal import SyncStatus
    from index.manifest import Manifest, read_manifest
    from index.results import Hit, Item

# Loaded on first use: FAISS and h5py cost a noticeable part of a second, which commands that
# only parse arguments (``phonesim --help``) should not pay.
_LAZY = {
    "index.build": (
        "BuildReport",
        "Embeddings",
        "build_from_files",
        "build_index",
        "create_index",
        "read_catalog_csv",
        "read_embeddings",
    ),
    "index.catalog": ("CatalogIndex", "IndexOptions", "open_index"),
    "index.manifest": ("Manifest", "read_manifest"),
    "index.results": ("Hit", "Item"),
    "index.journal": ("SyncStatus",),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'index' has no attribute {name!r}")


__all__ = [
    "BuildInputError",
    "BuildReport",
    "CatalogIndex",
    "CatalogIndexError",
    "DuplicateIdError",
    "Embeddings",
    "Hit",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexOptions",
    "InvalidFilterError",
    "InvalidKindError",
    "InvalidMetadataError",
    "InvalidParamsError",
    "InvalidVectorsError",
    "Item",
    "ItemNotFoundError",
    "Manifest",
    "ManifestError",
    "ReadOnlyIndexError",
    "StoreOutcomeUnknownError",
    "StoreUnavailableError",
    "SyncStatus",
    "UnknownIdError",
    "build_from_files",
    "build_index",
    "create_index",
    "ivf_nlist",
    "knn_factory",
    "open_index",
    "read_catalog_csv",
    "read_embeddings",
    "read_manifest",
]
