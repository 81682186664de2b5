"""Loading a checkpoint once and turning PIL images into embeddings + class probabilities."""

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

from embedder.checkpoint import CheckpointConfig, checkpoint_hash, load_checkpoint
from embedder.images import load_image, to_rgb
from embedder.transforms import eval_transform


@dataclass(frozen=True)
class EmbeddingBatch:
    """Float32 L2-normalised embeddings (N x D) and class probabilities (N x C)."""

    embeddings: np.ndarray
    probabilities: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)


def forward_embed(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving unit-norm penultimate features and softmax probabilities.

    The penultimate feature is timm's ``forward_head(..., pre_logits=True)``; the classifier
    is applied to that same tensor, so both outputs cost a single backbone pass.
    """
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    logits = model.get_classifier()(pre)
    return nn.functional.normalize(pre.float(), dim=1), logits.float().softmax(dim=1)


class Embedder:
    """A checkpoint loaded once; safe to call from several threads (calls are serialised)."""

    def __init__(self, model: nn.Module, config: CheckpointConfig, weights_hash: str = "") -> None:
        # channels_last: about 2x faster CPU inference for convnets (measured on Lite0).
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.config = config
        self.checkpoint_hash = weights_hash
        self.transform = eval_transform(config.data_config)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Embedder:
        model, config = load_checkpoint(path)
        return cls(model, config, checkpoint_hash(path))

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
        # to_rgb, not convert("RGB"): transparency goes to white, as for files read from disk.
        return torch.stack([self.transform(to_rgb(img)) for img in images])

    @torch.inference_mode()
    def embed_tensors(self, x: torch.Tensor) -> EmbeddingBatch:
        """Embed an already preprocessed batch (N x 3 x H x W)."""
        if len(x) == 0:
            return EmbeddingBatch(
                np.zeros((0, self.dim), np.float32),
                np.zeros((0, self.config.num_classes), np.float32),
            )
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._lock:
            emb, probs = forward_embed(self.model, x)
        return EmbeddingBatch(
            np.ascontiguousarray(emb.numpy(), dtype=np.float32),
            np.ascontiguousarray(probs.numpy(), dtype=np.float32),
        )

    def embed_images(self, images: Sequence[Image.Image]) -> EmbeddingBatch:
        """Embed a batch of PIL images in one forward pass."""
        if not images:
            return self.embed_tensors(torch.zeros(0))
        return self.embed_tensors(self.preprocess(images))

    def embed_paths(self, paths: Sequence[str | Path]) -> EmbeddingBatch:
        """Decode and embed image files; raises ImageError on the first unreadable one."""
        return self.embed_images([load_image(p) for p in paths])
