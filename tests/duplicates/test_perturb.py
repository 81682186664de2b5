"""The seeded edits that make benchmark copies."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image


def test_perturbations_are_seeded_and_valid() -> None:
    from duplicates.perturb import STRENGTHS, TRANSFORMS, apply

    img = Image.new("RGB", (120, 160), (240, 240, 240))
    img.paste((30, 60, 200), (20, 30, 100, 140))
    for name in [*TRANSFORMS, "combined"]:
        for s in STRENGTHS:
            a = apply(name, img, s, random.Random(5))
            b = apply(name, img, s, random.Random(5))
            assert a.mode == "RGB" and min(a.size) >= 4
            assert np.array_equal(np.asarray(a), np.asarray(b)), name
    cropped = apply("crop", img, 2, random.Random(0))
    assert 0.6 < cropped.width * cropped.height / (120 * 160) < 0.9
