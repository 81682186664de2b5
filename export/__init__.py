"""Recommendation feature export: catalog images -> one HDF5 file of embeddings, class
probabilities and nearest neighbours, resumable, in one process or on Ray (docs/export.md).

Pipeline pieces (each tested alone): ``reader`` (inputs in a fixed order) -> ``mapper``
(checkpoint -> embeddings; what Ray actors run) -> ``shards`` (crash-safe progress) ->
``assemble`` (final HDF5) -> ``neighbors`` (second pass over the file). ``job`` drives them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from export.config import ExportConfig
from export.errors import ExportError, RayUnavailableError, ResumeError

if TYPE_CHECKING:
    from export.job import ExportSummary, export_features
    from export.schema import FORMAT, FORMAT_VERSION

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ExportConfig",
    "ExportError",
    "ExportSummary",
    "RayUnavailableError",
    "ResumeError",
    "export_features",
]


def __getattr__(name: str) -> Any:  # lazy: the job imports torch, `phonesim --help` should not
    if name in ("ExportSummary", "export_features"):
        return getattr(importlib.import_module("export.job"), name)
    if name in ("FORMAT", "FORMAT_VERSION"):  # the schema module imports h5py
        return getattr(importlib.import_module("export.schema"), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
