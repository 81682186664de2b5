"""The numpy/PIL preprocessing gives the pixels of timm's eval transform (torchvision)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from embedder.preprocess import Preprocessor
from embedder.transforms import eval_transform

BASE = {
    "input_size": [3, 64, 64],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bicubic",
}
# Landscape, portrait, square, smaller than the input, odd sizes (rounding of crop offsets).
SIZES = [(64, 64), (120, 80), (80, 121), (37, 23), (23, 90), (301, 199)]


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("crop_mode", ["squash", "center", "border", None])
@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_same_pixels_as_the_timm_eval_transform(crop_mode, crop_pct, interpolation):
    config = {**BASE, "crop_pct": crop_pct, "interpolation": interpolation}
    if crop_mode:
        config["crop_mode"] = crop_mode
    ours, timms = Preprocessor(config), eval_transform(config)
    for seed, size in enumerate(SIZES):
        img = _image(size, seed)
        want = timms(img).numpy()
        got = ours(img)
        assert got.dtype == np.float32 and got.shape == want.shape == (3, 64, 64)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("mode", "hw"), list(itertools.product(["squash", "center", "border"], [(48, 64), (64, 48)]))
)
def test_non_square_inputs(mode, hw):
    config = {**BASE, "input_size": [3, *hw], "crop_mode": mode, "crop_pct": 0.9}
    for seed, size in enumerate(SIZES):
        img = _image(size, seed)
        np.testing.assert_allclose(
            Preprocessor(config)(img), eval_transform(config)(img).numpy(), atol=1e-5, rtol=0
        )


def test_any_mode_is_made_rgb_with_transparency_on_white():
    config = {**BASE, "crop_mode": "squash", "crop_pct": 1.0}
    clear = Image.new("RGBA", (64, 64), (10, 20, 30, 0))
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    pre = Preprocessor(config)
    np.testing.assert_array_equal(pre(clear), pre(white))
    grey = Image.new("L", (64, 64), 128)
    assert pre(grey).shape == (3, 64, 64)


def test_batches_are_written_in_place_and_decode_side_covers_the_resize():
    pre = Preprocessor({**BASE, "crop_mode": "center", "crop_pct": 0.875})
    images = [_image(s, i) for i, s in enumerate(SIZES[:3])]
    batch = pre.batch(images)
    assert batch.shape == (3, 3, 64, 64) and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[1], pre(images[1]))
    assert pre.decode_side == 74  # ceil(64 / 0.875): the resize's shorter side


@pytest.mark.parametrize("crop_mode", ["squash", "center", "border"])
@pytest.mark.parametrize("size", [(5000, 3), (3, 5000), (40000, 2)])
def test_long_strips_give_an_input_in_bounded_memory(crop_mode, size, monkeypatch):
    """A 139-byte 5000 x 3 PNG rounded its short side to 0 pixels under "border" (a 500 for
    the server); a 321-byte 40000 x 2 PNG resized to 2.8 GB under "center" (at 224 px)."""
    resized: list[int] = []
    original = Image.Image.resize

    def recording(self, size, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        resized.append(size[0] * size[1])
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    pre = Preprocessor({**BASE, "crop_mode": crop_mode, "crop_pct": 0.875})
    out = pre(Image.new("RGB", size, (200, 100, 50)))
    assert out.shape == (3, 64, 64) and np.isfinite(out).all()
    assert max(resized) <= 16 * 64 * 64


@pytest.mark.parametrize("size", [(2000, 20), (20, 2000)])
def test_center_crops_of_long_strips_stay_close_to_timms(size):
    """Past 16 input areas only the cropped region is resized: the pixels differ from timm's
    (which resizes it all) by the filter's reach at the crop's edges."""
    config = {**BASE, "crop_mode": "center", "crop_pct": 0.875}
    w, h = size
    ramp = np.linspace(0, 255, max(w, h))
    ramp = ramp[None, :] if w > h else ramp[:, None]
    rng = np.random.default_rng(0)
    pixels = (ramp[..., None] * np.ones((h, w, 3)) + rng.normal(0, 20, (h, w, 3))).clip(0, 255)
    img = Image.fromarray(pixels.astype(np.uint8))
    got, want = Preprocessor(config)(img), eval_transform(config)(img).numpy()
    assert np.abs(got - want).mean() < 0.01 and np.abs(got - want).max() < 0.2


@pytest.mark.parametrize("size", [(5000, 150), (40000, 2), (2, 40000)])
def test_center_mode_with_crop_pct_above_one_pads_like_timm(size):
    """crop_pct > 1 leaves the resized short side below the crop (timm pads it): the shortcut
    for long strips took a box outside the image ("box offset can't be negative")."""
    config = {**BASE, "crop_mode": "center", "crop_pct": 1.2}
    img = _image(size, 0) if size[0] * size[1] < 1_000_000 else Image.new("RGB", size, (9, 9, 9))
    got = Preprocessor(config)(img)
    assert got.shape == (3, 64, 64)
    if size == (5000, 150):
        np.testing.assert_allclose(got, eval_transform(config)(img).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("module", "call"),
    [
        ("embedder.preprocess", f"Preprocessor({{**{BASE!r}, 'crop_mode': 'squash'}})(img)"),
        ("embedder.preprocess", f"Preprocessor({{**{BASE!r}, 'crop_mode': 'border'}})(img)"),
        ("embedder.label_conflicts", "thumbnail_vector(img)"),  # a training's conflict check
        ("duplicates.inputs", "thumbnail(img, 64)"),  # duplicates find
    ],
)
def test_resizing_a_very_long_side_costs_no_memory_per_pixel_of_it(module, call):
    """PIL's filter weights grow with the side resized: a 116 KB PNG of 40,000,000 x 1 took
    1.4 GB under "squash". Measured in a child process, its peak reset before the resize."""
    import subprocess
    import sys

    script = f"""
from pathlib import Path
from PIL import Image
from {module} import *  # only what the call needs: memory freed by other imports is reused

def peak_mb():
    status = Path("/proc/self/status").read_text().split("VmHWM:")[1]
    return int(status.split()[0]) // 1024

img = Image.new("RGB", (4_000_000, 1), (200, 10, 10))
Path("/proc/self/clear_refs").write_text("5")  # the peak is now what is resident
before = peak_mb()
shape = {call}.shape
print(peak_mb() - before, shape)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split(maxsplit=1)
    assert int(out[0]) < 40, f"{out[0]} MB more for the resize (had been 61 to 122)"
    assert out[1].strip() in ("(3, 64, 64)", "(576,)", "(64, 64, 3)")
