"""Copy-detection features computed from a checkpoint's backbone.

Two kinds per image, from one forward pass of the image and one of its mirror:

- a global descriptor for finding candidates: the final feature map GeM-pooled (sharper than
  the average-pooled classifier feature) and summed with the mirror's, so a mirrored re-upload
  gets the same vector;
- local features for verifying them: the unit-norm vectors of a stride-16 feature map (image and
  mirror), which ``duplicates.verify`` matches and fits a geometric map to.

The image is squashed to the model's square input (no centre crop), so padding and crops keep
their content, and feature-map cells map linearly to image coordinates.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn
from torchvision import transforms

from embedder.checkpoint import load_checkpoint
from embedder.errors import CheckpointError
from embedder.images import to_rgb


@dataclass(frozen=True)
class DescriptorConfig:
    """How the features are computed; stored beside the calibrated threshold.

    ``local_stage`` indexes the backbone's feature stages (-2: the stride-16 stage of an
    EfficientNet); ``size`` overrides the model's input size; ``thumb_size`` is the side of the
    colour thumbnail used for the pixel comparison.
    """

    gem_p: float = 3.0
    local_stage: int = -2
    size: int | None = None
    thumb_size: int = 96

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DescriptorConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def squash_transform(
    size: int, data_config: dict[str, Any]
) -> Callable[[Image.Image], torch.Tensor]:
    """timm's eval transform in ``crop_mode="squash"`` at ``crop_pct`` 1: the whole image resized
    to size x size (aspect not kept, bicubic) and normalised with the model's mean and std.

    Picklable, for the loader workers; ``to_rgb`` first, so transparency goes to white.
    """
    config = resolve_data_config(
        {
            "input_size": (3, int(size), int(size)),
            "interpolation": "bicubic",
            "mean": tuple(data_config["mean"]),
            "std": tuple(data_config["std"]),
            "crop_pct": 1.0,
            "crop_mode": "squash",
        }
    )
    return transforms.Compose([to_rgb, create_transform(**config, is_training=False)])


def thumbnail(img: Image.Image, side: int) -> np.ndarray:
    """Squashed side x side RGB uint8 thumbnail, in the same unit square as the features."""
    return np.asarray(to_rgb(img).resize((side, side), Image.BILINEAR), dtype=np.uint8)


def gem(x: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling over H, W (p=1 average, large p approaches max)."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


@dataclass(frozen=True)
class Described:
    """Features of a batch: ``global_`` N x D (unit norm, float32) and ``local``
    N x 2 x (h*w) x C (unit-norm rows, float16; [:, 0] the image, [:, 1] its mirror)."""

    global_: np.ndarray
    local: np.ndarray


class CopyDescriptor:
    """Turns preprocessed batches into copy-detection features; thread-safe (serialised)."""

    def __init__(
        self, model: nn.Module, data_config: dict[str, Any], config: DescriptorConfig | None = None
    ) -> None:
        if not hasattr(model, "forward_intermediates"):
            raise CheckpointError(
                f"{type(model).__name__} has no forward_intermediates(); duplicate detection "
                "needs a timm model with feature stages (EfficientNet, ResNet, ConvNeXt, ...)"
            )
        self.model = model.eval()
        self.config = config or DescriptorConfig()
        self.size = int(self.config.size or data_config["input_size"][-1])
        self.transform = squash_transform(self.size, data_config)
        n_stages = len(model.feature_info)
        self._stage = self.config.local_stage % n_stages
        self._lock = threading.Lock()
        probe = self.describe_tensors(torch.zeros(1, 3, self.size, self.size))
        self.dim = int(probe.global_.shape[1])
        self.local_dim = int(probe.local.shape[3])
        side = int(round(np.sqrt(probe.local.shape[2])))
        self.grid_shape = (side, side)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, config: DescriptorConfig | None = None
    ) -> CopyDescriptor:
        model, ckpt = load_checkpoint(path)
        return cls(model, ckpt.data_config, config)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final, maps = self.model.forward_intermediates(x, indices=[self._stage])
        pooled = nn.functional.normalize(gem(final.float(), self.config.gem_p), dim=1)
        local = maps[0].float().flatten(2).transpose(1, 2)  # N x (h*w) x C
        return pooled, nn.functional.normalize(local, dim=2)

    @torch.inference_mode()
    def describe_tensors(self, x: torch.Tensor) -> Described:
        """Features of an already preprocessed batch (N x 3 x size x size)."""
        with self._lock:
            g, loc = self._forward(x)
            g_m, loc_m = self._forward(torch.flip(x, dims=[3]))
        # Sum with the mirror's pooled feature: mirroring the input leaves the sum unchanged.
        global_ = nn.functional.normalize(g + g_m, dim=1)
        return Described(
            np.ascontiguousarray(global_.numpy(), dtype=np.float32),
            np.ascontiguousarray(torch.stack([loc, loc_m], dim=1).numpy(), dtype=np.float16),
        )

    def describe_images(self, images: list[Image.Image]) -> Described:
        return self.describe_tensors(torch.stack([self.transform(img) for img in images]))
