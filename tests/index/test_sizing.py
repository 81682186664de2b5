"""One FAISS sizing policy: list counts and factory strings for n vectors."""

from __future__ import annotations

import faiss
import pytest

from index import ivf_nlist, knn_factory
from index.sizing import TRAIN_POINTS_PER_LIST


def test_ivf_nlist_is_a_power_of_two_near_two_sqrt_n_with_enough_training_points():
    assert ivf_nlist(1_000_000) == 2048
    assert ivf_nlist(200_000) == 1024
    assert ivf_nlist(50) == 1
    for n in (1, 100, 1000, 12_345, 10**7):
        nlist = ivf_nlist(n)
        assert nlist & (nlist - 1) == 0
        assert nlist == 1 or nlist * TRAIN_POINTS_PER_LIST <= n


def test_knn_factory_is_exact_up_to_the_limit_then_approximate():
    assert knn_factory(1000, exact_limit=1000) == "Flat"
    assert knn_factory(1_000_000, exact_limit=1000) == "IVF2048,Flat"
    assert knn_factory(50, exact_limit=10) == "IVF1,Flat"
    assert knn_factory(30_000, exact_limit=20_000, approximate="hnsw", hnsw_m=16) == "HNSW16"
    for factory in ("IVF2048,Flat", "HNSW16"):
        faiss.index_factory(8, factory, faiss.METRIC_INNER_PRODUCT)  # valid strings
    with pytest.raises(ValueError, match="approximate"):
        knn_factory(10, exact_limit=1, approximate="lsh")
