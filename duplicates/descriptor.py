"""Copy-detection features computed from a checkpoint's backbone.

Two kinds per image, from one engine batch holding the image and its mirror (and, with
``DescriptorConfig.blur``, a second holding a Gaussian-blurred copy of both):

- a global descriptor for finding candidates: the final feature map GeM-pooled (sharper than
  the average-pooled classifier feature) and summed with the mirror's, so a mirrored re-upload
  gets the same vector; taken from the blurred pass when there is one, so moire, noise and
  re-encoding move it less;
- local features for verifying them: the unit-norm vectors of a stride-16 feature map (image and
  mirror), which ``duplicates.verify`` matches and fits a geometric map to.

The image is squashed to the model's square input (no centre crop), so padding and crops keep
their content, and feature-map cells map linearly to image coordinates. The backbone runs
through the checkpoint's inference engine (torch or ONNX Runtime), which names both maps;
preprocessing and pooling are numpy (``embedder.preprocess``), so on an ONNX runtime the
duplicate finder never imports torch.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from embedder.checkpoint import read_config
from embedder.engine import Engine
from embedder.engine_options import EngineOptions
from embedder.errors import CheckpointError, EngineError
from embedder.graphs import FEATURE_MAP
from embedder.preprocess import Preprocessor
from embedder.runtime import load_engine

log = logging.getLogger(__name__)


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
    # > 0: the global descriptor comes from a second pass over the input Gaussian-blurred by
    # this sigma (input pixels); local features stay sharp. Blurring washes out moire, noise and
    # re-encoding, so photographed screens find their originals: on benchmark seed 1 sigma 2.5
    # left 11 copy-original pairs outside the candidates instead of 33.
    blur: float = 2.5

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DescriptorConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        # A record from before the blurred pass was calibrated without it.
        known.setdefault("blur", 0.0)
        return cls(**known)


def squash_transform(size: int, data_config: dict[str, Any]) -> Preprocessor:
    """timm's eval transform in ``crop_mode="squash"`` at ``crop_pct`` 1: the whole image resized
    to size x size (aspect not kept, bicubic) and normalised with the model's mean and std,
    transparency on white; numpy out (the eval preprocessing of :mod:`embedder.preprocess`)."""
    return Preprocessor(
        {
            "input_size": (3, int(size), int(size)),
            "interpolation": "bicubic",
            "mean": tuple(data_config["mean"]),
            "std": tuple(data_config["std"]),
            "crop_pct": 1.0,
            "crop_mode": "squash",
        }
    )


def gem(x: np.ndarray, p: float, eps: float = 1e-6) -> np.ndarray:
    """Generalised-mean pooling over H, W (p=1 average, large p approaches max)."""
    x = np.maximum(x, np.float32(eps))
    if float(p).is_integer() and 1 <= p <= 8:
        # Whole powers by multiplying: 6x faster than np.power (or torch.pow) on the CPU.
        powered = x.copy()
        for _ in range(int(p) - 1):
            powered *= x
    else:
        powered = np.power(x, np.float32(p))
    return np.power(powered.mean(axis=(-2, -1)), np.float32(1.0 / p))


def unit_rows(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x`` scaled to unit L2 norm along ``axis`` (torch's ``F.normalize``)."""
    norm = np.sqrt(np.square(x).sum(axis=axis, keepdims=True))
    return x / np.maximum(norm, np.float32(eps))


@dataclass(frozen=True)
class Described:
    """Features of a batch: ``global_`` N x D (unit norm, float32) and ``local``
    N x 2 x (h*w) x C (unit-norm rows, float16; [:, 0] the image, [:, 1] its mirror)."""

    global_: np.ndarray
    local: np.ndarray


