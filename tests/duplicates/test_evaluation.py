"""Group-level precision and recall, and the threshold sweep against explicit groups."""

from __future__ import annotations

import numpy as np
import pytest

from common.grouping import groups_of
from duplicates.evaluation import group_metrics, sweep_thresholds


def test_sweep_agrees_with_explicit_groups() -> None:
    rng = np.random.default_rng(1)
    n = 200
    truth = rng.integers(0, 60, n)
    i = rng.integers(0, n, 800)
    j = rng.integers(0, n, 800)
    keep = i != j
    i, j = i[keep], j[keep]
    scores = np.where(
        truth[i] == truth[j], rng.uniform(0.5, 1, len(i)), rng.uniform(0, 0.9, len(i))
    )
    sweep = sweep_thresholds(truth, i, j, scores, [0.95, 0.8, 0.6])
    for k, t in enumerate(sweep.thresholds):
        ok = scores >= t
        groups = groups_of(n, np.stack([i[ok], j[ok]], axis=1))
        metrics = group_metrics(truth, groups)
        assert sweep.precision[k] == pytest.approx(metrics["precision"])
        assert sweep.recall[k] == pytest.approx(metrics["recall"])
    assert sweep.recall[0] <= sweep.recall[1] <= sweep.recall[2]


def test_group_metrics_counts_chaining() -> None:
    truth = [0, 0, 1, 1, 2]
    assert group_metrics(truth, [[0, 1], [2, 3]])["precision"] == 1.0
    merged = group_metrics(truth, [[0, 1, 2, 3]])
    assert merged["precision"] == pytest.approx(2 / 6) and merged["recall"] == 1.0


def test_a_threshold_that_finds_no_pair_is_never_chosen() -> None:
    """It counts precision 1 (nothing accepted, nothing wrong): calibrate stored such a
    threshold (1.000, recall 0) over a good calibration, and `find` then grouped nothing."""
    truth = np.array([0, 0, 1, 1])
    i, j = np.array([0, 0, 2]), np.array([1, 2, 3])
    scores = np.array([0.5, 0.6, 0.4])  # the false pair scores highest
    sweep = sweep_thresholds(truth, i, j, scores, [1.0, 0.55, 0.3])
    assert sweep.precision[0] == 1.0 and sweep.recall[0] == 0.0
    assert sweep.best(0.95) is None  # only "accept nothing" reaches the precision
    assert sweep.best(0.0) == 2 and sweep.best_f1() == 2
    none_true = sweep_thresholds(np.arange(4), i, j, scores, [1.0, 0.3])
    assert none_true.truth_pairs == 0 and none_true.best(0.95) == 0  # nothing to find


def test_identical_files_alone_do_not_make_a_threshold_that_finds_pairs() -> None:
    """Identical files group at every threshold: 1.0 then counted as "finds some pair" and
    could still be chosen, accepting no scored pair at all."""
    truth = np.array([0, 0, 1, 1, 2, 2])
    i, j = np.array([2, 2]), np.array([3, 4])
    scores = np.array([0.5, 0.6])  # the false pair scores highest
    sweep = sweep_thresholds(truth, i, j, scores, [1.0, 0.55, 0.3], always=[(0, 1)])
    assert sweep.identical_true_pairs == 1 and sweep.true_positive_pairs[0] == 1
    assert sweep.best(0.95) is None
