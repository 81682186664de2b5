"""Scaling benchmark of the grouping stage on seeded synthetic vectors with planted duplicates.

The vectors are clustered like a catalog (many photos per phone model, moderately similar), and
planted duplicate groups of 2-6 near-identical vectors sit inside the clusters. Grouping uses the
same code as ``find_duplicates`` (FAISS k-NN with adaptive k, connected components); the
baseline scores all pairs on a subset and is extrapolated quadratically.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from duplicates.grouping import SearchConfig


@dataclass(frozen=True)
class BenchConfig:
    n: int = 100_000
    dim: int = 1280
    clusters: int = 2_000
    planted_groups: int = 5_000
    max_group: int = 6
    threshold: float = 0.9
    baseline_n: int = 10_000
    seed: int = 0


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_vectors(config: BenchConfig) -> tuple[np.ndarray, np.ndarray]:
    """(xb, truth): clustered unit vectors where truth[i] == truth[j] marks planted copies."""
    rng = np.random.default_rng(config.seed)
    centres = _unit(rng.standard_normal((config.clusters, config.dim), dtype=np.float32))
    sizes = rng.integers(2, config.max_group + 1, size=config.planted_groups)
    sizes = sizes[np.cumsum(sizes) <= config.n // 2]
    n_unique = config.n - int(sizes.sum()) + len(sizes)
    # Photos of one model: centre plus a large spread (cosine to each other about 0.5).
    owner = rng.integers(0, config.clusters, size=n_unique)
    spread = 1.1 / np.sqrt(config.dim)  # noise of norm ~1.1 whatever the dimension
    base = _unit(centres[owner] + rng.standard_normal((n_unique, config.dim), np.float32) * spread)
    xb = np.empty((config.n, config.dim), np.float32)
    truth = np.empty(config.n, np.int64)
    xb[:n_unique], truth[:n_unique] = base, np.arange(n_unique)
    # Copies of the first len(sizes) photos: small perturbations (cosine about 0.97).
    copies = np.repeat(np.arange(len(sizes)), sizes - 1)
    noise = rng.standard_normal((len(copies), config.dim), np.float32) * (
        0.18 / np.sqrt(config.dim)
    )
    xb[n_unique:] = _unit(base[copies] + noise)
    truth[n_unique:] = copies
    order = rng.permutation(config.n)
    return xb[order], truth[order]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_bench(config: BenchConfig, search: SearchConfig | None = None) -> dict:
    """Time the grouping of ``config.n`` vectors; compare with brute force on a subset."""
    # Imported here: FAISS loads only when the benchmark runs, not for `phonesim --help`.
    from duplicates.evaluation import group_metrics
    from duplicates.grouping import brute_force_groups, group_vectors

    xb, truth = synthetic_vectors(config)
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    groups, (i, _, _) = group_vectors(xb, config.threshold, search)
    seconds = time.perf_counter() - start
    quality = group_metrics(truth, groups)
    planted = int((np.unique(truth, return_counts=True)[1] > 1).sum())

    m = min(config.baseline_n, config.n)
    sub = xb[:m]
    start = time.perf_counter()
    reference = brute_force_groups(sub, config.threshold)
    brute_seconds = time.perf_counter() - start
    ours_sub, _ = group_vectors(sub, config.threshold, search)
    same = sorted(map(sorted, ours_sub)) == sorted(map(sorted, reference))
    extrapolated = brute_seconds * (config.n / m) ** 2
    return {
        "n": config.n,
        "dim": config.dim,
        "threshold": config.threshold,
        "seconds": round(seconds, 2),
        "candidate_pairs": int(len(i)),
        "groups_found": len(groups),
        "groups_planted": planted,
        "pair_precision": round(quality["precision"], 4),
        "pair_recall": round(quality["recall"], 4),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "peak_rss_growth_mb": round(_peak_rss_mb() - rss_before, 1),
        "baseline": f"brute-force all pairs on {m} vectors, extrapolated x(n/m)^2",
        "baseline_subset_seconds": round(brute_seconds, 2),
        "baseline_extrapolated_seconds": round(extrapolated, 1),
        "speedup_vs_baseline": float(f"{extrapolated / max(seconds, 1e-9):.3g}"),  # not x0.0
        "subset_matches_brute_force": bool(same),
        "config": asdict(config),
    }
