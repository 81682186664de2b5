"""Rendering one photo-like shot of a phone model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from demo.render import render_phone_image
from demo.specs import make_specs


def test_front_and_back_views_differ() -> None:
    spec = make_specs(2, seed=0)[0]
    colour = spec.colours[0][1]
    views = {}
    for view in ("front", "back"):
        img = render_phone_image(spec, view, colour, 96, random.Random(1), np.random.default_rng(1))
        assert img.mode == "RGB" and img.size == (96, 96)
        views[view] = np.asarray(img, dtype=np.float32)
    assert np.abs(views["front"] - views["back"]).mean() > 5
    with pytest.raises(ValueError, match="view"):
        render_phone_image(spec, "side", colour, 96, random.Random(1), np.random.default_rng(1))
