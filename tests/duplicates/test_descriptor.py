"""The copy descriptor's preprocessing and pooling in numpy: timm's squash transform pixel for
pixel, and GeM pooling and normalisation as the torch formulas they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from duplicates.descriptor import gem, squash_transform, unit_rows
from embedder.images import to_rgb

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _squash_by_hand(img: Image.Image, size: int) -> np.ndarray:
    """The reference: resize the whole image to size x size (bicubic), scale to 0-1, normalise."""
    img = to_rgb(img).resize((size, size), Image.BICUBIC)
    x = (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)
    return (x - np.float32(MEAN).reshape(3, 1, 1)) / np.float32(STD).reshape(3, 1, 1)


def _image(mode: str, shape: tuple[int, int], seed: int = 0) -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*shape, channels), dtype=np.uint8).squeeze(), mode)


@pytest.mark.parametrize(
    ("mode", "shape"), [("RGB", (90, 160)), ("RGBA", (200, 70)), ("L", (64, 64))]
)
def test_squash_transform_matches_resizing_by_hand(mode: str, shape: tuple[int, int]) -> None:
    img = _image(mode, shape)
    out = squash_transform(48, {"mean": list(MEAN), "std": list(STD)})(img)
    assert out.shape == (3, 48, 48) and out.dtype == np.float32
    np.testing.assert_allclose(out, _squash_by_hand(img, 48), atol=1e-6, rtol=0)


def test_squash_transform_gives_the_pixels_of_timms_squash_transform() -> None:
    """The torch pipeline the descriptor used before (timm's eval transform, squash mode)."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(
        {
            "input_size": (3, 40, 40),
            "interpolation": "bicubic",
            "mean": MEAN,
            "std": STD,
            "crop_pct": 1.0,
            "crop_mode": "squash",
        }
    )
    timms = create_transform(**config, is_training=False)
    ours = squash_transform(40, {"mean": MEAN, "std": STD})
    for seed, shape in enumerate([(90, 160), (31, 17), (40, 40), (300, 120)]):
        img = _image("RGB", shape, seed)
        np.testing.assert_allclose(ours(img), timms(img).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("p", [3.0, 2.5, 1.0])
def test_gem_and_unit_rows_follow_the_torch_formulas(p: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0.2, 1.0, (4, 16, 5, 7)).astype(np.float32)  # ReLU-free maps: some below eps
    t = torch.from_numpy(x)
    want = t.clamp(min=1e-6).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)
    got = gem(x, p)
    assert got.dtype == np.float32 and got.shape == (4, 16)
    np.testing.assert_allclose(got, want.numpy(), rtol=2e-6, atol=1e-7)
    flat = x.reshape(4, 16, -1)
    np.testing.assert_allclose(
        unit_rows(flat, axis=1),
        torch.nn.functional.normalize(torch.from_numpy(flat), dim=1).numpy(),
        rtol=1e-6,
        atol=1e-7,
    )
    assert np.all(unit_rows(np.zeros((2, 3), np.float32)) == 0)  # no division by zero
