"""``phonesim index add | remove | compact | snapshot | restore``, on SQLite and on a real
PostgreSQL server, with another opener of the same store writing meanwhile."""

from __future__ import annotations

import io
import json
import os
import shutil

import h5py
import numpy as np
import pytest

from common.errors import UserError
from common.kept_images import new_image_path
from index import open_index
from index.errors import BuildInputError, IndexLockedError, UnknownIdError
from tests.index.test_cli import DIM, cli, write_csv, write_embeddings


@pytest.fixture(params=["sqlite", "postgresql"])
def built(request, tmp_path):
    """``(argv naming the index, folder, store URL or None)`` of a 120-item index."""
    write_embeddings(tmp_path / "emb.h5")
    write_csv(tmp_path / "catalog.csv")
    folder = tmp_path / "idx"
    argv = ["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(folder)]
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        argv += ["--store", url]
    assert cli([*argv, "--catalog", str(tmp_path / "catalog.csv"), "--no-progress"]) == 0
    where = ["--store", url] if url else ["--index", str(folder)]
    return where, folder, url


def main_add_argv(index, embeddings) -> list[str]:  # noqa: ANN001
    """``phonesim index add`` of ``embeddings`` to the folder ``index``, for phonesim's main."""
    return ["index", "add", "--index", str(index), "--embeddings", str(embeddings)]


def more_embeddings(path, ids):  # noqa: ANN001, ANN201
    write_embeddings(path, n=len(ids))
    with h5py.File(path, "a") as h5:
        del h5["ids"]
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())


