"""Measuring an index kind on seeded clustered data: build, memory, latency, recall, updates.

The figures come from one run in one process, so ratios (speed-up over exact search, cost of a
durable add over an in-memory one) compare like with like. ``scripts/bench_index.py`` is the
command-line front end.
"""

# ruff: noqa: E741  (faiss vocabulary: D and I are scores and ids)

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from common.fsutil import folder_size
from index import ann
from index.bench_filters import catalog_metadata, filter_cases, format_filters, measure_filters
from index.build import build_index
from index.catalog import CatalogIndex, IndexOptions
from index.evaluation import ClusteredMixture, knn_ground_truth, knn_recall_at_k
from index.tuning import search_params, tunable_param

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run (``scripts/bench_index.py --help`` explains each)."""

    n: int = 100_000
    dim: int = 512
    kind: str = "auto"
    clusters: int = 2000
    spread_min: float = 0.75
    spread_max: float = 1.5
    nq: int = 1000
    k: int = 10
    latency_queries: int = 1000
    flat_queries: int = 30
    filter_queries: int = 200
    exact_filter_limit: int | None = None
    target_recall: float = 0.95
    threads: int | None = None
    seed: int = 0
    workdir: str | None = None
    keep: bool = False


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB, Linux ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    a = np.asarray(seconds) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _ids(fids: np.ndarray) -> list[str]:
    return [f"sku-{int(i):08d}" for i in fids]


def _fids(hits_per_query: list[list[Any]], k: int) -> np.ndarray:
    out = np.full((len(hits_per_query), k), -1, dtype=np.int64)
    for row, hits in enumerate(hits_per_query):
        out[row, : len(hits)] = [int(h.id[4:]) for h in hits]
    return out


def _time_single(fn: Any, xq: np.ndarray, n: int) -> list[float]:
    times = []
    for i in range(min(n, len(xq))):
        t = time.perf_counter()
        fn(xq[i])
        times.append(time.perf_counter() - t)
    return times


def run_benchmark(
    cfg: BenchConfig, stage: Callable[[str], None] = lambda message: None
) -> dict[str, Any]:
    """Run every measurement; returns a flat dict of figures (seconds, ms, MiB, ratios).
    ``stage`` hears of each step as it starts (a million vectors take minutes to build)."""
    if cfg.threads:
        faiss.omp_set_num_threads(cfg.threads)
    r: dict[str, Any] = {
        "config": asdict(cfg),
        "threads": faiss.omp_get_max_threads(),
        "cpus": os.cpu_count(),
        "load_avg_start": round(os.getloadavg()[0], 2),
    }
    mix = ClusteredMixture(cfg.dim, cfg.clusters, cfg.spread_min, cfg.spread_max, cfg.seed)

    stage(f"generating {cfg.n} x {cfg.dim} vectors and {cfg.nq} queries")
    t = time.perf_counter()
    xb, clusters = mix.sample(cfg.n, seed=1)
    xq, _ = mix.sample(cfg.nq, seed=2)  # fresh draws: not in the catalog
    r["generate_s"] = time.perf_counter() - t
    stage("exact neighbours of the queries (the recall ground truth)")
    t = time.perf_counter()
    D_gt, I_gt = knn_ground_truth(xq, xb, cfg.k)
    r["exact_batch_qps"] = cfg.nq / (time.perf_counter() - t)

    metadata, labels, prices = catalog_metadata(clusters, cfg.seed)
    cases = filter_cases(labels, prices)
    del labels, prices
    # A new folder of its own, also inside --workdir: the run deletes what it built and only
    # that ("WORKDIR/index" had been replaced and deleted, whatever it held).
    if cfg.workdir is not None:
        Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench_index_", dir=cfg.workdir))
    path = work / "index"
    try:
        stage(f"building the {cfg.kind} index in {path}")
        report = build_index(
            path,
            _ids(np.arange(cfg.n)),
            xb,
            metadata,
            model_name="synthetic",
            checkpoint_hash="0" * 64,
            kind=cfg.kind,
            target_recall=cfg.target_recall,
            progress=False,
        )
        del metadata
        r["kind"], r["factory"] = report.manifest.kind, report.manifest.factory
        r["search_defaults"] = report.manifest.search_defaults
        r["build_s"] = report.timings["total_s"]
        r["build_timings"] = {k: round(v, 2) for k, v in report.timings.items()}
        r["disk_mib"] = folder_size(path) / 2**20
        r["peak_rss_after_build_mib"] = peak_rss_mib()

        r["serving_rss_mib"] = _serving_rss_mib(path, cfg.dim)
        flat = faiss.IndexFlatIP(cfg.dim)  # the exact baseline; rows are the fids
        flat.add(xb)
        del xb
        opts = IndexOptions()
        if cfg.exact_filter_limit is not None:
            opts = IndexOptions(exact_filter_limit=cfg.exact_filter_limit)
        r["exact_filter_limit"] = opts.exact_filter_limit
        t = time.perf_counter()
        ix = CatalogIndex.open(path, options=opts)
        r["open_s"] = time.perf_counter() - t
        with ix:
            stage("searching: latency, throughput, recall")
            _measure_search(ix, xq, I_gt, cfg, r)
            stage("filtered searches")
            nq = min(cfg.filter_queries, len(xq))
            measure_filters(
                ix, flat, xq, cases, k=cfg.k, nq=nq, exact_queries=cfg.flat_queries, r=r
            )
            stage("durable adds")
            _measure_updates(ix, mix, cfg, r)
        stage("the exact flat-search baseline")
        _measure_flat(flat, xq, cfg, r)
    finally:
        if not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)
    r["speedup_p50"] = r["flat_p50_ms"] / r["p50_ms"]
    r["peak_rss_mib"] = peak_rss_mib()
    r["load_avg_end"] = round(os.getloadavg()[0], 2)
    return r


def _serving_rss_mib(path: Path, dim: int) -> float:
    """Peak memory (VmHWM) of a new process that opens the index read-only and answers a
    query (``ru_maxrss`` would include this process's memory, inherited across fork)."""
    code = (
        "import sys; import numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from index import open_index; ix = open_index(sys.argv[2], readonly=True);"
        "ix.search(np.ones(int(sys.argv[3]), np.float32), 10);"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code, repo, str(path), str(dim)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1]) / 1024


