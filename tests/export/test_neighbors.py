"""Neighbour pass: on-the-fly and index-folder searches against brute force."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest

from export import ExportError, export_features
from export.neighbors import auto_factory, drop_self
from export.shards import partial_path
from tests.export.conftest import _assert_neighbors_match, _brute_force, _config, _read


def test_neighbors_agree_with_brute_force(reference):
    _assert_neighbors_match(_read(reference), k=4)


def test_ivf_neighbor_index_agrees_when_probing_every_list(demo, ckpt, tmp_path):
    out = tmp_path / "ivf.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", out, neighbor_index="IVF2,Flat"))
    data = _read(out)
    _assert_neighbors_match(data, k=4)
    with h5py.File(out, "r") as f:
        assert "IVF2,Flat" in f["neighbors"].attrs["source"]


def test_a_lossy_neighbor_index_says_its_scores_are_approximate(demo, ckpt, tmp_path):
    """`neighbors/scores` were documented, and labelled, as cosine similarities whatever the
    index: with IVF16,PQ16 they were off the embeddings' dot product by up to 0.195."""
    exact, lossy = tmp_path / "flat.h5", tmp_path / "pq.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", exact, neighbor_index="IVF2,Flat"))
    export_features(_config(ckpt, demo / "with_bad.csv", lossy, neighbor_index="PQ4x4"))
    with h5py.File(exact, "r") as f:
        assert f["neighbors"].attrs["metric"].startswith("inner product of unit vectors")
    with h5py.File(lossy, "r") as f:
        metric = f["neighbors"].attrs["metric"]
        emb, rows, scores = f["embeddings"][:], f["neighbors/rows"][:], f["neighbors/scores"][:]
    assert metric.startswith("approximate") and "PQ4x4" in metric
    found = rows >= 0
    true = np.einsum("nd,nkd->nk", emb, emb[np.where(found, rows, 0)])
    assert np.abs(true - scores)[found].max() > 1e-3  # why the attribute says so


@pytest.mark.parametrize(
    "factory,exact",
    [
        ("Flat", True), ("IVF4,Flat", True), ("HNSW8", True), ("IDMap2,HNSW8", True),
        ("IDMap2,Flat", True), ("IVF4,PQ4,RFlat", True), ("IVF4,PQ4", False),
        ("IDMap2,IVF4,SQ8", False), ("HNSW8,SQ8", False), ("PCA8,Flat", False),
    ],
)  # fmt: skip
def test_which_indexes_give_exact_scores(factory, exact):
    import faiss

    from export.neighbors import scores_exact

    index = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    assert scores_exact(index, 16) is exact


def test_bad_neighbor_index_strings_fail_early_or_keep_the_embeddings(demo, ckpt, tmp_path):
    out = tmp_path / "bad.h5"
    with pytest.raises(ExportError, match="not a faiss index_factory string"):
        export_features(_config(ckpt, demo / "three.csv", out, neighbor_index="garbage"))
    assert not out.exists() and not any(tmp_path.iterdir())  # refused before any embedding
    with pytest.raises(ExportError, match="cannot be built over 3 rows"):
        export_features(_config(ckpt, demo / "three.csv", out, neighbor_index="IVF64,Flat"))
    # The embeddings were kept: the re-run with a workable index only assembles and searches.
    summary = export_features(_config(ckpt, demo / "three.csv", out, neighbor_index="Flat"))
    assert summary.count == 3 and summary.embedded_now == 0