def test_adding_int8_embeddings_to_an_fp32_index_warns(tmp_path, caplog):
    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "idx")])
    more_embeddings(tmp_path / "more.h5", [f"n{i}" for i in range(6)])
    with h5py.File(tmp_path / "more.h5", "a") as h5:
        h5.attrs.update({"runtime": "onnx-int8", "precision": "int8"})
    assert (
        cli(["add", "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "more.h5")])
        == 0
    )
    assert "holds fp32 embeddings" in caplog.text and "int8 ones" in caplog.text


def test_add_remove_compact(built, tmp_path, capsys):
    where, folder, url = built
    more_embeddings(tmp_path / "more.h5", [f"n{i}" for i in range(1, 7)])
    with open_index(folder, store=url, readonly=True) as follower:
        assert cli(["add", *where, "--embeddings", str(tmp_path / "more.h5"), "--json"]) == 0
        # The image `phonesim embed` could not read is counted, as `index build` counts it
        # (it was only an INFO log line, hidden by -q and missing from the JSON).
        added = {"added": 6, "count": 126, "failed_images": 1}
        assert json.loads(capsys.readouterr().out.splitlines()[-1]) == added
        late = [f"late{i}" for i in range(6)]
        more_embeddings(tmp_path / "late.h5", late)
        assert cli(["add", *where, "--embeddings", str(tmp_path / "late.h5")]) == 0
        said = capsys.readouterr().out
        assert "not indexed (phonesim embed could not read it): bad.jpg: truncated" in said
        assert "added 6; 132 items; 1 unreadable image(s) not indexed" in said
        gone = [a for i in ["n1", "p3", *late] for a in ("--id", i)]
        assert cli(["remove", *where, *gone]) == 0
        assert "removed 8; 124 items" in capsys.readouterr().out
        with pytest.raises(UnknownIdError):
            cli(["remove", *where, "--id", "nope"])
        follower.sync()
        assert "n2" in follower and "n1" not in follower and len(follower) == 124
        assert cli(["compact", *where, "--force", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["compacted"] is True and out["journal_length"] == 0
        follower.sync()
        assert follower.search(follower.get_vectors(["n3"]), 1)[0][0].id == "n3"
    assert cli(["info", *where, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["count"] == 124
        and info["journal_pending"] == 0
        and "brand" in info["filterable_fields"]
    )


def test_compact_is_refused_while_another_process_compacts(built, tmp_path, capsys):
    """It printed "nothing to compact" and exited 0, as if the journal were folded."""
    where, folder, url = built
    more_embeddings(tmp_path / "more.h5", [f"n{i}" for i in range(6)])
    assert cli(["add", *where, "--embeddings", str(tmp_path / "more.h5")]) == 0
    with open_index(folder, store=url) as other, other._source.compaction_lock() as got:
        assert got
        with pytest.raises(IndexLockedError, match="another process is compacting"):
            cli(["compact", *where, "--force"])
    capsys.readouterr()
    assert cli(["compact", *where, "--force"]) == 0
    assert "compacted at journal record" in capsys.readouterr().out
    assert cli(["compact", *where, "--force"]) == 0
    assert "already holds every journal record" in capsys.readouterr().out
    assert cli(["compact", *where]) == 0
    assert "below the limits (--force compacts anyway)" in capsys.readouterr().out


def test_snapshot_while_writing_and_restore(built, tmp_path, capsys):
    where, folder, url = built
    rng = np.random.default_rng(0)
    follower = open_index(folder, store=url, readonly=True) if url else None
    with open_index(folder, store=url) as writer:
        writer.add(["before"], rng.standard_normal((1, DIM)))
        assert cli(["snapshot", *where, "--out", str(tmp_path / "snap"), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        writer.add(["after"], rng.standard_normal((1, DIM)))
        writer.remove(["p1"])
    with open_index(tmp_path / "snap", readonly=True) as snap:
        assert "before" in snap and "after" not in snap and "p1" in snap and len(snap) == 121
    assert info["out"] == str(tmp_path / "snap")
    with pytest.raises(BuildInputError, match="overwrite"):
        cli(["restore", "--from", str(tmp_path / "snap"), *where])
    assert cli(["restore", "--from", str(tmp_path / "snap"), *where, "--overwrite"]) == 0
    with open_index(folder, store=url) as back:
        assert "after" not in back and "p1" in back and len(back) == 121
        back.add(["again"], rng.standard_normal((1, DIM)))  # writable after a restore
    if follower is not None:  # a replica running through the restore reloads the new catalog
        follower.sync()
        assert "after" not in follower and "again" in follower and len(follower) == 122
        follower.close()
    with pytest.raises(BuildInputError, match="not empty"):
        cli(["snapshot", *where, "--out", str(tmp_path / "snap")])


def test_restore_into_a_new_folder(tmp_path):
    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    assert cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "s")]) == 0
    assert cli(["restore", "--from", str(tmp_path / "s"), "--index", str(tmp_path / "b")]) == 0
    with open_index(tmp_path / "b") as ix:
        assert len(ix) == 120
    # Through a link, --overwrite replaces the index it names, as `build` does; the link stays.
    (tmp_path / "link").symlink_to(tmp_path / "b")
    with open_index(tmp_path / "b") as ix:
        ix.remove(["p0"])
    argv = ["restore", "--from", str(tmp_path / "s"), "--index", str(tmp_path / "link")]
    assert cli([*argv, "--overwrite"]) == 0
    assert (tmp_path / "link").is_symlink()
    with open_index(tmp_path / "b") as ix:
        assert len(ix) == 120


def test_restore_from_a_folder_a_writer_holds_open_keeps_its_latest_commits(tmp_path, capsys):
    """A snapshot is an index folder a server may serve and write to; its latest commits sit
    in SQLite's WAL file, which a file-by-file copy left behind (5 acknowledged adds lost, and
    the printed count included them)."""
    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    rng = np.random.default_rng(3)
    with open_index(tmp_path / "a") as writer:
        writer.add([f"late-{i}" for i in range(5)], rng.standard_normal((5, DIM)))
        assert list((tmp_path / "a").glob("*-wal"))  # the commits are in the WAL file
        capsys.readouterr()
        argv = ["restore", "--from", str(tmp_path / "a"), "--index", str(tmp_path / "b"), "--json"]
        assert cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 125
    with open_index(tmp_path / "b", readonly=True) as ix:
        assert len(ix) == 125 and "late-4" in ix


def test_a_restore_does_not_replace_an_index_restored_there_while_it_copied(tmp_path, monkeypatch):
    """Two `restore --overwrite` into one folder both said "restored": the last one won."""
    from index import snapshot as snapshot_module

    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    assert cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "s")]) == 0
    with open_index(tmp_path / "a") as ix:
        ix.remove(["p0", "p1"])
    assert cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "t")]) == 0
    real_copy, landed = snapshot_module._snapshot_sqlite, []

    def two_restores_land(snap, tmp):  # noqa: ANN001, ANN202
        # Two: the folder the first one frees may give its inode number to the second one's
        # (ext4 did, 20 of 20), which an inode comparison alone took for the folder it read.
        if not landed:
            landed.append(True)
            argv = ["restore", "--from", str(tmp_path / "t"), "--index", str(tmp_path / "a")]
            assert cli([*argv, "--overwrite"]) == 0
            assert cli([*argv, "--overwrite"]) == 0
        return real_copy(snap, tmp)

    monkeypatch.setattr(snapshot_module, "_snapshot_sqlite", two_restores_land)
    argv = ["restore", "--from", str(tmp_path / "s"), "--index", str(tmp_path / "a")]
    with pytest.raises(BuildInputError, match="another index was put there"):
        cli([*argv, "--overwrite"])
    with open_index(tmp_path / "a") as ix:
        assert len(ix) == 118  # the restore that landed first stays
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a")]  # no temporaries
    monkeypatch.undo()
    with open_index(tmp_path / "a") as ix:  # items added before a restore are replaced with it
        ix.add(["late"], np.ones((1, DIM), np.float32))
    assert cli([*argv, "--overwrite"]) == 0
    with open_index(tmp_path / "a") as ix:
        assert len(ix) == 120 and "late" not in ix


