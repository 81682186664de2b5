"""``phonesim embed``: images -> HDF5 file of ids, embeddings, probabilities and labels.

Layout (all datasets share the row order):
- ``ids`` (N, UTF-8), ``embeddings`` (N x D float32, unit norm), ``probabilities`` (N x C),
  ``predicted`` (N int32 class index), ``labels`` (N, UTF-8, '' when unknown),
  ``failed`` (M, UTF-8 "id: reason" for images that could not be read);
- attributes: ``format_version``, ``model_name``, ``checkpoint_hash``, ``dim``, ``normalized``,
  ``label_names`` (JSON list), ``count``, ``failed_count``, ``source``.
The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from embedder.batch import iter_embeddings
from embedder.data import load_catalog
from embedder.errors import DataError
from embedder.inference import Embedder

EMBEDDINGS_FORMAT_VERSION = 1
STR = h5py.string_dtype(encoding="utf-8")


@dataclass(frozen=True)
class EmbedSummary:
    out: Path
    embedded: int
    failed: int
    dim: int


def embed_to_hdf5(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> EmbedSummary:
    """Embed a catalog (folders or CSV manifest) and write the HDF5 file atomically."""
    out = Path(out)
    if out.exists() and out.is_dir():
        raise DataError(f"{out}: is a folder; give a file name such as embeddings.h5")
    if not out.parent.exists():
        raise DataError(f"{out.parent}: output folder does not exist")
    if not os.access(out.parent, os.W_OK):
        raise DataError(f"{out.parent}: output folder is not writable")
    embedder = Embedder.from_checkpoint(checkpoint)
    catalog = load_catalog(data, require_labels=False)
    samples = catalog.samples
    n, dim, classes = len(samples), embedder.dim, embedder.config.num_classes
    tmp = out.with_name(f".{out.name}.partial")
    failed: list[str] = []
    try:
        with h5py.File(tmp, "w") as h5:
            chunk = min(max(1, n), 1024)
            ids = h5.create_dataset("ids", (n,), dtype=STR, maxshape=(None,), chunks=(chunk,))
            emb = h5.create_dataset(
                "embeddings", (n, dim), "f4", maxshape=(None, dim), chunks=(chunk, dim)
            )
            probs = h5.create_dataset(
                "probabilities",
                (n, classes),
                "f4",
                maxshape=(None, classes),
                chunks=(chunk, classes),
            )
            pred = h5.create_dataset("predicted", (n,), "i4", maxshape=(None,), chunks=(chunk,))
            labels = h5.create_dataset("labels", (n,), dtype=STR, maxshape=(None,), chunks=(chunk,))
            row = 0
            for indices, batch, failures in iter_embeddings(
                embedder, samples, batch_size, workers, progress
            ):
                failed.extend(f"{f.id}: {f.reason}" for f in failures)
                if not indices:
                    continue
                end = row + len(indices)
                ids[row:end] = [samples[i].id for i in indices]
                labels[row:end] = [samples[i].label for i in indices]
                emb[row:end] = batch.embeddings
                probs[row:end] = batch.probabilities
                pred[row:end] = batch.probabilities.argmax(1).astype(np.int32)
                row = end
            for ds in (ids, emb, probs, pred, labels):
                ds.resize(row, axis=0)
            h5.create_dataset("failed", data=np.array(failed, dtype=object), dtype=STR)
            h5.attrs.update(
                {
                    "format_version": EMBEDDINGS_FORMAT_VERSION,
                    "model_name": embedder.model_name,
                    "checkpoint_hash": embedder.checkpoint_hash,
                    "dim": dim,
                    "normalized": True,
                    "label_names": json.dumps(embedder.label_names),
                    "count": row,
                    "failed_count": len(failed),
                    "source": str(Path(data).resolve()),
                }
            )
    except BaseException:
        tmp.unlink(missing_ok=True)  # no stray .partial file after an error or Ctrl-C
        raise
    if row == 0:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{data}: none of the {n} images could be read")
    os.replace(tmp, out)
    return EmbedSummary(out=out, embedded=row, failed=len(failed), dim=dim)
