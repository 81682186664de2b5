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