def test_lock_refusals_name_the_process_holding_the_lock(tmp_path):
    """ "another process has this index open": the operator had to find which one."""
    import subprocess
    import sys

    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    assert cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "s")]) == 0
    more_embeddings(tmp_path / "more.h5", [f"n{i}" for i in range(6)])
    assert (
        cli(["add", "--index", str(tmp_path / "a"), "--embeddings", str(tmp_path / "more.h5")]) == 0
    )
    hold = (  # what a server holds (the folder lock, shared) and what a compactor holds
        "import fcntl, os, sys, time\n"
        "for name, how in (('writer.lock', fcntl.LOCK_SH), ('compact.lock', fcntl.LOCK_EX)):\n"
        "    fd = os.open(os.path.join(sys.argv[1], name), os.O_RDWR | os.O_CREAT)\n"
        "    fcntl.flock(fd, how)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "a")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "held"
        argv = ["restore", "--from", str(tmp_path / "s"), "--index", str(tmp_path / "a")]
        with pytest.raises(IndexLockedError, match=rf"has this index open \(pid {child.pid}\)"):
            cli([*argv, "--overwrite"])
        with pytest.raises(IndexLockedError, match=rf"process \(pid {child.pid}\) is compacting"):
            cli(["compact", "--index", str(tmp_path / "a"), "--force"])
    finally:
        child.kill()
        child.wait(timeout=10)
    assert cli(["compact", "--index", str(tmp_path / "a"), "--force"]) == 0


def test_a_snapshot_is_never_kept_inside_the_index_it_would_replace(tmp_path):
    """A snapshot taken into the index folder was deleted by its own restore --overwrite."""
    write_embeddings(tmp_path / "emb.h5")
    ix = tmp_path / "a"
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(ix)])
    with pytest.raises(BuildInputError, match="inside the index"):
        cli(["snapshot", "--index", str(ix), "--out", str(ix / "sub")])
    assert not (ix / "sub").exists()
    # One put there by hand (a copy) is not restored over its own folder either.
    assert cli(["snapshot", "--index", str(ix), "--out", str(tmp_path / "s")]) == 0
    shutil.copytree(tmp_path / "s", ix / "sub")
    with pytest.raises(BuildInputError, match="which --overwrite would replace"):
        cli(["restore", "--from", str(ix / "sub"), "--index", str(ix), "--overwrite"])
    assert (ix / "sub" / "manifest.json").exists()


