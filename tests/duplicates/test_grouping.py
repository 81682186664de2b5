"""Grouping vectors into duplicate groups: the k-NN search against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from duplicates.grouping import SearchConfig, brute_force_groups, group_vectors, knn_pairs


def clustered(n: int, dim: int, seed: int, copies: int = 30) -> np.ndarray:
    """Clustered unit vectors (not uniform noise) with some near-copies planted."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 20), dim))
    owner = rng.integers(0, len(centres), n)
    x = centres[owner] + rng.standard_normal((n, dim)) * 0.6
    src = rng.integers(0, n, copies)
    x[rng.integers(0, n, copies)] = x[src] + rng.standard_normal((copies, dim)) * 0.05
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_extra_pairs_are_joined_whatever_the_threshold() -> None:
    xb = np.eye(6, dtype=np.float32)  # no two vectors alike
    extra = [(0, 3), (3, 5), (5, 0), (4, 1), (2, 2)]
    groups, (i, _, _) = group_vectors(xb, 0.99, extra_pairs=extra)
    assert len(i) == 0 and groups == [[0, 3, 5], [1, 4]]


@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.97])
@pytest.mark.parametrize("exact_limit", [10_000, 0])  # exact search, then forced HNSW
def test_grouping_matches_brute_force(threshold: float, exact_limit: int) -> None:
    xb = clustered(1500, 32, seed=int(threshold * 100))
    reference = brute_force_groups(xb, threshold)
    groups, _ = group_vectors(xb, threshold, SearchConfig(k=4, exact_limit=exact_limit))
    assert reference, "the data must contain groups for the test to mean anything"
    assert groups == reference


def test_knn_grows_k_for_large_groups() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(16)
    x = np.vstack([base + rng.standard_normal((40, 16)) * 0.01, rng.standard_normal((60, 16))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    i, j, s = knn_pairs(x, 0.99, SearchConfig(k=3))
    assert len(i) == 40 * 39 // 2  # every pair in the group, though k is 3
    assert (s >= 0.99).all() and (i < j).all()
    fixed, _, _ = knn_pairs(x, 0.99, SearchConfig(k=3, max_k=3))
    assert len(fixed) < len(i)
