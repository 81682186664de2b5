"""Benchmark of the export: items/s single-process vs Ray, and peak memory at N and 4N items.

Each export runs in a fresh child process so its peak RSS (VmHWM) is its own; the
parent only generates data, starts children and compares. Used by ``scripts/bench_export.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from common.machine import own_peak_rss_mb

log = logging.getLogger(__name__)

#: ``generate_catalog(out, classes, per_class, seed=, image_size=, progress=)`` -> catalog.csv
CatalogMaker = Callable[..., Path]

CHILD_FLAG = "--child"


@dataclass(frozen=True)
class BenchSettings:
    n: int = 1000
    workdir: str = "bench-export"
    model: str = "test_efficientnet"
    img_size: int = 64
    batch_size: int = 64
    neighbors: int = 10
    ray_actors: int | None = None
    threads: int | None = None
    skip_ray: bool = False


def child_main(spec_json: str) -> int:
    """Run one export described by JSON (ExportConfig fields) and print one JSON result line."""
    from export.config import ExportConfig
    from export.job import export_features

    spec = json.loads(spec_json)
    t0 = time.perf_counter()
    summary = export_features(ExportConfig(**spec))
    result = {
        "count": summary.count,
        "failed": summary.failed,
        "items_per_s": summary.items_per_s,
        "embed_s": summary.embed_seconds,
        "startup_s": summary.startup_seconds,
        "wall_s": time.perf_counter() - t0,
        # Not ru_maxrss: a child inherits the parent's across exec (902 MB at N and at 4N).
        "peak_rss_mb": own_peak_rss_mb(),
        "peak_child_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    print(json.dumps(result))
    return 0


def _run_child(script: Path, spec: dict) -> dict:
    cmd = [sys.executable, str(script), CHILD_FLAG, json.dumps(spec)]
    how = f"ray {spec['ray']}" if spec.get("ray") else "single process"
    log.info("export of %s (%s)", Path(spec["input"]).name, how)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _prepare(
    settings: BenchSettings, work: Path, generate_catalog: CatalogMaker
) -> tuple[Path, Path, Path]:
    """Demo catalog of 4N images, an N-row manifest over its first rows, a tiny checkpoint."""
    from embedder.train import TrainConfig, train

    n4 = 4 * settings.n
    classes = 8
    catalog = work / "catalog"
    big = catalog / "catalog.csv"
    if not big.is_file() or sum(1 for _ in big.open()) - 1 != n4 + (-n4 % classes):
        generate_catalog(catalog, classes, -(-n4 // classes), seed=0, image_size=96, progress=False)
    rows = list(csv.DictReader(big.open(newline="", encoding="utf-8")))
    # Interleave classes so that both manifests hold every class.
    rows.sort(key=lambda r: (r["image"].rsplit("_", 1)[-1], r["label"]))
    for name, count in (("n.csv", settings.n), ("n4.csv", n4)):
        with (catalog / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows[:count])
    ckpt = work / f"ckpt-{settings.model}-{settings.img_size}"
    if not (ckpt / "model.safetensors").is_file():
        train_data = work / "train"
        generate_catalog(train_data, 3, 8, seed=1, image_size=96, progress=False)
        train(
            TrainConfig(
                data=str(train_data),
                out=str(ckpt),
                model=settings.model,
                weights="none",
                img_size=settings.img_size,
                epochs=1,
                warmup_epochs=0,
                progress=False,
                workers=0,
            )
        )
    from embedder.runtime import resolve_runtime

    # The runtime decided (its graph exported and checked against torch) before any measured
    # run: the first export did it, and its peak (900 MB) read as the N run's.
    resolve_runtime(ckpt)
    return catalog / "n.csv", catalog / "n4.csv", ckpt


def _compare(a: Path, b: Path) -> dict:
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        same_ids = bool(np.array_equal(fa["ids"].asstr()[:], fb["ids"].asstr()[:]))
        diff = float(np.abs(fa["embeddings"][:] - fb["embeddings"][:]).max()) if same_ids else -1
    return {"ray_same_ids": same_ids, "ray_max_abs_diff": diff}


def run_bench(settings: BenchSettings, script: Path, generate_catalog: CatalogMaker) -> dict:
    """Run the benchmark and return the figures (also the final JSON line of the script).

    ``generate_catalog`` is ``demo.catalog.generate_catalog``, passed in by the script: the
    demo sits above the export, which does not import it.
    """
    work = Path(settings.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n_csv, n4_csv, ckpt = _prepare(settings, work, generate_catalog)
    base = {
        "checkpoint": str(ckpt),
        "neighbors": settings.neighbors,
        "batch_size": settings.batch_size,
        "progress": False,
        "overwrite": True,
        "restart": True,
    }
    local = {**base, "threads": settings.threads}
    local_n = _run_child(script, {**local, "input": str(n_csv), "out": str(work / "n.h5")})
    local_n4 = _run_child(script, {**local, "input": str(n4_csv), "out": str(work / "n4.h5")})
    figures = {
        "bench": "export_features",
        "n": settings.n,
        "n4": 4 * settings.n,
        "model": settings.model,
        "img_size": settings.img_size,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "baseline": "single-process",
        "local_threads": settings.threads or "torch default",
        "local_items_per_s": round(local_n4["items_per_s"], 1),
        "local_startup_s": round(local_n4["startup_s"], 2),
        "local_wall_s_4n": round(local_n4["wall_s"], 2),
        "peak_rss_mb_n": round(local_n["peak_rss_mb"], 1),
        "peak_rss_mb_4n": round(local_n4["peak_rss_mb"], 1),
        "peak_worker_rss_mb_4n": round(local_n4["peak_child_rss_mb"], 1),
    }
    growth = local_n4["peak_rss_mb"] / local_n["peak_rss_mb"]
    figures["peak_rss_growth_4n_over_n"] = round(growth, 3)
    figures["memory_flat_within_20pct"] = growth <= 1.2
    if not settings.skip_ray:
        spec = {**base, "input": str(n4_csv), "out": str(work / "n4-ray.h5"), "ray": "local"}
        if settings.ray_actors:
            spec["ray_actors"] = settings.ray_actors
        ray_n4 = _run_child(script, spec)
        figures.update(
            {
                "ray_items_per_s": round(ray_n4["items_per_s"], 1),
                "ray_startup_s": round(ray_n4["startup_s"], 2),
                "ray_wall_s_4n": round(ray_n4["wall_s"], 2),
                "ray_driver_peak_rss_mb_4n": round(ray_n4["peak_rss_mb"], 1),
                "ray_vs_local_ratio": round(ray_n4["items_per_s"] / local_n4["items_per_s"], 3),
                **_compare(work / "n4.h5", work / "n4-ray.h5"),
            }
        )
    return figures