def test_built_snapshotted_and_restored_folders_are_shared_as_the_umask_says(tmp_path):
    """Not mkdtemp's owner-only 0700: a server running as another user opens them."""
    write_embeddings(tmp_path / "emb.h5")
    old = os.umask(0o022)
    try:
        cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
        cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "s")])
        cli(["restore", "--from", str(tmp_path / "s"), "--index", str(tmp_path / "b")])
    finally:
        os.umask(old)
    for name in ("a", "s", "b"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o755, name


def test_restore_never_replaces_what_is_not_an_index(tmp_path):
    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    assert cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "s")]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "keep.jpg").write_bytes(b"precious")
    (tmp_path / "a-file").write_text("x")
    cases = [
        (photos, "not an index folder"),
        (tmp_path / "a-file", "exists and is not a folder"),
        (tmp_path / "missing" / "r", "folder does not exist"),
        (tmp_path / "a-file" / "r", "is a file, not a folder"),
    ]
    for dest, message in cases:
        with pytest.raises(BuildInputError, match=message):
            cli(["restore", "--from", str(tmp_path / "s"), "--index", str(dest), "--overwrite"])
    assert (photos / "keep.jpg").read_bytes() == b"precious"
    assert (tmp_path / "a-file").read_text() == "x"
    with pytest.raises(BuildInputError, match="exists and is not a folder"):
        cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "a-file")])


def test_build_into_an_unreachable_store_fails_before_building(tmp_path):
    pytest.importorskip("psycopg")
    from index.errors import StoreUnavailableError
    from tests.pg import _free_port

    write_embeddings(tmp_path / "emb.h5")
    url = f"postgresql://nobody@127.0.0.1:{_free_port()}/shop"  # nothing listens there
    argv = ["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "ix")]
    for extra in ([], ["--overwrite"]):
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            cli([*argv, "--store", url, *extra])
        assert not (tmp_path / "ix").exists()


def test_remove_with_an_empty_ids_file_says_so(tmp_path, monkeypatch):
    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    (tmp_path / "ids.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="ids.txt: holds no ids"):
        cli(["remove", "--index", str(tmp_path / "a"), "--ids-file", str(tmp_path / "ids.txt")])
    with open_index(tmp_path / "a", readonly=True) as ix:
        assert len(ix) == 120
    argv = ["remove", "--index", str(tmp_path / "a"), "--id", "p1"]
    with pytest.raises(UserError, match="--image-dir .*: is not a folder; nothing removed"):
        cli([*argv, "--image-dir", str(tmp_path / "ids.txt")])
    (tmp_path / "ids.txt").write_bytes("p2\np3\n".encode("utf-8-sig"))  # Notepad's BOM
    cli(["remove", "--index", str(tmp_path / "a"), "--ids-file", str(tmp_path / "ids.txt")])
    with open_index(tmp_path / "a", readonly=True) as ix:
        assert len(ix) == 118 and "p1" in ix and "p2" not in ix
    # '-' reads standard input (a file of that name had been looked for); a missing file is
    # named once (it had been named twice, in the OS error too).
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"p4\np5\n")))
    cli(["remove", "--index", str(tmp_path / "a"), "--ids-file", "-"])
    with open_index(tmp_path / "a", readonly=True) as ix:
        assert len(ix) == 116 and "p4" not in ix and "p6" in ix
    with pytest.raises(UserError) as err:
        cli(["remove", "--index", str(tmp_path / "a"), "--ids-file", str(tmp_path / "no.txt")])
    assert str(err.value) == f"{tmp_path / 'no.txt'}: cannot read ids (No such file or directory)"


def test_remove_with_an_image_dir_no_server_made_yet_removes_and_says_so(tmp_path, caplog):
    """A server makes its --image-dir at its first upload: a cron job passing it must
    still remove catalog items, and a mistyped path shows in the warning."""
    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    argv = ["remove", "--index", str(tmp_path / "a"), "--id", "p1"]
    cli([*argv, "--image-dir", str(tmp_path / "uploads")])
    assert "uploads does not exist: no kept photo is deleted" in caplog.text
    with open_index(tmp_path / "a", readonly=True) as ix:
        assert "p1" not in ix


def test_adding_embeddings_of_another_checkpoint_says_to_embed_them_again(tmp_path):
    from index.errors import IndexMismatchError

    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    more_embeddings(tmp_path / "more.h5", [f"n{i}" for i in range(1, 7)])
    with h5py.File(tmp_path / "more.h5", "a") as h5:
        h5.attrs["checkpoint_hash"] = "f" * 64
    with pytest.raises(IndexMismatchError, match="Embed the new items with the checkpoint") as e:
        cli(["add", "--index", str(tmp_path / "a"), "--embeddings", str(tmp_path / "more.h5")])
    # "(expected fff…)" had read as if the index were the wrong side
    assert "(the new embeddings': ffffffffffff…)" in str(e.value)
    with open_index(tmp_path / "a", readonly=True) as ix:
        assert "n1" not in ix


