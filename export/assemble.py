"""Writer stage 2: stream the committed shards into the final chunked, compressed HDF5 file.

Only one shard is in memory at a time. Probabilities are arg-maxed here (from float32) so
``predicted`` does not depend on the storage dtype. Labels come from the inputs of this run,
not from the shards: a label changed before a resume is not an embedding to redo.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common import stopping
from embedder.data import Sample
from export import schema
from export.shards import PartialDir, ShardInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assembled:
    count: int
    failed: int
    has_labels: bool


def _create(h5: h5py.File, name: str, shape: tuple[int, ...], dtype, compress: bool):
    n = shape[0]
    if dtype is schema.STR:
        chunks = (min(max(1, n), schema.STRING_CHUNK_ROWS), *shape[1:])
    else:
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        chunks = (schema.chunk_rows(row_bytes, n), *shape[1:])
    kwargs = schema.COMPRESSION if compress else {}
    maxshape = (None, *shape[1:])  # resizable, which also allows chunking an empty dataset
    return h5.create_dataset(name, shape, dtype=dtype, chunks=chunks, maxshape=maxshape, **kwargs)


def _current_labels(samples: Sequence[Sample], shard: ShardInfo, ids: np.ndarray) -> list[str]:
    """The labels the inputs give the shard's rows now (the shards keep those of the run that
    embedded them, and a resume would have kept labels changed since)."""
    label_of = {s.id: s.label for s in samples[shard.input_start : shard.input_end]}
    return [label_of[i] for i in ids]


def assemble(
    partial: PartialDir,
    dest: Path,
    dtype: str,
    label_names: list[str],
    samples: Sequence[Sample],
) -> tuple[h5py.File, Assembled]:
    """Create ``dest`` from the shards and return it open for writing (neighbours come next).
    ``samples``: the inputs the shards were embedded from, which give the labels."""
    shards = partial.shards
    count = sum(s.rows for s in shards)
    failed = sum(s.failed for s in shards)
    dim, classes = partial.identity.dim, partial.identity.num_classes
    h5 = h5py.File(dest, "w")
    try:
        ids = _create(h5, schema.IDS, (count,), schema.STR, False)
        emb = _create(h5, schema.EMBEDDINGS, (count, dim), dtype, True)
        probs = _create(h5, schema.PROBABILITIES, (count, classes), dtype, True)
        pred = _create(h5, schema.PREDICTED, (count,), "i4", True)
        labels = _create(h5, schema.LABELS, (count,), schema.STR, False)
        failed_ids = _create(h5, schema.FAILED_IDS, (failed,), schema.STR, False)
        failed_reasons = _create(h5, schema.FAILED_REASONS, (failed,), schema.STR, False)
        names = np.array(label_names, dtype=object)
        probs.attrs.create("label_names", names, dtype=schema.STR)
        pred.attrs.create("label_names", names, dtype=schema.STR)
        row = frow = 0
        has_labels = False
        for shard in shards:
            stopping.check()
            with h5py.File(shard.path, "r") as src:
                n, m = shard.rows, shard.failed
                if n:
                    p = src["probabilities"][:]
                    shard_ids = src["ids"].asstr()[:]
                    shard_labels = _current_labels(samples, shard, shard_ids)
                    has_labels = has_labels or any(shard_labels)
                    ids[row : row + n] = shard_ids
                    labels[row : row + n] = shard_labels
                    emb[row : row + n] = src["embeddings"][:].astype(dtype)
                    probs[row : row + n] = p.astype(dtype)
                    pred[row : row + n] = p.argmax(1).astype(np.int32)
                if m:
                    failed_ids[frow : frow + m] = src["failed/ids"].asstr()[:]
                    failed_reasons[frow : frow + m] = src["failed/reasons"].asstr()[:]
                row, frow = row + n, frow + m
        labels.attrs["has_labels"] = has_labels
        log.info("assembled %d rows (%d failed inputs) from %d shard(s)", row, frow, len(shards))
    except BaseException:
        h5.close()
        raise
    return h5, Assembled(count=count, failed=failed, has_labels=has_labels)
