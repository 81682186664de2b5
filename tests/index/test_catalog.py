"""CatalogIndex: round trips, updates, errors, opening and concurrency."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from index import (
    CatalogIndex,
    DuplicateIdError,
    Hit,
    IndexMismatchError,
    IndexNotFoundError,
    InvalidMetadataError,
    InvalidVectorsError,
    ManifestError,
    ReadOnlyIndexError,
    UnknownIdError,
    build_index,
    create_index,
    open_index,
)
from index.errors import CatalogIndexError, IndexCorruptError
from index.folder import check_index_files
from tests.index.synthetic import HASH, MODEL, D, make_catalog, unit


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
        assert ix.search(new[0], 1)[0][0].id == "n1"
        assert ix.search(new[0], 1)[0][0].score == pytest.approx(1.0, abs=1e-5)
        top = ix.search(new[1], 5)[0]
        ix.remove(["n1", top[1].id])
        assert len(ix) == 4001
        returned = {h.id for hs in ix.search(new, 50) for h in hs}
        assert "n1" not in returned and top[1].id not in returned
        assert ix.get("n3").metadata == {"label": "new", "x": 1.5}
    for readonly in (True, False):
        with open_index(tmp_path / "ix", readonly=readonly) as ix:
            assert len(ix) == 4001
            assert "n1" not in ix and "n2" in ix
            assert ix.search(new[0], 1)[0][0].id != "n1"
            assert ix.search(new[2], 1)[0][0].id == "n3"
            if kind == "hnsw":  # cannot delete physically: hidden until a rebuild
                assert ix.info()["hidden_removed"] == 2


def test_an_add_too_large_for_one_journal_record_is_refused_whole(flat_dir, monkeypatch):
    """200,000 vectors of 1280 floats were a 'string or blob too big' traceback (SQLite holds
    at most 1e9 bytes in one value; PostgreSQL 1 GB)."""
    from index import catalog
    from index.errors import InvalidVectorsError

    monkeypatch.setattr(catalog, "MAX_ADD_BYTES", 10 * D * 4)
    xb = unit(np.random.default_rng(3).standard_normal((11, D)).astype(np.float32))
    with open_index(flat_dir) as ix:
        before = len(ix)
        with pytest.raises(InvalidVectorsError, match="at most 10 vectors of 32 floats.*got 11"):
            ix.add([f"big-{i}" for i in range(11)], xb)
        assert len(ix) == before and "big-0" not in ix
        ix.add([f"big-{i}" for i in range(10)], xb[:10])
        assert len(ix) == before + 10


def test_empty_catalog_answers_empty_lists(tmp_path):
    with create_index(tmp_path / "ix", D, model_name=MODEL, checkpoint_hash=HASH) as ix:
        assert len(ix) == 0
        q = np.ones(D, np.float32)
        assert ix.search(q, 10)[0] == []
        assert ix.search(np.ones((2, D)), 10) == [[], []]
        ix.add(["only"], q)
        assert [h.id for h in ix.search(q, 10)[0]] == ["only"]
    with open_index(tmp_path / "ix") as ix:
        assert len(ix) == 1


def test_one_query_gives_a_list_of_hits_and_many_a_list_per_query(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, readonly=True) as ix:
        one = ix.search(xq[0], 3)[0]
        many = ix.search(xq[:4], 3)
        again = ix.search(xq[0] * 7.0, 3)[0]  # scale does not matter: queries are normalised
    assert isinstance(one[0], Hit) and len(one) == 3
    assert len(many) == 4 and all(len(hs) == 3 for hs in many)
    assert many[0] == one
    assert [h.id for h in again] == [h.id for h in one]


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
        with pytest.raises(UnknownIdError, match="'nope'"):
            ix.update_metadata("nope", {"price": 1})
        # One id, not a list (remove's signature): "unknown id(s) "['sku-1']"" before.
        with pytest.raises(TypeError, match="takes one id .*got list"):
            ix.update_metadata(["sku-1"], {"price": 1})  # type: ignore[arg-type]


def test_duplicate_ids_are_rejected(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        with pytest.raises(DuplicateIdError, match="sku-1"):
            ix.add(["new", "sku-1"], xq[:2])
        with pytest.raises(DuplicateIdError, match="twice"):
            ix.add(["twice", "twice"], xq[:2])
        assert "new" not in ix and len(ix) == 3000


@pytest.mark.parametrize("bad", ["xiaomi/image", "x/similar", "batch", " x", "a//b", "a/../b"])
def test_ids_no_url_could_reach_are_refused(flat_dir, small, bad):
    """An id is a path below /v1/items/: one ending in /image (a thumbnail's URL), "batch"
    (the batch add's) and the like were stored, listed, and then unreachable."""
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        with pytest.raises(InvalidMetadataError, match="cannot be addressed as /v1/items/"):
            ix.add(["fine", bad], xq[:2])
        assert "fine" not in ix
        ix.add(["xiaomi/image.jpg", "a b/c"], xq[:2])  # fine
        assert "xiaomi/image.jpg" in ix


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
        # Named by the item's id: "metadata[1]['title']" was hard to find in a catalog CSV.
        with pytest.raises(InvalidMetadataError, match=r"metadata of 'b'\['title'\] must not"):
            ix.add(["a", "b"], xq[:2], [{}, {"title": "bad\0title"}])
        with pytest.raises(InvalidMetadataError):
            ix.add(["a"], xq[:1], [{}, {}])
        with pytest.raises(InvalidMetadataError, match="one string"):
            ix.add("a", xq[:1])
        assert "a" not in ix
        ix.add(["f64"], xq[:1].astype(np.float64) * 3.0)
        hit = ix.search(xq[0], 1)[0][0]
    assert hit.id == "f64" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_opening_with_another_embedder_says_what_differs(flat_dir):
    with pytest.raises(IndexMismatchError, match="'other_model'") as err:
        open_index(flat_dir, expect_model="other_model", expect_dim=64)
    assert "tiny_model" in str(err.value) and "dimension 32 (expected 64)" in str(err.value)
    with pytest.raises(IndexMismatchError, match="checkpoint hash") as err:
        open_index(flat_dir, expect_checkpoint_hash="cd" * 32)
    # Both ways out: a wrong --checkpoint is as likely as a stale index (a model upgrade).
    assert str(err.value).endswith(
        "Use the checkpoint it was built from, or rebuild it with 'phonesim index build' from "
        "embeddings of this checkpoint."
    )
    open_index(flat_dir, expect_model=MODEL, expect_dim=D).close()
    # The same weights at another dimension: an edited config.json, not a stale index.
    same = json.loads((flat_dir / "manifest.json").read_text())["checkpoint_hash"]
    with pytest.raises(IndexMismatchError, match="same weights at dimension 32, but the chec"):
        open_index(flat_dir, expect_checkpoint_hash=same, expect_dim=64)


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
    # It said FAISS's "could not open ... for reading" in `index info` and `serve`, and
    # nothing of what to do anywhere.
    missing = "FAISS file vectors-.*, which the catalog store names, is missing.*index restore"
    with pytest.raises(IndexNotFoundError, match=missing):
        open_index(flat_dir, readonly=True)
    with pytest.raises(IndexNotFoundError, match=missing):
        check_index_files(flat_dir)


def test_several_writers_and_read_only_openers_follow_one_store(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as writer, open_index(flat_dir) as other:  # two writers
        reader = open_index(flat_dir, readonly=True)
        with pytest.raises(ReadOnlyIndexError):
            reader.add(["z"], xq[:1])
        writer.add(["z"], xq[:1])
        other.remove(["sku-0"])
        writer.checkpoint()  # deletes the FAISS file the reader loaded
        # Every opener sees every write (the cheap change check before each read).
        for ix in (writer, other, reader):
            assert len(ix) == 3000 and "z" in ix and "sku-0" not in ix
            assert ix.search(xq[0], 1)[0][0].id == "z"
            assert ix.sync_status.behind_entries == 0
        with pytest.raises(DuplicateIdError):  # the store checks ids, whoever added them
            other.add(["z"], xq[:1])
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
                hits = ix.search(xq[0], 40)[0]
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


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_equal_scores_keep_one_order_for_every_k(tmp_path, kind):
    """Copies of one photo score the same: every k lists them in the order they were added,
    so pages (k + offset) split one list instead of repeating some copies and never
    reaching the others."""
    xb, xq, ids, md = make_catalog(3000, seed=3)
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind=kind)
    copies = [f"dup-{i}" for i in range(6)]
    with open_index(tmp_path / "ix") as ix:
        ix.add(copies, np.repeat(unit(xq[:1]), 6, axis=0))
        full = [h.id for h in ix.search(xq[0], 8)[0]]
        assert full[:6] == copies
        for k in range(1, 8):
            assert [h.id for h in ix.search(xq[0], k)[0]] == full[:k]
        pages = [ix.search(xq[0], 2 + offset)[0][offset:] for offset in (0, 2, 4)]
        assert [h.id for page in pages for h in page] == copies


def test_a_store_deleted_under_an_open_index_refuses_writes_and_keeps_answering(flat_dir, small):
    """`rm catalog.sqlite*` under a running server: /readyz said ready, and a write was
    acknowledged (201) into the deleted file, then lost."""
    from index.errors import CatalogReplacedError

    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        for f in flat_dir.glob("catalog.sqlite*"):
            f.unlink()
        with pytest.raises(CatalogReplacedError, match="removed or replaced on disk.*restart"):
            ix.add(["late"], xq[:1])
        with pytest.raises(CatalogReplacedError, match="removed or replaced on disk"):
            ix.remove([ix.search(xq[:1], 1)[0][0].id])
        assert "removed or replaced on disk" in ix.sync().catalog_error
        assert len(ix.search(xq[:1], 3)[0]) == 3  # reads go on from what it holds


def test_a_faiss_file_cut_short_is_refused_before_it_is_mapped(flat_dir, small):
    """`index info` on a folder whose FAISS file a partial copy cut short crashed in FAISS's
    memory-mapped read (exit 139); the size written with the file is checked first."""

    _, xq, _, _ = small
    (faiss_file,) = flat_dir.glob("vectors-*.faiss")
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[:-4096])
    with pytest.raises(IndexCorruptError, match=r"bytes, but \d+ were written.*index restore"):
        check_index_files(flat_dir)
    faiss_file.write_bytes(data)
    check_index_files(flat_dir)
    with open_index(flat_dir) as ix:  # a compaction records its new file's size too
        ix.add(["late"], xq[:1])
        assert ix.compact(force=True)
    (compacted,) = flat_dir.glob("vectors-*.faiss")
    assert compacted != faiss_file
    compacted.write_bytes(compacted.read_bytes()[:-8])
    with pytest.raises(IndexCorruptError, match="were written"):
        check_index_files(flat_dir)


def test_a_compaction_by_an_older_phonesim_is_not_taken_for_a_file_cut_short(
    flat_dir, small, monkeypatch
):
    """An older phonesim's compaction names its new file in ``checkpoint_file`` and leaves
    ``checkpoint_size`` as it was: the recorded size was the file before's, and every open by
    this version refused the folder as "cut short" and said to restore it (rolling upgrade)."""
    from index.store import CatalogStore

    _, xq, _, _ = small
    real = CatalogStore.set_state

    def older_writer(self, **values):  # noqa: ANN001, ANN003, ANN202
        values.pop("checkpoint_size", None)  # a key the older code does not know
        return real(self, **values)

    with open_index(flat_dir) as ix:
        ix.add(["late"], xq[:1])
        monkeypatch.setattr(CatalogStore, "set_state", older_writer)
        assert ix.compact(force=True)
        monkeypatch.undo()
    check_index_files(flat_dir)  # the new file is not checked against the old one's size
    with open_index(flat_dir) as ix:
        assert "late" in ix
        ix.add(["later"], xq[1:2])
        assert ix.compact(force=True)  # this version's compaction records its size again
    (faiss_file,) = flat_dir.glob("vectors-*.faiss")
    faiss_file.write_bytes(faiss_file.read_bytes()[:-8])
    with pytest.raises(IndexCorruptError, match="were written"):
        check_index_files(flat_dir)
