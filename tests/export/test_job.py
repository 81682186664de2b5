"""export_features end to end: the HDF5 schema, dtype, resuming, and bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import datetime

import h5py
import numpy as np
import pytest

from embedder.checkpoint import checkpoint_hash
from embedder.errors import CheckpointError, DataError, EngineError
from export import ExportError, ResumeError, export_features
from export.shards import ShardWriter, partial_path
from tests.export.conftest import (
    _assert_neighbors_match,
    _config,
    _expected_ids,
    _read,
    _write_manifest,
)


def test_schema_and_attributes(reference, demo, ckpt):
    from embedder.inference import Embedder

    data = _read(reference)
    ids = _expected_ids(demo / "with_bad.csv")
    n = len(ids)
    assert data["ids"] == ids  # input order, the corrupt image left out
    assert data["failed"] == ["bad-0001"]
    embedder = Embedder.from_checkpoint(ckpt)
    attrs = data["attrs"]
    assert attrs["format"] == "phonesim-features" and attrs["format_version"] == 1
    assert attrs["model_name"] == "test_efficientnet" == embedder.model_name
    assert attrs["checkpoint_hash"] == checkpoint_hash(ckpt)
    assert attrs["dim"] == embedder.dim and attrs["num_classes"] == 3
    assert bool(attrs["normalized"]) and attrs["dtype"] == "float32"
    assert attrs["count"] == n and attrs["failed_count"] == 1 and attrs["neighbors_k"] == 4
    assert datetime.fromisoformat(attrs["created"]).tzinfo is not None
    assert json.loads(attrs["label_names"]) == embedder.label_names

    assert data["emb"].shape == (n, embedder.dim) and data["emb"].dtype == np.float32
    assert data["probs"].shape == (n, 3)
    np.testing.assert_allclose(np.linalg.norm(data["emb"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(data["probs"].sum(1), 1.0, atol=1e-5)
    assert np.array_equal(data["pred"], data["probs"].argmax(1))
    labels = {r["id"]: r["label"] for r in csv.DictReader((demo / "with_bad.csv").open())}
    assert data["labels"] == [labels[i] for i in ids]
    # Each row holds the embedding of its own image (a writer that mixed rows up would fail).
    paths = {r["id"]: demo / r["image"] for r in csv.DictReader((demo / "with_bad.csv").open())}
    direct = embedder.embed_paths([paths[i] for i in ids])
    np.testing.assert_allclose(data["emb"], direct.embeddings, atol=1e-5)
    np.testing.assert_allclose(data["probs"], direct.probabilities, atol=1e-5)

    with h5py.File(reference, "r") as f:
        for name in ("embeddings", "probabilities", "neighbors/scores"):
            assert f[name].chunks is not None and f[name].compression == "gzip", name
        assert list(f["predicted"].attrs["label_names"]) == embedder.label_names
        assert f["neighbors/ids"].shape == f["neighbors/scores"].shape == (n, 4)
        assert "broken.jpg: not a recognised image format" in f["failed_reasons"].asstr()[0]
        assert bool(f["labels"].attrs["has_labels"])
    assert not partial_path(reference).exists()


def test_pandas_and_h5py_loading_example(reference):
    pd = pytest.importorskip("pandas")
    with h5py.File(reference, "r") as f:
        frame = pd.DataFrame(
            {
                "id": f["ids"].asstr()[:],
                "predicted": f["predicted"].attrs["label_names"][f["predicted"][:]],
                "neighbors": list(f["neighbors/ids"].asstr()[:]),
            }
        )
        emb = f["embeddings"][:]
    assert len(frame) == len(emb) and frame["id"].is_unique
    assert all(len(nb) == 4 for nb in frame["neighbors"])


def test_float16_option(reference, demo, ckpt, tmp_path):
    out = tmp_path / "half.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", out, dtype="float16"))
    half, full = _read(out), _read(reference)
    assert half["emb"].dtype == np.float16 and half["probs"].dtype == np.float16
    assert half["attrs"]["dtype"] == "float16"
    assert half["ids"] == full["ids"]
    np.testing.assert_allclose(half["emb"].astype(np.float32), full["emb"], atol=2e-3)
    np.testing.assert_allclose(half["probs"].astype(np.float32), full["probs"], atol=2e-3)
    assert np.array_equal(half["pred"], full["pred"])  # arg-maxed before rounding
    assert half["nb_scores"].dtype == np.float32
    half["emb"] = half["emb"].astype(np.float32)
    _assert_neighbors_match(half, k=4, atol=1e-4)  # neighbours of the stored vectors


def _stopped_after_8_inputs(config, monkeypatch) -> None:  # noqa: ANN001
    """Run the export ``config`` until a Ctrl-C lands after its 8th input (2 shards of 4)."""
    real_write = ShardWriter.write

    def stop(self, batch):
        real_write(self, batch)
        if batch.end >= 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "write", stop)
    with pytest.raises(KeyboardInterrupt):
        export_features(config)
    monkeypatch.setattr(ShardWriter, "write", real_write)


def test_resume_refuses_a_different_input_list(demo, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "features.h5"
    _stopped_after_8_inputs(_config(ckpt, demo / "with_bad.csv", out, shard_size=4), monkeypatch)
    with pytest.raises(ResumeError, match="different input list"):
        export_features(_config(ckpt, demo / "three.csv", out))
    summary = export_features(_config(ckpt, demo / "three.csv", out, restart=True))
    assert summary.count == 3 and summary.resumed_from == 0


def test_existing_output_needs_overwrite(reference, demo, ckpt, tmp_path):
    out = tmp_path / "f.h5"
    export_features(_config(ckpt, demo / "three.csv", out))
    with pytest.raises(ExportError, match="--overwrite"):
        export_features(_config(ckpt, demo / "three.csv", out))
    export_features(_config(ckpt, demo / "three.csv", out, overwrite=True))
    assert _read(out)["attrs"]["count"] == 3
    # Through a link, the file it names is replaced; the link had become a file of its own.
    (tmp_path / "latest.h5").symlink_to(out)
    export_features(_config(ckpt, demo / "three.csv", tmp_path / "latest.h5", overwrite=True))
    assert (tmp_path / "latest.h5").is_symlink() and _read(out)["attrs"]["count"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "latest.h5"]  # no leftovers


def test_overwrite_replaces_only_an_earlier_export(demo, ckpt, tmp_path):
    manifest = tmp_path / "listings.csv"
    shutil.copyfile(demo / "three.csv", manifest)
    before = manifest.read_bytes()
    with pytest.raises(ExportError, match="not a phonesim features file"):
        export_features(_config(ckpt, manifest, manifest, overwrite=True))  # --out = the input
    assert manifest.read_bytes() == before
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = [1]
    with pytest.raises(ExportError, match="not a phonesim features file"):
        export_features(_config(ckpt, manifest, other, overwrite=True))


def test_overwrite_replaces_an_older_embed_file_and_names_a_file_lock(tmp_path):
    """A features file of an older `phonesim embed` (no ``format`` attribute; `index build`
    reads it) was "not a phonesim features file": `embed` and `demo` refused to replace it.
    And a file another process held open read as "not a features file" too."""
    import subprocess
    import sys

    from export.job import check_output

    older = tmp_path / "embeddings.h5"
    with h5py.File(older, "w") as h5:
        h5["ids"] = np.array([b"a"], dtype=h5py.string_dtype())
        h5["embeddings"] = np.ones((1, 4), np.float32)
    check_output(older, overwrite=True)  # replaceable
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(older.read_bytes()[:4096])  # "... sblock->base_addr ...": no lock
    with pytest.raises(ExportError, match="not a phonesim features file"):
        check_output(truncated, overwrite=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import h5py, sys, time; f = h5py.File({str(older)!r}, 'a'); print('open', flush=True);"
         " sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ExportError, match="another process has it open"):
            check_output(older, overwrite=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_missing_checkpoint(demo, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        export_features(_config(tmp_path / "nope", demo, tmp_path / "f.h5"))


def test_empty_inputs(ckpt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")  # it had said "no class folders found"
    with pytest.raises(DataError, match=r"no images in it \(an image's name ends in .*\.jpg"):
        export_features(_config(ckpt, empty, tmp_path / "f.h5"))
    header_only = tmp_path / "header.csv"
    header_only.write_text("id,image,label\n")
    with pytest.raises(DataError, match="no images found"):
        export_features(_config(ckpt, header_only, tmp_path / "f.h5"))
    assert not partial_path(tmp_path / "f.h5").exists()


def test_only_unreadable_images(demo, ckpt, tmp_path):
    manifest = tmp_path / "bad.csv"
    _write_manifest(manifest, [{"id": "b", "image": str(demo / "broken.jpg"), "label": ""}])
    with pytest.raises(ExportError, match="none of the 1 images could be read"):
        export_features(_config(ckpt, manifest, tmp_path / "f.h5"))
    assert not partial_path(tmp_path / "f.h5").exists() and not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("missing-dir/f.h5", "folder does not exist"),
        ("a-file/f.h5", "is a file, not a folder"),
        ("a-dir", "is a folder"),
        ("/proc/features.h5", "not writable"),
    ],
)
def test_unwritable_output(demo, ckpt, tmp_path, out, message):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(ExportError, match=message):
        export_features(_config(ckpt, demo, tmp_path / out))


def test_an_output_ending_in_a_slash_is_a_folder_not_a_file(demo, ckpt, tmp_path):
    """`--out newdir/` (no such folder) was written as a file named newdir, exit 0."""
    with pytest.raises(ExportError, match="names a folder; give a file name such as"):
        export_features(_config(ckpt, demo, f"{tmp_path}/newdir/"))
    assert not (tmp_path / "newdir").exists()


def test_resume_refuses_another_checkpoint_of_the_same_shape(demo, ckpt, tmp_path, monkeypatch):
    """Same architecture, dimension and classes, other weights: resuming would mix two models'
    embeddings in one file."""
    import torch
    from safetensors.torch import load_file, save_file

    from embedder.checkpoint import WEIGHTS_FILE

    other = tmp_path / "other-ckpt"
    shutil.copytree(ckpt, other)
    state = load_file(other / WEIGHTS_FILE)
    name = next(k for k, v in state.items() if torch.is_floating_point(v))
    state[name] = state[name] + 0.01
    save_file(state, other / WEIGHTS_FILE)
    assert checkpoint_hash(other) != checkpoint_hash(ckpt)

    out = tmp_path / "features.h5"
    _stopped_after_8_inputs(_config(ckpt, demo / "catalog.csv", out, shard_size=4), monkeypatch)
    with pytest.raises(ResumeError, match="different checkpoint"):
        export_features(_config(other, demo / "catalog.csv", out))
    summary = export_features(_config(ckpt, demo / "catalog.csv", out))
    assert summary.resumed_from == 8


def test_read_only_output_folder(demo, ckpt, tmp_path):
    """Root writes into any folder its mode forbids: there the folder is made immutable (it
    was skipped, so CI, which runs as root, never ran it)."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        if shutil.which("chattr") is None:
            pytest.skip("root, and no chattr to make a folder read-only for root")
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"root, and chattr +i is refused here: {done.stderr.decode().strip()}")
    else:
        folder.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            export_features(_config(ckpt, demo, folder / "f.h5"))
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o700)


