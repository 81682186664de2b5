"""``phonesim index build | info`` on a small embeddings file written here (``query``:
tests/phonesim/test_query.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from common.errors import UserError
from index import build as index_build
from index import cli as index_cli
from index import open_index
from index.build import read_catalog_csv, read_embeddings
from index.errors import (
    BuildInputError,
    IndexCorruptError,
    IndexLockedError,
    IndexNotFoundError,
)
from index.evaluation import ClusteredMixture

MODEL = "tiny_model"
HASH = "0123456789abcdef" * 4
LABELS = ["acme", "xiaomi", "zeta"]
N, DIM = 120, 24
STR = h5py.string_dtype(encoding="utf-8")


def write_embeddings(
    path: Path, n: int = N, *, skip_attrs: tuple[str, ...] = ()
) -> tuple[np.ndarray, list[str]]:
    """An HDF5 file laid out like ``phonesim embed`` output."""
    xb, clusters = ClusteredMixture(DIM, n_clusters=6, seed=4).sample(n, seed=1)
    labels = [LABELS[c % 3] for c in clusters]
    labels[5] = ""  # unknown label
    with h5py.File(path, "w") as h5:
        ids = np.array([f"p{i}" for i in range(n)], dtype=object)
        h5.create_dataset("ids", data=ids, dtype=STR)
        h5.create_dataset("embeddings", data=xb)
        h5.create_dataset("probabilities", data=np.full((n, 3), 1 / 3, np.float32))
        h5.create_dataset("labels", data=np.array(labels, dtype=object), dtype=STR)
        h5.create_dataset("predicted", data=np.zeros(n, np.int32))
        h5.create_dataset("failed", data=np.array(["bad.jpg: truncated"], dtype=object), dtype=STR)
        attrs = {
            "model_name": MODEL,
            "checkpoint_hash": HASH,
            "dim": DIM,
            "label_names": json.dumps(LABELS),
            "normalized": True,
        }
        h5.attrs.update({k: v for k, v in attrs.items() if k not in skip_attrs})
    return xb, labels


def write_csv(path: Path, n: int = N) -> None:
    lines = ["id,image,label,title,brand,price"]
    lines += [
        f"p{i},images/p{i}.jpg,{LABELS[i % 3]},Phone {i},{'Rare' if i == 17 else 'Acme'},{99 + i}"
        for i in range(n - 1)  # the last embedded id has no catalog row
    ]
    path.write_text("\n".join(lines) + "\n")


def cli(argv: list[str]) -> int:
    """Run ``phonesim index ...`` through a parser built with ``index.cli.register``."""
    parser = argparse.ArgumentParser(prog="phonesim")
    sub = parser.add_subparsers(dest="command", required=True)
    index_cli.register(sub)
    args = parser.parse_args(["index", *argv])
    return args.func(args)


@pytest.fixture
def files(tmp_path):
    write_embeddings(tmp_path / "emb.h5")
    write_csv(tmp_path / "catalog.csv")
    return tmp_path


def test_build_with_catalog_then_info(files, capsys):
    _, h5_labels = write_embeddings(files / "emb.h5")
    out = files / "idx"
    args = ["build", "--embeddings", str(files / "emb.h5"), "--catalog", str(files / "catalog.csv")]
    assert cli([*args, "--out", str(out), "--no-progress"]) == 0
    assert "120 items" in capsys.readouterr().out
    with open_index(out, readonly=True, expect_model=MODEL, expect_checkpoint_hash=HASH) as ix:
        item = ix.get("p17")
        assert item.metadata["title"] == "Phone 17" and item.metadata["brand"] == "Rare"
        assert item.metadata["price"] == "116"
        assert item.metadata["image"] == str((files / "images" / "p17.jpg").resolve())
        assert ix.manifest.image_roots == [str((files / "images").resolve())]
        assert ix.get(f"p{N - 1}").metadata == {"label": h5_labels[N - 1]}  # no CSV row
        assert [h.id for h in ix.search(ix.get_vectors(["p3"])[0], 1)[0]] == ["p3"]
        assert ix.search(ix.get_vectors(["p3"])[0], 5, filter={"brand": "Rare"})[0][0].id == "p17"
    assert cli(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == N and info["dim"] == DIM and info["kind"] == "flat"
    assert info["model_name"] == MODEL and info["checkpoint_hash"] == HASH
    assert {"label", "title", "brand", "price", "image"} <= set(info["filterable_fields"])
    assert info["disk_bytes"] > 0
    assert cli(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "kind       flat" in text and "count      120" in text and "dimension  24" in text
    assert MODEL in text and "disk" in text
    # The server's /v1/info leaves image out of its fields; info had listed it among them.
    assert "fields     brand, label, price, title (and image, for the CLI only: the HTTP" in text


def test_a_catalog_sharing_no_id_with_the_embeddings_is_refused(files):
    """Folder ids (``xiaomi/a1``) against a CSV's own ids (``sku-1``): the index would carry
    no metadata at all."""
    other = files / "other.csv"
    other.write_text("id,image,label\nsku-1,a.jpg,x\nsku-2,b.jpg,y\n")
    args = ["build", "--embeddings", str(files / "emb.h5"), "--catalog", str(other)]
    with pytest.raises(BuildInputError, match="none of the 120 embedded ids has a row"):
        cli([*args, "--out", str(files / "idx"), "--no-progress"])
    assert not (files / "idx").exists()
    other.write_text("id,image,label\n")  # a header and no row
    with pytest.raises(BuildInputError, match="catalog: no rows"):
        cli([*args, "--out", str(files / "idx"), "--no-progress"])


def test_build_without_catalog_keeps_hdf5_labels(files, capsys):
    _, h5_labels = write_embeddings(files / "emb.h5")
    out = files / "idx"
    assert cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["count"] == N and report["kind"] == "flat"
    assert report["failed_images"] == 1  # the text output names it; the JSON had not counted it
    with open_index(out, readonly=True) as ix:
        assert ix.get("p5").metadata == {}  # "" means unknown: no label stored
        assert ix.get("p6").metadata["label"] == h5_labels[6]
        assert ix.manifest.source["label_names"] == LABELS
        assert ix.manifest.source["failed_images"] == 1


def test_build_kind_ivf_and_overwrite(files, capsys):
    write_embeddings(files / "big.h5", n=3000)
    out = files / "idx"
    argv = ["build", "--embeddings", str(files / "big.h5"), "--out", str(out), "--no-progress"]
    assert cli([*argv, "--kind", "ivf"]) == 0
    with pytest.raises(BuildInputError, match="overwrite"):
        cli([*argv, "--kind", "flat"])
    assert cli([*argv, "--kind", "flat", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())["kind"] == "flat"

    # --overwrite replaces an index, not a writer's open index, and never some other folder.
    with open_index(out), pytest.raises(IndexLockedError):
        cli([*argv, "--overwrite"])
    assert json.loads((out / "manifest.json").read_text())["kind"] == "flat"
    precious = files / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    with pytest.raises(BuildInputError, match="not an index folder"):
        cli([*argv[:-3], "--out", str(precious), "--no-progress", "--overwrite"])
    assert (precious / "thesis.txt").read_text() == "years of work"


def test_overwrite_never_deletes_the_inputs_kept_in_the_index(files):
    """The old index folder was replaced before the embeddings kept in it were read again:
    the build reported success, then failed on the file it had just deleted."""
    out = files / "idx"
    write_embeddings(files / "emb.h5")
    assert cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(out)]) == 0
    for name in ("emb.h5", "catalog.csv"):
        (out / name).write_bytes((files / name).read_bytes())
    manifest = (out / "manifest.json").read_text()
    for given in (["--embeddings", str(out / "emb.h5")], ["--catalog", str(out / "catalog.csv")]):
        argv = ["build", "--embeddings", str(files / "emb.h5"), *given, "--out", str(out)]
        with pytest.raises(BuildInputError, match="which --overwrite would replace"):
            cli([*argv, "--overwrite", "--no-progress"])
    assert (out / "emb.h5").exists() and (out / "catalog.csv").exists()
    assert (out / "manifest.json").read_text() == manifest


def test_build_input_errors(files):
    out = str(files / "idx")
    with pytest.raises(BuildInputError, match="does not exist"):
        cli(["build", "--embeddings", str(files / "nope.h5"), "--out", out])
    (files / "a-folder").mkdir()
    with pytest.raises(BuildInputError, match="embeddings file is a folder, not a file"):
        read_embeddings(files / "a-folder")
    with pytest.raises(BuildInputError, match="catalog CSV is a folder, not a file"):
        read_catalog_csv(files / "a-folder")
    (files / "text.h5").write_text("not hdf5")
    with pytest.raises(BuildInputError, match="HDF5"):
        read_embeddings(files / "text.h5")
    write_embeddings(files / "anon.h5", skip_attrs=("checkpoint_hash",))
    with pytest.raises(BuildInputError, match="checkpoint_hash"):
        cli(["build", "--embeddings", str(files / "anon.h5"), "--out", out])
    (files / "bad.csv").write_text("sku,image\nx,y.jpg\n")
    with pytest.raises(BuildInputError, match="'id' column"):
        read_catalog_csv(files / "bad.csv")
    (files / "dup.csv").write_text("id,image\nx,a.jpg\nx,b.jpg\n")
    with pytest.raises(BuildInputError, match="twice"):
        read_catalog_csv(files / "dup.csv")
    (files / "latin1.csv").write_bytes("id,title\nx,caf\xe9\n".encode("latin-1"))
    with pytest.raises(BuildInputError, match="not UTF-8"):
        read_catalog_csv(files / "latin1.csv")
    (files / "nul.csv").write_text("id,image\nx,a\0.jpg\n")
    with pytest.raises(BuildInputError, match="NUL"):
        read_catalog_csv(files / "nul.csv")
    (files / "twice.csv").write_text("id,image,label,price,price\nx,a.jpg,b,100,\n")
    with pytest.raises(BuildInputError, match="'price' appear twice"):
        read_catalog_csv(files / "twice.csv")
    # A lenient reader read x's title as the rest of the file: y and z were never read.
    (files / "quote.csv").write_text('id,title\nx,"6.1 screen\ny,ok\nz,ok\n')
    with pytest.raises(BuildInputError, match=r"quote \(\"\) opened after line 1 is never closed"):
        read_catalog_csv(files / "quote.csv")
    # Tracebacks before: a group where a dataset goes, and a list of failed images that is
    # not text, read after the index was built (it was left in place, and the command failed).
    for name, replace_with in (("embeddings", "group"), ("ids", "group"), ("failed", "ints")):
        path = files / f"odd-{name}.h5"
        write_embeddings(path)
        with h5py.File(path, "a") as h5:
            if name in h5:
                del h5[name]
            if replace_with == "group":
                h5.create_group(name)
            else:
                h5.create_dataset(name, data=np.arange(3))
        with pytest.raises(BuildInputError, match=f"'{name}'"):
            cli(["build", "--embeddings", str(path), "--out", out])
    assert not (files / "idx").exists()


def test_embeddings_with_an_id_no_url_reaches_say_how_to_fix_them(files):
    """A file `phonesim embed` wrote before photo ids kept their suffix ("xiaomi/image"
    is the URL of item "xiaomi"'s thumbnail) is refused before any index is written, with the
    command that fixes it."""
    with h5py.File(files / "emb.h5", "r+") as h5:
        ids = [i.decode() for i in h5["ids"][()]]
        ids[3] = "xiaomi/image"
        ids[5:12] = [f" lead{i}" for i in range(7)]  # all counted, the first five named
        del h5["ids"]
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
    with pytest.raises(
        BuildInputError,
        match=r"8 id\(s\) cannot be addressed as /v1/items/<id> \('xiaomi/image', ' lead0', "
        r"' lead1', ' lead2', ' lead3' and 3 more; .*phonesim embed",
    ):
        cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(files / "idx")])
    assert not (files / "idx").exists()


def test_image_urls_in_a_catalog_csv_are_kept_as_written(files):
    """Resolved against the CSV's folder, "https://cdn.example.com/p/1.jpg" had become
    "<folder>/https:/cdn.example.com/p/1.jpg": a path naming nothing, the URL lost."""
    urls = ["https://cdn.example.com/p/1.jpg", "s3://bucket/a.jpg", "data:image/png;base64,AA"]
    rows = "".join(f'u{i},"{url}",x\n' for i, url in enumerate(urls))
    (files / "u.csv").write_text(f"id,image,label\n{rows}p,pics/a.jpg,x\nq,https:a.jpg,x\n")
    read = read_catalog_csv(files / "u.csv")
    assert [read[f"u{i}"]["image"] for i in range(3)] == urls
    assert read["p"]["image"] == str(files / "pics" / "a.jpg")  # a path is still resolved
    assert read["q"]["image"] == str(files / "https:a.jpg")  # a file name with a colon too
    write_embeddings(files / "emb.h5", n=6)
    (files / "c.csv").write_text(
        "id,image\np0,https://cdn.example.com/p/0.jpg\np1,pics/1.jpg\np2,data:image/png;x\n"
    )
    argv = ["build", "--embeddings", str(files / "emb.h5"), "--catalog", str(files / "c.csv")]
    assert cli([*argv, "--out", str(files / "ix")]) == 0
    roots = json.loads((files / "ix" / "manifest.json").read_text())["image_roots"]
    assert roots == [str(files / "pics")]  # no folder made up of a URL


def test_catalog_csv_cells_read_as_embed_reads_them(files):
    """A blank cell is no value (half the prices unknown kept price a number field, where ""
    made it text and every price range an error), and a label padded with spaces is the
    class `embed` and `train` read (it was kept padded: out of its label filter, its kNN vote
    and its class re-rank)."""
    (files / "c.csv").write_text(
        "id,image,label,price\na, a.jpg , edge-x2 ,100\nb,b.jpg,edge-x2,\n"
        "c,c.jpg,x,  \nd,d.jpg,x,300\ne,e.jpg,x, 300 \n"
    )
    rows = read_catalog_csv(files / "c.csv")
    assert rows["a"]["label"] == "edge-x2" and rows["a"]["image"] == str(files / "a.jpg")
    assert "price" not in rows["b"] and "price" not in rows["c"]
    assert rows["d"] == {"image": str(files / "d.jpg"), "label": "x", "price": "300"}
    # A hand-edited " 300 " had stayed a string: no price filter on 300 found it.
    assert rows["e"]["price"] == "300"
    # A description over the csv module's 128 KiB cell limit refused the whole catalog.
    long = "x" * 200_000
    (files / "long.csv").write_text(f"id,description\na,{long}\n")
    assert read_catalog_csv(files / "long.csv")["a"]["description"] == long
    (files / "long-m.csv").write_text(f"id,image,label,description\na,a.jpg,x,{long}\n")
    from embedder.data import load_catalog

    catalog = load_catalog(files / "long-m.csv", require_labels=False)
    assert catalog.samples[0].metadata["description"] == long
    # A spreadsheet's export ends its header with blank cells: no columns, unless they hold
    # a value (which no field name could keep).
    (files / "blank.csv").write_text("id,label,,\na,x,,\n")
    assert read_catalog_csv(files / "blank.csv") == {"a": {"label": "x"}}
    (files / "blank.csv").write_text("id,label,,\na,x,note1,\n")
    with pytest.raises(BuildInputError, match=r"blank.csv:2: value 'note1' is in a column"):
        read_catalog_csv(files / "blank.csv")


def test_info_on_a_missing_index_is_a_user_error(files):
    from index.errors import IndexNotFoundError

    with pytest.raises(IndexNotFoundError, match="does not exist; 'phonesim index build' makes"):
        cli(["info", str(files / "absent")])
    (files / ".absent.old-123").mkdir()  # what a build killed mid-swap leaves behind
    with pytest.raises(IndexNotFoundError, match="previous index at .*absent.old-123"):
        cli(["info", str(files / "absent")])
    with pytest.raises(BuildInputError, match="--index is empty"):  # "is the working directory"
        cli(["build", "--embeddings", str(files / "emb.h5"), "--index", ""])
    (files / "afile").write_text("x")  # had been "index folder does not exist"
    with pytest.raises(IndexNotFoundError, match="afile: is a file, not an index folder"):
        cli(["info", str(files / "afile")])


def test_a_damaged_catalog_store_is_one_clear_error(files):
    write_embeddings(files / "emb.h5")
    out = files / "idx"
    assert cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(out)]) == 0
    (out / "catalog.sqlite").write_bytes(b"not a database" * 200)
    with pytest.raises(IndexCorruptError, match="catalog store"):
        cli(["info", str(out)])
    with pytest.raises(IndexCorruptError, match="catalog store"):
        open_index(out, readonly=True)


def test_a_damaged_page_of_the_catalog_store_is_one_clear_error(files):
    """The open reads only the schema's first page: `info` printed a healthy index, and every
    query, add and server worker died with an sqlite3 traceback ("malformed")."""
    from index.store import CatalogStore

    write_embeddings(files / "emb.h5", n=400)
    out = files / "idx"
    assert cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(out)]) == 0
    # Page 3 of 4 KiB pages: not the schema (page 1), nor the auto-vacuum page map (page 2).
    with (out / "catalog.sqlite").open("r+b") as db:
        db.seek(2 * 4096 + 8)
        db.write(b"\xff" * 200)
    with pytest.raises(IndexCorruptError, match="catalog store is damaged"):
        cli(["info", str(out)])
    with pytest.raises(IndexCorruptError, match="catalog store is damaged .*malformed"):
        open_index(out, readonly=True)
    store = CatalogStore(out / "catalog.sqlite")  # the schema reads: the damage is further in
    store.close()


def test_a_failed_write_reports_its_own_error_not_the_rollback(files):
    """SQLite rolls back by itself after some failures (a full disk): the second ROLLBACK
    raised "cannot rollback - no transaction is active" in place of the real error."""
    import sqlite3

    from index.store import CatalogStore

    store = CatalogStore(files / "catalog.sqlite", create=True)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"), store.transaction():
        store._db.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")
    with store.read_txn():
        assert store.count() == 0  # and the store is usable after it
    store.close()


def test_info_checks_the_file_a_compaction_names_meanwhile(files, monkeypatch):
    """A compaction by another process deletes the FAISS file `info` had just read the name
    of: "could not open" read as a damaged index (1 `info` in 107 beside a compacting loop)."""
    from index import ann

    out = files / "idx"
    cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(out)])
    cli(["remove", "--index", str(out), "--id", "p0"])  # a journal record to compact
    check, compacted = ann.check_file, []

    def compact_first(path):
        if not compacted:  # between the name read and the file read, once
            compacted.append(None)  # the compaction checks the files too: not again there
            compacted[0] = cli(["compact", "--force", "--index", str(out)])
        return check(path)

    monkeypatch.setattr(ann, "check_file", compact_first)
    assert cli(["info", str(out)]) == 0 and compacted == [0]


def test_info_checks_the_vectors_dimension_against_the_manifest(files):
    """A manifest edited to another dimension passed `index info`; `remove` then said why."""
    out = files / "idx"
    cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "dim": DIM * 2}))
    with pytest.raises(IndexCorruptError, match=f"FAISS dimension {DIM}, manifest says {DIM * 2}"):
        cli(["info", str(out)])


def test_info_checks_the_vectors_too(files):
    """`index info` read only the catalog: with its FAISS file gone or garbage it printed a
    healthy index, and the next add failed."""
    out = files / "idx"
    cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(out)])
    assert cli(["info", str(out)]) == 0
    (path,) = out.glob("*.faiss")
    size = path.stat().st_size
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(IndexCorruptError, match="700 bytes, but .* were written"):
        cli(["info", str(out)])
    path.write_bytes((b"garbage" * size)[:size])  # the size it was written at, not its bytes
    with pytest.raises(IndexCorruptError, match="cannot read FAISS index"):
        cli(["info", str(out)])
    path.unlink()
    with pytest.raises(IndexNotFoundError, match="FAISS file .* is missing.*index restore"):
        cli(["info", str(out)])


def test_phonesim_main_reports_index_errors_in_one_line(files, capsys):
    from phonesim.cli import main

    assert main(["index", "info", str(files / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("phonesim: error:") and "does not exist" in err and "\n" not in err
    out = str(files / "idx")
    assert main(["index", "build", "--embeddings", str(files / "emb.h5"), "--out", out]) == 0
    assert main(["index", "info", out, "--json"]) == 0


def test_an_index_put_in_place_during_a_build_is_not_replaced_without_overwrite(files):
    """The target was checked at the start only: a restore finishing first was replaced by
    the build, both reporting success."""
    from index.build import build_index

    out = files / "idx"
    xb = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
    ids = [f"x{i}" for i in range(40)]
    kw = dict(model_name=MODEL, checkpoint_hash=HASH, progress=False)
    real_write, landed = index_build.write_manifest, []

    def another_index_lands_meanwhile(folder, manifest):  # noqa: ANN001, ANN202
        real_write(folder, manifest)
        if not landed:
            landed.append(True)
            build_index(out, ids[:5], xb[:5], [{}] * 5, **kw)

    index_build.write_manifest = another_index_lands_meanwhile
    try:
        with pytest.raises(BuildInputError, match="another index was put there"):
            build_index(out, ids, xb, [{}] * 40, **kw)
    finally:
        index_build.write_manifest = real_write
    with open_index(out) as ix:
        assert len(ix) == 5  # the one that landed first stays
    assert not [p for p in files.iterdir() if p.name.startswith(".idx")]  # no temporaries


def small_index(out: Path) -> tuple[Path, np.ndarray, list[str], dict]:
    """An index of 10 items at ``out``, with the 40 vectors and ids its rebuilds take and the
    keywords of ``build_index``."""
    from index.build import build_index

    xb = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
    ids = [f"x{i}" for i in range(40)]
    kw = dict(model_name=MODEL, checkpoint_hash=HASH, progress=False)
    build_index(out, ids[:10], xb[:10], [{}] * 10, **kw)
    return out, xb, ids, kw


def test_a_rebuild_does_not_replace_an_index_changed_while_it_ran(files, monkeypatch):
    """`index add` said "added 30000; 230000 items" during a `build --overwrite`, whose swap
    then dropped them: the build did not look at what the old index took meanwhile."""
    from index.build import build_index

    out, xb, ids, kw = small_index(files / "idx")
    real_write, added = index_build.write_manifest, []

    def an_add_lands_meanwhile(folder, manifest):  # noqa: ANN001, ANN202
        real_write(folder, manifest)
        if not added:
            with open_index(out) as ix:
                ix.add(["late"], xb[39:40], [{}])
            added.append(True)

    monkeypatch.setattr(index_build, "write_manifest", an_add_lands_meanwhile)
    with pytest.raises(BuildInputError, match="1 change.* reached this index while the build"):
        build_index(out, ids, xb, [{}] * 40, overwrite=True, **kw)
    with open_index(out) as ix:
        assert len(ix) == 11 and "late" in ix  # the add is kept
    assert not [p for p in files.iterdir() if p.name.startswith(".idx")]  # no temporaries
    monkeypatch.undo()
    build_index(out, ids, xb, [{}] * 40, overwrite=True, **kw)  # no writer: replaced
    with open_index(out) as ix:
        assert len(ix) == 40


def test_a_rebuild_counts_an_add_made_while_it_read_its_inputs(files, monkeypatch):
    """The journal was first read after the embeddings file: an add while a large file was
    read was in neither the old index's count nor the new index."""
    write_embeddings(files / "emb.h5")
    out = files / "idx"
    argv = ["build", "--embeddings", str(files / "emb.h5"), "--out", str(out)]
    assert cli(argv) == 0
    real_read = index_build.read_embeddings

    def an_add_while_reading(path):  # noqa: ANN001, ANN202
        read = real_read(path)
        with open_index(out) as ix:
            ix.add(["late"], read.xb[:1], [{}])
        return read

    monkeypatch.setattr(index_build, "read_embeddings", an_add_while_reading)
    with pytest.raises(BuildInputError, match="1 change.* reached this index while the build"):
        cli([*argv, "--overwrite"])
    with open_index(out) as ix:
        assert "late" in ix


def test_a_rebuild_does_not_replace_an_index_put_there_meanwhile(files, monkeypatch):
    """Another build landing first made the journal shorter: "-3 change(s) reached ..."."""
    from index.build import build_index

    out, xb, ids, kw = small_index(files / "idx")
    with open_index(out) as ix:
        ix.remove(["x0", "x1", "x2"])  # a journal of 3 records
    land_a_build_meanwhile(monkeypatch, out, ids, xb, kw)
    with pytest.raises(BuildInputError, match="another index was put there"):
        build_index(out, ids, xb, [{}] * 40, overwrite=True, **kw)
    with open_index(out) as ix:
        assert len(ix) == 5


def land_a_build_meanwhile(monkeypatch, out, ids, xb, kw) -> None:  # noqa: ANN001
    """While the next build writes its manifest, another build of 5 items lands at ``out``."""
    from index.build import build_index

    real_write, landed = index_build.write_manifest, []

    def another_build_lands(folder, manifest):  # noqa: ANN001, ANN202
        real_write(folder, manifest)
        if not landed:
            landed.append(True)
            build_index(out, ids[:5], xb[:5], [{}] * 5, overwrite=True, **kw)

    monkeypatch.setattr(index_build, "write_manifest", another_build_lands)


def test_a_rebuild_does_not_replace_a_fresh_build_that_landed_with_an_equal_journal(
    files, monkeypatch
):
    """The swap compared journal heads only: another fresh build landing meanwhile has the
    head the replaced fresh build had, and was replaced silently, the last build winning.
    An index put where there was none when the build began is not replaced either."""
    from index.build import build_index

    xb = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
    ids = [f"x{i}" for i in range(40)]
    kw = dict(model_name=MODEL, checkpoint_hash=HASH, progress=False)
    for out, first in ((files / "idx", True), (files / "new", False)):
        if first:
            build_index(out, ids[:10], xb[:10], [{}] * 10, **kw)
        land_a_build_meanwhile(monkeypatch, out, ids, xb, kw)
        with pytest.raises(BuildInputError, match="another index was put there"):
            build_index(out, ids, xb, [{}] * 40, overwrite=True, **kw)
        monkeypatch.undo()
        with open_index(out) as ix:
            assert len(ix) == 5, out.name


def test_a_rebuild_refused_by_a_server_started_meanwhile_says_it_was_discarded(files, monkeypatch):
    """It said only "another process has this index open; close it first", as if nothing
    had been done: the minutes of work were gone without a word."""
    from index.build import build_index
    from index.errors import IndexLockedError

    out, xb, ids, kw = small_index(files / "idx")
    real_write, opened = index_build.write_manifest, []

    def a_server_opens_it(folder, manifest):  # noqa: ANN001, ANN202
        real_write(folder, manifest)
        opened.append(open_index(out, readonly=True))

    monkeypatch.setattr(index_build, "write_manifest", a_server_opens_it)
    try:
        with pytest.raises(
            IndexLockedError,
            match="has this index open.*new index was made, "
            "which is discarded: run this again once it is closed",
        ):
            build_index(out, ids, xb, [{}] * 40, overwrite=True, **kw)
    finally:
        for ix in opened:
            ix.close()
    with open_index(out) as ix:
        assert len(ix) == 10
    assert not [p for p in files.iterdir() if p.name.startswith(".idx")]  # no temporaries


def test_an_index_built_through_a_link_to_an_empty_folder_lands_in_that_folder(files):
    import os

    (files / "real").mkdir()
    os.symlink(files / "real", files / "link")
    cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(files / "link")])
    assert (files / "link").is_symlink()
    with open_index(files / "real") as ix:
        assert len(ix) == N
    # --overwrite replaced the link with a folder, and the index it named served on, stale.
    write_embeddings(files / "fewer.h5", n=20)
    argv = ["build", "--embeddings", str(files / "fewer.h5"), "--out", str(files / "link")]
    cli([*argv, "--overwrite"])
    assert (files / "link").is_symlink()
    with open_index(files / "real") as ix:
        assert len(ix) == 20
    assert not [p for p in files.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_an_index_that_is_the_working_directory_is_refused_before_any_work(files, monkeypatch):
    cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(files / "idx")])
    monkeypatch.chdir(files / "idx")
    with pytest.raises(BuildInputError, match="is the working directory"):
        cli(["build", "--embeddings", str(files / "emb.h5"), "--out", ".", "--overwrite"])


