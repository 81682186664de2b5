"""Verification evidence: the shape of pixel disagreement."""

from __future__ import annotations

import numpy as np
import pytest

from duplicates.verify import disagreement_shape


def test_disagreement_shape_tells_solid_regions_from_strokes() -> None:
    lattice = np.zeros((40, 40), np.float32)
    solid = lattice.copy()
    solid[10:20, 10:20] = 100.0  # a recoloured body: one block
    strokes = lattice.copy()
    strokes[::4, :] = 100.0  # text lines / moire: thin
    largest_solid, share_solid = disagreement_shape(solid, 16.0)
    _, share_strokes = disagreement_shape(strokes, 16.0)
    assert largest_solid == pytest.approx(100 / 1600)
    assert share_solid > 0.04 and share_strokes == 0.0
    outside = solid.copy()
    outside[:, :15] = np.nan  # points outside the overlap do not count
    assert disagreement_shape(outside, 16.0)[0] == pytest.approx(50 / 1000)
