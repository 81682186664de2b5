"""The catalog index against brute-force numpy references on seeded clustered data."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from common.errors import UserError
from index import (
    CatalogIndex,
    DuplicateIdError,
    Hit,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexOptions,
    InvalidFilterError,
    InvalidMetadataError,
    InvalidParamsError,
    InvalidVectorsError,
    ManifestError,
    ReadOnlyIndexError,
    UnknownIdError,
    ann,
    build_index,
    create_index,
    open_index,
)
from index.errors import BuildInputError, CatalogIndexError, InvalidKindError
from index.evaluation import ClusteredMixture, recall_at_k

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


@pytest.fixture(scope="module")
def small():
    return make_catalog(3000)


@pytest.fixture
def flat_dir(tmp_path, small):
    xb, _, ids, md = small
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="flat")
    return tmp_path / "ix"


# -- correctness of every kind ------------------------------------------------------------------
def test_flat_matches_brute_force_ids_and_scores(flat_dir, small):
    xb, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        hits = ix.search(xq, 10)
    D_ref, I_ref = brute_force(xq, xb, 10)
    np.testing.assert_array_equal(rows_of(hits, 10), I_ref)
    scores = np.array([[h.score for h in hs] for hs in hits])
    np.testing.assert_allclose(scores, D_ref, atol=1e-5)


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
    assert recall_at_k(found, I_ref, 10) >= 0.95
    assert recall_at_k(weak, I_ref, 10) < recall_at_k(found, I_ref, 10)


def test_auto_kind_is_flat_for_small_and_ivf_for_large_catalogs():
    assert ann.resolve_kind("auto", 10) == ("flat", "Flat")
    assert ann.resolve_kind("auto", ann.AUTO_FLAT_MAX - 1)[0] == "flat"
    kind, factory = ann.resolve_kind("auto", 1_000_000)
    assert kind == "ivf" and factory == "IVF2048_HNSW32,Flat"
    assert ann.resolve_kind("IVF16,Flat", 10) == ("factory", "IVF16,Flat")
    assert ann.ivf_nlist(1000) * ann.TRAIN_POINTS_PER_LIST <= 1000


def test_bad_factory_string_is_a_clear_error(tmp_path, small):
    xb, _, ids, _ = small
    with pytest.raises(InvalidKindError, match="NotAnIndex"):
        build_index(
            tmp_path / "ix", ids, xb, model_name=MODEL, checkpoint_hash=HASH, kind="NotAnIndex"
        )
    assert not (tmp_path / "ix").exists()


def test_an_idmap_factory_still_returns_stored_vectors(tmp_path, small):
    xb, _, ids, _ = small
    build_index(tmp_path / "ix", ids, xb, model_name=MODEL, checkpoint_hash=HASH, kind="IDMap,Flat")
    with open_index(tmp_path / "ix", readonly=True) as ix:
        np.testing.assert_allclose(ix.get_vectors([ids[5]])[0], xb[5], atol=1e-6)


# -- round trips ----------------------------------------------------------------------------------
def test_ids_metadata_and_vectors_round_trip(flat_dir, small):
    xb, _, ids, md = small
    with open_index(flat_dir, expect_model=MODEL, expect_checkpoint_hash=HASH, expect_dim=D) as ix:
        assert len(ix) == len(ids)
        assert list(ix.ids()) == ids
        assert ix.get("sku-42").metadata == md[42]
        assert ix.get("sku-42").id == "sku-42"
        assert "sku-7" in ix and "nope" not in ix
        np.testing.assert_allclose(ix.get_vectors(["sku-3", "sku-9"]), unit(xb[[3, 9]]), atol=1e-6)
        assert ix.filterable_fields == {"label", "brand", "price"}
        manifest = json.loads((flat_dir / "manifest.json").read_text())
    assert manifest["count"] == len(ids) and manifest["dim"] == D
    assert manifest["model_name"] == MODEL and manifest["checkpoint_hash"] == HASH
    assert manifest["metric"] == "inner_product" and manifest["kind"] == "flat"


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_add_then_remove_persists_across_reopen(tmp_path, kind):
    xb, xq, ids, md = make_catalog(4000, seed=5)
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind=kind)
    new = unit(xq[:3])
    with open_index(tmp_path / "ix") as ix:
        ix.add(["n1", "n2", "n3"], new, [{"label": "new"}, None, {"label": "new", "x": 1.5}])
        assert len(ix) == 4003
        assert ix.search(new[0], 1)[0].id == "n1"
        assert ix.search(new[0], 1)[0].score == pytest.approx(1.0, abs=1e-5)
        top = ix.search(new[1], 5)
        ix.remove(["n1", top[1].id])
        assert len(ix) == 4001
        returned = {h.id for hs in ix.search(new, 50) for h in hs}
        assert "n1" not in returned and top[1].id not in returned
        assert ix.get("n3").metadata == {"label": "new", "x": 1.5}
    for readonly in (True, False):
        with open_index(tmp_path / "ix", readonly=readonly) as ix:
            assert len(ix) == 4001
            assert "n1" not in ix and "n2" in ix
            assert ix.search(new[0], 1)[0].id != "n1"
            assert ix.search(new[2], 1)[0].id == "n3"
            if kind == "hnsw":  # cannot delete physically: hidden until a rebuild
                assert ix.info()["hidden_removed"] == 2


def test_checkpoint_folds_the_journal_and_cleans_stale_files(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        ix.add(["x1", "x2"], xq[:2])
        assert ix.info()["journal_pending"] == 2
        ix.checkpoint()
        assert ix.info()["journal_pending"] == 0
        before = ix.search(xq[:5], 10)
    faiss_files = sorted(p.name for p in flat_dir.glob("vectors-*.faiss"))
    assert len(faiss_files) == 1 and faiss_files[0] != "vectors-000000000000.faiss"
    (flat_dir / "vectors-999999999999.faiss").write_bytes(b"left by a crash")
    with open_index(flat_dir) as ix:
        assert ix.search(xq[:5], 10) == before
        assert json.loads((flat_dir / "manifest.json").read_text())["count"] == len(ix)
    assert not (flat_dir / "vectors-999999999999.faiss").exists()


def test_automatic_checkpoint_after_enough_journaled_vectors(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, options=IndexOptions(checkpoint_every=3)) as ix:
        ix.add(["a"], xq[:1])
        ix.add(["b", "c"], xq[1:3])
        assert ix.info()["journal_pending"] == 0
        ix.remove(["a"])
        assert ix.info()["journal_pending"] == 1


# -- search semantics -------------------------------------------------------------------------
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
        everything = ix.search(xq[0], 1000, filter={"brand": "Rare"})
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
    assert recall_at_k(rows_of(hits, 10), rows[I_sub], 10) >= 0.9


def test_filter_any_of_values_and_several_fields(flat_dir, small):
    _, xq, _, md = small
    with open_index(flat_dir, readonly=True) as ix:
        hits = ix.search(xq[0], 3000, filter={"label": ["brand1", "brand3"], "brand": "Acme"})
        by_number = ix.search(xq[0], 3000, filter={"price": 103})
        by_text = ix.search(xq[0], 3000, filter={"price": "103"})
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
            ix.search(xq[0], 5, filter={"colour": "red"})
        assert "brand, label, price" in str(err.value)
        assert isinstance(err.value, ValueError) and isinstance(err.value, UserError)
        with pytest.raises(InvalidFilterError):
            ix.search(xq[0], 5, filter={"brand": {"nested": 1}})
        with pytest.raises(InvalidFilterError):
            ix.search(xq[0], 5, filter={})
        assert ix.search(xq[0], 5, filter={"brand": "Nobody"}) == []


def test_exclude_ids_still_returns_k_results(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        top = ix.search(xq[0], 10)
        rest = ix.search(xq[0], 10, exclude_ids=[top[0].id, top[1].id, "unknown-id"])
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


def test_empty_catalog_answers_empty_lists(tmp_path):
    with create_index(tmp_path / "ix", D, model_name=MODEL, checkpoint_hash=HASH) as ix:
        assert len(ix) == 0
        q = np.ones(D, np.float32)
        assert ix.search(q, 10) == []
        assert ix.search(np.ones((2, D)), 10) == [[], []]
        ix.add(["only"], q)
        assert [h.id for h in ix.search(q, 10)] == ["only"]
    with open_index(tmp_path / "ix") as ix:
        assert len(ix) == 1


def test_one_query_gives_a_list_of_hits_and_many_a_list_per_query(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        one = ix.search(xq[0], 3)
        many = ix.search(xq[:4], 3)
        again = ix.search(xq[0] * 7.0, 3)  # scale does not matter: queries are normalised
    assert isinstance(one[0], Hit) and len(one) == 3
    assert len(many) == 4 and all(len(hs) == 3 for hs in many)
    assert many[0] == one
    assert [h.id for h in again] == [h.id for h in one]


def test_search_params_are_checked_per_kind(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        with pytest.raises(InvalidParamsError, match="nprobe"):
            ix.search(xq[0], 5, params={"nprobe": 4})
        with pytest.raises(InvalidParamsError, match="unknown"):
            ix.search(xq[0], 5, params={"speed": 4})
        with pytest.raises(ValueError, match="k must be"):
            ix.search(xq[0], 0)


# -- errors -------------------------------------------------------------------------------------
def test_unknown_ids_raise_key_errors_with_the_id(flat_dir):
    with open_index(flat_dir) as ix:
        with pytest.raises(UnknownIdError, match="'nope'") as err:
            ix.get("nope")
        assert isinstance(err.value, KeyError) and isinstance(err.value, CatalogIndexError)
        assert str(err.value).startswith("cannot get")
        with pytest.raises(UnknownIdError, match="'missing'"):
            ix.remove(["sku-1", "missing"])
        assert "sku-1" in ix  # all or nothing
        with pytest.raises(UnknownIdError):
            ix.get_vectors(["nope"])


def test_duplicate_ids_are_rejected(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        with pytest.raises(DuplicateIdError, match="sku-1"):
            ix.add(["new", "sku-1"], xq[:2])
        with pytest.raises(DuplicateIdError, match="twice"):
            ix.add(["twice", "twice"], xq[:2])
        assert "new" not in ix and len(ix) == 3000


def test_vectors_are_validated_and_float64_is_accepted(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        with pytest.raises(InvalidVectorsError, match="dimension 16"):
            ix.add(["a"], np.ones((1, 16), np.float32))
        with pytest.raises(InvalidVectorsError, match="NaN"):
            ix.add(["a", "b"], np.array([xq[0], np.full(D, np.nan)]))
        with pytest.raises(InvalidVectorsError, match="inf"):
            ix.search(np.full(D, np.inf), 3)
        with pytest.raises(InvalidVectorsError, match="floating point"):
            ix.add(["a"], np.ones((1, D), np.int64))
        with pytest.raises(InvalidVectorsError, match="zero"):
            ix.add(["a"], np.zeros((1, D)))
        with pytest.raises(InvalidVectorsError, match="2 vectors for 1 ids"):
            ix.add(["a"], xq[:2])
        with pytest.raises(InvalidVectorsError, match="1-D or 2-D"):
            ix.search(np.ones((1, 1, D)), 3)
        with pytest.raises(InvalidMetadataError):
            ix.add(["a"], xq[:1], [{"tags": ["x", "y"]}])
        with pytest.raises(InvalidMetadataError):
            ix.add(["a"], xq[:1], [{}, {}])
        with pytest.raises(InvalidMetadataError, match="one string"):
            ix.add("a", xq[:1])
        assert "a" not in ix
        ix.add(["f64"], xq[:1].astype(np.float64) * 3.0)
        hit = ix.search(xq[0], 1)[0]
    assert hit.id == "f64" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_opening_with_another_embedder_says_what_differs(flat_dir):
    with pytest.raises(IndexMismatchError, match="'other_model'") as err:
        open_index(flat_dir, expect_model="other_model", expect_dim=64)
    assert "tiny_model" in str(err.value) and "dimension 32 (expected 64)" in str(err.value)
    with pytest.raises(IndexMismatchError, match="checkpoint hash"):
        open_index(flat_dir, expect_checkpoint_hash="cd" * 32)
    open_index(flat_dir, expect_model=MODEL, expect_dim=D).close()


def test_missing_or_broken_index_folders_are_clear_errors(tmp_path, flat_dir):
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        open_index(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="manifest.json is missing"):
        open_index(tmp_path / "empty")
    manifest = flat_dir / "manifest.json"
    good = manifest.read_text()
    manifest.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        open_index(flat_dir)
    manifest.write_text(json.dumps({**json.loads(good), "format_version": 99}))
    with pytest.raises(ManifestError, match="format_version 99"):
        open_index(flat_dir)
    manifest.write_text(json.dumps({**json.loads(good), "dim": "32"}))
    with pytest.raises(ManifestError, match="'dim'"):
        open_index(flat_dir)
    manifest.write_text(good)
    for faiss_file in flat_dir.glob("vectors-*.faiss"):
        faiss_file.unlink()
    with pytest.raises(IndexNotFoundError, match="FAISS file"):
        open_index(flat_dir, readonly=True)


def test_build_refuses_to_overwrite_unless_asked(flat_dir, small):
    xb, _, ids, _ = small
    with pytest.raises(BuildInputError, match="overwrite"):
        build_index(flat_dir, ids[:10], xb[:10], model_name=MODEL, checkpoint_hash=HASH)
    build_index(flat_dir, ids[:10], xb[:10], model_name="m2", checkpoint_hash=HASH, overwrite=True)
    with open_index(flat_dir) as ix:
        assert len(ix) == 10 and ix.manifest.model_name == "m2"
    assert [p.name for p in flat_dir.parent.iterdir() if p.name.startswith(".")] == []


# -- concurrency ------------------------------------------------------------------------------
def test_one_writer_process_and_read_only_openers(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as writer:
        with pytest.raises(IndexLockedError, match="another process"):
            open_index(flat_dir)
        reader = open_index(flat_dir, readonly=True)
        with pytest.raises(ReadOnlyIndexError):
            reader.add(["z"], xq[:1])
        writer.add(["z"], xq[:1])
        writer.remove(["sku-0"])
        writer.checkpoint()  # deletes the FAISS file the reader loaded
        assert len(reader) == 3000 and "z" not in reader and "sku-0" in reader
        assert reader.search(xq[0], 1)[0].id != "z"  # still its snapshot
        assert reader.refresh() is True
        assert len(reader) == 3000 and "z" in reader and "sku-0" not in reader
        assert reader.search(xq[0], 1)[0].id == "z"
        reader.close()


def test_searches_during_updates_see_whole_batches(flat_dir, small):
    _, xq, _, _ = small
    batch = unit(np.repeat(xq[:1], 20, axis=0) + 1e-3 * np.arange(20)[:, None])
    errors: list[BaseException] = []
    sizes: list[int] = []
    stop = threading.Event()

    def reader(ix: CatalogIndex) -> None:
        try:
            while not stop.is_set():
                hits = ix.search(xq[0], 40)
                sizes.append(sum(h.id.startswith("b") for h in hits))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with open_index(flat_dir) as ix:
        threads = [threading.Thread(target=reader, args=(ix,)) for _ in range(2)]
        for t in threads:
            t.start()
        for r in range(15):
            ix.add([f"b{r}-{i}" for i in range(20)], batch)
            ix.remove([f"b{r}-{i}" for i in range(20)])
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert set(sizes) <= {0, 20}  # a batch is seen entirely or not at all


def test_kinds_without_id_selectors_over_fetch_and_fall_back_to_exact(tmp_path, small):
    xb, xq, ids, md = small
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="SQ8")
    rare = np.array([i for i, m in enumerate(md) if m["brand"] == "Rare"])
    acme = np.array([i for i, m in enumerate(md) if m["brand"] == "Acme"])
    opts = IndexOptions(exact_filter_limit=0)  # force over-fetching
    with open_index(tmp_path / "ix", readonly=True, options=opts) as ix:
        assert ann.selector_kind(ix._index) is None
        rare_hits = ix.search(xq[:3], 10, filter={"brand": "Rare"})
        acme_hits = ix.search(xq, 10, filter={"brand": "Acme"})
        top = ix.search(xq[0], 3)
        rest = ix.search(xq[0], 3, exclude_ids=[top[0].id])
    _, I_rare = brute_force(xq[:3], xb[rare], len(rare))
    assert rows_of(rare_hits, len(rare)).tolist() == rare[I_rare].tolist()  # all, in order
    assert all(len(hs) == 10 and all(h.metadata["brand"] == "Acme" for h in hs) for hs in acme_hits)
    _, I_acme = brute_force(xq, xb[acme], 10)
    assert recall_at_k(rows_of(acme_hits, 10), acme[I_acme], 10) >= 0.9
    assert [h.id for h in rest[:2]] == [h.id for h in top[1:]]
