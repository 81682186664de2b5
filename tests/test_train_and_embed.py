"""The HDF5 embed job on a tiny checkpoint."""

from __future__ import annotations

import json

import h5py
import pytest

from embedder.embed_job import embed_to_hdf5
from embedder.errors import CheckpointError, DataError


def test_embed_job_writes_hdf5_and_lists_failures(tiny_checkpoint, tiny_catalog, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_catalog, data)
    (data / "demo-extra.jpg").write_bytes(b"")  # loose file: ignored (not in a class folder)
    broken = sorted((data).glob("*/*.jpg"))[0]
    broken.write_bytes(b"not a jpeg")
    summary = embed_to_hdf5(
        tiny_checkpoint, data / "catalog.csv", tmp_path / "e.h5", workers=0, progress=False
    )
    assert summary.embedded == 17 and summary.failed == 1
    with h5py.File(tmp_path / "e.h5") as h5:
        assert h5["embeddings"].shape == (17, summary.dim)
        assert h5["probabilities"].shape == (17, 3)
        assert len(set(h5["ids"].asstr()[:])) == 17
        assert h5.attrs["model_name"] == "test_efficientnet"
        assert h5.attrs["checkpoint_hash"] and h5.attrs["normalized"]
        assert "not a recognised image" in h5["failed"].asstr()[0]
        assert set(h5["labels"].asstr()[:]) == set(json.loads(h5.attrs["label_names"]))


def test_embed_job_bad_output_and_checkpoint(tiny_checkpoint, tiny_catalog, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        embed_to_hdf5(tiny_checkpoint, tiny_catalog, tmp_path / "no" / "e.h5")
    with pytest.raises(CheckpointError, match="not found"):
        embed_to_hdf5(tmp_path / "nockpt", tiny_catalog, tmp_path / "e.h5")


def test_a_failed_embed_job_leaves_no_partial_file(
    tiny_checkpoint, tiny_catalog, tmp_path, monkeypatch
):
    from embedder import embed_job

    def broken(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(embed_job, "iter_embeddings", broken)
    with pytest.raises(KeyboardInterrupt):
        embed_to_hdf5(tiny_checkpoint, tiny_catalog, tmp_path / "e.h5", progress=False)
    assert list(tmp_path.iterdir()) == []