def test_a_bad_neighbor_index_is_refused_in_one_line_without_faiss_internals(
    demo, ckpt, tmp_path, capsys
):
    """faiss puts its C++ signature, source file and reason on one line: the message showed
    all of it ("index_factory.cpp:1228"), where the user needs the reason and an example."""
    from export import cli as export_cli

    base = [
        "--checkpoint", str(ckpt), "--data", str(demo / "three.csv"), "--workers", "0",
        "--out", str(tmp_path / "f.h5"),
    ]  # fmt: skip
    assert export_cli.main([*base, "--neighbor-index", "garbage"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "--neighbor-index 'garbage' is not a faiss index_factory string" in err[0]
    assert "(could not parse index string garbage)" in err[0]
    assert "'Flat'" in err[0] and "'IVF1024,Flat'" in err[0]
    for internal in (".cpp", "faiss::", "Error in"):
        assert internal not in err[0]
    # The same for an index that parses but cannot be trained over this few rows.
    assert export_cli.main([*base, "--neighbor-index", "IVF64,Flat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".cpp" not in err[0] and "failed:" not in err[0], err
    assert "Number of training points (3) should be at least as large" in err[0]


def test_fewer_items_than_k_pads_neighbors(demo, ckpt, tmp_path):
    out = tmp_path / "three.h5"
    summary = export_features(_config(ckpt, demo / "three.csv", out, neighbors=5))
    assert (summary.neighbors, summary.neighbors_found) == (5, 2)  # two other items
    data = _read(out)
    assert data["nb_ids"].shape == (3, 5)
    assert (data["nb_rows"][:, :2] >= 0).all() and (data["nb_rows"][:, 2:] == -1).all()
    assert (data["nb_ids"][:, 2:] == "").all() and np.isnan(data["nb_scores"][:, 2:]).all()
    for row in range(3):
        assert sorted(data["nb_rows"][row, :2]) == [r for r in range(3) if r != row]


def test_no_neighbors_when_k_is_zero(demo, ckpt, tmp_path):
    out = tmp_path / "none.h5"
    export_features(_config(ckpt, demo / "three.csv", out, neighbors=0))
    with h5py.File(out, "r") as f:
        assert "neighbors" not in f and f.attrs["neighbors_k"] == 0
    # Nothing to search: an index or a store (a $PHONESIM_STORE set for `serve`) is not read.
    down = "postgresql://phonesim@127.0.0.1:1/catalog"
    config = _config(ckpt, demo / "three.csv", tmp_path / "nostore.h5", neighbors=0, store=down)
    assert export_features(config).count == 3
    missing = _config(ckpt, demo / "three.csv", tmp_path / "noix.h5", neighbors=0, index="nope")
    assert export_features(missing).count == 3


def test_a_neighbor_index_that_learns_without_lists_is_trained(demo, ckpt, tmp_path):
    """Every kind that needs training was taken for IVF: 'PCA8,Flat' failed after the
    embedding, blaming the number of rows."""
    out = tmp_path / "pca.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", out, neighbor_index="PCA8,Flat"))
    assert (_read(out)["nb_rows"] >= 0).all()
    with h5py.File(out, "r") as f:
        assert "PCA8,Flat" in f["neighbors"].attrs["source"]


def test_index_folder_neighbors_match_on_the_fly(reference, demo, ckpt, tmp_path):
    from index import build_from_files

    build_from_files(reference, tmp_path / "idx", kind="flat", progress=False)
    out = tmp_path / "with-index.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", out, index=str(tmp_path / "idx")))
    via_index, on_the_fly = _read(out), _read(reference)
    np.testing.assert_allclose(via_index["nb_scores"], on_the_fly["nb_scores"], atol=1e-5)
    _assert_neighbors_match(via_index, k=4)
    with h5py.File(out, "r") as f:
        assert "index folder" in f["neighbors"].attrs["source"]


def test_an_index_folder_that_cannot_be_opened_here_is_refused_before_embedding(
    reference, demo, ckpt, tmp_path, monkeypatch
):
    """A folder whose lock file this user cannot write (another user's) failed only once
    every photo had been embedded. (Read-only media is read as it is: test_read_only_media.)"""
    from index import build_from_files
    from tests.conftest import refuse_lock_file_writes

    build_from_files(reference, tmp_path / "idx", kind="flat", progress=False)
    refuse_lock_file_writes(monkeypatch)
    out = tmp_path / "f.h5"
    with pytest.raises(PermissionError, match="not writable here.*copy the folder"):
        export_features(_config(ckpt, demo / "with_bad.csv", out, index=str(tmp_path / "idx")))
    assert not list(tmp_path.glob("f.h5*"))  # nothing embedded, nothing to resume


def test_an_index_built_over_photos_changed_since_their_embedding_says_so(
    reference, demo, tmp_path, caplog
):
    """A photo replaced in place after embedding was indexed with its old vector beside its
    new thumbnail, without a word (reproducibility review)."""
    import os
    import shutil
    import time

    from index import build_from_files

    catalog = shutil.copytree(demo, tmp_path / "demo")  # copy2: the photos' times are kept
    build_from_files(reference, tmp_path / "a", catalog=catalog / "catalog.csv", progress=False)
    assert "changed (or were copied) after" not in caplog.text
    with (catalog / "catalog.csv").open(newline="", encoding="utf-8") as fh:
        photo = catalog / next(csv.DictReader(fh))["image"]
    later = time.time() + 60
    os.utime(photo, (later, later))
    build_from_files(reference, tmp_path / "b", catalog=catalog / "catalog.csv", progress=False)
    warned = [
        r.getMessage() for r in caplog.records if "changed (or were copied)" in r.getMessage()
    ]
    assert len(warned) == 1 and warned[0].startswith("1 catalog photo(s)")
    assert str(photo.resolve()) in warned[0]