def test_an_index_this_user_may_not_write_says_to_copy_it(files, monkeypatch):
    """Opening writes in the folder (its lock, SQLite's -wal/-shm): a bare "Permission
    denied" on writer.lock was all an operator restoring from a backup not theirs to write
    got. (Read-only media: tests/index/test_read_only_media.py.)"""
    from tests.conftest import refuse_lock_file_writes

    cli(["build", "--embeddings", str(files / "emb.h5"), "--out", str(files / "idx")])
    refuse_lock_file_writes(monkeypatch)
    with pytest.raises(PermissionError, match="not writable here.*copy the folder") as exc:
        open_index(files / "idx", readonly=True)
    assert exc.value.filename.endswith("writer.lock")
    # A usage error (exit 2) as every other refusal of a read-only folder: `restore` from
    # such a backup had exited 1 where `info` on it exited 2.
    assert isinstance(exc.value, UserError)
    assert str(exc.value).startswith(f"{files / 'idx' / 'writer.lock'}: the index folder")


def test_columns_the_http_api_cannot_write_are_named_once_when_read(files, caplog):
    """A `RAM (GB)` column was filtered on everywhere, but every client PATCH of it was a
    400 invalid_metadata, with nothing said when the catalog was read."""
    (files / "cols.csv").write_text("id,image,label,RAM (GB),price,score\nx,a.jpg,b,8,100,1\n")
    with caplog.at_level("WARNING", logger="index.build"):
        rows = read_catalog_csv(files / "cols.csv")
    assert rows["x"]["RAM (GB)"] == "8"  # kept and filterable, as before
    messages = [r.getMessage() for r in caplog.records]
    (warning,) = [m for m in messages if "HTTP API cannot write" in m]
    assert "'RAM (GB)', 'score'" in warning and "'price'" not in warning
    caplog.clear()
    (files / "fine.csv").write_text("id,image,label,price\nx,a.jpg,b,100\n")
    with caplog.at_level("WARNING", logger="index.build"):
        read_catalog_csv(files / "fine.csv")
    assert not [r for r in caplog.records if "HTTP API" in r.getMessage()]


