"""The eval preprocessing of a checkpoint with PIL and numpy alone (no torch, no timm).

It gives the pixels of timm's eval transform (``create_transform(**data_config,
is_training=False)``: resize, centre crop or pad, to float, normalise) for the three crop modes
phonesim writes (``squash``, ``center``, ``border``), so ONNX Runtime inference needs neither
torch nor timm. Resizing goes through the same PIL calls torchvision makes on PIL images, so
the 8-bit pixels are identical; only the float normalisation rounds differently (about 1e-7).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from embedder.images import resize_bounded, to_rgb

# timm's interpolation names (timm.data.transforms.str_to_pil_interp), as PIL filters.
_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
INTERPOLATIONS = tuple(_FILTERS)
DEFAULT_CROP_PCT = 0.875  # timm's, for a data config without one
# How a photo meets the square input: resized whole, timm's centre crop, or padded.
CROP_MODES = ("squash", "center", "border")


class Preprocessor:
    """``data_config``'s eval transform: a PIL image in, a float32 3 x H x W array out."""

    def __init__(self, data_config: dict[str, Any]) -> None:
        _, self.height, self.width = (int(v) for v in data_config["input_size"])
        self.crop_pct = float(data_config.get("crop_pct") or DEFAULT_CROP_PCT)
        self.crop_mode = data_config.get("crop_mode") or "center"
        interpolation = data_config.get("interpolation", "bilinear")
        # timm picks a random filter per image only when training; eval has a fixed one.
        self.filter = _FILTERS.get(interpolation, Image.Resampling.BILINEAR)
        mean = np.asarray(data_config["mean"], np.float32)
        std = np.asarray(data_config["std"], np.float32)
        # (x / 255 - mean) / std as one multiply-add per pixel.
        self._scale = (1.0 / (255.0 * std)).reshape(3, 1, 1).astype(np.float32)
        self._offset = (-mean / std).reshape(3, 1, 1).astype(np.float32)
        self._fill = tuple(round(255 * float(v)) for v in data_config["mean"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.height, self.width)

    @property
    def decode_side(self) -> int:
        """Shorter side the resize needs at most: JPEGs can be decoded down to it."""
        return math.ceil(max(self.height, self.width) / self.crop_pct)

    def resize(self, img: Image.Image) -> Image.Image:
        """The resized and cropped (or padded) RGB image at the input size."""
        img = to_rgb(img)
        scale = (math.floor(self.height / self.crop_pct), math.floor(self.width / self.crop_pct))
        if self.crop_mode == "squash":
            img = _resize(img, scale, self.filter)
            return _center_crop_or_pad(img, self.height, self.width, (0, 0, 0))
        if self.crop_mode == "border":
            # Longest side to the scaled size (timm's ResizeKeepRatio with longest=1).
            ratio = max(img.height / scale[0], img.width / scale[1])
            # At least one pixel: a 5000 x 3 strip would round its short side to nothing.
            size = (max(1, round(img.height / ratio)), max(1, round(img.width / ratio)))
            img = _resize(img, size, self.filter)
            return _center_crop_or_pad(img, self.height, self.width, self._fill)
        if scale[0] == scale[1]:  # torchvision's Resize(int): the shorter side to this size
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(scale[0] * long / short)
            size = (new_long, scale[0]) if w <= h else (scale[0], new_long)
        else:  # timm's ResizeKeepRatio with longest=0: the shorter side to its target
            ratio = min(img.height / scale[0], img.width / scale[1])
            size = (round(img.height / ratio), round(img.width / ratio))
        covers = size[0] >= self.height and size[1] >= self.width  # a crop, no padding
        if covers and size[0] * size[1] > _MAX_RESIZED_AREAS * self.height * self.width:
            # A long strip (a 321-byte 40000 x 2 PNG) would resize to gigabytes of pixels of
            # which the crop keeps a sliver: resize only the part of it the crop keeps.
            return _resize_crop(img, size, self.height, self.width, self.filter)
        img = _resize(img, size, self.filter)
        return _center_crop_or_pad(img, self.height, self.width, (0, 0, 0))

    def into(self, img: Image.Image, out: np.ndarray) -> np.ndarray:
        """Preprocess ``img`` straight into ``out`` (a 3 x H x W float32 view, e.g. a batch row)."""
        pixels = np.asarray(self.resize(img))  # H x W x 3 uint8
        np.multiply(pixels.transpose(2, 0, 1), self._scale, out=out)
        out += self._offset
        return out

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.into(img, np.empty(self.shape, np.float32))

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """N x 3 x H x W float32."""
        out = np.empty((len(images), *self.shape), np.float32)
        for row, img in zip(out, images, strict=True):
            self.into(img, row)
        return out


# Beyond this many input areas the center mode resizes only the cropped region (the result
# differs from resizing the whole image by the filter's reach at the crop's edges).
_MAX_RESIZED_AREAS = 16


def _resize_crop(
    img: Image.Image, size: tuple[int, int], height: int, width: int, resample: int
) -> Image.Image:
    """The centre ``height`` x ``width`` crop of ``img`` resized to ``size`` (height, width),
    resizing only the source region under the crop."""
    fy, fx = img.height / size[0], img.width / size[1]
    top = int(round((size[0] - height) / 2.0))
    left = int(round((size[1] - width) / 2.0))
    box = (left * fx, top * fy, (left + width) * fx, (top + height) * fy)
    return img.resize((width, height), resample, box=box)


def _resize(img: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """Resize to (height, width) as torchvision's PIL resize does."""
    height, width = size
    if (img.width, img.height) == (width, height):
        return img
    return resize_bounded(img, (width, height), resample)


def _center_crop_or_pad(
    img: Image.Image, height: int, width: int, fill: tuple[int, ...]
) -> Image.Image:
    """torchvision's CenterCrop (timm's CenterCropOrPad): pad with ``fill`` where too small,
    then crop the centre, rounding the offset as they do."""
    if width > img.width or height > img.height:
        left = (width - img.width) // 2 if width > img.width else 0
        top = (height - img.height) // 2 if height > img.height else 0
        padded = Image.new("RGB", (max(width, img.width), max(height, img.height)), fill)
        # Right and bottom take the odd pixel, as torchvision's padding does.
        padded.paste(img, (left, top))
        img = padded
    if (img.width, img.height) == (width, height):
        return img
    top = int(round((img.height - height) / 2.0))
    left = int(round((img.width - width) / 2.0))
    return img.crop((left, top, left + width, top + height))
