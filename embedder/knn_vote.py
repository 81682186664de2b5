"""Predictions that use the catalog: the classifier's probabilities fused with a kNN vote.

The nearest catalog items of a query carry labels; a similarity-weighted vote over them (the
weighted kNN classifier of DINO, Caron et al. 2021: each neighbour counts ``exp(score / T)``) is
a second opinion that knows the catalog's own photos, which the classifier saw only through its
weights. The fused distribution is ``(1 - weight) * probabilities + weight * vote``.

A neighbour filed under a label the checkpoint does not know (a class renamed or added since
it was trained: :data:`UNKNOWN_CLASS`) still takes its share of the vote, as "none of the
checkpoint's classes", and that share goes back to the classifier's probabilities: left out,
the near-copies of a photo filed under a new name did not vote and the farther photos of
other classes decided (a renamed class predicted as another at 53.9%).

numpy only: the server, ``evaluate`` and the quality benchmark share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# The product default of `phonesim evaluate` and `phonesim serve` (--knn-fusion), in one place.
# On: scripts/bench_quality.py (5 grouped folds x 2 repeats over 702 photos, the same fold
# models with and without fusion) measured top-1 +0.048 [+0.017, +0.078], group bootstrap
# [+0.033, +0.064] (+0.030 with the earlier DINO temperature 0.07 and a 0.3 share).
# Temperature 0.03 and weight 0.5 were chosen on each fold from a grid by the other folds of
# its repeat (recipe_knn_nested; 9 of 10 folds picked them): +0.014 top-1 over 0.07 / 0.3 on
# photos the choice never saw. Where retrieval is much weaker than the classifier the heavier
# vote costs accuracy (README: kNN fusion); --knn-weight lowers it.
FUSE_BY_DEFAULT = True
DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.03
DEFAULT_WEIGHT = 0.5
#: The share of the vote the checkpoint's classes must hold for a prediction to say it used
#: the catalog (``classifier+knn``).
VOTED_SHARE = 1e-3
#: The class index of a neighbour labelled with a class the checkpoint does not name (-1: a
#: neighbour without a label, or a missing one, which does not vote).
UNKNOWN_CLASS = -2


@dataclass(frozen=True)
class KnnFusion:
    """How many neighbours vote (``k``), how sharply by similarity (``temperature``), and the
    vote's share of the fused distribution (``weight``; 0 = classifier only, 1 = vote only)."""

    k: int = DEFAULT_K
    temperature: float = DEFAULT_TEMPERATURE
    weight: float = DEFAULT_WEIGHT

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"kNN fusion k must be >= 1, got {self.k}")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"kNN fusion temperature must be > 0, got {self.temperature}")
        if not (0.0 <= self.weight <= 1.0):
            raise ValueError(f"kNN fusion weight must be in [0, 1], got {self.weight}")


def knn_vote(
    scores: np.ndarray, labels: np.ndarray, num_classes: int, temperature: float
) -> np.ndarray:
    """Class distribution (N x C) voted by each query's neighbours.

    ``scores`` (N x k) are cosine similarities, ``labels`` (N x k) class indices, with -1 for a
    neighbour without a label (or a missing neighbour), which does not vote, and
    :data:`UNKNOWN_CLASS` for one whose class the checkpoint does not know, whose share of the
    vote a row then lacks (it sums to less than 1). A query with no voting neighbour gets an
    all-zero row.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal N x k")
    known = (labels >= 0) & (labels < num_classes)
    valid = (known | (labels == UNKNOWN_CLASS)) & np.isfinite(scores)
    # Shift by the row's best score before exp: the same weights, no overflow at small T.
    best = np.where(valid, scores, -np.inf).max(axis=1, initial=-np.inf, keepdims=True)
    best = np.where(np.isfinite(best), best, 0.0)
    weights = np.where(valid, np.exp((np.where(valid, scores, 0.0) - best) / temperature), 0.0)
    votes = np.zeros((len(scores), num_classes))
    rows = np.repeat(np.arange(len(scores)), scores.shape[1])
    np.add.at(
        votes, (rows, np.where(known, labels, 0).ravel()), np.where(known, weights, 0.0).ravel()
    )
    total = weights.sum(axis=1, keepdims=True)
    return np.divide(votes, total, out=np.zeros_like(votes), where=total > 0).astype(np.float32)


def fuse(
    probabilities: np.ndarray, scores: np.ndarray, labels: np.ndarray, fusion: KnnFusion
) -> np.ndarray:
    """The classifier's probabilities (N x C) fused with the vote of the first ``fusion.k``
    neighbours; the share of neighbours of classes it does not know, and a whole query's whose
    neighbours cannot vote, keep the probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    scores, labels = np.asarray(scores)[:, : fusion.k], np.asarray(labels)[:, : fusion.k]
    vote = knn_vote(scores, labels, probabilities.shape[1], fusion.temperature)
    return _fused(probabilities, vote, fusion.weight)


