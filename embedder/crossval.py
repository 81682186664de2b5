"""Cross-validated quality measurement: folds that respect near copies, and honest intervals.

A few hundred labelled photos cannot rank recipes by one validation split (95% interval about
±0.08 at 122 photos). Repeated k-fold cross-validation scores every photo; two rules keep it
honest:

- near copies of one photo (thumbnail cosine at the label-conflict threshold) form a group
  that never straddles folds, or a copy in the training folds would answer its twin's query;
- folds share training data, so their scores are correlated and the naive t-interval is too
  narrow. The corrected resampled t-test of Nadeau & Bengio (2003) widens the variance by
  ``n_test / n_train``. Paired differences (method minus baseline, fold by fold) get the same
  interval, and a group bootstrap over the pooled out-of-fold photos is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.grouping import component_labels
from embedder.label_conflicts import find_label_conflicts


@dataclass(frozen=True)
class Split:
    """One fold of one repeat: photo indices to train on and to score."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.fold}"


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval."""

    mean: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, float]:
        return {"mean": round(self.mean, 4), "low": round(self.low, 4), "high": round(self.high, 4)}

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def near_copy_groups(thumbs: np.ndarray, similarity: float) -> np.ndarray:
    """Group label per photo: photos linked by thumbnail cosine >= ``similarity`` share one."""
    thumbs = np.asarray(thumbs, dtype=np.float32)
    sims = thumbs @ thumbs.T
    rows, cols = np.nonzero(np.triu(sims >= similarity, k=1))
    return component_labels(len(thumbs), np.stack([rows, cols], axis=1))


def cross_label_copies(thumbs: np.ndarray, targets: Sequence[int], similarity: float) -> np.ndarray:
    """Mask of photos with a near copy filed under another class: no method can be right on
    both, so they are scored apart from the headline."""
    mask = np.zeros(len(targets), dtype=bool)
    for conflict in find_label_conflicts(thumbs, targets, similarity):
        mask[conflict.index] = True
    return mask


def grouped_folds(
    targets: Sequence[int], groups: Sequence[int], folds: int, repeats: int, seed: int = 0
) -> list[Split]:
    """``repeats`` x ``folds`` splits, stratified by class, groups never split (scikit-learn's
    StratifiedGroupKFold, reshuffled per repeat)."""
    from sklearn.model_selection import StratifiedGroupKFold

    targets, groups = np.asarray(targets), np.asarray(groups)
    splits = []
    for repeat in range(repeats):
        kfold = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for fold, (train, test) in enumerate(kfold.split(np.zeros(len(targets)), targets, groups)):
            splits.append(Split(repeat, fold, np.sort(train), np.sort(test)))
    return splits


def corrected_interval(values: Sequence[float], test_fraction: float) -> Interval:
    """Mean of per-fold scores with the Nadeau-Bengio corrected 95% t-interval.

    ``test_fraction`` = n_test / n_train of one fold (1/(k-1) for k folds). One value gives a
    zero-width interval: there is nothing to estimate the spread from.
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return Interval(mean, mean, mean)
    var = float(v.var(ddof=1)) * (1.0 / len(v) + test_fraction)
    half = float(stats.t.ppf(0.975, len(v) - 1)) * np.sqrt(var)
    return Interval(mean, mean - half, mean + half)


def group_bootstrap_interval(
    values: np.ndarray, groups: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> Interval:
    """Mean of per-photo ``values`` with a 95% percentile interval that resamples whole groups
    (near copies move together), e.g. per-photo paired differences of correctness."""
    values, groups = np.asarray(values, dtype=np.float64), np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(uniq))
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(values.mean()), float(low), float(high))


__all__ = [
    "Interval",
    "Split",
    "corrected_interval",
    "cross_label_copies",
    "group_bootstrap_interval",
    "grouped_folds",
    "near_copy_groups",
]
