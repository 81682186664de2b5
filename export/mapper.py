"""Mapper stage: image records -> embeddings and probabilities, one checkpoint load per worker.

:class:`EmbedMapper` is what each Ray actor holds; the single-process runner reaches the same
:class:`FeatureBatch` through ``embedder.batch.iter_embeddings`` (decoding in DataLoader workers).
An unreadable image becomes an error string on its row, never an exception, so one bad file
cannot stop a batch. With ``--read-text`` a Ray actor also reads the text on the unsure images
of its batch (the single-process path reads in the exporting process, job._TextStage).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from embedder.engine_options import DEFAULT_RUNTIME
from embedder.errors import ImageError
from embedder.images import load_image
from embedder.inference import Embedder
from embedder.text_cues import apply_text_cues
from embedder.text_reader import TextEvidence, TextPlan
from export.errors import ExportError

log = logging.getLogger(__name__)

# What happened to an embedded image's text (FeatureBatch.text, the mapper's "text" column):
# left unread (its prediction was sure), read, read and naming a class, or the reading failed.
TEXT_NOT_READ: Final = 0
TEXT_READ: Final = 1
TEXT_NAMED: Final = 2
TEXT_FAILED: Final = 3


@dataclass(frozen=True)
class FeatureBatch:
    """Results for the contiguous input range ``[start, end)``.

    ``indices`` are the input positions that were embedded (rows of ``embeddings`` and
    ``probabilities``); ``failures`` holds ``(position, reason)`` for the others. ``text``,
    when the worker read the text (its cues already in ``probabilities``): a ``TEXT_*`` code
    per embedded row; None when it did not.
    """

    start: int
    end: int
    indices: np.ndarray
    embeddings: np.ndarray
    probabilities: np.ndarray
    failures: list[tuple[int, str]] = field(default_factory=list)
    text: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.indices) + len(self.failures) != self.end - self.start:
            raise ValueError(
                f"batch [{self.start}, {self.end}) has {len(self.indices)} rows and "
                f"{len(self.failures)} failures; every input needs exactly one outcome"
            )


def embed_records(
    embedder: Embedder, records: dict[str, np.ndarray], text: TextEvidence | None = None
) -> dict[str, np.ndarray]:
    """Decode and embed ``{'index', 'path'}`` records; returns one output row per input.

    Output columns: ``index``, ``embedding`` (N x D float32, zeros where decoding failed),
    ``probabilities`` (N x C float32) and ``error`` ('' or the reason). With ``text``, the
    images whose prediction is below its gate are read, the classes their text names added to
    ``probabilities``, and a ``text`` column (int8 ``TEXT_*`` codes) says what happened. They
    are decoded again for the reader, as in the single-process export: holding every decoded
    image of a batch could take gigabytes (a 40 MP PNG is 120 MB), a second decode milliseconds
    beside a reading's 0.25-0.7 s.
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
    out = {"index": index, "embedding": embeddings, "probabilities": probabilities, "error": errors}
    if text is not None:
        status = np.full(n, TEXT_NOT_READ, np.int8)
        probabilities[ok], status[ok] = read_text(
            text, batch.probabilities, [Path(paths[i]) for i in ok], embedder.decode_side
        )
        out["text"] = status
    return out


def read_text(
    text: TextEvidence, probabilities: np.ndarray, paths: Sequence[Path], decode_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities (N x C) of the image files at ``paths`` with the cues of the unsure
    ones' text added, and a ``TEXT_*`` code per image."""
    cues, read, found = text.read_unsure(probabilities, paths, decode_side, progress=False)
    status = np.full(len(paths), TEXT_NOT_READ, np.int8)
    status[read] = TEXT_READ
    status[read & (cues.sum(axis=1) > 0)] = TEXT_NAMED
    status[np.flatnonzero(read)[found.failed]] = TEXT_FAILED
    return apply_text_cues(probabilities, cues, text.weight), status


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
    text = np.asarray(records["text"], dtype=np.int8)[ok] if "text" in records else None
    return FeatureBatch(
        start=start,
        end=end,
        indices=index[ok],
        embeddings=np.ascontiguousarray(np.asarray(records["embedding"])[ok], dtype=np.float32),
        probabilities=np.ascontiguousarray(
            np.asarray(records["probabilities"])[ok], dtype=np.float32
        ),
        failures=[(int(i), str(e)) for i, e in zip(index[~ok], errors[~ok], strict=True)],
        text=text,
    )


class EmbedMapper:
    """Callable class for Ray Data's actor pool: loads the checkpoint once per actor.

    ``expected_hash`` guards against a node that sees a different file at the same path;
    ``threads`` sets the model's threads (torch or ONNX Runtime) to the CPUs Ray reserved for
    the actor; ``runtime`` and ``device`` as in :meth:`Embedder.from_checkpoint`; ``text``:
    read the unsure images' text as the driver would (:func:`embed_records`).
    """

    def __init__(
        self,
        checkpoint: str,
        expected_hash: str | None = None,
        threads: int | None = None,
        runtime: str = DEFAULT_RUNTIME,
        device: str | None = None,
        text: TextPlan | None = None,
    ) -> None:
        # The actor's CPU share, not the node's core count (load_engine sets torch's too).
        self.embedder = Embedder.from_checkpoint(checkpoint, runtime, device, threads)
        if expected_hash and self.embedder.checkpoint_hash != expected_hash:
            raise ExportError(
                f"{checkpoint}: this worker's copy of the checkpoint differs from the driver's "
                "(hash mismatch); put the checkpoint on storage every node shares"
            )
        self.text = text.build(threads) if text is not None else None
        log.info(
            "embedder loaded on worker: %s, %s%s",
            self.embedder.model_name,
            self.embedder.engine.describe(),
            ", reading text" if self.text else "",
        )

    def __call__(self, records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return embed_records(self.embedder, records, self.text)