def _fused(probabilities: np.ndarray, vote: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * probabilities + weight * vote``, the vote's missing share (neighbours
    of unknown classes, or none that voted) filled with the probabilities."""
    unknown = 1.0 - vote.sum(axis=1, keepdims=True)  # 1 where no neighbour voted
    fused = (1.0 - weight) * probabilities + weight * (vote + unknown * probabilities)
    return fused.astype(np.float32)


def neighbour_arrays(
    neighbours: Sequence[Sequence[tuple[float, object]]], names: Sequence[str], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels), N x ``k``, of each query's ``(score, label)`` neighbours, best first.

    A label the checkpoint does not name (``names``) becomes :data:`UNKNOWN_CLASS`; a label
    that is blank, not a string or missing (None), and the places of neighbours a short list
    lacks become -1: they do not vote.
    """
    position: Mapping[str, int] = {name: i for i, name in enumerate(names)}
    scores = np.full((len(neighbours), k), -np.inf, dtype=np.float64)
    labels = np.full((len(neighbours), k), -1, dtype=np.int64)
    for row, found in enumerate(neighbours):
        for col, (score, label) in enumerate(found[:k]):
            scores[row, col] = score
            labels[row, col] = _class_of(label, position)
    return scores, labels


def vote_classes(labels: Sequence[object], names: Sequence[str]) -> np.ndarray:
    """Each label's class index in ``names``, as neighbours vote: :data:`UNKNOWN_CLASS` for a
    label the checkpoint does not name, -1 for a blank or missing one."""
    position = {name: i for i, name in enumerate(names)}
    return np.array([_class_of(x, position) for x in labels], np.int64)


def _class_of(label: object, position: Mapping[str, int]) -> int:
    if not (isinstance(label, str) and label.strip()):
        return -1
    return position.get(label, UNKNOWN_CLASS)


def fuse_with_neighbours(
    probabilities: np.ndarray,
    neighbours: Sequence[Sequence[tuple[float, object]]],
    names: Sequence[str],
    fusion: KnnFusion,
) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities fused with the vote of each query's ``(score, label)`` neighbours,
    and which queries had a neighbour that voted (:func:`neighbour_arrays`, :func:`fuse`)."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    scores, labels = neighbour_arrays(neighbours, names, fusion.k)
    vote = knn_vote(scores, labels, probabilities.shape[1], fusion.temperature)
    # Voted: the checkpoint's classes hold a share that moves the prediction (a known
    # neighbour far behind near ones of unknown classes holds ~1e-8 of it).
    return _fused(probabilities, vote, fusion.weight), vote.sum(axis=1) > VOTED_SHARE


__all__ = [
    "FUSE_BY_DEFAULT",
    "UNKNOWN_CLASS",
    "KnnFusion",
    "fuse",
    "fuse_with_neighbours",
    "knn_vote",
    "vote_classes",
    "neighbour_arrays",
]