def test_operations_need_a_target(capsys):
    with pytest.raises(SystemExit):
        cli(["compact"])
    assert "--index INDEX_DIR (or --store URL)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["compact", "--store", "mysql://x"])
    assert "postgresql://" in capsys.readouterr().err


def test_remove_with_image_dir_deletes_only_the_removed_items_kept_photos(tmp_path, capsys):
    """Beside a server, ``index remove`` left the photos the server kept for API-added items in
    its --image-dir; with --image-dir it deletes them, and nothing else there."""
    write_embeddings(tmp_path / "emb.h5")
    folder = tmp_path / "idx"
    assert cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(folder)]) == 0
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    photos = {i: new_image_path(uploads, i) for i in ("p1", "p2", "p3")}
    catalog_photo = uploads / "p4.jpg"  # a catalog's own photo in the same folder: not ours
    for path in [*photos.values(), catalog_photo]:
        path.write_bytes(b"photo")
    with open_index(folder) as ix:
        for item_id, path in photos.items():
            ix.update_metadata(item_id, {"image": str(path)})
        ix.update_metadata("p4", {"image": str(catalog_photo)})
        ix.update_metadata("p5", {"image": str(photos["p3"])})  # named for another id
    where = ["--index", str(folder), "--image-dir", str(uploads)]
    with pytest.raises(UnknownIdError):
        cli(["remove", *where, "--id", "p1", "--id", "nope"])
    assert photos["p1"].exists()  # a failed removal keeps its photos
    assert cli(["remove", *where, "--id", "p1", "--id", "p2", "--id", "p4", "--id", "p5"]) == 0
    assert "removed 4; 116 items; deleted 2 kept photo(s)" in capsys.readouterr().out
    assert not photos["p1"].exists() and not photos["p2"].exists()
    assert photos["p3"].exists() and catalog_photo.exists()
    assert cli(["remove", *where, "--id", "p3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "removed": 1,
        "count": 115,
        "images_deleted": 1,
    }
    assert not photos["p3"].exists()


def test_ctrl_c_during_an_add_says_how_to_tell_whether_it_landed(tmp_path, monkeypatch, capsys):
    """Stopped after its commit, the add said only "interrupted", and the rerun then failed
    with "already in the index"."""
    from index.catalog import CatalogIndex
    from phonesim.cli import main

    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    more_embeddings(tmp_path / "more.h5", [f"n{i}" for i in range(6)])
    real_add = CatalogIndex.add

    def add_then_ctrl_c(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_add(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(CatalogIndex, "add", add_then_ctrl_c)
    argv = main_add_argv(tmp_path / "a", tmp_path / "more.h5")
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "all or nothing" in err and f"phonesim index info --index {tmp_path / 'a'}" in err
    with open_index(tmp_path / "a", readonly=True) as ix:
        assert all(f"n{i}" in ix for i in range(6))
    # The rerun (as after a kill -9 once it committed) said "remove them first": wrong advice.
    monkeypatch.setattr(CatalogIndex, "add", real_add)
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "all 6 ids of" in err and "may have added them, and then nothing is left" in err
    more_embeddings(tmp_path / "mixed.h5", ["n0", "m1", "m2", "m3", "m4", "m5"])
    assert main([*argv[:-1], str(tmp_path / "mixed.h5")]) != 0
    assert "1 id(s) already in the index: 'n0'; remove them first" in capsys.readouterr().err


def test_a_snapshot_holds_the_index_so_no_build_swaps_it_mid_copy(tmp_path, monkeypatch):
    """A build --overwrite landing between the snapshot's copy of the store and of the FAISS
    file (both named vectors-000000000000.faiss) made a snapshot of one catalog's ids with
    another's vectors, reported as a success."""
    from index import snapshot as snapshot_module

    write_embeddings(tmp_path / "emb.h5")
    build = ["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")]
    cli(build)
    refused = []
    real_copy = snapshot_module.shutil.copyfile

    def build_meanwhile(src, dst):  # noqa: ANN001, ANN202
        with pytest.raises(IndexLockedError, match="has this index open"):
            cli([*build, "--overwrite", "--no-progress"])
        refused.append(True)
        return real_copy(src, dst)

    monkeypatch.setattr(snapshot_module.shutil, "copyfile", build_meanwhile)
    assert cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "s")]) == 0
    assert refused


