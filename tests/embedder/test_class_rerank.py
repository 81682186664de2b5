"""Class-aware re-ranking of a query's nearest catalog items (embedder/class_rerank.py)."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.class_rerank import ClassRerank, rerank_order

# One query, six candidates best first; the query is class 1 with probability 0.9.
SCORES = np.array([[0.90, 0.88, 0.87, 0.80, 0.70, 0.69]])
LABELS = np.array([[0, 1, 2, 1, 1, 0]])
PROBS = np.array([[0.05, 0.9, 0.05]])


def test_a_close_candidate_of_the_believed_class_moves_up():
    order = rerank_order(SCORES, LABELS, PROBS, ClassRerank(weight=0.1, pool=5))
    # adjusted: 0.905, 0.97, 0.875, 0.89, 0.79 -> 1, 0, 3, 2, 4; the sixth stays last.
    assert order.tolist() == [[1, 0, 3, 2, 4, 5]]


def test_the_pool_keeps_its_set_and_the_rest_keeps_similarity_order():
    order = rerank_order(SCORES, LABELS, PROBS, ClassRerank(weight=5.0, pool=3))
    assert sorted(order[0, :3]) == [0, 1, 2]
    assert order[0, 3:].tolist() == [3, 4, 5]  # candidate 3 (class 1) is past the pool


def test_weight_zero_and_ties_keep_the_similarity_order():
    assert rerank_order(SCORES, LABELS, PROBS, ClassRerank(0.0)).tolist() == [list(range(6))]
    flat = np.full((1, 4), 0.5)
    uniform = np.full((1, 3), 1 / 3)
    order = rerank_order(flat, np.array([[2, 1, 0, 1]]), uniform, ClassRerank(1.0, pool=4))
    assert order.tolist() == [[0, 1, 2, 3]]


def test_unlabelled_and_missing_candidates_get_no_bonus_and_gaps_sort_last():
    scores = np.array([[0.9, 0.85, 0.8, -np.inf]])
    labels = np.array([[-1, 7, 1, -1]])  # none, a class the checkpoint lacks, class 1, gap
    order = rerank_order(scores, labels, PROBS, ClassRerank(weight=0.2, pool=4))
    assert order.tolist() == [[2, 0, 1, 3]]


def test_rows_are_reranked_independently():
    probs = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    scores = np.array([[0.9, 0.85], [0.9, 0.85]])
    labels = np.array([[0, 1], [1, 0]])
    order = rerank_order(scores, labels, probs, ClassRerank(weight=0.1, pool=2))
    assert order.tolist() == [[1, 0], [1, 0]]
    assert rerank_order(scores[:0], labels[:0], probs[:0], ClassRerank()).shape == (0, 2)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="must be N x k"):
        rerank_order(SCORES, LABELS[:, :3], PROBS, ClassRerank())
    with pytest.raises(ValueError, match="must be N x k"):
        rerank_order(SCORES, LABELS, np.vstack([PROBS, PROBS]), ClassRerank())


@pytest.mark.parametrize("weight, pool", [(-0.1, 5), (float("nan"), 5), (0.1, 0)])
def test_bad_settings_are_refused(weight, pool):
    with pytest.raises(ValueError, match="class re-rank"):
        ClassRerank(weight, pool)
