import numpy as np
import pytest

from embedder.crossval import (
    corrected_interval,
    cross_label_copies,
    group_bootstrap_interval,
    grouped_folds,
    near_copy_groups,
)


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_near_copies_share_a_group_and_never_straddle_folds():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    thumbs = np.stack([unit(v) for v in base])
    # photo 40 copies photo 0 (slightly changed), photo 41 copies photo 40: one chain
    thumbs = np.vstack([thumbs, unit(base[0] + 0.01), unit(base[0] + 0.02)])
    groups = near_copy_groups(thumbs, 0.98)
    assert groups[0] == groups[40] == groups[41]
    assert len(set(groups.tolist())) == 40
    targets = np.arange(len(thumbs)) % 2
    splits = grouped_folds(targets, groups, folds=4, repeats=2, seed=0)
    assert len(splits) == 8
    for split in splits:
        assert not set(groups[split.train]) & set(groups[split.test])
    for repeat in (0, 1):
        tests = np.concatenate([s.test for s in splits if s.repeat == repeat])
        assert sorted(tests.tolist()) == list(range(len(thumbs)))  # each photo scored once
    # repeats reshuffle
    assert not np.array_equal(splits[0].test, splits[4].test)


def test_cross_label_copies_marks_both_members_of_a_conflict():
    a, b, c = unit([1, 0, 0]), unit([0, 1, 0]), unit([0, 0, 1])
    thumbs = np.stack([a, a, b, b, c])
    mask = cross_label_copies(thumbs, [0, 1, 1, 1, 0], 0.98)
    assert mask.tolist() == [True, True, False, False, False]


def test_corrected_interval_is_wider_than_the_naive_one():
    values = [0.70, 0.74, 0.72, 0.78, 0.69]
    naive = corrected_interval(values, 0.0)
    corrected = corrected_interval(values, 0.25)
    assert naive.mean == pytest.approx(np.mean(values))
    assert corrected.low < naive.low < naive.high < corrected.high
    # t(4) 0.975 quantile 2.776, sd 0.0358: half-width 2.776 * 0.0358 * sqrt(1/5 + 1/4)
    assert corrected.high - corrected.mean == pytest.approx(2.776 * 0.035777 * 0.6708, rel=1e-2)
    single = corrected_interval([0.7], 0.25)
    assert single.low == single.high == 0.7


def test_group_bootstrap_keeps_groups_together():
    values = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    one_group = group_bootstrap_interval(values[:4], np.zeros(4, dtype=int))
    assert one_group.low == one_group.high == 1.0  # one group: nothing to resample
    spread = group_bootstrap_interval(values, np.arange(6), n_boot=500)
    assert spread.low < spread.mean < spread.high
    assert not spread.excludes_zero() or spread.low > 0
