"""Reader stage: the catalog to export, in a fixed order, with a fingerprint for resuming.

The order is the catalog's own (sorted folders or manifest rows), so a resumed run can skip
the first ``cursor`` inputs instead of keeping a set of finished ids in memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedder.data import Sample, load_catalog
from export.errors import ExportError


@dataclass(frozen=True)
class ExportInputs:
    """Samples in export order, where they came from, and a digest of (id, path) pairs."""

    samples: list[Sample]
    source: Path
    fingerprint: str

    def __len__(self) -> int:
        return len(self.samples)


def fingerprint(samples: list[Sample]) -> str:
    """SHA-256 over ids and absolute paths in order: a resumed run must see the same list."""
    digest = hashlib.sha256()
    for s in samples:
        # Bytes as the file system holds them: under a non-UTF-8 locale a path decodes to
        # surrogates, which str.encode() refused (a traceback in `embed`).
        digest.update(f"{s.id}\t".encode(errors="surrogateescape"))
        digest.update(os.fsencode(os.path.abspath(s.path)) + b"\n")
    return digest.hexdigest()


def file_stamps(samples: Sequence[Sample]) -> np.ndarray:
    """(size, mtime_ns) of each input's file, (-1, -1) where it cannot be read: a resume
    compares them to notice an image replaced after it was embedded (the fingerprint covers
    only ids and paths)."""
    stamps = np.full((len(samples), 2), -1, dtype=np.int64)
    for row, sample in enumerate(samples):
        try:
            info = os.stat(sample.path)
        except OSError:  # missing or unreadable: the image failed, and fails alike on resume
            continue
        stamps[row] = (info.st_size, info.st_mtime_ns)
    return stamps


def read_inputs(path: str | Path, kind: str | None = None) -> ExportInputs:
    """Load the catalog (labels optional) from a folder or a CSV manifest.

    ``kind`` is ``"images"`` (a folder) or ``"manifest"`` (a CSV file); ``None`` accepts both.
    """
    path = Path(path)
    if kind == "images" and path.exists() and not path.is_dir():
        raise ExportError(f"{path}: --images needs a folder; use --manifest for a CSV file")
    if kind == "manifest" and path.is_dir():
        raise ExportError(f"{path}: --manifest needs a CSV file; use --images for a folder")
    catalog = load_catalog(path, require_labels=False)  # ids are unique in both forms
    return ExportInputs(catalog.samples, path, fingerprint(catalog.samples))


def record_blocks(samples: list[Sample], start: int, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{'index', 'path'}`` column blocks of the inputs from ``start`` on.

    ``index`` is the position in ``samples``; the mapper returns it, so the writer can check
    that results come back complete and in order.
    """
    for lo in range(start, len(samples), rows):
        hi = min(lo + rows, len(samples))
        yield {
            "index": np.arange(lo, hi, dtype=np.int64),
            # Absolute: workers (Ray actors) need not share the driver's working directory.
            "path": np.array([os.path.abspath(s.path) for s in samples[lo:hi]], dtype=object),
        }
