"""Grouping vectors into duplicate groups: the k-NN search against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from duplicates.finder import FinderConfig, candidate_pairs
from duplicates.grouping import (
    SearchConfig,
    brute_force_groups,
    group_vectors,
    knn_pairs,
    whiten,
)


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


def shared_component_set(n: int = 400, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Descriptors where a few directions vary a lot for every photo (backdrop, lighting: what
    a photographed screen changes) and what tells photos apart is many small directions. Row 1
    is row 0's photo under other lighting: its own part is row 0's, its nuisance part new."""
    rng = np.random.default_rng(seed)
    nuisance = rng.standard_normal((n, 4)) * 1.0
    own = rng.standard_normal((n, dim - 4)) * 0.15
    nuisance[1] = rng.standard_normal(4)
    own[1] = own[0] + rng.standard_normal(dim - 4) * 0.02
    x = np.hstack([nuisance, own]) + 2.0  # a mean shared by all
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_whitening_finds_a_copy_that_raw_cosines_rank_low() -> None:
    x = shared_component_set()
    raw_rank = int(((x @ x[1])[2:] > x[0] @ x[1]).sum())
    w = whiten(x, 32)
    assert w is not None and w.shape == (len(x), 32)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-5)
    white_rank = int(((w @ w[1])[2:] > w[0] @ w[1]).sum())
    assert raw_rank > 10, "the raw cosine must miss the copy for the test to mean anything"
    assert white_rank == 0


def test_whitening_needs_twice_as_many_rows_as_dimensions() -> None:
    x = shared_component_set(n=63, dim=64)
    assert whiten(x, 32) is None  # 63 rows < 2 x 32
    assert whiten(x[:64], 0) is None
    assert whiten(shared_component_set(n=64, dim=64), 32) is not None


def test_whitening_drops_directions_without_variance() -> None:
    rng = np.random.default_rng(1)
    x = np.zeros((200, 16), np.float32)
    x[:, :4] = rng.standard_normal((200, 4))  # only four directions vary
    w = whiten(x, 8)
    assert w is not None and w.shape[1] == 4 and np.isfinite(w).all()


def test_finder_candidates_use_whitened_neighbours_when_the_set_allows() -> None:
    x = shared_component_set()

    def pairs_of(config: FinderConfig) -> set[tuple[int, int]]:
        i, j = candidate_pairs(x, config)
        return set(zip(i.tolist(), j.tolist(), strict=True))

    assert (0, 1) in pairs_of(FinderConfig(k=2, whiten_dims=32))
    assert (0, 1) not in pairs_of(FinderConfig(k=2, whiten_dims=0, candidate_floor=-1.0))
    # Too few rows to whiten 32 directions: raw cosines above the floor, as before.
    small = x[:40]
    floor = FinderConfig(k=2, whiten_dims=32, candidate_floor=2.0)
    assert len(candidate_pairs(small, floor)[0]) == 0


def test_pairs_found_in_the_reduced_space_carry_their_exact_scores() -> None:
    """Long vectors of a large set are searched in a PCA space; every pair kept and its score
    must be the full vectors' cosine, else near neighbours in 8 dimensions pass as copies."""
    xb = clustered(600, 256, seed=4)
    config = SearchConfig(exact_limit=100, reduced_dim=8)
    i, j, s = knn_pairs(xb, 0.5, config)
    exact = np.einsum("nd,nd->n", xb[i], xb[j])
    assert np.allclose(s, exact, atol=1e-5)
    assert (exact >= 0.5).all()
    planted = {tuple(p) for p in brute_force_pairs(xb, 0.9)}
    assert planted and planted <= set(zip(i.tolist(), j.tolist(), strict=True))


def brute_force_pairs(xb: np.ndarray, threshold: float) -> np.ndarray:
    sims = np.triu(xb @ xb.T, k=1)
    return np.argwhere(sims >= threshold)