def test_store_neighbors_match_on_the_fly(reference, demo, ckpt, tmp_path, pg_url):
    """``--store postgresql://...``: neighbours from the catalog in PostgreSQL (no folder)."""
    from index import build_from_files

    build_from_files(reference, tmp_path / "idx", kind="flat", progress=False, store=pg_url)
    out = tmp_path / "with-store.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", out, store=pg_url))
    via_store, on_the_fly = _read(out), _read(reference)
    np.testing.assert_allclose(via_store["nb_scores"], on_the_fly["nb_scores"], atol=1e-5)
    with h5py.File(out, "r") as f:
        assert "store postgresql://" in f["neighbors"].attrs["source"]


def test_index_folder_with_items_outside_the_export(reference, demo, ckpt, tmp_path):
    from index import build_from_files

    build_from_files(reference, tmp_path / "idx", kind="flat", progress=False)
    out = tmp_path / "three.h5"
    export_features(
        _config(ckpt, demo / "three.csv", out, index=str(tmp_path / "idx"), neighbors=6)
    )
    data = _read(out)
    ids = np.array(data["ids"], dtype=object)
    assert (data["nb_ids"] != "").all() and not np.isnan(data["nb_scores"]).any()
    for row, own in enumerate(data["ids"]):
        assert own not in data["nb_ids"][row]
        assert (np.diff(data["nb_scores"][row]) <= 1e-6).all()  # best first
    inside = data["nb_rows"] >= 0
    assert inside.any() and (~inside).any()  # the index holds 16 items the export does not
    assert (data["nb_ids"][inside] == ids[data["nb_rows"][inside]]).all()
    assert not np.isin(data["nb_ids"][~inside], ids).any()


def test_index_built_with_another_checkpoint_is_refused(reference, demo, ckpt, tmp_path):
    from index import IndexMismatchError, build_index

    data = _read(reference)
    build_index(tmp_path / "idx", data["ids"], data["emb"], model_name="test_efficientnet",
                checkpoint_hash="0" * 64, kind="flat")  # fmt: skip
    with pytest.raises(IndexMismatchError, match="checkpoint"):
        export_features(_config(ckpt, demo / "three.csv", tmp_path / "f.h5",
                                index=str(tmp_path / "idx")))  # fmt: skip
    assert not partial_path(tmp_path / "f.h5").exists()  # refused before any embedding
    with pytest.raises(ExportError, match="index folder not found"):
        export_features(_config(ckpt, demo / "three.csv", tmp_path / "f.h5",
                                index=str(tmp_path / "nope")))  # fmt: skip


def _class_ranked(data: dict, k: int, weight: float, pool: int = 5) -> np.ndarray:
    """Rows of each row's k neighbours as a class re-rank orders them, computed from scratch:
    the ``pool`` most similar others by similarity + weight x the row's probability of the
    neighbour's label (none for a blank or unknown one), the rest after them by similarity."""
    names = json.loads(data["attrs"]["label_names"])
    sims, rows = _brute_force(data["emb"], max(k, pool))
    out = []
    for r in range(len(rows)):
        labels = [data["labels"][c] for c in rows[r, :pool]]
        bonus = [data["probs"][r, names.index(x)] if x in names else 0.0 for x in labels]
        head = sorted(range(pool), key=lambda j: -(sims[r, j] + weight * bonus[j]))
        out.append([rows[r, j] for j in head] + list(rows[r, pool:]))
    return np.array(out)[:, :k]


def test_class_rerank_orders_the_first_neighbours_by_the_row_s_probabilities(
    reference, demo, ckpt, tmp_path
):
    plain = _read(reference)
    with h5py.File(reference, "r") as f:
        assert f["neighbors"].attrs["ranking"] == "similarity"
    out = tmp_path / "reranked.h5"
    # A weight this large puts every labelled neighbour of the row's likeliest class first.
    export_features(_config(ckpt, demo / "with_bad.csv", out, class_rerank=5.0))
    data = _read(out)
    assert np.array_equal(data["nb_rows"], _class_ranked(data, k=4, weight=5.0))
    assert not np.array_equal(data["nb_rows"], plain["nb_rows"])  # the order did change
    # Each neighbour keeps its own id and cosine similarity, only its place moves.
    sims = data["emb"].astype(np.float64) @ data["emb"].astype(np.float64).T
    rows = np.arange(len(sims))[:, None]
    np.testing.assert_allclose(data["nb_scores"], sims[rows, data["nb_rows"]], atol=1e-5)
    assert (data["nb_ids"] == np.array(data["ids"], dtype=object)[data["nb_rows"]]).all()
    for row in range(len(sims)):  # the same items as similarity order finds, over the pool
        top5 = set(_brute_force(data["emb"], 5)[1][row])
        assert set(data["nb_rows"][row]) <= top5
    with h5py.File(out, "r") as f:
        attrs = dict(f["neighbors"].attrs)
    assert attrs["ranking"] == "class"
    assert attrs["class_rerank_weight"] == 5.0 and attrs["class_rerank_pool"] == 5


