"""Tests for the feature export: schema, neighbours, dtype, resumption, errors, Ray path.

Fixtures (a demo catalog with one corrupt image and a tiny checkpoint) are built once per
session; each export of ~19 images at 64 px takes about a second.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from common.errors import UserError
from embedder.checkpoint import checkpoint_hash
from embedder.errors import CheckpointError, DataError
from export import ExportConfig, ExportError, RayUnavailableError, ResumeError, export_features
from export import cli as export_cli
from export.assemble import assemble
from export.mapper import EmbedMapper, FeatureBatch, embed_records, records_to_batch
from export.neighbors import auto_factory, drop_self
from export.reader import read_inputs, record_blocks
from export.shards import JobIdentity, PartialDir, ShardWriter, partial_path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "export_features.py"
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="ray is not installed (pip install '.[distributed]' or 'ray[data]')"
)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """Demo catalog (3 classes x 6) plus ``with_bad.csv``: the catalog and one corrupt image."""
    from demo.catalog import generate_catalog

    root = tmp_path_factory.mktemp("export") / "demo"
    csv_path = generate_catalog(root, classes=3, per_class=6, seed=3, image_size=64, progress=False)
    rows = list(csv.DictReader(csv_path.open(newline="", encoding="utf-8")))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows.insert(7, {**rows[0], "id": "bad-0001", "image": "broken.jpg", "label": ""})
    _write_manifest(root / "with_bad.csv", rows)
    _write_manifest(root / "three.csv", rows[:3])
    return root


@pytest.fixture(scope="session")
def ckpt(demo, tmp_path_factory) -> Path:
    from embedder.train import TrainConfig, train

    out = tmp_path_factory.mktemp("export-ckpt") / "tiny"
    train(
        TrainConfig(
            data=str(demo),
            out=str(out),
            model="test_efficientnet",
            weights="none",
            img_size=64,
            epochs=1,
            warmup_epochs=0,
            batch_size=8,
            progress=False,
            workers=0,
        )
    )
    return out


@pytest.fixture(scope="session")
def reference(demo, ckpt, tmp_path_factory) -> Path:
    """An uninterrupted single-process export of ``with_bad.csv`` (float32, k=4)."""
    out = tmp_path_factory.mktemp("export-ref") / "features.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", out))
    return out


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["id", "image", "label"])
        writer.writeheader()
        writer.writerows(rows)


def _config(ckpt: Path, data: Path, out: Path, **kw) -> ExportConfig:
    settings = dict(neighbors=4, batch_size=4, shard_size=8, workers=0, progress=False)
    settings.update(kw)
    return ExportConfig(checkpoint=str(ckpt), input=str(data), out=str(out), **settings)


def _expected_ids(manifest: Path) -> list[str]:
    rows = csv.DictReader(manifest.open(newline="", encoding="utf-8"))
    return [r["id"] for r in rows if r["image"] != "broken.jpg"]


def _read(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        data = {
            "ids": f["ids"].asstr()[:].tolist(),
            "labels": f["labels"].asstr()[:].tolist(),
            "emb": f["embeddings"][:],
            "probs": f["probabilities"][:],
            "pred": f["predicted"][:],
            "failed": f["failed"].asstr()[:].tolist(),
            "attrs": dict(f.attrs),
        }
        if "neighbors" in f:
            data["nb_ids"] = f["neighbors/ids"].asstr()[:]
            data["nb_rows"] = f["neighbors/rows"][:]
            data["nb_scores"] = f["neighbors/scores"][:]
    return data


def _brute_force(emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest other rows by inner product (self excluded), best first."""
    xb = emb.astype(np.float64)
    sims = xb @ xb.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def _assert_neighbors_match(data: dict, k: int, atol: float = 1e-5) -> None:
    gt_scores, gt_rows = _brute_force(data["emb"], k)
    np.testing.assert_allclose(data["nb_scores"], gt_scores, atol=atol)
    # Ids must agree wherever the reference has no near tie that could swap two neighbours.
    gaps = np.abs(np.diff(gt_scores, axis=1))
    tie = np.zeros_like(gt_rows, dtype=bool)
    tie[:, :-1] |= gaps < atol * 10
    tie[:, 1:] |= gaps < atol * 10
    assert np.array_equal(data["nb_rows"][~tie], gt_rows[~tie])
    ids = np.array(data["ids"], dtype=object)
    assert (data["nb_ids"] == ids[data["nb_rows"]]).all()
    assert not (data["nb_rows"] == np.arange(len(ids))[:, None]).any(), "self among neighbours"


