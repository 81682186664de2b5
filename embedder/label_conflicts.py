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

THUMB_SIDE = 24


def thumbnail_vector(img: Image.Image) -> np.ndarray:
    """Greyscale thumbnail as a zero-mean unit vector (all zeros for a flat image)."""
    grey = img.convert("L").resize((THUMB_SIDE, THUMB_SIDE), resample=Image.BICUBIC)
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

    Each conflicting image appears once, with its most similar copy of another class. Only
    nearest neighbours are searched (FAISS), so large catalogs never compare all pairs.
    """
    from duplicates.grouping import knn_pairs  # generic vector pairing; imports faiss

    if len(thumbs) < 2:
        return []
    targets = np.asarray(targets)
    i, j, s = knn_pairs(np.asarray(thumbs, dtype=np.float32), similarity)
    best: dict[int, LabelConflict] = {}
    for a, b, score in zip(i.tolist(), j.tolist(), s.tolist(), strict=True):
        if targets[a] == targets[b]:
            continue
        for index, other in ((a, b), (b, a)):
            if index not in best or score > best[index].similarity:
                best[index] = LabelConflict(index, other, float(score))
    return [best[k] for k in sorted(best)]


__all__ = ["LabelConflict", "find_label_conflicts", "thumbnail_vector"]
