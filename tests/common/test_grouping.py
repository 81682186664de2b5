"""Connected groups from pairs, checked against a brute-force flood fill."""

from __future__ import annotations

import numpy as np
import pytest

from common.grouping import component_labels, groups_of


def _flood_fill(n: int, pairs: list[tuple[int, int]]) -> list[set[int]]:
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    seen: set[int] = set()
    groups = []
    for start in range(n):
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node not in group:
                group.add(node)
                todo.extend(neighbours[node] - group)
        seen |= group
        groups.append(group)
    return groups


@pytest.mark.parametrize("seed", range(5))
def test_labels_match_flood_fill(seed):
    rng = np.random.default_rng(seed)
    n = 60
    pairs = [tuple(map(int, p)) for p in rng.integers(0, n, size=(40, 2))]
    labels = component_labels(n, pairs)
    expected = _flood_fill(n, pairs)
    assert len(set(labels.tolist())) == len(expected)
    for group in expected:
        assert len({int(labels[i]) for i in group}) == 1
    # Numbered by first node: label 0 holds node 0, labels never skip.
    assert labels[0] == 0
    firsts = [int(np.flatnonzero(labels == lab)[0]) for lab in range(labels.max() + 1)]
    assert firsts == sorted(firsts)


def test_groups_of_keeps_only_linked_nodes():
    assert groups_of(6, [(4, 1), (1, 2), (5, 5)]) == [[1, 2, 4]]
    assert groups_of(3, []) == []
    assert groups_of(0, []) == []


def test_out_of_range_pair_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        component_labels(3, [(0, 3)])
