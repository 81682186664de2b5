"""Loading a checkpoint once and turning PIL images into embeddings + class probabilities.

The model runs through the checkpoint's inference engine (:mod:`embedder.engine`): torch eager
or ONNX Runtime, chosen by ``runtime`` (see :mod:`embedder.runtime`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from embedder.checkpoint import CheckpointConfig, checkpoint_hash, read_config
from embedder.engine import DEFAULT_OUTPUTS, Engine, TorchEngine
from embedder.engine_options import DEFAULT_RUNTIME, precision
from embedder.images import load_image, to_rgb
from embedder.onnx_export import EMBEDDING, PROBABILITIES, forward_outputs
from embedder.runtime import load_engine
from embedder.transforms import eval_transform

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
    out = forward_outputs(model, x, DEFAULT_OUTPUTS)
    return out[EMBEDDING], out[PROBABILITIES]


class Embedder:
    """A checkpoint loaded once; safe to call from several threads (calls are serialised).

    ``engine`` is an :class:`embedder.engine.Engine`, or a torch model to run eagerly where it
    is (what training does for its validation passes).
    """

    def __init__(
        self, engine: Engine | nn.Module, config: CheckpointConfig, weights_hash: str = ""
    ) -> None:
        self.engine = TorchEngine(engine) if isinstance(engine, nn.Module) else engine
        self.config = config
        self.checkpoint_hash = weights_hash
        self.transform = eval_transform(config.data_config)
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
        engine = load_engine(path, runtime=runtime, device=device, threads=threads)
        return cls(engine, config, checkpoint_hash(path))

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
        cfg = self.config.data_config
        return math.ceil(max(cfg["input_size"][1:]) / cfg.get("crop_pct", 1.0))

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess_image(img) for img in images])

    def preprocess_image(self, img: Image.Image) -> torch.Tensor:
        """One image as the model takes it (3 x H x W), e.g. for the server's micro-batcher."""
        # to_rgb, not convert("RGB"): transparency goes to white, as for files read from disk.
        return self.transform(to_rgb(img))

    def embed_tensors(self, x: torch.Tensor | np.ndarray) -> EmbeddingBatch:
        """Embed an already preprocessed batch (N x 3 x H x W)."""
        if len(x) == 0:
            return EmbeddingBatch(
                np.zeros((0, self.dim), np.float32),
                np.zeros((0, self.config.num_classes), np.float32),
            )
        with self._lock:
            out = self.engine.run(x, DEFAULT_OUTPUTS)
        return EmbeddingBatch(out[EMBEDDING], out[PROBABILITIES])

    def embed_images(self, images: Sequence[Image.Image]) -> EmbeddingBatch:
        """Embed a batch of PIL images in one forward pass."""
        if not images:
            return self.embed_tensors(torch.zeros(0))
        return self.embed_tensors(self.preprocess(images))

    def embed_paths(self, paths: Sequence[str | Path]) -> EmbeddingBatch:
        """Decode and embed image files; raises ImageError on the first unreadable one."""
        return self.embed_images([load_image(p, self.decode_side) for p in paths])
