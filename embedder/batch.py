"""Batch embedding over many files: decoding runs in DataLoader workers beside the model.

Keeping the model fed: a worker decodes a JPEG at the smallest DCT scale that still covers the
model's input (draft mode), resizes and normalises it, and stacks its batch straight into
shared memory, which the model process reads without another copy (the ONNX engine takes that
buffer as it is). Unreadable images never stop a batch job: they are reported with the reason
and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from embedder.data import Sample
from embedder.engine import available_cores
from embedder.errors import ImageError
from embedder.images import load_image
from embedder.inference import Embedder, EmbeddingBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """An input that could not be embedded, and why."""

    index: int
    id: str
    reason: str


class DecodedImages(Dataset):
    """Decodes and preprocesses one sample per item; failures come back as a reason string."""

    def __init__(self, samples: Sequence[Sample], transform, min_side: int | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.transform(load_image(self.samples[i].path, self.min_side)), ""
        except ImageError as exc:
            return i, None, str(exc)


def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack equal-shaped tensors; in a loader worker, straight into shared memory, so handing
    the batch to the model process costs no further copy (as torch's default collate does)."""
    if not tensors:
        return torch.zeros(0)
    out = None
    if get_worker_info() is not None:
        first = tensors[0]
        storage = first._typed_storage()._new_shared(len(tensors) * first.numel())
        out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(list(tensors), out=out)


def _collate(items: list[tuple[int, torch.Tensor | None, str]]):
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, reason) for i, x, reason in items if x is None]
    return [i for i, _ in ok], stack([x for _, x in ok]), failed


def default_workers() -> int:
    """Decoding workers: one per core this process may use beside the model's own, at least one
    so decoding overlaps the model, at most four (more only queue for the same cores)."""
    return max(1, min(4, available_cores() - 1))


def iter_embeddings(
    embedder: Embedder,
    samples: Sequence[Sample],
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "embedding",
) -> Iterator[tuple[list[int], EmbeddingBatch, list[Failure]]]:
    """Yield (sample indices, their embeddings, failures) batch by batch, in input order."""
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        DecodedImages(samples, embedder.transform, embedder.decode_side),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        pin_memory=embedder.engine.device.startswith("cuda"),
    )
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for indices, tensors, failed in loader:
            failures = [Failure(i, samples[i].id, reason) for i, reason in failed]
            for f in failures:
                log.warning("skipping %s: %s", f.id, f.reason)
            yield indices, embedder.embed_tensors(tensors), failures
            bar.update(len(indices) + len(failures))


def embed_samples(
    embedder: Embedder,
    samples: Sequence[Sample],
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, EmbeddingBatch, list[Failure]]:
    """Embed everything in memory: (indices of embedded samples, batch, failures)."""
    indices: list[int] = []
    embs, probs, failures = [], [], []
    for idx, batch, failed in iter_embeddings(embedder, samples, batch_size, workers, progress):
        indices.extend(idx)
        embs.append(batch.embeddings)
        probs.append(batch.probabilities)
        failures.extend(failed)
    dim, classes = embedder.dim, embedder.config.num_classes
    result = EmbeddingBatch(
        np.concatenate(embs) if embs else np.zeros((0, dim), np.float32),
        np.concatenate(probs) if probs else np.zeros((0, classes), np.float32),
    )
    return np.asarray(indices, dtype=np.int64), result, failures
