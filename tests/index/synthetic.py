"""Seeded clustered catalogs and brute-force numpy references for the index tests."""

from __future__ import annotations

import numpy as np

from index import Hit
from index.evaluation import ClusteredMixture

D = 32
MODEL = "tiny_model"
HASH = "ab" * 32


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def brute_force(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: exact cosine top-k with numpy (row numbers of xb)."""
    scores = unit(xq.astype(np.float64)) @ unit(xb.astype(np.float64)).T
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, idx, axis=1), idx


def rows_of(hits: list[list[Hit]], k: int) -> np.ndarray:
    out = np.full((len(hits), k), -1)
    for r, hs in enumerate(hits):
        out[r, : len(hs)] = [int(h.id.split("-")[1]) for h in hs]
    return out


def make_catalog(n: int, seed: int = 0, d: int = D):
    mix = ClusteredMixture(d, n_clusters=40, seed=seed)
    xb, clusters = mix.sample(n, seed=1)
    xq, _ = mix.sample(60, seed=2)
    ids = [f"sku-{i}" for i in range(n)]
    md = [
        {
            "label": f"brand{c % 5}",
            "brand": "Rare" if i % 500 == 7 else ("Acme" if i % 2 else "Other"),
            "price": int(100 + i % 7),
        }
        for i, c in enumerate(clusters)
    ]
    return xb, xq, ids, md
