"""Search parameters: tuned defaults reach their recall, unknown ones are refused."""

from __future__ import annotations

import pytest

from index import InvalidParamsError, build_index, open_index
from index.evaluation import knn_recall_at_k
from tests.index.synthetic import HASH, MODEL, brute_force, make_catalog, rows_of


@pytest.mark.parametrize(
    ("kind", "n"), [("ivf", 20_000), ("hnsw", 8_000), ("IVF64_HNSW16,Flat", 10_000)]
)
def test_approximate_kinds_reach_recall_at_their_defaults(tmp_path, kind, n):
    xb, xq, ids, _ = make_catalog(n, seed=3)
    report = build_index(
        tmp_path / "ix", ids, xb, model_name=MODEL, checkpoint_hash=HASH, kind=kind
    )
    param = "efSearch" if kind == "hnsw" else "nprobe"
    assert param in report.manifest.search_defaults
    assert report.manifest.tuning["recall"] >= 0.96
    with open_index(tmp_path / "ix", readonly=True) as ix:
        assert ix.search_defaults == report.manifest.search_defaults
        found = rows_of(ix.search(xq, 10), 10)
        # a deliberately tiny setting must do worse: the default is doing the work
        weak = rows_of(ix.search(xq, 10, params={param: 1}), 10)
    _, I_ref = brute_force(xq, xb, 10)
    assert knn_recall_at_k(found, I_ref, 10) >= 0.95
    assert knn_recall_at_k(weak, I_ref, 10) < knn_recall_at_k(found, I_ref, 10)


def test_search_params_are_checked_per_kind(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        with pytest.raises(InvalidParamsError, match="nprobe"):
            ix.search(xq[0], 5, params={"nprobe": 4})[0]
        with pytest.raises(InvalidParamsError, match="unknown"):
            ix.search(xq[0], 5, params={"speed": 4})[0]
        with pytest.raises(ValueError, match="k must be"):
            ix.search(xq[0], 0)[0]


def test_huge_search_params_are_refused_not_overflowed(tmp_path, small):
    xb, xq, ids, _ = small
    build_index(tmp_path / "ix", ids, xb, model_name=MODEL, checkpoint_hash=HASH, kind="ivf")
    with open_index(tmp_path / "ix", readonly=True) as ix:
        with pytest.raises(InvalidParamsError, match="at most"):
            ix.search(xq[0], 5, params={"nprobe": 10**20})
        assert len(ix.search(xq[0], 10**20)[0]) == len(ix)  # k beyond the catalog: all of it
