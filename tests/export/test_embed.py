"""``phonesim embed``: the export with the neighbour pass off, and the index reading its files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from embedder.errors import CheckpointError
from export import ExportConfig, ExportError, export_features
from export.shards import ShardWriter, partial_path
from index.build import read_embeddings
from index.errors import BuildInputError
from phonesim.cli import main


def _embed(checkpoint: Path, data: Path, out: Path, *extra: str) -> int:
    argv = ["embed", "--checkpoint", checkpoint, "--data", data, "--out", out, "--workers", "0"]
    return main([str(a) for a in (*argv, *extra)])


def test_embed_writes_hdf5_and_lists_failures(tiny_checkpoint, tiny_catalog, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_catalog, data)
    (data / "demo-extra.jpg").write_bytes(b"")  # loose file: not in the manifest
    broken = sorted(data.glob("*/*.jpg"))[0]
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "e.h5"
    with h5py.File(out, "w") as h5:  # an older export is replaced
        h5.attrs["format"] = "phonesim-features"
    assert _embed(tiny_checkpoint, data / "catalog.csv", out) == 0
    assert "embedded 17 images (1 failed) into" in capsys.readouterr().out
    with h5py.File(out) as h5:
        dim = h5.attrs["dim"]
        assert h5["embeddings"].shape == (17, dim) and h5["probabilities"].shape == (17, 3)
        assert len(set(h5["ids"].asstr()[:])) == 17
        assert h5.attrs["format"] == "phonesim-features" and h5.attrs["neighbors_k"] == 0
        assert h5.attrs["model_name"] == "test_efficientnet"
        assert h5.attrs["checkpoint_hash"] and h5.attrs["normalized"]
        assert "not a recognised image" in h5["failed_reasons"].asstr()[0]
        assert set(h5["labels"].asstr()[:]) == set(json.loads(h5.attrs["label_names"]))
        assert "neighbors" not in h5
    assert not partial_path(out).exists()
    # --json: the summary as one JSON object, the only thing on stdout
    assert _embed(tiny_checkpoint, data / "catalog.csv", out, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["count"], summary["failed"], summary["out"]) == (17, 1, str(out))
    assert summary["neighbors"] == 0 and summary["dim"] == dim


def test_embed_bad_output_and_checkpoint(tiny_checkpoint, tiny_catalog, tmp_path):
    def config(checkpoint: Path, out: Path) -> ExportConfig:
        return ExportConfig(str(checkpoint), str(tiny_catalog), str(out), neighbors=0)

    with pytest.raises(ExportError, match="does not exist"):
        export_features(config(tiny_checkpoint, tmp_path / "no" / "e.h5"))
    with pytest.raises(CheckpointError, match="not found"):
        export_features(config(tmp_path / "nockpt", tmp_path / "e.h5"))


def test_an_interrupted_embed_leaves_no_file_and_resumes(
    tiny_checkpoint, tiny_catalog, tmp_path, monkeypatch, capsys
):
    """Unlike the old embed job, progress is kept in OUT.partial/ and the same command resumes;
    interrupted before anything was committed, it leaves nothing."""
    out = tmp_path / "e.h5"
    write = ShardWriter.write

    def interrupted(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "write", interrupted)
    assert _embed(tiny_checkpoint, tiny_catalog, out, "--batch-size", "4") == 130
    assert list(tmp_path.iterdir()) == []

    def after_one_shard(self, batch):
        if self.partial.shards:
            raise KeyboardInterrupt
        write(self, batch)
        self.flush()  # the first batch is committed as a shard of its own

    monkeypatch.setattr(ShardWriter, "write", after_one_shard)
    assert _embed(tiny_checkpoint, tiny_catalog, out, "--batch-size", "4") == 130
    assert [p.name for p in tmp_path.iterdir()] == ["e.h5.partial"]
    # Through `phonesim`, Ctrl-C says where the progress is and how to resume it.
    err = capsys.readouterr().err
    assert f"interrupted; progress is kept in {out}.partial/" in err and "to resume" in err
    starts: list[int] = []

    def counted(self, batch):
        starts.append(batch.start)
        write(self, batch)

    monkeypatch.setattr(ShardWriter, "write", counted)
    assert _embed(tiny_checkpoint, tiny_catalog, out, "--batch-size", "4") == 0
    assert "embedded 18 images (0 failed)" in capsys.readouterr().out
    assert starts[0] == 4  # resumed after the committed shard
    assert [p.name for p in tmp_path.iterdir()] == ["e.h5"]
    with h5py.File(out) as h5:
        assert len(h5["ids"]) == 18


def _old_embed_file(path: Path, fmt: str | None = None) -> None:
    """The layout of the removed embedder/embed_job.py: no format attribute, reasons in 'failed'."""
    STR = h5py.string_dtype(encoding="utf-8")
    with h5py.File(path, "w") as h5:
        h5.create_dataset("ids", data=np.array(["a", "b"], dtype=object), dtype=STR)
        h5.create_dataset("embeddings", data=np.eye(2, 4, dtype=np.float32))
        h5.create_dataset("probabilities", data=np.full((2, 2), 0.5, np.float32))
        h5.create_dataset("predicted", data=np.zeros(2, np.int32))
        h5.create_dataset("labels", data=np.array(["x", ""], dtype=object), dtype=STR)
        h5.create_dataset("failed", data=np.array(["c: truncated"], dtype=object), dtype=STR)
        h5.attrs.update(
            {
                "format_version": 1,
                "model_name": "m",
                "checkpoint_hash": "h",
                "dim": 4,
                "normalized": True,
                "label_names": json.dumps(["x", "y"]),
                "count": 2,
                "failed_count": 1,
            }
        )
        if fmt is not None:
            h5.attrs["format"] = fmt


def test_index_build_reads_embed_output_and_old_embed_files(
    tiny_checkpoint, tiny_catalog, tmp_path
):
    out = tmp_path / "e.h5"
    export_features(
        ExportConfig(str(tiny_checkpoint), str(tiny_catalog), str(out), neighbors=0, progress=False)
    )
    new = read_embeddings(out)
    assert len(new.ids) == 18 and new.model_name == "test_efficientnet" and new.label_names
    _old_embed_file(tmp_path / "old.h5")
    old = read_embeddings(tmp_path / "old.h5")
    assert old.ids == ["a", "b"] and old.labels == ["x", ""] and old.failed == 1
    assert old.label_names == ["x", "y"] and old.xb.shape == (2, 4)
    _old_embed_file(tmp_path / "other.h5", fmt="someone-elses-features")
    with pytest.raises(BuildInputError, match="run 'phonesim embed'"):
        read_embeddings(tmp_path / "other.h5")


def test_index_build_refuses_features_of_a_newer_format_and_says_to_upgrade(tmp_path):
    """format_version was written but never read: a newer phonesim's file was indexed as is."""
    path = tmp_path / "newer.h5"
    _old_embed_file(path, fmt="phonesim-features")
    with h5py.File(path, "a") as h5:
        h5.attrs["format_version"] = 2
    with pytest.raises(BuildInputError, match="newer than this phonesim reads.*upgrade phonesim"):
        read_embeddings(path)
    with h5py.File(path, "a") as h5:
        h5.attrs["format_version"] = "one"
    with pytest.raises(BuildInputError, match="unsupported format_version 'one'"):
        read_embeddings(path)
    with h5py.File(path, "a") as h5:
        del h5.attrs["format_version"]  # the oldest files: read as version 1
    assert read_embeddings(path).ids == ["a", "b"]
    # A precision this phonesim never writes was taken, and then compared as if fp32.
    for precision, ok in (("int8", True), ("bf16", False)):
        with h5py.File(path, "a") as h5:
            h5.attrs["precision"] = precision
        if ok:
            assert read_embeddings(path).precision == "int8"
        else:
            with pytest.raises(BuildInputError, match="precision='bf16' is none this phonesim"):
                read_embeddings(path)