class CopyDescriptor:
    """Turns preprocessed batches into copy-detection features through the checkpoint's
    inference engine (its ``feature_map`` and stage outputs); thread-safe (serialised)."""

    def __init__(
        self, engine: Engine, data_config: dict[str, Any], config: DescriptorConfig | None = None
    ) -> None:
        if engine.stage_count == 0:
            raise CheckpointError(
                "this model has no forward_intermediates(); duplicate detection needs a timm "
                "model with feature stages (EfficientNet, ResNet, ConvNeXt, ...)"
            )
        self.engine = engine
        self.config = config or DescriptorConfig()
        self.size = int(self.config.size or data_config["input_size"][-1])
        fixed = engine.input_size
        if fixed is not None and tuple(fixed[1:]) != (self.size, self.size):
            raise EngineError(
                f"the {engine.runtime} graph takes {fixed[-1]} px input, the descriptor "
                f"{self.size} px; use runtime 'torch' for another size"
            )
        self.transform = squash_transform(self.size, data_config)
        self._outputs = (FEATURE_MAP, engine.stage_output(self.config.local_stage))
        self._lock = threading.Lock()
        probe = self.describe_tensors(np.zeros((1, *self.transform.shape), np.float32))
        self.dim = int(probe.global_.shape[1])
        self.local_dim = int(probe.local.shape[3])
        side = int(round(np.sqrt(probe.local.shape[2])))
        self.grid_shape = (side, side)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        config: DescriptorConfig | None = None,
        engine: EngineOptions | None = None,
    ) -> CopyDescriptor:
        """The descriptor of checkpoint ``path`` on ``engine``'s runtime, device and threads.

        A ``config.size`` other than the model's input needs torch (an exported graph has one
        input size): runtime "auto" then runs torch, an explicit onnx runtime is refused.
        """
        engine = engine or EngineOptions()
        ckpt = read_config(path)
        runtime = engine.runtime
        size = (config or DescriptorConfig()).size
        if runtime == "auto" and size and size != int(ckpt.data_config["input_size"][-1]):
            log.info("descriptor size %d differs from the model's input: runtime torch", size)
            runtime = "torch"
        model = load_engine(path, runtime, engine.device, engine.threads)
        return cls(model, ckpt.data_config, config)

    def describe_tensors(self, x: np.ndarray) -> Described:
        """Features of an already preprocessed batch (N x 3 x size x size float32; a CPU torch
        tensor is read as an array).

        The image and its mirror go through the engine as one batch of 2N; with ``blur`` their
        blurred copies follow as a second batch of 2N (not one of 4N: half the peak memory),
        asked only for the final map, which gives the global descriptor.
        """
        x = np.asarray(x, dtype=np.float32)
        n = len(x)
        blurred = None
        if self.config.blur > 0:
            from scipy.ndimage import gaussian_filter

            blurred = gaussian_filter(x, sigma=(0, 0, self.config.blur, self.config.blur))
        with self._lock:
            out = self._run_with_mirror(x, self._outputs)
            if blurred is not None:  # only its final map: the local features stay sharp
                out |= self._run_with_mirror(blurred, (FEATURE_MAP,))
        final, stage = (out[name] for name in self._outputs)
        pooled = unit_rows(gem(final, self.config.gem_p))
        # Sum with the mirror's pooled feature: mirroring the input leaves the sum unchanged.
        global_ = unit_rows(pooled[:n] + pooled[n:])
        # Stage cells as unit vectors, N x 2 (image, mirror) x (h*w) x C.
        two, c = 2 * n, stage.shape[1]
        cells = unit_rows(stage.reshape(two, c, -1), axis=1)  # 2N x C x hw
        local = cells.reshape(2, n, c, -1).transpose(1, 0, 3, 2)
        return Described(
            np.ascontiguousarray(global_, dtype=np.float32),
            np.ascontiguousarray(local, dtype=np.float16),
        )

    def _run_with_mirror(self, x: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The named maps of ``x`` and its mirror (2N rows: images, then mirrors)."""
        return self.engine.run(np.concatenate([x, x[..., ::-1]]), outputs)

    def describe_images(self, images: list[Image.Image]) -> Described:
        return self.describe_tensors(self.transform.batch(images))
