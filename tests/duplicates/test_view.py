"""Another view of one object is not a copy: map distortion in real pixels, foreground
agreement, and whole pairs of synthetic renders through verification."""

from __future__ import annotations

import numpy as np
import pytest

from duplicates.finder import FALLBACK_THRESHOLD
from duplicates.inputs import thumbnail
from duplicates.verify import EVIDENCE, VerifyConfig, grid_points, score_pair
from duplicates.view import background, foreground_agreement, homography_inliers, map_distortion
from tests.duplicates import renders

PROBE = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9], [0.5, 0.5]])


def _affine(a: float, b: float, c: float, d: float, tx: float = 0.0, ty: float = 0.0):
    return np.array([[a, b, tx], [c, d, ty], [0.0, 0.0, 1.0]])


def test_a_resize_is_isotropic_in_real_pixels_even_when_squashed() -> None:
    # B is A at 60%: unit coordinates map 1:1, pixels scale alike in x and y.
    assert map_distortion(np.eye(3), (320, 260), (192, 156), PROBE) == pytest.approx((0, 0))
    # A 2x crop of the centre, then resized: still a similarity.
    crop = _affine(2.0, 0.0, 0.0, 2.0, -0.5, -0.5)
    assert map_distortion(crop, (320, 260), (320, 260), PROBE)[0] == pytest.approx(0, abs=1e-9)
    # The same unit map between images of other aspect ratios is a stretch.
    aniso, persp = map_distortion(np.eye(3), (320, 260), (320, 160), PROBE)
    assert aniso == pytest.approx(np.log(260 / 160)) and persp == pytest.approx(0, abs=1e-9)


def test_a_turned_view_is_foreshortened_and_in_perspective() -> None:
    turned = _affine(0.7, 0.0, 0.0, 1.0)
    turned[2, 0] = 0.3  # the far side shrinks: a homography, not an affine map
    aniso, persp = map_distortion(turned, (300, 300), (300, 300), PROBE)
    assert aniso > 0.3 and persp > 0.2


def test_foreground_agreement_ignores_the_white_backdrop() -> None:
    white = np.full((90, 3), 255.0)
    object_a = np.tile([[40.0, 60.0, 200.0]], (10, 1))
    col_a = np.vstack([white, object_a])
    col_b = np.vstack([white, object_a[::-1] * 0.5])  # the object differs everywhere
    resid = np.abs(col_a - col_b).mean(axis=1)
    bg = np.array([255.0, 255.0, 255.0])
    assert (resid <= 16).mean() == pytest.approx(0.9)  # agreement, backdrop included
    assert foreground_agreement(col_a, col_b, resid, bg, bg, 16.0) == 0.0
    assert foreground_agreement(col_a, col_a, resid * 0, bg, bg, 16.0) == 1.0
    # Nearly no foreground: every point counts.
    flat = foreground_agreement(white, white, np.zeros(90), bg, bg, 16.0)
    assert flat == 1.0


def test_background_is_the_ring_colour() -> None:
    thumb = np.full((20, 20, 3), 250, np.uint8)
    thumb[5:15, 5:15] = 0
    np.testing.assert_allclose(background(thumb), [250, 250, 250])


def test_homography_inliers_counts_explained_matches() -> None:
    pa = np.random.default_rng(0).random((50, 2))
    pb = pa.copy()
    pb[:10] += 0.2  # a fifth are off the map
    assert homography_inliers(np.eye(3), pa, pb, 0.03) == pytest.approx(0.8)
    assert homography_inliers(np.eye(3), pa[:0], pb[:0], 0.03) == 0.0


@pytest.fixture(scope="module")
def descriptor_224(tiny_checkpoint):
    """The tiny model at 224 px: a 14 x 14 local grid, as the default model has."""
    from duplicates.descriptor import CopyDescriptor, DescriptorConfig

    return CopyDescriptor.from_checkpoint(tiny_checkpoint, DescriptorConfig(size=224))


def _evidence(descriptor, a, b) -> dict[str, float] | None:
    described = descriptor.describe_images([a, b])
    found = score_pair(
        described.local[0, 0],
        thumbnail(a, 96),
        described.local[1],
        thumbnail(b, 96),
        grid_points(*descriptor.grid_shape),
        VerifyConfig(),
        np.random.default_rng(0),
        sizes=(a.size, b.size),
    )
    return None if found is None else dict(zip(EVIDENCE, found.tolist(), strict=True))


def test_copies_are_accepted_and_a_turned_render_is_not(descriptor_224) -> None:
    front = renders.front()
    copies = {
        "jpeg": renders.reencoded(front),
        "crop": renders.cropped(front),
        "watermark": renders.watermarked(front),
        "resize": renders.resized(front),
    }
    found = {name: _evidence(descriptor_224, front, img) for name, img in copies.items()}
    assert all(ev is not None for ev in found.values()), found
    assert all(ev["agreement"] > 0.9 and ev["anisotropy"] < 0.05 for ev in found.values())
    # Turned far aside: no map explains it (rejected) or it leaves the pixels disagreeing.
    far = _evidence(descriptor_224, front, renders.turned(squeeze=0.45))
    assert far is None or far["agreement"] < FALLBACK_THRESHOLD
    # Turned a little: still mapped and mostly agreeing (white backdrop, same wallpaper), but
    # foreshortened and in perspective, which is what the pair model weighs against it.
    turned = _evidence(descriptor_224, front, renders.turned())
    assert turned is not None, "the screen plane maps"
    for key in ("anisotropy", "perspective"):
        assert turned[key] > 0.15 and turned[key] > 5 * max(ev[key] for ev in found.values())