def test_class_rerank_from_an_index_folder_reads_the_catalog_s_labels(
    reference, demo, ckpt, tmp_path
):
    from index import build_from_files

    build_from_files(reference, tmp_path / "idx", kind="flat", progress=False)
    on_the_fly, via_index = tmp_path / "fly.h5", tmp_path / "index.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", on_the_fly, class_rerank=5.0))
    export_features(
        _config(
            ckpt, demo / "with_bad.csv", via_index, class_rerank=5.0, index=str(tmp_path / "idx")
        )
    )
    ranked = _read(via_index)["nb_rows"]
    assert np.array_equal(ranked, _read(on_the_fly)["nb_rows"])
    assert not np.array_equal(ranked, _read(reference)["nb_rows"])  # the labels were read


def test_class_rerank_gives_blank_and_unknown_labels_no_bonus(reference, demo, ckpt, tmp_path):
    rows = list(csv.DictReader((demo / "with_bad.csv").open(newline="", encoding="utf-8")))
    for i, row in enumerate(rows):
        row["image"] = str(demo / row["image"])
        if i % 3 == 1:
            row["label"] = "" if i % 2 else "not-a-class"
    manifest = tmp_path / "relabelled.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "relabelled.h5"
    export_features(_config(ckpt, manifest, out, class_rerank=5.0, neighbors=7))
    data = _read(out)
    assert {"", "not-a-class"} <= set(data["labels"])
    assert np.array_equal(data["nb_rows"], _class_ranked(data, k=7, weight=5.0))


def test_class_rerank_keeps_missing_neighbours_last(demo, ckpt, tmp_path):
    out = tmp_path / "three.h5"
    export_features(_config(ckpt, demo / "three.csv", out, neighbors=4, class_rerank=0.5))
    data = _read(out)
    assert (data["nb_rows"][:, 2:] == -1).all() and np.isnan(data["nb_scores"][:, 2:]).all()
    assert (data["nb_ids"][:, 2:] == "").all()
    for row in range(3):
        assert sorted(data["nb_rows"][row, :2]) == [r for r in range(3) if r != row]
    with h5py.File(out, "r") as f:
        assert f["neighbors"].attrs["ranking"] == "class"
    with pytest.raises(ExportError, match="class_rerank orders neighbours: it needs neighbors"):
        export_features(_config(ckpt, demo / "three.csv", tmp_path / "n.h5", neighbors=0,
                                class_rerank=0.1))  # fmt: skip


def test_write_neighbors_reranks_across_blocks_and_any_k(tmp_path):
    """write_neighbors alone, over blocks of 4 rows: k below and above the pool of 5."""
    from embedder.class_rerank import ClassRerank
    from export import schema
    from export.neighbors import FileIndexSearch, write_neighbors

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(11, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    probs = rng.dirichlet(np.ones(3), size=11).astype(np.float32)
    classes = rng.integers(-1, 3, size=11)  # -1: no label
    names = ["a", "b", "c"]
    data = {
        "emb": emb,
        "probs": probs,
        "labels": [names[c] if c >= 0 else "" for c in classes],
        "attrs": {"label_names": json.dumps(names)},
    }
    ids = np.array([f"item-{i}" for i in range(11)], dtype=object)
    for k in (2, 7):
        path = tmp_path / f"k{k}.h5"
        with h5py.File(path, "w") as h5:
            h5.create_dataset(schema.EMBEDDINGS, data=emb)
            h5.create_dataset(schema.PROBABILITIES, data=probs)
            search = FileIndexSearch(h5[schema.EMBEDDINGS], ids, "Flat", row_classes=classes)
            found = write_neighbors(h5, k, search, ids, block_rows=4, progress=False,
                                    rerank=ClassRerank(weight=0.3))  # fmt: skip
            assert found == k  # 10 other items for each
            got = h5["neighbors/rows"][:]
        assert np.array_equal(got, _class_ranked(data, k=k, weight=0.3))
    plain = _brute_force(emb, 7)[1]
    assert not np.array_equal(got, plain)  # the re-rank moved something


def test_drop_self_removes_own_label_or_the_last():
    D = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7], [0.5, -1.0, -1.0]], np.float32)
    labels = np.array([[0, 5, 6], [7, 1, 8], [9, -1, -1]])
    D2, L2 = drop_self(D, labels, np.array([0, 3, 2]), 2)
    assert L2.tolist() == [[5, 6], [7, 1], [9, -1]]
    np.testing.assert_allclose(D2, [[0.8, 0.7], [0.9, 0.8], [0.5, -1.0]])


def test_auto_factory_exact_then_ivf():
    assert auto_factory(1000, exact_limit=1000) == "Flat"
    assert auto_factory(1_000_000, exact_limit=1000) == "IVF2048,Flat"
    assert auto_factory(50, exact_limit=10) == "IVF1,Flat"  # never more lists than data allows
