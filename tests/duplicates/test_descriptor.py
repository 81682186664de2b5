"""The copy descriptor's preprocessing: timm's squash transform, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from duplicates.descriptor import squash_transform
from embedder.images import to_rgb

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _squash_by_hand(img: Image.Image, size: int) -> torch.Tensor:
    """The reference: resize the whole image to size x size (bicubic), scale to 0-1, normalise."""
    img = to_rgb(img).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize(
    ("mode", "shape"), [("RGB", (90, 160)), ("RGBA", (200, 70)), ("L", (64, 64))]
)
def test_squash_transform_matches_resizing_by_hand(mode: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (*shape, channels), dtype=np.uint8).squeeze()
    img = Image.fromarray(pixels, mode)
    transform = squash_transform(48, {"mean": list(MEAN), "std": list(STD)})
    out = transform(img)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, _squash_by_hand(img, 48), atol=1e-6, rtol=0)


def test_squash_transform_is_picklable_for_loader_workers() -> None:
    import pickle

    transform = squash_transform(32, {"mean": list(MEAN), "std": list(STD)})
    img = Image.new("RGB", (40, 20), (10, 200, 30))
    torch.testing.assert_close(pickle.loads(pickle.dumps(transform))(img), transform(img))