# -- the HDF5 file --------------------------------------------------------------------------
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


def test_neighbors_agree_with_brute_force(reference):
    _assert_neighbors_match(_read(reference), k=4)


def test_ivf_neighbor_index_agrees_when_probing_every_list(demo, ckpt, tmp_path):
    out = tmp_path / "ivf.h5"
    export_features(_config(ckpt, demo / "with_bad.csv", out, neighbor_index="IVF2,Flat"))
    data = _read(out)
    _assert_neighbors_match(data, k=4)
    with h5py.File(out, "r") as f:
        assert "IVF2,Flat" in f["neighbors"].attrs["source"]


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


def test_fewer_items_than_k_pads_neighbors(demo, ckpt, tmp_path):
    out = tmp_path / "three.h5"
    export_features(_config(ckpt, demo / "three.csv", out, neighbors=5))
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


# -- pieces alone ---------------------------------------------------------------------------
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


def test_reader_blocks_and_duplicate_ids(demo, tmp_path):
    inputs = read_inputs(demo / "with_bad.csv", "manifest")
    blocks = list(record_blocks(inputs.samples, 5, 6))
    assert [b["index"].tolist() for b in blocks] == [
        list(range(5, 11)),
        list(range(11, 17)),
        list(range(17, 19)),
    ]
    assert blocks[0]["path"][0] == os.path.abspath(inputs.samples[5].path)
    assert read_inputs(demo / "with_bad.csv").fingerprint == inputs.fingerprint
    flat = tmp_path / "flat"
    flat.mkdir()
    img = next(demo.rglob("*.jpg")).read_bytes()
    (flat / "a.jpg").write_bytes(img)
    (flat / "a.png").write_bytes(img)
    # Files differing only by suffix keep it in their ids, so each row maps back to one file.
    assert [s.id for s in read_inputs(flat, "images").samples] == ["a.jpg", "a.png"]


def test_mapper_reports_bad_images_per_row(demo, ckpt):
    mapper = EmbedMapper(str(ckpt), expected_hash=checkpoint_hash(ckpt))
    good = sorted(demo.rglob("*.jpg"))[:2]
    records = {
        "index": np.array([10, 11, 12]),
        "path": np.array([str(good[0]), str(demo / "broken.jpg"), str(good[1])], dtype=object),
    }
    out = mapper(records)
    assert out["embedding"].shape == (3, mapper.embedder.dim)
    assert out["error"][0] == "" and "not a recognised" in out["error"][1] and out["error"][2] == ""
    batch = records_to_batch(out)
    assert (batch.start, batch.end) == (10, 13) and batch.indices.tolist() == [10, 12]
    assert [i for i, _ in batch.failures] == [11]
    direct = mapper.embedder.embed_paths(good)
    np.testing.assert_allclose(batch.embeddings, direct.embeddings, atol=1e-5)
    out["index"] = np.array([10, 12, 11])
    with pytest.raises(RuntimeError, match="out of order"):
        records_to_batch(out)
    with pytest.raises(ExportError, match="differs"):
        EmbedMapper(str(ckpt), expected_hash="0" * 64)
    assert embed_records(mapper.embedder, {"index": np.zeros(0), "path": []})["error"].size == 0


def _identity(n: int) -> JobIdentity:
    return JobIdentity("hash", "m", dim=4, num_classes=2, inputs_fingerprint="fp", inputs_count=n)