def test_a_run_that_fails_before_its_first_shard_leaves_nothing_to_resume(demo, ckpt, tmp_path):
    """`--runtime onnx-int8` on a checkpoint without an int8 graph failed, but left
    OUT.partial/, and the corrected command was refused as "a different precision"."""
    private = tmp_path / "ckpt"
    shutil.copytree(ckpt, private)
    for graph in private.glob("*.onnx"):
        graph.unlink()
    out = tmp_path / "f.h5"
    with pytest.raises(EngineError, match="model.int8.onnx is missing"):
        export_features(_config(private, demo / "catalog.csv", out, runtime="onnx-int8"))
    assert not partial_path(out).exists()
    export_features(_config(private, demo / "catalog.csv", out, runtime="torch"))
    assert out.is_file()


def test_a_disk_without_room_for_the_file_keeps_the_shards_to_finish_later(
    demo, ckpt, tmp_path, monkeypatch
):
    """A full disk while h5py wrote or closed the file ended the process with a segmentation
    fault; the room is now checked before the file is assembled."""
    import shutil as shutil_module
    from collections import namedtuple

    out = tmp_path / "features.h5"
    real_usage = shutil_module.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(ExportError, match="make room and run the same command again"):
        export_features(_config(ckpt, demo / "with_bad.csv", out))
    assert not out.exists() and partial_path(out).is_dir()  # the embedded shards are kept
    monkeypatch.setattr(shutil_module, "disk_usage", real_usage)
    summary = export_features(_config(ckpt, demo / "with_bad.csv", out))
    assert summary.resumed_from > 0 and out.is_file()


