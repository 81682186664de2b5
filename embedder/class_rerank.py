"""Class-aware re-ranking of the nearest catalog items: similarity plus the classifier's belief.

Cosine similarity alone ranks a differently branded phone first whenever its photo happens to
look closer (same angle, same background). The query's own class probabilities know better
which brand it shows, so each of the first ``pool`` candidates is ranked by
``similarity + weight * probability(query is the candidate's label)``; a candidate without a
known label gets no bonus. Candidates beyond the pool keep their similarity order after it, so
a page deeper than the pool reads the same whatever the pages before it asked for.

numpy only: the server, ``evaluate`` and the quality benchmark share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The product default of `phonesim serve` and `phonesim evaluate` (--class-rerank), in one
# place. scripts/bench_quality.py (recipe_rerank: 5 grouped folds x 2 repeats, the weight
# picked for each fold by the other folds of its repeat) measured it; see README.
# The pool is 5 so that the first five hits stay the five most similar items, only reordered:
# Recall@5 cannot change, and a re-rank over 10 or 20 candidates bought no more Recall@1
# (0.786 at 10 and 20, 0.784 at 5) at a loss of 0.03-0.06 Recall@5.
DEFAULT_WEIGHT = 0.1
DEFAULT_POOL = 5


@dataclass(frozen=True)
class ClassRerank:
    """How much the classifier's probability of a candidate's label adds to its similarity
    (``weight``; 0 = similarity only), over the first ``pool`` candidates."""

    weight: float = DEFAULT_WEIGHT
    pool: int = DEFAULT_POOL

    def __post_init__(self) -> None:
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"class re-rank weight must be >= 0, got {self.weight}")
        if self.pool < 1:
            raise ValueError(f"class re-rank pool must be >= 1, got {self.pool}")


def class_rerank(weight: float) -> ClassRerank | None:
    """The product's re-rank at ``weight`` over ``DEFAULT_POOL`` candidates; None at 0, which
    means similarity order (``serve`` and ``evaluate`` --class-rerank)."""
    return ClassRerank(weight, DEFAULT_POOL) if weight > 0 else None


def rerank_order(
    scores: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, rerank: ClassRerank
) -> np.ndarray:
    """Column order (N x k) that re-ranks each row of similarity-sorted candidates.

    ``scores`` (N x k) are the candidates' similarities, best first; ``labels`` (N x k) their
    class indices, -1 for none; ``probabilities`` (N x C) the queries' class probabilities.
    Ties keep the similarity order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if scores.shape != labels.shape or scores.ndim != 2 or len(probabilities) != len(scores):
        raise ValueError(
            f"scores {scores.shape}, labels {labels.shape} and probabilities "
            f"{probabilities.shape} must be N x k, N x k and N x C"
        )
    n, k = scores.shape
    head = min(rerank.pool, k)
    known = (labels[:, :head] >= 0) & (labels[:, :head] < probabilities.shape[1])
    rows = np.arange(n)[:, None]
    belief = np.where(known, probabilities[rows, np.where(known, labels[:, :head], 0)], 0.0)
    adjusted = np.where(np.isfinite(scores[:, :head]), scores[:, :head], -np.inf)
    adjusted = adjusted + rerank.weight * belief
    order = np.argsort(-adjusted, axis=1, kind="stable")
    tail = np.broadcast_to(np.arange(head, k), (n, k - head))
    return np.concatenate([order, tail], axis=1)


def reranked_labels(
    scores: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, rerank: ClassRerank
) -> np.ndarray:
    """``labels`` (N x k) in the order :func:`rerank_order` gives them."""
    order = rerank_order(scores, labels, probabilities, rerank)
    return np.take_along_axis(np.asarray(labels), order, axis=1)


__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_WEIGHT",
    "ClassRerank",
    "class_rerank",
    "rerank_order",
    "reranked_labels",
]
