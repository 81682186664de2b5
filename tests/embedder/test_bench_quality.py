"""scripts/bench_quality.py end to end on a small generated catalog (frozen-feature methods)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "bench_quality.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


def test_cross_validated_baselines_end_with_one_json_line_and_cache(tmp_path):
    from demo.catalog import generate_catalog

    data = tmp_path / "catalog"
    generate_catalog(data, classes=3, per_class=8, seed=1, image_size=64, progress=False)
    work = tmp_path / "work"
    methods = ("knn", "probe", "probe_knn")
    only = [
        arg
        for m in (*methods, "supcon_knn", "recipe_lite1_knn", "recipe_multiscale")
        for arg in ("--only", m)
    ]
    done = run("--data", str(data), "--folds", "2", *only, "--work", str(work))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["photos"] == 24 and figures["folds"] == 2
    # supcon_knn fuses cached supcon outputs: without them it says so and reports nothing.
    assert "no supcon outputs yet" in done.stdout and "supcon_knn" not in figures["methods"]
    assert "no recipe_lite1 outputs yet" in done.stdout
    assert "no recipe outputs yet" in done.stdout and "recipe_multiscale" not in figures["methods"]
    for method in methods:
        acc = figures["methods"][method]["accuracy"]
        assert figures["methods"][method]["folds"] == 2
        assert 0.0 <= acc["mean"] <= 1.0 and acc["low"] <= acc["mean"] <= acc["high"]
    # A second run reports the cached folds without recomputing them.
    again = run("--data", str(data), "--folds", "2", "--report", "--work", str(work))
    assert json.loads(again.stdout.strip().splitlines()[-1])["methods"] == figures["methods"]
    # More repeats extend the same cache: repeat 0's folds are reused, not refused.
    more = run(
        "--data", str(data), "--folds", "2", "--repeats", "2", "--report", "--work", str(work)
    )
    assert more.returncode == 0, more.stderr[-2000:]
    assert json.loads(more.stdout.strip().splitlines()[-1])["methods"] == figures["methods"]
    # Another fold setting refuses to mix its results into this cache.
    other = run("--data", str(data), "--folds", "3", "--report", "--work", str(work))
    assert other.returncode != 0 and "another setting" in other.stderr


def test_a_missing_dataset_is_a_usage_error(tmp_path):
    done = run("--data", str(tmp_path / "nowhere"), "--work", str(tmp_path / "w"))
    assert done.returncode == 2 and "dataset not found" in done.stderr