def test_a_snapshot_whose_out_another_snapshot_took_meanwhile_is_refused(tmp_path, monkeypatch):
    """Two snapshots to one --out: the second to finish said "Directory not empty" (exit 1,
    a machine failure)."""
    from index import snapshot as snapshot_module
    from index.errors import BuildInputError

    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    out = tmp_path / "s"
    real_check = snapshot_module._check_opens

    def other_snapshot_lands(folder):  # noqa: ANN001, ANN202
        out.mkdir()
        (out / "manifest.json").write_text("{}")  # the other run's
        return real_check(folder)

    monkeypatch.setattr(snapshot_module, "_check_opens", other_snapshot_lands)
    with pytest.raises(BuildInputError, match="another snapshot was put there while this one"):
        cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(out)])
    assert [p.name for p in out.iterdir()] == ["manifest.json"]  # the other's, untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.")]  # nothing left


def test_a_journal_record_of_another_dimension_is_a_corrupt_index(tmp_path):
    from index.errors import IndexCorruptError

    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    with open_index(tmp_path / "a") as ix:
        ix.add(["late"], np.random.default_rng(0).standard_normal((1, DIM)))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["dim"] = DIM // 2  # a hand edit, or a copy mixed from two indexes
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError, match="journal record 1 holds"):
        open_index(tmp_path / "a", readonly=True)


def test_restoring_an_index_of_another_embedder_warns(tmp_path, caplog):
    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    cli(["snapshot", "--index", str(tmp_path / "a"), "--out", str(tmp_path / "s")])
    cli(["restore", "--from", str(tmp_path / "s"), "--index", str(tmp_path / "b")])
    cli(["restore", "--from", str(tmp_path / "s"), "--index", str(tmp_path / "b"), "--overwrite"])
    assert "another embedder" not in caplog.text  # the same one: nothing to say
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["checkpoint_hash"] = "0" * len(manifest["checkpoint_hash"])
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    cli(["restore", "--from", str(tmp_path / "s"), "--index", str(tmp_path / "b"), "--overwrite"])
    assert "another embedder" in caplog.text


def test_a_failed_faiss_write_names_the_file_and_the_reason(tmp_path, monkeypatch):
    import faiss

    from index import ann

    def full_disk(index, path):  # noqa: ANN001, ANN202 - FAISS's own wording
        raise RuntimeError(
            f"Error in void faiss::write_index: write error in {path}: 4014 != 3686400 "
            "(No space left on device)"
        )

    monkeypatch.setattr(faiss, "write_index", full_disk)
    with pytest.raises(OSError) as failed:
        ann.write(faiss.IndexFlatIP(4), tmp_path / "v.faiss")
    assert failed.value.strerror == "No space left on device"
    assert failed.value.filename == str(tmp_path / "v.faiss")
    assert not list(tmp_path.iterdir())  # no temporary file left


