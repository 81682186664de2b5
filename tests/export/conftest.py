"""Shared fixtures of the export tests: a demo catalog with one corrupt image, a tiny checkpoint
and one reference export, built once per session (each export of ~19 images at 64 px takes
about a second)."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest

from export import ExportConfig, export_features

REPO = Path(__file__).resolve().parents[2]


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
            data=str(demo / "catalog.csv"),  # the folder also holds broken.jpg, in no class
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
