"""Names and constants of the feature-export HDF5 file; docs/export.md describes the schema.

One place for every dataset and attribute name, so the writer, the tests and readers agree.
"""

from __future__ import annotations

import h5py

from common.versions import FEATURES_FORMAT, FEATURES_VERSION
from export.config import DTYPES  # noqa: F401  (part of the schema: storage types)

FORMAT = FEATURES_FORMAT
FORMAT_VERSION = FEATURES_VERSION

#: Variable-length UTF-8 strings: what h5py's ``.asstr()`` and pandas read back as ``str``.
STR = h5py.string_dtype(encoding="utf-8")

IDS = "ids"
EMBEDDINGS = "embeddings"
PROBABILITIES = "probabilities"
PREDICTED = "predicted"
LABELS = "labels"
NEIGHBORS = "neighbors"
NEIGHBOR_IDS = "neighbors/ids"
NEIGHBOR_ROWS = "neighbors/rows"
NEIGHBOR_SCORES = "neighbors/scores"
FAILED_IDS = "failed"  # ids only, so len(f["failed"]) is the count, as in `phonesim embed`
FAILED_REASONS = "failed_reasons"


#: Embeddings, probabilities and scores are compressed; gzip is readable by every HDF5 reader.
COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}

#: Target bytes per chunk: large enough for fast sequential reads, small for row-block access.
CHUNK_BYTES = 1 << 20
STRING_CHUNK_ROWS = 4096


def chunk_rows(row_bytes: int, n: int) -> int:
    """Rows per chunk so that one chunk holds about CHUNK_BYTES (never more rows than exist)."""
    return max(1, min(max(1, n), CHUNK_BYTES // max(1, row_bytes)))
