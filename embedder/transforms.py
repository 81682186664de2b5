"""Preprocessing derived from the model's timm data config (never hard-coded sizes or stats)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from timm.data import create_transform, resolve_model_data_config
from torch import nn

if TYPE_CHECKING:
    import torch
    from PIL import Image


def model_data_config(
    model: nn.Module, img_size: int | None = None, crop_mode: str | None = None
) -> dict[str, Any]:
    """The model's data config as JSON-ready values, optionally at another square input size.

    ``crop_mode="squash"`` resizes the whole image to the input size (no crop): product photos
    are framed around the product, and a centre crop of a portrait phone shot cuts off the
    camera module at the top, the strongest brand cue.
    """
    config = dict(resolve_model_data_config(model))
    if img_size is not None:
        config["input_size"] = (3, int(img_size), int(img_size))
    if crop_mode is not None:
        config["crop_mode"] = crop_mode
        if crop_mode == "squash":
            config["crop_pct"] = 1.0
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _as_timm(config: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def eval_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """Resize, centre crop, normalise: identical in evaluation, embedding and serving."""
    return create_transform(**_as_timm(data_config), is_training=False)


def train_transform(
    data_config: dict[str, Any], strength: float = 1.0
) -> Callable[[Image.Image], torch.Tensor]:
    """timm's training pipeline: random resized crop, flip, colour jitter and RandAugment."""
    return create_transform(
        **{k: v for k, v in _as_timm(data_config).items() if k not in ("crop_pct", "crop_mode")},
        is_training=True,
        scale=(1.0 - 0.65 * min(1.0, strength), 1.0),
        hflip=0.5,
        color_jitter=0.3 * strength,
        auto_augment=f"rand-m{max(1, round(7 * strength))}-mstd0.5-inc1" if strength > 0 else None,
        re_prob=0.15 * strength,
    )


__all__ = ["eval_transform", "model_data_config", "train_transform"]
