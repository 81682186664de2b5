"""The export on every inference runtime: the embeddings, probabilities and neighbours of torch
eager, the runtime and precision recorded in the file and in an index built from it, and no
resume that would mix int8 and fp32 rows."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from export import ExportConfig, ResumeError, export_features
from export.shards import MANIFEST, JobIdentity, PartialDir, partial_path
from tests.export.conftest import _read

RUNTIMES = ["torch", "auto", "onnx", "onnx-int8"]


@pytest.fixture(scope="module")
def exports(int8_checkpoint, tiny_catalog, tmp_path_factory) -> dict:
    files = {}
    for runtime in RUNTIMES:
        out = tmp_path_factory.mktemp(f"export-{runtime}") / "features.h5"
        config = ExportConfig(
            checkpoint=str(int8_checkpoint),
            input=str(tiny_catalog / "catalog.csv"),
            out=str(out),
            neighbors=3,
            runtime=runtime,
            threads=1,
            workers=0,
            progress=False,
        )
        assert export_features(config).runtime == ("onnx" if runtime == "auto" else runtime)
        files[runtime] = out
    return files


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_runtime_exports_what_torch_eager_does(exports, runtime):
    ref, got = _read(exports["torch"]), _read(exports[runtime])
    int8 = runtime == "onnx-int8"
    assert got["ids"] == ref["ids"] and got["labels"] == ref["labels"]
    assert got["attrs"]["runtime"] == ("onnx" if runtime == "auto" else runtime)
    assert got["attrs"]["precision"] == ("int8" if int8 else "fp32")
    assert (got["emb"] * ref["emb"]).sum(1).min() >= (0.95 if int8 else 0.9999)
    top2 = np.sort(ref["probs"], axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > (0.002 if int8 else 0.0)
    assert clear.sum() >= len(clear) // 2
    np.testing.assert_array_equal(got["pred"][clear], ref["pred"][clear])
    if not int8:
        np.testing.assert_allclose(got["emb"], ref["emb"], atol=1e-4)
        np.testing.assert_allclose(got["nb_scores"], ref["nb_scores"], atol=1e-4)


def test_an_index_built_from_int8_embeddings_records_their_precision(
    exports, tiny_catalog, tmp_path
):
    from index import read_manifest
    from index.build import build_from_files

    for runtime, precision in (("onnx-int8", "int8"), ("torch", "fp32")):
        out = tmp_path / runtime
        build_from_files(exports[runtime], out, catalog=tiny_catalog / "catalog.csv")
        source = read_manifest(out).source
        assert source["embedding_precision"] == precision
        assert source["embedding_runtime"] == runtime


def test_a_resume_never_mixes_int8_and_fp32_rows(tmp_path):
    fp32 = JobIdentity("hash", "model", 8, 3, "inputs", 10)
    out = tmp_path / "features.h5"
    PartialDir.open(out, fp32)
    PartialDir.open(out, fp32)  # the same precision resumes
    with pytest.raises(ResumeError, match="different embedding precision"):
        PartialDir.open(out, replace(fp32, precision="int8"))
    manifest = partial_path(out) / MANIFEST  # written before runtimes existed: fp32
    manifest.write_text(
        json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "precision"})
    )
    PartialDir.open(out, fp32)


def test_an_empty_progress_folder_is_taken_afresh_but_nothing_else(tmp_path):
    """A run stopped between making OUT.partial/ and writing its manifest (or one whose
    manifest did not fit on the disk) left it empty, and `--restart` refused it as "not an
    export in progress"; the same command run again did too. It holds nothing: both take it."""
    from export import ExportError

    identity = JobIdentity("hash", "model", 8, 3, "inputs", 10)
    out = tmp_path / "features.h5"
    partial_path(out).mkdir()
    PartialDir.open(out, identity)
    assert (partial_path(out) / MANIFEST).is_file()
    (partial_path(out) / MANIFEST).unlink()
    PartialDir.open(out, identity, restart=True)
    assert (partial_path(out) / MANIFEST).is_file()
    other = tmp_path / "other.h5"
    partial_path(other).mkdir()
    (partial_path(other) / "notes.txt").write_text("someone's")
    with pytest.raises(ExportError, match="not an export in progress"):
        PartialDir.open(other, identity, restart=True)
    assert (partial_path(other) / "notes.txt").exists()
