"""Loading a checkpoint once and turning PIL images into embeddings + class probabilities.

The model runs through the checkpoint's inference engine (:mod:`embedder.engine`): torch eager
or ONNX Runtime, chosen by ``runtime`` (see :mod:`embedder.runtime`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from common.errors import OutOfResourcesError, message_line, resources_exhausted
from embedder.checkpoint import (
    CheckpointConfig,
    checkpoint_hash,
    read_config,
    unfinished_training,
)
from embedder.engine import DEFAULT_OUTPUTS, Engine
from embedder.engine_options import DEFAULT_RUNTIME, precision
from embedder.errors import CheckpointError, NonFiniteOutputError
from embedder.graphs import EMBEDDING, PROBABILITIES
from embedder.images import caller_image, load_image
from embedder.preprocess import Preprocessor
from embedder.runtime import load_engine

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Embedder", "EmbeddingBatch", "forward_embed"]


@dataclass(frozen=True)
class EmbeddingBatch:
    """Float32 L2-normalised embeddings (N x D) and class probabilities (N x C)."""

    embeddings: np.ndarray
    probabilities: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)


def forward_embed(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One torch forward pass giving unit-norm penultimate features and softmax probabilities."""
    from embedder.onnx_export import forward_outputs

    out = forward_outputs(model, x, DEFAULT_OUTPUTS)
    return out[EMBEDDING], out[PROBABILITIES]


class Embedder:
    """A checkpoint loaded once; safe to call from several threads (calls are serialised).

    ``engine`` is an :class:`embedder.engine.Engine`, or a torch model to run eagerly where it
    is (what training does for its validation passes). Preprocessing is numpy and PIL
    (:class:`embedder.preprocess.Preprocessor`), so an ONNX engine needs no torch.
    """

    def __init__(
        self, engine: Engine | nn.Module, config: CheckpointConfig, weights_hash: str = ""
    ) -> None:
        if not isinstance(engine, Engine):  # a torch model
            from embedder.torch_engine import TorchEngine

            engine = TorchEngine(engine)
        self.engine = engine
        self.config = config
        self.checkpoint_hash = weights_hash
        self.transform = Preprocessor(config.data_config)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        runtime: str = DEFAULT_RUNTIME,
        device: str | None = None,
        threads: int | None = None,
    ) -> Embedder:
        """Load ``path`` on ``runtime`` ("auto", "torch", "onnx", "onnx-int8") and ``device``
        (cpu, cuda, cuda:N, mps; default cuda when available); ``threads`` for ONNX Runtime."""
        config = read_config(path)
        weights = checkpoint_hash(path)
        engine = load_engine(path, runtime=runtime, device=device, threads=threads)
        # The hash is the checkpoint's identity in every index and export: it must be of the
        # weights the engine runs, not of a file replaced while it loaded.
        if checkpoint_hash(path) != weights:
            raise CheckpointError(f"{path}: the weights changed while loading; load it again")
        unfinished = unfinished_training(config)
        if unfinished:
            log.warning("%s: %s", path, unfinished)
        return cls(engine, config, weights)

    @property
    def runtime(self) -> str:
        return self.engine.runtime

    @property
    def precision(self) -> str:
        """ "fp32" or "int8": what its embeddings may be compared with (see ``engine_options``)."""
        return precision(self.engine.runtime)

    @property
    def model_name(self) -> str:
        return self.config.architecture

    @property
    def label_names(self) -> list[str]:
        return list(self.config.label_names)

    @property
    def dim(self) -> int:
        return int(self.config.feature_dim)

    @property
    def decode_side(self) -> int:
        """Shorter side the eval transform resizes to: JPEGs can be decoded down to it."""
        return self.transform.decode_side

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images as the model takes them: float32 N x 3 x H x W. Each is decoded and turned
        upright by its EXIF orientation first, as files are (:func:`caller_image`)."""
        return self.transform.batch(
            [caller_image(img, f"image {i}") for i, img in enumerate(_sequence(images, "images"))]
        )

    def preprocess_array(self, img: Image.Image) -> np.ndarray:
        """One image as the model takes it (float32 3 x H x W), e.g. for a micro-batcher that
        stacks requests with ``np.stack``. Transparency goes to white, as for files on disk."""
        return self.transform(caller_image(img))

    def embed_tensors(self, x: np.ndarray | torch.Tensor) -> EmbeddingBatch:
        """Embed an already preprocessed batch (N x 3 x H x W)."""
        finite = x.isfinite().all() if hasattr(x, "isfinite") else np.isfinite(x).all()
        if not bool(finite):  # else blamed on the weights below
            raise ValueError("the input batch holds NaN or infinite values")
        if len(x) == 0:
            return EmbeddingBatch(
                np.zeros((0, self.dim), np.float32),
                np.zeros((0, self.config.num_classes), np.float32),
            )
        with self._lock:
            try:
                out = self.engine.run(x, DEFAULT_OUTPUTS)
            except Exception as exc:
                if not resources_exhausted(exc) or isinstance(exc, OutOfResourcesError):
                    raise
                # A traceback from the runtime's allocator said nothing about what to change.
                raise OutOfResourcesError(
                    f"the model ran out of memory on a batch of {len(x)} images "
                    f"({message_line(exc)}); use smaller batches (--batch-size; for "
                    "serve, --max-batch) or raise the memory limit"
                ) from exc
        emb, probs = out[EMBEDDING], out[PROBABILITIES]
        broken = ~(np.isfinite(emb).all(axis=1) & np.isfinite(probs).all(axis=1))
        if broken.any():  # a NaN vector would be indexed, searched and exported as any other
            raise NonFiniteOutputError(
                f"the model's output is not finite (NaN or infinity) for {int(broken.sum())} "
                f"of {len(x)} images: its weights are broken; retrain or restore the checkpoint"
            )
        return EmbeddingBatch(emb, probs)

    def embed_images(self, images: Sequence[Image.Image]) -> EmbeddingBatch:
        """Embed a batch of PIL images in one forward pass (EXIF orientation applied, as for
        files). Raises ImageError for one whose pixels cannot be decoded."""
        images = _sequence(images, "images")
        if not images:
            return self.embed_tensors(np.zeros((0, *self.transform.shape), np.float32))
        return self.embed_tensors(self.preprocess(images))

    def embed_paths(self, paths: Sequence[str | Path]) -> EmbeddingBatch:
        """Decode and embed image files; raises ImageError on the first unreadable one."""
        if isinstance(paths, np.ndarray) and paths.ndim == 1:  # a DataFrame column's values
            paths = paths.tolist()
        paths = _sequence(paths, "paths")
        return self.embed_images([load_image(p, self.decode_side) for p in paths])


def _sequence(items: object, what: str) -> list:
    """``items`` as a list, refusing what would be read element by element by mistake: a
    path string (letter by letter), one image, or an array (row by row)."""
    if isinstance(items, str | bytes | Path | Image.Image | np.ndarray) or not hasattr(
        items, "__iter__"
    ):
        raise TypeError(f"{what}: expected a sequence, got one {type(items).__name__}")
    return list(items)
