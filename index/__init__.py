"""The catalog side of similarity search: vectors, ids and metadata in FAISS + SQLite.

Typical use::

    from index import build_index, open_index

    build_index("idx", ids, xb, metadata, model_name="resnet18", checkpoint_hash=h)
    with open_index("idx", expect_model="resnet18", expect_dim=512) as ix:
        hits = ix.search(xq, k=10, filter={"brand": "Acme"})

This package never imports torch or timm: it takes float32 numpy arrays.
"""

from index.build import (
    BuildReport,
    Embeddings,
    build_from_files,
    build_index,
    create_index,
    read_catalog_csv,
    read_embeddings,
)
from index.catalog import CatalogIndex, Hit, IndexOptions, Item, open_index
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
    ManifestError,
    ReadOnlyIndexError,
    UnknownIdError,
)
from index.manifest import Manifest, read_manifest

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
    "Manifest",
    "ManifestError",
    "ReadOnlyIndexError",
    "UnknownIdError",
    "build_from_files",
    "build_index",
    "create_index",
    "open_index",
    "read_catalog_csv",
    "read_embeddings",
    "read_manifest",
]