# Child: `phonesim index build`, paused once its hidden building folder exists.
STOP_WHILE_BUILDING = """
import sys, time
sys.path.insert(0, {repo!r})
import index.build as build
real = build._write_store
def write_then_wait(*args, **kwargs):
    real(*args, **kwargs)
    open({marker!r}, "w").close()
    time.sleep(60)
build._write_store = write_then_wait
from phonesim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_stops_a_build_as_ctrl_c_does(tmp_path) -> None:
    """SIGTERM (timeout, systemd) had ended `index build` at once: its hidden building folder,
    as large as the index, stayed for good. It now stops as Ctrl-C does (exit 130)."""
    import sys

    from tests.signals import terminate_at_marker

    write_embeddings(tmp_path / "emb.h5")
    marker, child = tmp_path / "building", tmp_path / "child.py"
    repo = str(Path(__file__).resolve().parents[2])
    child.write_text(STOP_WHILE_BUILDING.format(repo=repo, marker=str(marker)))
    out = tmp_path / "ix"
    argv = ["index", "build", "--embeddings", str(tmp_path / "emb.h5"), "--index", str(out)]
    code, stderr = terminate_at_marker(
        [sys.executable, str(child), *argv, "--no-progress"], marker, timeout=60
    )
    assert code == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["building", "child.py", "emb.h5"]


def test_a_rebuild_refused_before_it_begins_keeps_no_folder_open(files):
    """The replaced folder is held open until the swap: a build refused before its work
    (a bad argument) kept it open for as long as its exception lived."""
    from index.build import build_index

    out, xb, ids, kw = small_index(files / "idx")
    before = len(os.listdir("/proc/self/fd"))
    kept = []
    for _ in range(5):
        try:
            build_index(out, ids, xb, [{}] * 40, overwrite=True, **{**kw, "model_name": ""})
        except BuildInputError as exc:
            kept.append(exc)  # its traceback holds the frame
    assert len(kept) == 5 and len(os.listdir("/proc/self/fd")) == before


def test_numbers_with_a_decimal_comma_are_warned_of_at_build(tmp_path, caplog):
    """ "1138,99" (a spreadsheet in many locales) was text to filters: `price < 500` was refused
    only at query time."""
    from index import read_catalog_csv

    catalog = tmp_path / "c.csv"
    catalog.write_text(
        'id,image,price,title\na,x.jpg,"1138,99",Foo\nb,y.jpg,"1.299,50",Bar\nc,z.jpg,300,"1,5"\n'
    )
    with caplog.at_level("WARNING", logger="index.build"):
        read_catalog_csv(catalog)
    warned = [r.getMessage() for r in caplog.records if "decimal comma" in r.getMessage()]
    assert len(warned) == 1 and "column(s) 'price' hold" in warned[0] and "'title'" not in warned[0]
    caplog.clear()
    catalog.write_text("id,image,price\na,x.jpg,1138.99\n")
    read_catalog_csv(catalog)
    assert "decimal comma" not in caplog.text


def test_build_and_add_name_catalog_labels_the_checkpoint_does_not_know(files, caplog):
    """A class renamed since training (acme filed as 'acme-pro'): the index was built without
    a word, and the model's predictions then never name it and its photos vote for nothing."""
    lines = (files / "catalog.csv").read_text().splitlines()
    renamed = [lines[0]] + [line.replace(",acme,", ",acme-pro,") for line in lines[1:]]
    (files / "renamed.csv").write_text("\n".join(renamed) + "\n")
    emb, out = str(files / "emb.h5"), str(files / "idx")
    with caplog.at_level(logging.WARNING, logger="index.build"):
        assert cli(["build", "--embeddings", emb, "--catalog", str(files / "catalog.csv"),
                    "--out", out, "--no-progress"]) == 0  # fmt: skip
    assert "does not know" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="index.build"):
        assert cli(["build", "--embeddings", emb, "--catalog", str(files / "renamed.csv"),
                    "--out", out, "--overwrite", "--no-progress"]) == 0  # fmt: skip
    assert "1 class(es) the checkpoint does not know ('acme-pro')" in caplog.text
    caplog.clear()
    write_embeddings(files / "more.h5", 8)
    with h5py.File(files / "more.h5", "a") as h5:
        del h5["ids"]
        h5.create_dataset("ids", data=np.array([f"new{i}" for i in range(8)], object), dtype=STR)
        del h5["labels"]
        labels = np.array(["zeta", "Zeta", "", "acme-pro", *["acme"] * 4], dtype=object)
        h5.create_dataset("labels", data=labels, dtype=STR)
    with caplog.at_level(logging.WARNING, logger="index.build"):
        assert cli(["add", "--index", out, "--embeddings", str(files / "more.h5")]) == 0
    assert "2 class(es) the checkpoint does not know ('Zeta', 'acme-pro')" in caplog.text
