"""scripts/bench_export_rerank.py end to end on a small generated catalog, with a tiny
checkpoint standing in for bench_quality's cached fold checkpoints."""

from __future__ import annotations

import json
import shutil
from functools import partial

import h5py

from tests.conftest import REPO, run_script, tiny_train_config

SCRIPT = REPO / "scripts" / "bench_export_rerank.py"
run = partial(run_script, SCRIPT)


def test_exports_each_fold_and_ends_with_one_json_line(tmp_path):
    from demo.catalog import generate_catalog
    from embedder.train import train

    data = tmp_path / "catalog"
    generate_catalog(data, classes=3, per_class=8, seed=1, image_size=64, progress=False)
    work = tmp_path / "work"
    missing = run("--data", str(data), "--folds", "2", "--work", str(work))
    assert missing.returncode != 0 and "bench_quality.py --only recipe" in missing.stderr
    assert not (work / "export_rerank").exists()  # nothing written before the error

    tiny = tmp_path / "tiny"
    train(tiny_train_config(data, tiny))
    for fold in ("r0f0", "r0f1"):
        shutil.copytree(tiny, work / fold / "recipe")
    done = run("--data", str(data), "--folds", "2", "--work", str(work))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["folds"] == 2 and figures["weight"] == 0.1
    for key in ("unseen_similarity", "unseen_class", "trained_similarity", "trained_class"):
        entry = figures[key]  # two folds: a t-interval far wider than 0..1
        assert 0.0 <= entry["mean"] <= 1.0 and entry["low"] <= entry["mean"] <= entry["high"]
    assert "similarity order" in figures["baseline"] and "unseen_ratio" in figures
    with h5py.File(work / "export_rerank" / "r0f0.h5", "r") as f:
        assert len(f["ids"]) == 24 and f["neighbors"].attrs["ranking"] == "class"


def test_a_zero_weight_is_a_usage_error(tmp_path):
    done = run("--data", str(tmp_path), "--weight", "0", "--work", str(tmp_path / "w"))
    assert done.returncode == 2 and "--weight must be above 0" in done.stderr