@pytest.mark.parametrize("command", ["add", "remove", "compact", "snapshot", "restore"])
def test_a_folder_beside_a_store_is_refused_before_anything_is_read(
    tmp_path, monkeypatch, capsys, command
):
    """With a store these commands work on it alone: `restore --index DIR` with
    $PHONESIM_STORE set replaced the shared catalog and left DIR as it was, exit 0."""
    url = "postgresql://nobody@127.0.0.1:1/shop"  # never reached: refused before
    extra = {
        "add": ["--embeddings", "emb.h5"],
        "remove": ["--id", "a"],
        "compact": [],
        "snapshot": ["--out", str(tmp_path / "snap")],
        "restore": ["--from", str(tmp_path / "snap"), "--overwrite"],
    }[command]
    argv = [command, "--index", str(tmp_path / "idx"), *extra]
    with pytest.raises(SystemExit) as stopped:
        cli([*argv, "--store", url])
    assert stopped.value.code == 2
    assert "give --index INDEX_DIR or --store URL, not both" in capsys.readouterr().err
    monkeypatch.setenv("PHONESIM_STORE", url)
    with pytest.raises(SystemExit) as stopped:
        cli(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "$PHONESIM_STORE is set" in err and "pass --store '' to work on the folder" in err


def test_a_damaged_store_is_neither_written_nor_snapshotted(tmp_path):
    """Opening reads the store's first pages only: add, remove and compact had written to a
    store damaged further in, and snapshot had copied it, exit 0, into a backup as damaged."""
    from index.errors import IndexCorruptError

    write_embeddings(tmp_path / "emb.h5", n=400)
    folder = tmp_path / "idx"
    assert cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(folder)]) == 0
    db = folder / "catalog.sqlite"
    with db.open("r+b") as fh:  # a page in the middle of the items' rows, not the schema's
        fh.seek(db.stat().st_size // 2 + 8)
        fh.write(os.urandom(2000))
    more_embeddings(tmp_path / "more.h5", [f"n{i}" for i in range(6)])
    where = ["--index", str(folder)]
    before = db.read_bytes()
    for argv in (
        ["add", *where, "--embeddings", str(tmp_path / "more.h5")],
        ["remove", *where, "--id", "p3"],
        ["compact", *where, "--force"],
        ["snapshot", *where, "--out", str(tmp_path / "snap")],
    ):
        with pytest.raises(IndexCorruptError, match="catalog store is damaged"):
            cli(argv)
    assert db.read_bytes() == before and not (tmp_path / "snap").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".snap")]


def test_compaction_gives_removed_items_pages_back(tmp_path):
    """An index emptied by add/remove cycles kept its largest size for good (296 MiB with no
    items): SQLite keeps freed pages in the file unless it was made to give them back."""
    write_embeddings(tmp_path / "emb.h5")
    folder = tmp_path / "idx"
    assert cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(folder)]) == 0
    db = folder / "catalog.sqlite"
    small = db.stat().st_size
    rng = np.random.default_rng(0)
    ids = [f"bulk-{i}" for i in range(3000)]
    with open_index(folder) as ix:
        ix.add(ids, rng.standard_normal((3000, DIM)).astype(np.float32), [{"t": "x" * 200}] * 3000)
        ix.compact(force=True)
        ix.remove(ids)
        ix.compact(force=True)  # the adds' journal records go: the previous interval's
        ix.compact(force=True)  # and the removes'
    assert db.stat().st_size < small + 256 * 1024, (small, db.stat().st_size)


def test_info_of_a_store_gives_its_size_in_the_database(tmp_path, pg_url, capsys):
    """`index info --store URL` printed "disk 0 B": the size was a folder's only."""
    write_embeddings(tmp_path / "emb.h5")
    argv = ["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "idx")]
    assert cli([*argv, "--store", pg_url, "--no-progress"]) == 0
    capsys.readouterr()
    assert cli(["info", "--store", pg_url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 120 and info["disk_bytes"] > 120 * DIM * 4


def test_a_full_disk_under_index_add_exits_1_and_says_nothing_changed(
    tmp_path, monkeypatch, capsys
):
    """SQLite's "database or disk is full" exited 2, the code of a usage or input error,
    where the README promises 1 for a machine failure, and did not say nothing was added."""
    import sqlite3

    from index.store import CatalogStore
    from phonesim.cli import main

    write_embeddings(tmp_path / "emb.h5")
    cli(["build", "--embeddings", str(tmp_path / "emb.h5"), "--out", str(tmp_path / "a")])
    more_embeddings(tmp_path / "more.h5", [f"n{i}" for i in range(6)])

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = 13  # SQLITE_FULL
        raise exc

    monkeypatch.setattr(CatalogStore, "insert_items", full)
    argv = main_add_argv(tmp_path / "a", tmp_path / "more.h5")
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "disk is full" in err and "nothing was changed" in err and "\n" not in err.strip()
    monkeypatch.undo()
    with open_index(tmp_path / "a", readonly=True) as ix:
        assert len(ix) == 120
    assert main(argv) == 0
