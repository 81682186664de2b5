"""Precision, recall and F1 of duplicate groups against ground truth, over many thresholds.

Metrics are pairwise over groups, i.e. what a catalog team sees: a predicted pair is two images
put in the same group (a connected component of accepted pairs), a true pair is two images of
the same truth group.
One false link that merges two groups of 11 costs 121 false pairs, so the metric punishes
chaining as hard as it hurts in practice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from common.grouping import component_labels


@dataclass(frozen=True)
class Sweep:
    """Metrics per threshold (arrays aligned with ``thresholds``, which are descending)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    predicted_pairs: np.ndarray
    true_positive_pairs: np.ndarray
    truth_pairs: int
    #: True pairs the identical files alone group, found at every threshold.
    identical_true_pairs: int = 0

    def best(self, min_precision: float = 0.0) -> int | None:
        """Index of the best F1 among thresholds with precision >= min_precision that find
        some true pair beyond the identical files (ties: the higher threshold); None when there
        is none. A threshold that accepts no scored pair counts precision 1, but finds nothing:
        stored, it had replaced a good calibration with one under which `find` reported no
        group."""
        finds = (self.true_positive_pairs > self.identical_true_pairs) | (self.truth_pairs == 0)
        ok = np.flatnonzero((self.precision >= min_precision) & finds)
        if not len(ok):
            return None
        return int(ok[np.argmax(self.f1[ok])])  # argmax keeps the first = highest threshold

    def best_f1(self) -> int:
        """Index of the best F1 at any precision (ties: the higher threshold)."""
        return int(np.argmax(self.f1))

    def row(self, idx: int) -> dict[str, float]:
        return {
            "threshold": float(self.thresholds[idx]),
            "precision": float(self.precision[idx]),
            "recall": float(self.recall[idx]),
            "f1": float(self.f1[idx]),
        }


def truth_pair_count(truth: Sequence[int] | np.ndarray) -> int:
    counts = np.unique(np.asarray(truth), return_counts=True)[1]
    return int((counts * (counts - 1) // 2).sum())


def _prf(tp: np.ndarray, pred: np.ndarray, total: int):
    precision = np.where(pred > 0, tp / np.maximum(pred, 1), 1.0)
    recall = tp / total if total else np.ones_like(precision)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return precision, recall, f1


def _pair_counts(labels: np.ndarray, truth_idx: np.ndarray, n_truth: int) -> tuple[int, int]:
    """Pairs put in one group, and how many of them are also in one truth group."""
    sizes = np.bincount(labels)
    cells = np.unique(labels * n_truth + truth_idx, return_counts=True)[1]
    return int((sizes * (sizes - 1) // 2).sum()), int((cells * (cells - 1) // 2).sum())


def sweep_thresholds(
    truth: Sequence[int] | np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    scores: np.ndarray,
    thresholds: Iterable[float],
    always: Iterable[tuple[int, int]] = (),
) -> Sweep:
    """Group-level pairwise metrics at every threshold.

    At each threshold the groups are the connected components of the ``always`` pairs
    (identical files) and the scored pairs at or above it; components are recomputed only
    where a lower threshold admits more pairs.
    """
    truth = np.asarray(truth)
    n = len(truth)
    _, truth_idx = np.unique(truth, return_inverse=True)
    n_truth = int(truth_idx.max(initial=0)) + 1
    order = np.argsort(-np.asarray(scores), kind="stable")
    ranked = np.asarray(scores, dtype=np.float64)[order]  # descending, NaN last
    edges = np.concatenate(
        [
            np.asarray(list(always), dtype=np.int64).reshape(-1, 2),
            np.stack([np.asarray(i)[order], np.asarray(j)[order]], axis=1).astype(np.int64),
        ]
    )
    n_always = len(edges) - len(order)
    ts = np.sort(np.asarray(list(thresholds), dtype=np.float64))[::-1]
    preds, tps = np.zeros(len(ts), np.int64), np.zeros(len(ts), np.int64)
    counted, counts = -1, (0, 0)
    for t_idx, t in enumerate(ts):
        admitted = int(np.searchsorted(-ranked, -t, side="right"))  # scores >= t
        if admitted != counted:
            labels = component_labels(n, edges[: n_always + admitted])
            counts, counted = _pair_counts(labels, truth_idx, n_truth), admitted
        preds[t_idx], tps[t_idx] = counts
    total = truth_pair_count(truth)
    precision, recall, f1 = _prf(tps.astype(float), preds.astype(float), total)
    identical = _pair_counts(component_labels(n, edges[:n_always]), truth_idx, n_truth)[1]
    return Sweep(ts, precision, recall, f1, preds, tps, total, identical)


def group_metrics(truth: Sequence[int] | np.ndarray, groups: Iterable[Sequence[int]]) -> dict:
    """Pairwise precision/recall/F1 of explicit groups (items not in a group are singletons)."""
    truth = np.asarray(truth)
    pred = tp = 0
    for g in groups:
        labels = Counter(int(truth[k]) for k in g)
        pred += len(g) * (len(g) - 1) // 2
        tp += sum(c * (c - 1) // 2 for c in labels.values())
    total = truth_pair_count(truth)
    p, r, f = _prf(np.array([tp], float), np.array([pred], float), total)
    return {"precision": float(p[0]), "recall": float(r[0]), "f1": float(f[0]), "pairs": pred}