def test_a_second_export_into_the_same_file_is_refused_while_the_first_runs(demo, ckpt, tmp_path):
    """Two at once (a resume started twice): the second died on a raw h5py error and once
    left a stale progress folder."""
    from common.errors import UserError
    from common.fsutil import exclusive_lock

    out = tmp_path / "features.h5"
    with (
        exclusive_lock(tmp_path / ".features.h5.lock", "held by the first"),
        pytest.raises(UserError, match=rf"another export \(pid {os.getpid()}\) is writing"),
    ):
        export_features(_config(ckpt, demo / "three.csv", out))
    assert not partial_path(out).exists()
    assert export_features(_config(ckpt, demo / "three.csv", out)).count == 3


def test_the_machine_running_out_stops_the_export_and_loses_no_photo(
    demo, ckpt, tmp_path, monkeypatch
):
    """Out of file descriptors, good photos were recorded as failed ("cannot decode image
    ([Errno 24] ...)") and the export went on to exit 0; the resumed run kept them failed."""
    import errno

    from common.errors import OutOfResourcesError
    from embedder import images

    real = images._decode
    calls = []

    def exhausted_later(*args):  # noqa: ANN002, ANN202
        calls.append(args)
        if len(calls) > 10:  # after the first shard is committed: Pillow's plugin import
            raise OSError(errno.EMFILE, "Too many open files", "PIL/GifImagePlugin.py")
        return real(*args)

    out = tmp_path / "f.h5"
    monkeypatch.setattr(images, "_decode", exhausted_later)
    with pytest.raises(OutOfResourcesError) as caught:
        export_features(_config(ckpt, demo / "with_bad.csv", out, neighbors=0))
    assert caught.value.exit_code == 1 and not out.exists()
    monkeypatch.undo()
    summary = export_features(_config(ckpt, demo / "with_bad.csv", out, neighbors=0))
    data = _read(out)
    assert sorted(data["ids"]) == sorted(_expected_ids(demo / "with_bad.csv"))
    assert summary.failed == 1  # only broken.jpg, not a photo read while out of descriptors
