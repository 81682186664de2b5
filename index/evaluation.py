"""Reference search and recall, plus seeded clustered data, in faiss ``contrib`` vocabulary.

``xb``: database vectors (n x d), ``xq``: queries (nq x d), ``k``: neighbours wanted,
``D``/``I``: scores and ids (nq x k), best first, ``-1`` ids for missing results.
"""

# ruff: noqa: E741  (faiss vocabulary: D and I are scores and ids)

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np


def knn_ground_truth(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN of ``xq`` in ``xb``: ``(D, I)`` with row numbers of ``xb``."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    k = min(k, len(xb))
    if k == 0 or len(xq) == 0:
        return np.zeros((len(xq), k), np.float32), np.zeros((len(xq), k), np.int64)
    D, I = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    return D, I


def knn_recall_at_k(I: np.ndarray, I_gt: np.ndarray, k: int) -> float:
    """Recall of an approximate search against exact neighbours: the true top-``k`` ids
    ``I_gt`` found in the returned top-``k`` ids ``I``, over all of them. ``-1`` pads both
    where fewer than ``k`` items exist (a filter matching 2 items: finding both is 1.0)."""
    if len(I_gt) == 0 or k == 0:
        return 1.0
    k_true = min(k, I_gt.shape[1])
    hits = wanted = 0
    for found, true in zip(I[:, :k], I_gt[:, :k_true], strict=True):
        true_ids = set(true[true >= 0].tolist())
        hits += len(set(found[found >= 0].tolist()) & true_ids)
        wanted += len(true_ids)
    return hits / wanted if wanted else 1.0


@dataclass(frozen=True)
class ClusteredMixture:
    """A seeded Gaussian mixture on the unit sphere, standing in for image embeddings.

    ``n_clusters`` random centres (a "phone model" each); a sample is its centre plus isotropic
    noise of relative norm ``spread`` (drawn per cluster between ``spread_min`` and
    ``spread_max``), then L2-normalised. Cluster sizes are uneven (Dirichlet weights). With the
    defaults a vector's cosine to its own centre is about 0.55-0.8 and to others about 0.
    """

    d: int
    n_clusters: int = 2000
    spread_min: float = 0.75
    spread_max: float = 1.5
    seed: int = 0

    def _params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        centres = rng.standard_normal((self.n_clusters, self.d), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        spread = rng.uniform(self.spread_min, self.spread_max, self.n_clusters).astype(np.float32)
        weights = rng.dirichlet(np.full(self.n_clusters, 2.0))
        return centres, spread, weights

    def sample(self, n: int, seed: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """``n`` unit vectors (float32) and their cluster numbers; ``seed`` picks the draw."""
        centres, spread, weights = self._params()
        rng = np.random.default_rng([self.seed, seed])
        clusters = rng.choice(self.n_clusters, size=n, p=weights)
        x = np.empty((n, self.d), dtype=np.float32)
        scale = 1.0 / math.sqrt(self.d)
        for start in range(0, n, chunk):
            c = clusters[start : start + chunk]
            block = rng.standard_normal((len(c), self.d), dtype=np.float32)
            block *= (spread[c] * np.float32(scale))[:, None]
            block += centres[c]
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            x[start : start + len(c)] = block
        return x, clusters
