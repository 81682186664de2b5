"""Recommendation feature export: catalog images -> one HDF5 file of embeddings, class
probabilities and nearest neighbours, resumable, in one process or on Ray (docs/export.md).

Pipeline pieces (each tested alone): ``reader`` (inputs in a fixed order) -> ``mapper``
(checkpoint -> embeddings; what Ray actors run) -> ``shards`` (crash-safe progress) ->
``assemble`` (final HDF5) -> ``neighbors`` (second pass over the file). ``job`` drives them.
"""

from export.config import ExportConfig
from export.errors import ExportError, RayUnavailableError, ResumeError
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
