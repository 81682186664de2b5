"""Duplicate groups from vectors without comparing all pairs.

Candidates come from a FAISS k-nearest-neighbour search: exact below ``exact_limit`` vectors,
above it HNSW over PCA-reduced vectors with exact rescoring, so the cost grows about linearly.
Groups are the connected components of the pairs at or above the threshold
(``common.grouping``). Vectors are unit-norm, scores are cosines. Vocabulary follows faiss.contrib:
``xb`` vectors, ``k`` neighbours, ``D`` scores, ``I`` ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np

from common.grouping import groups_of
from index import knn_factory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """Candidate search settings.

    ``k`` neighbours per vector are checked first; a vector whose k-th neighbour still passes the
    threshold is searched again with twice as many, up to ``max_k``, so large groups stay whole.
    """

    k: int = 16
    max_k: int = 512
    exact_limit: int = 20_000
    hnsw_m: int = 16
    ef_construction: int = 40
    ef_search: int = 48
    reduced_dim: int = 128  # approximate search in a PCA space this wide (scores stay exact)


def build_index(xb: np.ndarray, config: SearchConfig) -> faiss.Index:
    """Exact inner-product index for small sets, HNSW for large ones."""
    factory = knn_factory(len(xb), config.exact_limit, approximate="hnsw", hnsw_m=config.hnsw_m)
    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efConstruction = config.ef_construction
    index.add(xb)
    return index


def reduce_dim(xb: np.ndarray, dim: int, sample: int = 20_000, seed: int = 0) -> np.ndarray:
    """PCA to ``dim`` dimensions (fitted on a seeded sample), rows re-normalised.

    Only used to find neighbours in large sets faster; scores are always recomputed with the
    full vectors.
    """
    rng = np.random.default_rng(seed)
    train = xb[rng.choice(len(xb), min(sample, len(xb)), replace=False)]
    pca = faiss.PCAMatrix(xb.shape[1], dim)
    pca.train(np.ascontiguousarray(train))
    xr = pca.apply(xb)
    return np.ascontiguousarray(xr / np.maximum(np.linalg.norm(xr, axis=1, keepdims=True), 1e-12))


def whiten(xb: np.ndarray, dim: int, sample: int = 20_000, seed: int = 0) -> np.ndarray | None:
    """Rows centred on the set's mean and PCA-whitened to ``dim`` dimensions, unit-norm.

    Descriptors of product photos share a large common part (white backdrop, a phone's outline)
    that dominates raw cosines; whitening weighs every principal direction equally, so what
    tells one photo from another counts, not what all of them share (Jegou & Chum, ECCV 2012).
    Fitted on the set itself (a seeded sample of up to ``sample`` rows). None when the set has
    too few rows for ``dim`` directions (fewer than 2 x dim): the caller keeps raw cosines.
    """
    # float64 numpy rather than faiss.PCAMatrix(eigen_power=-0.5): on 3,000 x 1280 rows faiss
    # took 2.7 s against 0.85 s, and its float32 eigenvectors moved cosines by up to 2e-3, as
    # whitening divides by the smallest eigenvalues kept.
    xb = np.asarray(xb, dtype=np.float64)
    if dim <= 0 or len(xb) < 2 * dim or xb.shape[1] < dim:
        return None
    rng = np.random.default_rng(seed)
    train = xb[rng.choice(len(xb), min(sample, len(xb)), replace=False)]
    mean = train.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(train - mean, rowvar=False))
    top = np.argsort(values)[::-1][:dim]
    # Directions without variance would only amplify rounding noise.
    top = top[values[top] > values[top[0]] * 1e-9]
    out = (xb - mean) @ (vectors[:, top] / np.sqrt(values[top]))
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def _search(index: faiss.Index, xq: np.ndarray, k: int, config: SearchConfig):
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(config.ef_search, k)
    return index.search(xq, k)


def _exact_scores(xb: np.ndarray, rows: np.ndarray, I: np.ndarray, block: int = 1024):
    """Cosines of each query row with its found neighbours, from the full vectors."""
    D = np.full(I.shape, -np.inf, dtype=np.float32)
    for start in range(0, len(rows), block):
        q = xb[rows[start : start + block]]
        nb = I[start : start + block]
        valid = nb >= 0
        D[start : start + block] = np.where(
            valid, np.einsum("qd,qkd->qk", q, xb[np.where(valid, nb, 0)]), -np.inf
        )
    return D


def knn_pairs(
    xb: np.ndarray,
    threshold: float,
    config: SearchConfig | None = None,
    index: faiss.Index | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of vectors in ``xb`` whose cosine is at least ``threshold``, with scores.

    Only each vector's nearest neighbours are scored, never all pairs. Large sets of long
    vectors are searched in a PCA-reduced space (``reduced_dim``) and rescored exactly.
    """
    config = config or SearchConfig()
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    n = len(xb)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, np.float32)
    reduced = index is None and n > config.exact_limit and xb.shape[1] > config.reduced_dim
    xs = reduce_dim(xb, config.reduced_dim) if reduced else xb
    index = index if index is not None else build_index(xs, config)
    found_i, found_j, found_s = [], [], []
    todo = np.arange(n)
    k = min(config.k + 1, n)  # +1: a vector finds itself
    while len(todo):
        D, I = _search(index, xs[todo], k, config)
        if reduced:
            D = _exact_scores(xb, todo, I)
        keep = (threshold <= D) & (I >= 0) & (todo[:, None] != I)
        rows = np.broadcast_to(todo[:, None], I.shape)
        found_i.append(rows[keep])
        found_j.append(I[keep])
        found_s.append(D[keep])
        # Rows whose last neighbour still passes may have more matches beyond k.
        full = (D[:, -1] >= threshold) & (I[:, -1] >= 0)
        if k >= min(config.max_k + 1, n) or not full.any():
            if full.any() and config.max_k > config.k:
                log.warning(
                    "%d vectors have more than %d neighbours above %.3f; groups may be split",
                    int(full.sum()),
                    k - 1,
                    threshold,
                )
            break
        todo, k = todo[full], min(2 * k, config.max_k + 1, n)
    i = np.concatenate(found_i).astype(np.int64)
    j = np.concatenate(found_j).astype(np.int64)
    s = np.concatenate(found_s).astype(np.float32)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    key = lo * n + hi
    # Keep one copy per pair, with its highest score (HNSW may see a pair from one side only).
    order = np.lexsort((-s, key))
    key, lo, hi, s = key[order], lo[order], hi[order], s[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return lo[first], hi[first], s[first]


def group_vectors(
    xb: np.ndarray,
    threshold: float,
    config: SearchConfig | None = None,
    extra_pairs: Iterable[tuple[int, int]] = (),
) -> tuple[list[list[int]], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Duplicate groups (two or more members) and the accepted scored pairs behind them.

    ``extra_pairs`` are joined unconditionally (byte- or pixel-identical files).
    """
    i, j, s = knn_pairs(xb, threshold, config)
    extra = np.asarray(list(extra_pairs), dtype=np.int64).reshape(-1, 2)
    return groups_of(len(xb), np.concatenate([np.stack([i, j], axis=1), extra])), (i, j, s)


def brute_force_groups(xb: np.ndarray, threshold: float) -> list[list[int]]:
    """Reference: score all pairs (O(n^2)); for tests and the benchmark's baseline only."""
    xb = np.asarray(xb, dtype=np.float32)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(xb), 2048):
        sims = xb[start : start + 2048] @ xb.T
        a, b = np.nonzero(sims >= threshold)
        a = a + start
        keep = a < b
        pairs.extend(zip(a[keep].tolist(), b[keep].tolist(), strict=True))
    return groups_of(len(xb), pairs)
