"""Batch embedding over many files: decoding runs in threads beside the model.

Keeping the model fed: a decode thread takes a whole batch, decodes each JPEG at the smallest
DCT scale that still covers the model's input (draft mode), resizes and normalises it straight
into its row of the batch array, which the engine then reads as it is (no stacking, no copy
between processes). Pillow's decoders and resamplers and numpy's arithmetic release the GIL, so
threads decode in parallel with each other and with the model, and no worker process has to
import (and hold in memory) anything of its own. Unreadable images never stop a batch job: they
are reported with the reason and counted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from common.machine import available_cores
from embedder.data import Sample
from embedder.errors import ImageError
from embedder.images import load_image
from embedder.inference import Embedder, EmbeddingBatch
from embedder.preprocess import Preprocessor

log = logging.getLogger(__name__)

# Batches decoded ahead of the model per decode thread: enough to ride out a slow image.
AHEAD_PER_WORKER = 2

T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """An input that could not be embedded, and why."""

    index: int
    id: str
    reason: str


def decode_batch(
    samples: Sequence[Sample],
    indices: Sequence[int],
    preprocessor: Preprocessor,
    min_side: int | None = None,
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """(indices decoded, their float32 rows N x 3 x H x W, (index, reason) of failures)."""
    out = np.empty((len(indices), *preprocessor.shape), np.float32)
    ok: list[int] = []
    failed: list[tuple[int, str]] = []
    for i in indices:
        try:
            preprocessor.into(load_image(samples[i].path, min_side), out[len(ok)])
            ok.append(i)
        except ImageError as exc:
            failed.append((i, str(exc)))
    return ok, out[: len(ok)], failed


def ordered_batches(
    count: int, batch_size: int, workers: int, work: Callable[[range], T]
) -> Iterator[T]:
    """``work`` over consecutive ranges of ``count`` items, ``batch_size`` at a time, yielded
    in order while ``workers`` threads run ahead of the consumer (0: in the calling thread).

    For work that mostly runs outside the GIL (file reads, Pillow decoding and resizing, numpy,
    hashing): the batch embedder's decoding and the duplicate finder's reading share it.
    """
    chunks = (range(s, min(s + batch_size, count)) for s in range(0, count, batch_size))
    if workers <= 0:
        for chunk in chunks:
            yield work(chunk)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    pending: deque[Future] = deque()

    def submit() -> None:
        chunk = next(chunks, None)
        if chunk is not None:
            pending.append(pool.submit(work, chunk))

    try:
        for _ in range(workers * AHEAD_PER_WORKER):
            submit()
        while pending:
            batch = pending.popleft().result()
            submit()
            yield batch
    finally:  # also when the consumer stops early: drop what is queued, finish what runs
        pool.shutdown(wait=True, cancel_futures=True)


def decoded_batches(
    samples: Sequence[Sample],
    preprocessor: Preprocessor,
    batch_size: int,
    workers: int,
    min_side: int | None = None,
) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
    """:func:`decode_batch` over consecutive batches, in order, ``workers`` threads ahead of
    the consumer (0: in the calling thread)."""
    return ordered_batches(
        len(samples),
        batch_size,
        workers,
        lambda chunk: decode_batch(samples, chunk, preprocessor, min_side),
    )


def default_workers() -> int:
    """Decoding threads: one per core this process may use beside the model's own, at least one
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
    batches = decoded_batches(
        samples, embedder.transform, batch_size, workers, embedder.decode_side
    )
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for indices, x, failed in batches:
            failures = [Failure(i, samples[i].id, reason) for i, reason in failed]
            for f in failures:
                log.warning("skipping %s: %s", f.id, f.reason)
            yield indices, embedder.embed_tensors(x), failures
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
