"""Macro-F1 convention and label Recall@k, each against a hand-written reference."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.metrics import label_recall_at_k, macro_f1, nearest_neighbours


def test_macro_f1_averages_over_the_classes_in_the_ground_truth():
    y_true = np.array([0, 0, 1, 1, 1])
    y_pred = np.array([0, 2, 1, 1, 0])  # class 2 is predicted once but never true
    f1_0 = 2 * (1 / 2) * (1 / 2) / (1 / 2 + 1 / 2)
    f1_1 = 2 * 1 * (2 / 3) / (1 + 2 / 3)
    assert macro_f1(y_true, y_pred) == pytest.approx((f1_0 + f1_1) / 2)
    assert macro_f1(y_true, y_true) == 1.0
    assert macro_f1(np.array([], int), np.array([], int)) == 0.0


def _brute_force_recall(xq, lq, xb, lb, k, leave_one_out):
    hits = 0
    for i, q in enumerate(xq):
        sims = xb @ q
        order = [j for j in np.argsort(-sims, kind="stable") if not (leave_one_out and j == i)]
        hits += any(lb[j] == lq[i] for j in order[:k])
    return hits / len(xq)


def _clustered(rng, n, classes=4, dim=8):
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    x = centres[labels] + 0.8 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_label_recall_at_k_matches_brute_force_with_and_without_a_gallery():
    rng = np.random.default_rng(0)
    xq, lq = _clustered(rng, 60)
    xb, lb = _clustered(rng, 90)
    loo = label_recall_at_k(xq, lq, ks=(1, 5))
    gallery = label_recall_at_k(xq, lq, xb, lb, ks=(1, 5))
    for k in (1, 5):
        assert loo[k] == pytest.approx(_brute_force_recall(xq, lq, xq, lq, k, True))
        assert gallery[k] == pytest.approx(_brute_force_recall(xq, lq, xb, lb, k, False))
    assert 0 < loo[1] < loo[5] <= 1
    assert label_recall_at_k(xq[:1], lq[:1]) == {1: 0.0, 5: 0.0}  # nobody else to find


def test_nearest_neighbours_leave_one_out_never_returns_the_query_and_caps_k():
    rng = np.random.default_rng(1)
    xq, _ = _clustered(rng, 30)
    scores, idx = nearest_neighbours(xq, None, 5, block=7)  # blocks that do not divide 30
    assert idx.shape == scores.shape == (30, 5)
    assert not (idx == np.arange(30)[:, None]).any()
    assert (np.diff(scores, axis=1) <= 0).all()
    assert np.allclose(scores, np.take_along_axis(xq @ xq.T, idx, axis=1))
    assert nearest_neighbours(xq[:3], None, 10)[1].shape == (3, 2)  # only two others exist
    assert nearest_neighbours(xq[:1], None, 10)[1].shape == (1, 0)
    gallery_scores, gallery_idx = nearest_neighbours(xq, xq, 1)
    assert (gallery_idx[:, 0] == np.arange(30)).all()  # with a gallery, itself comes first


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_nearest_neighbours_match_a_stable_full_sort_ties_included(leave_one_out):
    """The top k come from a partial sort on large galleries; order and ties must be the full
    sort's: best first, equal scores in gallery order (copies of one photo score equally)."""
    rng = np.random.default_rng(2)
    gallery = rng.integers(0, 3, size=(300, 4)).astype(np.float32)  # many exact ties
    queries = gallery if leave_one_out else rng.integers(0, 3, size=(40, 4)).astype(np.float32)
    base = None if leave_one_out else gallery
    for k in (1, 5, 60):
        scores, idx = nearest_neighbours(queries, base, k, block=16)
        sims = queries @ (queries if leave_one_out else gallery).T
        if leave_one_out:
            np.fill_diagonal(sims, -np.inf)
        expected = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        assert (idx == expected).all()
        assert np.array_equal(scores, np.take_along_axis(sims, expected, axis=1))


def test_nearest_neighbours_rank_nan_scores_last_as_the_full_sort_did():
    """A NaN made its row short of candidates, and the top k read into the next row."""
    rng = np.random.default_rng(4)
    gallery = rng.standard_normal((300, 4)).astype(np.float32)
    queries = rng.standard_normal((5, 4)).astype(np.float32)
    gallery[[3, 17]] = np.nan
    queries[2] = np.nan  # a whole row of NaN
    scores, idx = nearest_neighbours(queries, gallery, 5)
    sims = queries @ gallery.T
    assert (idx == np.argsort(-sims, axis=1, kind="stable")[:, :5]).all()