def test_shards_commit_resume_and_assemble_without_a_model(tmp_path):
    from embedder.data import Sample

    samples = [Sample(f"id{i}", tmp_path / f"{i}.jpg", "x" if i % 2 else "") for i in range(7)]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(7, 4)).astype(np.float32)
    probs = rng.dirichlet([1, 1], size=7).astype(np.float32)
    out = tmp_path / "f.h5"

    def batch(lo: int, hi: int, bad: tuple[int, ...] = ()) -> FeatureBatch:
        ok = [i for i in range(lo, hi) if i not in bad]
        return FeatureBatch(lo, hi, np.array(ok), emb[ok], probs[ok], [(i, "bad") for i in bad])

    partial = PartialDir.open(out, _identity(7))
    writer = ShardWriter(partial, samples, shard_size=3)
    writer.write(batch(0, 2))
    writer.write(batch(2, 4, bad=(3,)))  # 4 inputs buffered >= 3: one shard
    writer.write(batch(4, 5))
    assert [(s.input_start, s.input_end) for s in partial.shards] == [(0, 4)]
    with pytest.raises(RuntimeError, match="expected 5"):
        writer.write(batch(6, 7))
    # "Crash" here: input 4 was only buffered. Reopening resumes after the committed shard.
    (partial.path / "shard-000000000004.h5.tmp").write_bytes(b"torn")
    again = PartialDir.open(out, _identity(7))
    assert again.cursor == 4 and not list(again.path.glob("*.tmp"))
    writer = ShardWriter(again, samples, shard_size=3)
    writer.write(batch(4, 7))
    writer.flush()
    h5, done = assemble(again, tmp_path / "assembled.h5", "float32", ["a", "b"])
    with h5:
        ids = h5["ids"].asstr()[:].tolist()
        assert ids == ["id0", "id1", "id2", "id4", "id5", "id6"]
        assert h5["failed"].asstr()[:].tolist() == ["id3"]
        np.testing.assert_array_equal(h5["embeddings"][:], emb[[0, 1, 2, 4, 5, 6]])
        assert h5["predicted"][:].tolist() == probs[[0, 1, 2, 4, 5, 6]].argmax(1).tolist()
        assert h5["labels"].asstr()[:].tolist() == ["", "x", "", "", "x", ""]
    assert (done.count, done.failed) == (6, 1)
    with pytest.raises(ResumeError, match="different input list"):
        PartialDir.open(out, JobIdentity("hash", "m", 4, 2, "other", 7))


# -- resumption -----------------------------------------------------------------------------
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import export.shards as shards

    real_replace, commits = os.replace, []

    def replace_then_die(src, dst):
        if str(src).endswith(".h5.tmp"):
            commits.append(dst)
            if len(commits) == 3:  # third shard: written to its temp name, never renamed
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    shards.os.replace = replace_then_die
    from export.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_resume_after_sigkill_writes_each_id_once(reference, demo, ckpt, tmp_path):
    out = tmp_path / "features.h5"
    args = [
        "--checkpoint", str(ckpt), "--manifest", str(demo / "with_bad.csv"), "--out", str(out),
        "--neighbors", "4", "--batch-size", "2", "--shard-size", "4", "--workers", "0",
    ]  # fmt: skip
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(repo=str(REPO)))
    first = subprocess.run([sys.executable, str(killer), *args], capture_output=True, text=True)
    assert first.returncode == -signal.SIGKILL, first.stderr
    partial = partial_path(out)
    assert not out.exists()
    assert len(list(partial.glob("shard-*.h5"))) == 2 and len(list(partial.glob("*.tmp"))) == 1

    second = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert "resumed after 8 inputs" in second.stdout
    data, ref = _read(out), _read(reference)
    assert data["ids"] == ref["ids"] and len(set(data["ids"])) == len(data["ids"])
    assert data["failed"] == ["bad-0001"] and data["attrs"]["count"] == len(ref["ids"])
    np.testing.assert_allclose(data["emb"], ref["emb"], atol=1e-5)
    assert np.array_equal(data["nb_rows"], ref["nb_rows"])
    assert not partial.exists()


def test_ctrl_c_then_rerun_resumes(demo, ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "features.h5"
    argv = [
        "--checkpoint", str(ckpt), "--images", str(demo), "--out", str(out),
        "--batch-size", "3", "--shard-size", "6", "--workers", "0", "--neighbors", "2",
    ]  # fmt: skip
    real_write, calls = ShardWriter.write, []

    def interrupt_on_fifth(self, batch):
        calls.append(batch.start)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_write(self, batch)

    monkeypatch.setattr(ShardWriter, "write", interrupt_on_fifth)
    assert export_cli.main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not out.exists() and partial_path(out).is_dir()
    monkeypatch.setattr(ShardWriter, "write", real_write)
    assert export_cli.main(argv) == 0
    assert "resumed after 12 inputs" in capsys.readouterr().out
    data = _read(out)
    expected = read_inputs(demo, "images").samples
    assert data["ids"] == [s.id for s in expected] and data["failed"] == []


def test_resume_refuses_a_different_input_list(demo, ckpt, tmp_path, monkeypatch):
    out = tmp_path / "features.h5"
    real_write = ShardWriter.write

    def stop(self, batch):
        real_write(self, batch)
        if batch.end >= 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "write", stop)
    with pytest.raises(KeyboardInterrupt):
        export_features(_config(ckpt, demo / "with_bad.csv", out, shard_size=4))
    monkeypatch.setattr(ShardWriter, "write", real_write)
    with pytest.raises(ResumeError, match="different input list"):
        export_features(_config(ckpt, demo / "three.csv", out))
    summary = export_features(_config(ckpt, demo / "three.csv", out, restart=True))
    assert summary.count == 3 and summary.resumed_from == 0