def _measure_search(
    ix: CatalogIndex, xq: np.ndarray, I_gt: np.ndarray, cfg: BenchConfig, r: dict
) -> None:
    k = cfg.k
    for i in range(min(20, len(xq))):  # warm-up: page in lists, build caches
        ix.search(xq[i], k)
    r["p50_ms"], r["p99_ms"] = _percentiles_ms(
        _time_single(lambda q: ix.search(q, k), xq, cfg.latency_queries)
    )
    index = ix._replica.index  # the bare FAISS index, for the FAISS-alone figures
    sp, _keep = search_params(index, ix.search_defaults)
    r["faiss_p50_ms"], r["faiss_p99_ms"] = _percentiles_ms(
        _time_single(lambda q: index.search(q[None, :], k, params=sp), xq, cfg.latency_queries)
    )
    t = time.perf_counter()
    hits = ix.search(xq, k)
    r["batch_qps"] = len(xq) / (time.perf_counter() - t)
    r["recall_at_10"] = knn_recall_at_k(_fids(hits, k), I_gt, k)
    # The recall/latency trade-off around the tuned default.
    name = tunable_param(index)
    curve = []
    if name:
        default = ix.search_defaults[name]
        for value in sorted({max(1, default // 2), default, default * 2}):
            lat = _time_single(
                lambda q, v=value: ix.search(q, k, params={name: v}),
                xq,
                min(200, cfg.latency_queries),
            )
            found = _fids(ix.search(xq, k, params={name: value}), k)
            curve.append(
                {
                    name: value,
                    "recall_at_10": round(knn_recall_at_k(found, I_gt, k), 4),
                    "p50_ms": round(_percentiles_ms(lat)[0], 3),
                }
            )
    r["tradeoff"] = curve


def _measure_updates(ix: CatalogIndex, mix: ClusteredMixture, cfg: BenchConfig, r: dict) -> None:
    """Durable add/remove (SQLite commit with fsync + FAISS) against FAISS-only adds."""
    xa, _ = mix.sample(1000 * 6 + 40, seed=3)
    fid0 = 10**9
    single, batch = [], []
    for i in range(20):
        t = time.perf_counter()
        ix.add([f"new-{i}"], xa[i : i + 1], [{"label": "new"}])
        single.append(time.perf_counter() - t)
    for j in range(5):
        rows = slice(40 + 1000 * j, 40 + 1000 * (j + 1))
        ids = [f"newb-{j}-{i}" for i in range(1000)]
        t = time.perf_counter()
        ix.add(ids, xa[rows], [{"label": "new"}] * 1000)
        batch.append(time.perf_counter() - t)
    t = time.perf_counter()
    ix.remove(["new-0"])
    r["durable_remove_1_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    ix.remove([f"newb-0-{i}" for i in range(1000)])
    r["durable_remove_1000_ms"] = (time.perf_counter() - t) * 1e3
    r["durable_add_1_ms"] = float(np.median(single) * 1e3)
    r["durable_add_1000_ms"] = float(np.median(batch) * 1e3)
    index = ix._replica.index
    if ann.supports_remove(index):  # in-memory FAISS add of the same sizes, then undo
        mem1, mem1000 = [], []
        for i in range(20):
            f = np.array([fid0 + i], np.int64)
            t = time.perf_counter()
            ann.add(index, xa[i : i + 1], f)
            mem1.append(time.perf_counter() - t)
            ann.remove(index, f)
        for j in range(5):
            f = np.arange(fid0, fid0 + 1000, dtype=np.int64)
            rows = slice(40 + 1000 * j, 40 + 1000 * (j + 1))
            t = time.perf_counter()
            ann.add(index, xa[rows], f)
            mem1000.append(time.perf_counter() - t)
            ann.remove(index, f)
        r["memory_add_1_ms"] = float(np.median(mem1) * 1e3)
        r["memory_add_1000_ms"] = float(np.median(mem1000) * 1e3)
    t = time.perf_counter()
    ix.checkpoint()
    r["checkpoint_s"] = time.perf_counter() - t


def _measure_flat(flat: faiss.IndexFlatIP, xq: np.ndarray, cfg: BenchConfig, r: dict) -> None:
    """The baseline: exact single-query search with FAISS ``IndexFlatIP``, same process."""
    flat.search(xq[:1], cfg.k)
    lat = _time_single(lambda q: flat.search(q[None, :], cfg.k), xq, cfg.flat_queries)
    r["flat_p50_ms"], r["flat_p99_ms"] = _percentiles_ms(lat)


def format_table(r: dict[str, Any]) -> str:
    """A readable summary of :func:`run_benchmark`'s figures."""
    c = r["config"]
    rows = [
        (
            "data",
            f"{c['n']:,} x {c['dim']} clustered ({c['clusters']} clusters), {c['nq']} queries",
        ),
        ("index", f"{r['kind']} ({r['factory']}) defaults {r['search_defaults']}"),
        (
            "machine",
            f"{r['cpus']} CPUs, {r['threads']} FAISS threads, "
            f"load average {r['load_avg_start']} at start, {r['load_avg_end']} at end",
        ),
        ("build", f"{r['build_s']:.1f} s {r['build_timings']}"),
        ("open (load + replay)", f"{r['open_s']:.2f} s"),
        ("disk", f"{r['disk_mib']:.0f} MiB"),
        ("serving memory", f"{r['serving_rss_mib']:.0f} MiB peak (new process: open, 1 query)"),
        (
            "benchmark peak RSS",
            f"{r['peak_rss_after_build_mib']:.0f} MiB after build, "
            f"{r['peak_rss_mib']:.0f} MiB overall",
        ),
        (
            "single query p50 / p99",
            f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f} ms "
            f"(FAISS alone {r['faiss_p50_ms']:.3f} / {r['faiss_p99_ms']:.3f} ms)",
        ),
        ("batched", f"{r['batch_qps']:.0f} queries/s"),
        ("recall@10", f"{r['recall_at_10']:.4f}"),
        ("exact flat p50 / p99", f"{r['flat_p50_ms']:.1f} / {r['flat_p99_ms']:.1f} ms"),
        ("speed-up (p50)", f"{r['speedup_p50']:.3g}x"),
    ]
    for t in r.get("tradeoff", []):
        name = next(k for k in t if k not in ("recall_at_10", "p50_ms"))
        rows.append(
            (f"  {name}={t[name]}", f"recall@10 {t['recall_at_10']:.4f}, p50 {t['p50_ms']:.3f} ms")
        )
    rows += format_filters(r)
    mem = ""
    if "memory_add_1_ms" in r:
        mem = (
            f" (in-memory FAISS only: {r['memory_add_1_ms']:.3f} / "
            f"{r['memory_add_1000_ms']:.1f} ms)"
        )
    rows += [
        (
            "durable add 1 / 1000",
            f"{r['durable_add_1_ms']:.2f} / {r['durable_add_1000_ms']:.1f} ms" + mem,
        ),
        (
            "durable remove 1 / 1000",
            f"{r['durable_remove_1_ms']:.2f} / {r['durable_remove_1000_ms']:.1f} ms",
        ),
        ("checkpoint", f"{r['checkpoint_s']:.2f} s"),
    ]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)
