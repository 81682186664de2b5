"""Groups from pairs: the one place that turns "a is linked to b" edges into connected groups.

Duplicate grouping, label-conflict detection and the duplicate benchmarks all need the same
thing; scipy's ``connected_components`` does it on a sparse graph in C, so nobody writes a
union-find by hand.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def component_labels(n: int, pairs: Iterable[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """Label each of ``n`` nodes with its connected component, given undirected edges.

    Labels are ``int64`` in ``[0, n_components)``, numbered in order of each component's
    smallest node, so the same edges always give the same labels. Self-edges are allowed.
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    edges = np.asarray(list(pairs) if not isinstance(pairs, np.ndarray) else pairs, dtype=np.int64)
    edges = edges.reshape(-1, 2)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # Imported here: scipy.sparse costs 0.1 s, which `phonesim --help` should not pay.
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"pair index out of range for {n} nodes")
    graph = coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n)
    )
    _, raw = connected_components(graph, directed=False)
    # Renumber by first appearance so labels follow node order (scipy's order is not promised).
    _, first = np.unique(raw, return_index=True)
    order = np.argsort(first)
    renumber = np.empty_like(order)
    renumber[order] = np.arange(len(order))
    return renumber[raw].astype(np.int64)


def groups_of(n: int, pairs: Iterable[tuple[int, int]] | np.ndarray) -> list[list[int]]:
    """The connected groups of two or more nodes, each sorted, ordered by their first node."""
    labels = component_labels(n, pairs)
    if n == 0:
        return []
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    groups = [g.tolist() for g in np.split(order, bounds) if len(g) > 1]
    return sorted(groups, key=lambda g: g[0])
