"""Single-process runner: decoding in DataLoader workers, the model in this process."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from embedder.batch import iter_embeddings
from embedder.data import Sample
from embedder.inference import Embedder
from export.mapper import FeatureBatch


def local_batches(
    embedder: Embedder,
    samples: list[Sample],
    start: int,
    batch_size: int,
    workers: int | None,
    progress: bool,
) -> Iterator[FeatureBatch]:
    """Embed ``samples[start:]`` in input order, as contiguous :class:`FeatureBatch` ranges."""
    pending = samples[start:]
    pos = start
    for indices, batch, failures in iter_embeddings(
        embedder, pending, batch_size, workers, progress, desc="embedding"
    ):
        n = len(indices) + len(failures)
        yield FeatureBatch(
            start=pos,
            end=pos + n,
            indices=np.asarray(indices, dtype=np.int64) + start,
            embeddings=batch.embeddings,
            probabilities=batch.probabilities,
            failures=[(f.index + start, f.reason) for f in failures],
        )
        pos += n