def test_existing_output_needs_overwrite(reference, demo, ckpt, tmp_path):
    out = tmp_path / "f.h5"
    out.write_bytes(b"old")
    with pytest.raises(ExportError, match="--overwrite"):
        export_features(_config(ckpt, demo / "three.csv", out))
    export_features(_config(ckpt, demo / "three.csv", out, overwrite=True))
    assert _read(out)["attrs"]["count"] == 3


# -- bad input ------------------------------------------------------------------------------
def test_missing_checkpoint(demo, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        export_features(_config(tmp_path / "nope", demo, tmp_path / "f.h5"))


def test_empty_inputs(ckpt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class folders found"):
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
        ("missing-dir/f.h5", "output folder does not exist"),
        ("a-file/f.h5", "is not a folder"),
        ("a-dir", "is a folder"),
        ("/proc/features.h5", "not writable"),
    ],
)
def test_unwritable_output(demo, ckpt, tmp_path, out, message):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(ExportError, match=message):
        export_features(_config(ckpt, demo, tmp_path / out))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(demo, ckpt, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ExportError, match="not writable"):
            export_features(_config(ckpt, demo, folder / "f.h5"))
    finally:
        folder.chmod(0o700)


def test_cli_reports_errors_in_one_line(demo, ckpt, tmp_path, capsys):
    code = export_cli.main(
        ["--checkpoint", str(tmp_path / "nope"), "--images", str(demo),
         "--out", str(tmp_path / "f.h5")]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"export_features: error: {tmp_path / 'nope'}: checkpoint folder not found"]
    with pytest.raises(ExportError, match="needs a folder"):
        export_features(
            ExportConfig(str(ckpt), str(demo / "three.csv"), str(tmp_path / "f.h5"),
                         input_kind="images")
        )  # fmt: skip


def test_cli_help_lists_the_options():
    text = export_cli.build_parser().format_help()
    for flag in ("--checkpoint", "--images", "--manifest", "--index", "--neighbors", "--dtype",
                 "--ray", "docs/export.md"):  # fmt: skip
        assert flag in text
    with pytest.raises(SystemExit):
        export_cli.build_parser().parse_args(["--checkpoint", "c", "--out", "o"])


def test_config_rejects_bad_settings():
    with pytest.raises(UserError, match="dtype"):
        ExportConfig("c", "i", "o", dtype="float64")
    with pytest.raises(UserError, match="neighbors"):
        ExportConfig("c", "i", "o", neighbors=-1)


# -- Ray ------------------------------------------------------------------------------------
def test_ray_missing_gives_install_hint(monkeypatch):
    from export import ray_runner

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayUnavailableError, match=r"phonesim\[distributed\]"):
        ray_runner.import_ray()


@pytest.fixture(scope="module")
def local_ray():
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install '.[distributed]' or 'ray[data]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_path_equals_local_path(local_ray, reference, demo, ckpt, tmp_path):
    out = tmp_path / "ray.h5"
    summary = export_features(
        _config(ckpt, demo / "with_bad.csv", out, ray="local", ray_actors=2, batch_size=3)
    )
    assert summary.runner == "ray" and local_ray.is_initialized()  # reused, not shut down
    ray_data, local = _read(out), _read(reference)
    assert ray_data["ids"] == local["ids"] and ray_data["failed"] == local["failed"]
    assert ray_data["labels"] == local["labels"]
    np.testing.assert_allclose(ray_data["emb"], local["emb"], atol=1e-5)
    np.testing.assert_allclose(ray_data["probs"], local["probs"], atol=1e-5)
    assert np.array_equal(ray_data["pred"], local["pred"])
    np.testing.assert_allclose(ray_data["nb_scores"], local["nb_scores"], atol=1e-5)
    for key in ("model_name", "checkpoint_hash", "count", "failed_count", "dim"):
        assert ray_data["attrs"][key] == local["attrs"][key]
