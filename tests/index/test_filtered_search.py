"""Filtered and unfiltered search against brute-force numpy references on clustered data."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UserError
from index import IndexOptions, InvalidFilterError, ann, build_index, open_index
from index.evaluation import knn_recall_at_k
from index.filtered_search import Live, exact_knn, knn_search, selector_kind
from tests.index.synthetic import HASH, MODEL, D, brute_force, make_catalog, rows_of


def test_flat_matches_brute_force_ids_and_scores(flat_dir, small):
    xb, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        hits = ix.search(xq, 10)
    D_ref, I_ref = brute_force(xq, xb, 10)
    np.testing.assert_array_equal(rows_of(hits, 10), I_ref)
    scores = np.array([[h.score for h in hs] for hs in hits])
    np.testing.assert_allclose(scores, D_ref, atol=1e-5)


@pytest.mark.parametrize("exact_limit", [10_000, 0])
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_filter_on_a_rare_value_returns_every_match_in_order(tmp_path, kind, exact_limit):
    xb, xq, ids, md = make_catalog(20_000, seed=7)
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind=kind)
    rare = np.array([i for i, m in enumerate(md) if m["brand"] == "Rare"])
    assert 0 < len(rare) < 50
    opts = IndexOptions(exact_filter_limit=exact_limit)  # 0: force the approximate path
    with open_index(tmp_path / "ix", readonly=True, options=opts) as ix:
        hits = ix.search(xq[:5], 10, filter={"brand": "Rare"})
        everything = ix.search(xq[0], 1000, filter={"brand": "Rare"})[0]
    D_sub, I_sub = brute_force(xq[:5], xb[rare], 10)
    assert all(len(hs) == 10 for hs in hits)
    assert all(h.metadata["brand"] == "Rare" for hs in hits for h in hs)
    if kind == "flat" or exact_limit:  # exact: the reference's ids, in order
        np.testing.assert_array_equal(rows_of(hits, 10), rare[I_sub])
    else:  # approximate: never better than exact, rank by rank
        scores = np.array([[h.score for h in hs] for hs in hits])
        assert (scores <= D_sub + 1e-5).all()
    assert len(everything) == len(rare)  # k above the matches: all of them, none missing
    assert [h.score for h in everything] == sorted((h.score for h in everything), reverse=True)


def test_filter_on_a_common_value_over_fetches_on_the_approximate_index(tmp_path):
    xb, xq, ids, md = make_catalog(20_000, seed=8)
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="ivf")
    rows = np.array([i for i, m in enumerate(md) if m["label"] == "brand2"])
    opts = IndexOptions(exact_filter_limit=100)
    with open_index(tmp_path / "ix", readonly=True, options=opts) as ix:
        hits = ix.search(xq, 10, filter={"label": "brand2"})
    assert all(len(hs) == 10 for hs in hits)
    assert all(h.metadata["label"] == "brand2" for hs in hits for h in hs)
    _, I_sub = brute_force(xq, xb[rows], 10)
    assert knn_recall_at_k(rows_of(hits, 10), rows[I_sub], 10) >= 0.9


def test_filter_any_of_values_and_several_fields(flat_dir, small):
    _, xq, _, md = small
    with open_index(flat_dir, readonly=True) as ix:
        hits = ix.search(xq[0], 3000, filter={"label": ["brand1", "brand3"], "brand": "Acme"})[0]
        by_number = ix.search(xq[0], 3000, filter={"price": 103})[0]
        by_text = ix.search(xq[0], 3000, filter={"price": "103"})[0]
    expected = {
        f"sku-{i}"
        for i, m in enumerate(md)
        if m["label"] in ("brand1", "brand3") and m["brand"] == "Acme"
    }
    assert {h.id for h in hits} == expected
    assert (
        {h.id for h in by_number}
        == {h.id for h in by_text}
        == {f"sku-{i}" for i, m in enumerate(md) if m["price"] == 103}
    )


def test_unknown_filter_field_names_the_filterable_fields(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        with pytest.raises(InvalidFilterError, match="colour") as err:
            ix.search(xq[0], 5, filter={"colour": "red"})[0]
        assert "brand, label, price" in str(err.value)
        assert isinstance(err.value, ValueError) and isinstance(err.value, UserError)
        with pytest.raises(InvalidFilterError):
            ix.search(xq[0], 5, filter={"brand": {"nested": 1}})[0]
        with pytest.raises(InvalidFilterError):
            ix.search(xq[0], 5, filter={})[0]
        assert ix.search(xq[0], 5, filter={"brand": "Nobody"})[0] == []


def test_exclude_ids_still_returns_k_results(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        top = ix.search(xq[0], 10)[0]
        rest = ix.search(xq[0], 10, exclude_ids=[top[0].id, top[1].id, "unknown-id"])[0]
    assert len(rest) == 10
    assert [h.id for h in rest[:8]] == [h.id for h in top[2:]]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_k_larger_than_the_catalog_returns_every_item(tmp_path, kind):
    xb, xq, ids, _ = make_catalog(2000, seed=9)
    build_index(tmp_path / "ix", ids, xb, model_name=MODEL, checkpoint_hash=HASH, kind=kind)
    with open_index(tmp_path / "ix", readonly=True) as ix:
        hits = ix.search(xq[:2], 5000)
    assert [len(hs) for hs in hits] == [2000, 2000]
    assert len({h.id for h in hits[0]}) == 2000
    _, I_ref = brute_force(xq[:2], xb, 10)
    np.testing.assert_array_equal(rows_of(hits, 2000)[:, :10], I_ref)


def test_kinds_without_id_selectors_over_fetch_and_fall_back_to_exact(tmp_path, small):
    xb, xq, ids, md = small
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="SQ8")
    rare = np.array([i for i, m in enumerate(md) if m["brand"] == "Rare"])
    acme = np.array([i for i, m in enumerate(md) if m["brand"] == "Acme"])
    opts = IndexOptions(exact_filter_limit=0)  # force over-fetching
    with open_index(tmp_path / "ix", readonly=True, options=opts) as ix:
        assert selector_kind(ix._replica.index) is None
        rare_hits = ix.search(xq[:3], 10, filter={"brand": "Rare"})
        acme_hits = ix.search(xq, 10, filter={"brand": "Acme"})
        top = ix.search(xq[0], 3)[0]
        rest = ix.search(xq[0], 3, exclude_ids=[top[0].id])[0]
    _, I_rare = brute_force(xq[:3], xb[rare], len(rare))
    assert rows_of(rare_hits, len(rare)).tolist() == rare[I_rare].tolist()  # all, in order
    assert all(len(hs) == 10 and all(h.metadata["brand"] == "Acme" for h in hs) for hs in acme_hits)
    _, I_acme = brute_force(xq, xb[acme], 10)
    assert knn_recall_at_k(rows_of(acme_hits, 10), acme[I_acme], 10) >= 0.9
    assert [h.id for h in rest[:2]] == [h.id for h in top[1:]]


def test_knn_search_on_numpy_arrays_matches_brute_force(small):
    xb, xq, _, md = small
    index = ann.create("Flat", D)
    fids = np.arange(len(xb), dtype=np.int64) * 2 + 5  # ids need not be row numbers
    ann.add(index, xb, fids)
    live = Live(len(xb), lambda: fids, int(fids[-1]) + 1)
    acme = np.array([i for i, m in enumerate(md) if m["brand"] == "Acme"])
    allowed, excluded = fids[acme], fids[:40]  # half the excluded ids are not allowed anyway
    cand = np.setdiff1d(acme, np.arange(40))
    D_ref, I_ref = brute_force(xq, xb[cand], 10)
    for exact_limit in (10_000, 0):  # exact over the candidates, then the selector search
        D_, I_ = knn_search(
            index,
            xq,
            10,
            live,
            params={},
            allowed=allowed,
            excluded=excluded,
            exact_limit=exact_limit,
        )
        np.testing.assert_array_equal(I_, fids[cand[I_ref]])
        np.testing.assert_allclose(D_, D_ref, atol=1e-5)
    D_, I_ = knn_search(index, xq[:2], 10, live, params={}, allowed=allowed[:3])
    assert I_.shape == D_.shape == (2, 3)  # k above the candidates: all of them
    D_, I_ = knn_search(index, xq[:2], 10, live, params={}, allowed=allowed[:0])
    assert I_.shape == D_.shape == (2, 0)


def test_exact_knn_pads_short_rows_with_minus_one(small):
    xb, xq, _, _ = small
    index = ann.create("Flat", D)
    ann.add(index, xb, np.arange(len(xb), dtype=np.int64))
    D_, I_ = exact_knn(index, xq[:4], 5, np.array([3, 8, 13]))
    _, I_ref = brute_force(xq[:4], xb[[3, 8, 13]], 3)
    np.testing.assert_array_equal(I_[:, :3], np.array([3, 8, 13])[I_ref])
    assert (I_[:, 3:] == -1).all() and I_.shape == (4, 5)


@pytest.fixture(scope="module", params=["ivf", "hnsw"])
def filtered_catalog(request, tmp_path_factory):
    """An IVF or HNSW index over a clustered catalog whose labels follow the clusters (the
    hard case: a label filter leaves most queries no match nearby) and whose prices are per
    item."""
    from index.evaluation import ClusteredMixture

    mix = ClusteredMixture(D, n_clusters=200, seed=11)
    xb, clusters = mix.sample(30_000, seed=1)
    xq, _ = mix.sample(100, seed=2)
    price = np.random.default_rng(0).uniform(0, 1000, len(xb)).round(2)
    md = [{"label": f"b{c % 100}", "price": float(p)} for c, p in zip(clusters, price, strict=True)]
    path = tmp_path_factory.mktemp(request.param) / "ix"
    ids = [f"sku-{i}" for i in range(len(xb))]
    build_index(path, ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind=request.param)
    return path, xb, xq, clusters % 100, price


@pytest.mark.parametrize(
    ("share", "flt"),
    [
        (0.01, {"label": "b0"}),
        (0.2, {"label": {"in": [f"b{i}" for i in range(20)]}}),
        (0.8, {"label": [f"b{i}" for i in range(80)]}),
        (0.01, {"price": {"lt": 10}}),
        (0.2, {"price": {"gte": 400, "lt": 600}}),
        (0.8, {"price": {"gte": 200}}),
    ],
)
def test_filtered_search_reaches_exact_recall_at_every_selectivity(filtered_catalog, share, flt):
    path, xb, xq, labels, price = filtered_catalog
    field, spec = next(iter(flt.items()))
    if field == "label":
        names = spec if isinstance(spec, list) else spec["in"] if isinstance(spec, dict) else [spec]
        rows = np.flatnonzero(np.isin(labels, [int(n[1:]) for n in names]))
    else:
        lo, hi = spec.get("gte", -np.inf), spec.get("lt", np.inf)
        rows = np.flatnonzero((price >= lo) & (price < hi))
    assert abs(len(rows) / len(xb) - share) < share / 2
    opts = IndexOptions(exact_filter_limit=0)  # the approximate plan, even for 1 %
    with open_index(path, readonly=True, options=opts) as ix:
        hits = ix.search(xq, 10, filter=flt)
        unfiltered = ix.search(xq, 10)
    D_ref, I_ref = brute_force(xq, xb[rows], 10)
    found = rows_of(hits, 10)
    assert np.isin(found, rows).all()  # only matches, and always 10 of them
    recall = knn_recall_at_k(found, rows[I_ref], 10)
    _, I_all = brute_force(xq, xb, 10)
    baseline = knn_recall_at_k(rows_of(unfiltered, 10), I_all, 10)
    assert recall >= min(0.95, baseline), (recall, baseline)
    scores = np.array([[h.score for h in hs] for hs in hits])
    assert (scores <= D_ref + 1e-5).all()  # never better than exact, rank by rank


def test_probing_every_list_is_exact_and_lists_without_matches_are_skipped(small):
    from index import ivf_probe

    xb, xq, _, md = small
    index = ann.create("IVF16,Flat", D)
    ann.train(index, xb)
    ann.add(index, xb, np.arange(len(xb), dtype=np.int64))
    acme = np.array([i for i, m in enumerate(md) if m["brand"] == "Acme"])
    counts = ivf_probe.ivf_list_counts(index, acme, len(xb))
    assert counts.sum() == len(acme)
    from index.filtered_search import bitmap_selector

    sel, _bitmap = bitmap_selector(acme, len(xb))
    centroids = index.quantizer.reconstruct_n(0, index.nlist)
    D_, I_ = ivf_probe.probe_until_settled(index, xq, 10, sel, counts, centroids, len(xb))
    D_ref, I_ref = brute_force(xq, xb[acme], 10)  # one round of every match: exact
    np.testing.assert_array_equal(I_, acme[I_ref])
    np.testing.assert_allclose(D_, D_ref, atol=1e-5)
    none = np.zeros(index.nlist, np.int64)
    D_, I_ = ivf_probe.probe_until_settled(index, xq[:2], 5, sel, none, centroids, 10)
    assert (I_ == -1).all() and I_.shape == (2, 5)


def test_a_tie_is_widened_only_for_its_own_query_and_only_so_far():
    """A photo copied thousands of times must not make a search fetch all the copies, nor
    make the other queries of the same call search wider."""
    from index.filtered_search import TIE_REACH, in_tie_order

    copies = 10 * TIE_REACH  # query 0 ties with every one of them; query 1 has no tie
    scores = [np.full(copies, 0.9, np.float32), np.linspace(1.0, 0.0, copies, dtype=np.float32)]
    ids = [np.arange(copies)[::-1].copy(), np.arange(copies)]
    calls = []

    def search(rows, n):
        calls.append((rows.tolist(), n))
        return np.stack([scores[r][:n] for r in rows]), np.stack([ids[r][:n] for r in rows])

    D, I = in_tie_order(search, 2, 5)
    assert calls[0] == ([0, 1], 6) and all(rows == [0] for rows, _ in calls[1:])
    assert max(n for _, n in calls) == 5 + TIE_REACH
    assert I[1].tolist() == [0, 1, 2, 3, 4]
    # Within what was fetched, equal scores come in id order.
    assert I[0].tolist() == sorted(ids[0][: 5 + TIE_REACH])[:5]


def test_recall_counts_only_the_neighbours_that_exist():
    """A filter matching 2 items pads the exact answer with -1: finding both scored 0.2, and
    bench_index reported a recall drop that was not there."""
    pad = [-1] * 8
    assert knn_recall_at_k(np.array([[7, 3, *pad]]), np.array([[7, 3, *pad]]), 10) == 1.0
    assert knn_recall_at_k(np.array([[7, *pad, -1]]), np.array([[7, 3, *pad]]), 10) == 0.5
    full = np.arange(10)[None]
    assert knn_recall_at_k(full, full, 10) == 1.0
    assert knn_recall_at_k(np.array([[*range(5), *[-1] * 5]]), full, 10) == 0.5
    assert knn_recall_at_k(np.array([[-1] * 10]), np.array([[-1] * 10]), 10) == 1.0


def test_filters_on_kinds_that_store_residuals_score_as_unfiltered(tmp_path):
    """The filtered paths searched IVF lists with zero coarse scores: a kind storing residuals
    (SQ, PQ) lost query . centroid from every score (recall@10 0.06, scores off by 0.5)."""
    xb, xq, ids, md = make_catalog(4_000, seed=3)
    build_index(
        tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="IVF16,SQ8"
    )
    acme = np.array([i for i, m in enumerate(md) if m["brand"] == "Acme"])
    with open_index(tmp_path / "ix", readonly=True) as ix:
        hits = ix.search(xq[:20], 10, filter={"brand": "Acme"})
    D_ref, I_ref = brute_force(xq[:20], xb[acme], 10)
    assert knn_recall_at_k(rows_of(hits, 10), acme[I_ref], 10) >= 0.9
    for q, hs in enumerate(hits):  # a hit's score is its cosine, to SQ8's precision
        for h in hs:
            assert abs(h.score - float(xq[q] @ xb[ids.index(h.id)])) < 0.02


def test_a_fast_scan_ivf_kind_hides_removed_items_and_reopens(tmp_path):
    """Its block lists refuse remove_ids: the removal was journaled, failed on the FAISS copy,
    and failed again on every open (the index could never be opened again)."""
    xb, xq, ids, md = make_catalog(3_000, seed=4)
    kind = "IVF16,PQ8x4fs"
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind=kind)
    with open_index(tmp_path / "ix") as ix:
        first = ix.search(xb[5], 3)[0][0].id
        ix.remove([first])
        assert first not in {h.id for h in ix.search(xb[5], 10)[0]}
    with open_index(tmp_path / "ix") as ix:
        assert len(ix) == 2_999 and first not in ix
        assert first not in {h.id for h in ix.search(xb[5], 10)[0]}


def test_filtered_hnsw_too_broad_to_read_back_searches_again_wider(tmp_path, monkeypatch):
    """Where the matches are too many to search exactly, a query whose matches lie away from
    it is searched again at 4x efSearch: only matches, k of them, nearer than the first try."""
    from index import filtered_search

    xb, xq, ids, md = make_catalog(20_000, seed=9)
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="hnsw")
    rows = np.array([i for i, m in enumerate(md) if m["label"] == "brand2"])
    flt = {"label": "brand2"}
    opts = IndexOptions(exact_filter_limit=0)
    _, I_ref = brute_force(xq, xb[rows], 10)
    recalls = []
    # wider; exact one query at a time in the graph's storage; exact as one matrix product
    for floats, scan_queries in ((0, 0), (filtered_search.HNSW_EXACT_FLOATS, 10**9), (10**12, 0)):
        monkeypatch.setattr(filtered_search, "HNSW_EXACT_FLOATS", floats)
        monkeypatch.setattr(filtered_search, "HNSW_SCAN_QUERIES", scan_queries)
        with open_index(tmp_path / "ix", readonly=True, options=opts) as ix:
            hits = ix.search(xq, 10, filter=flt)
        found = rows_of(hits, 10)
        assert np.isin(found, rows).all()
        recalls.append(knn_recall_at_k(found, rows[I_ref], 10))
    assert min(recalls[1:]) >= 0.99, recalls  # the far queries searched exactly
    assert recalls[0] >= 0.8, recalls  # one search at the widened efSearch alone: 0.63


def test_the_hnsw_storage_scan_is_exact_over_the_matches_only(small):
    """The far queries' exact search scans the graph's own storage with a selector of the
    matches' positions (ids need not be positions), instead of copying their vectors."""
    import faiss

    from index.filtered_search import hnsw_storage_knn

    xb, xq, _, _ = small
    index = ann.create("HNSW32", D)
    fids = np.arange(len(xb), dtype=np.int64)[::-1] * 3 + 7  # ids in another order
    ann.add(index, xb, fids)
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat)
    rows = np.arange(0, len(xb), 7)
    D_ref, I_ref = brute_force(xq, xb[rows], 10)
    D_, I_ = hnsw_storage_knn(index, xq, 10, np.sort(fids[rows]))
    np.testing.assert_array_equal(I_, fids[rows[I_ref]])
    np.testing.assert_allclose(D_, D_ref, atol=1e-5)
    D_, I_ = hnsw_storage_knn(index, xq[:2], 10, np.sort(fids[:3]))
    assert (I_[:, 3:] == -1).all() and set(I_[0, :3]) == set(fids[:3])
    assert np.isneginf(D_[:, 3:]).all()  # padded as exact_knn pads


def test_the_hidden_items_selector_is_reused_until_the_hidden_set_changes():
    """Built per search, it cost 16 ms at 40,000 removed items; a removal makes a new array."""
    from index.filtered_search import SearchCache

    cache = SearchCache()
    hidden = np.array([3, 7], np.int64)
    sel, _ = cache.hidden_selector(hidden)
    assert cache.hidden_selector(hidden)[0] is sel
    assert [sel.is_member(i) for i in (2, 3, 7)] == [True, False, False]
    more = np.union1d(hidden, [2])
    assert [cache.hidden_selector(more)[0].is_member(i) for i in (2, 3, 4)] == [False, False, True]
