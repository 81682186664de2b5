"""Mapper stage: image records -> embeddings and probabilities, one checkpoint load per worker.

:class:`EmbedMapper` is what each Ray actor holds; the single-process runner reaches the same
:class:`FeatureBatch` through ``embedder.batch.iter_embeddings`` (decoding in DataLoader workers).
An unreadable image becomes an error string on its row, never an exception, so one bad file
cannot stop a batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedder.engine import set_torch_threads
from embedder.engine_options import DEFAULT_RUNTIME
from embedder.errors import ImageError
from embedder.images import load_image
from embedder.inference import Embedder
from export.errors import ExportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureBatch:
    """Results for the contiguous input range ``[start, end)``.

    ``indices`` are the input positions that were embedded (rows of ``embeddings`` and
    ``probabilities``); ``failures`` holds ``(position, reason)`` for the others.
    """

    start: int
    end: int
    indices: np.ndarray
    embeddings: np.ndarray
    probabilities: np.ndarray
    failures: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.indices) + len(self.failures) != self.end - self.start:
            raise ValueError(
                f"batch [{self.start}, {self.end}) has {len(self.indices)} rows and "
                f"{len(self.failures)} failures; every input needs exactly one outcome"
            )


def embed_records(embedder: Embedder, records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode and embed ``{'index', 'path'}`` records; returns one output row per input.

    Output columns: ``index``, ``embedding`` (N x D float32, zeros where decoding failed),
    ``probabilities`` (N x C float32) and ``error`` ('' or the reason).
    """
    index = np.asarray(records["index"], dtype=np.int64)
    paths = [str(p) for p in records["path"]]
    # Rows are preprocessed in place (numpy, no torch on the ONNX runtimes); the first
    # len(ok) rows are the batch, a view.
    pixels = np.empty((len(paths), *embedder.transform.shape), np.float32)
    ok: list[int] = []
    errors = np.full(len(paths), "", dtype=object)
    for row, path in enumerate(paths):
        try:
            img = load_image(Path(path), min_side=embedder.decode_side)  # JPEG draft mode
            embedder.transform.into(img, pixels[len(ok)])
            ok.append(row)
        except ImageError as exc:
            errors[row] = str(exc)
    batch = embedder.embed_tensors(pixels[: len(ok)])
    n, dim, classes = len(paths), embedder.dim, embedder.config.num_classes
    embeddings = np.zeros((n, dim), np.float32)
    probabilities = np.zeros((n, classes), np.float32)
    embeddings[ok] = batch.embeddings
    probabilities[ok] = batch.probabilities
    return {
        "index": index,
        "embedding": embeddings,
        "probabilities": probabilities,
        "error": errors,
    }


def records_to_batch(records: dict[str, np.ndarray]) -> FeatureBatch:
    """Turn mapper output columns back into a :class:`FeatureBatch` (checks it is contiguous)."""
    index = np.asarray(records["index"], dtype=np.int64)
    if len(index) == 0:
        raise ValueError("empty record batch")
    start, end = int(index[0]), int(index[-1]) + 1
    if not np.array_equal(index, np.arange(start, end)):
        raise RuntimeError(
            f"results for inputs {start}..{end - 1} arrived out of order or incomplete; "
            "the writer needs them in input order"
        )
    errors = np.asarray(records["error"], dtype=object)
    ok = errors == ""
    return FeatureBatch(
        start=start,
        end=end,
        indices=index[ok],
        embeddings=np.ascontiguousarray(np.asarray(records["embedding"])[ok], dtype=np.float32),
        probabilities=np.ascontiguousarray(
            np.asarray(records["probabilities"])[ok], dtype=np.float32
        ),
        failures=[(int(i), str(e)) for i, e in zip(index[~ok], errors[~ok], strict=True)],
    )


class EmbedMapper:
    """Callable class for Ray Data's actor pool: loads the checkpoint once per actor.

    ``expected_hash`` guards against a node that sees a different file at the same path;
    ``threads`` sets the model's threads (torch or ONNX Runtime) to the CPUs Ray reserved for
    the actor; ``runtime`` and ``device`` as in :meth:`Embedder.from_checkpoint`.
    """

    def __init__(
        self,
        checkpoint: str,
        expected_hash: str | None = None,
        threads: int | None = None,
        runtime: str = DEFAULT_RUNTIME,
        device: str | None = None,
    ) -> None:
        # The actor's CPU share, not the node's core count; again once loaded, for an "auto"
        # that fell back to torch.
        set_torch_threads(threads, runtime)
        self.embedder = Embedder.from_checkpoint(checkpoint, runtime, device, threads)
        set_torch_threads(threads, self.embedder.runtime)
        if expected_hash and self.embedder.checkpoint_hash != expected_hash:
            raise ExportError(
                f"{checkpoint}: this worker's copy of the checkpoint differs from the driver's "
                "(hash mismatch); put the checkpoint on storage every node shares"
            )
        log.info(
            "embedder loaded on worker: %s, %s",
            self.embedder.model_name,
            self.embedder.engine.describe(),
        )

    def __call__(self, records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return embed_records(self.embedder, records)
