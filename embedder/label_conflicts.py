"""Training photos filed under two classes at once, found by near-identical thumbnails.

Real catalogs file one picture under several classes: phone-brands has a Redmi Note render under
four brands and a Samsung render under three. Such a picture cannot be evidence
for either class, and fitting it teaches the model that identical pixels mean different things.
Training leaves every member of such a conflict out (``--label-conflicts drop``).

The comparison is between greyscale 24 px thumbnails, zero-mean and unit-norm, by cosine: a
re-encoded, resized, brightened or contrast-changed copy scores about 0.99 or more. Renders of one
phone in two body colours scored 0.983 (Redmi Note) and 0.952 (Samsung); the other five
cross-brand pairs at 0.95-0.98 on phone-brands were different phones on white backgrounds, hence
the default of 0.98 (``TrainConfig.conflict_similarity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from embedder.images import resize_bounded

THUMB_SIDE = 24
_BLOCK_CELLS = 1 << 24  # similarities per block of rows (64 MiB of float32)


def thumbnail_vector(img: Image.Image) -> np.ndarray:
    """Greyscale thumbnail as a zero-mean unit vector (all zeros for a flat image)."""
    grey = resize_bounded(img.convert("L"), (THUMB_SIDE, THUMB_SIDE), Image.BICUBIC)
    v = np.asarray(grey, dtype=np.float32).ravel()
    v = v - v.mean()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 1e-3 else np.zeros_like(v)


@dataclass(frozen=True)
class LabelConflict:
    """Image ``index`` nearly copies image ``other``, which is filed under another class."""

    index: int
    other: int
    similarity: float


def find_label_conflicts(
    thumbs: np.ndarray, targets: Sequence[int], similarity: float
) -> list[LabelConflict]:
    """Every image with a near copy (cosine >= ``similarity``) under another class.

    Each conflicting image appears once, with its most similar copy of another class (the
    first such copy on a tie). The search is exact, by blocks of rows: thumbnails are short
    (576 values), so even 20,000 training images take seconds, far less than decoding them.
    """
    thumbs = np.asarray(thumbs, dtype=np.float32)
    targets = np.asarray(targets)
    n = len(thumbs)
    conflicts: list[LabelConflict] = []
    block = max(1, min(1024, _BLOCK_CELLS // max(1, n)))
    for start in range(0, n, block):
        sims = thumbs[start : start + block] @ thumbs.T
        sims[targets[start : start + block, None] == targets[None, :]] = -np.inf
        other = sims.argmax(axis=1)
        best = sims[np.arange(len(sims)), other]
        for row in np.flatnonzero(best >= similarity):
            conflicts.append(LabelConflict(start + int(row), int(other[row]), float(best[row])))
    return conflicts


__all__ = ["LabelConflict", "find_label_conflicts", "thumbnail_vector"]
