"""Benchmark the catalog index on seeded clustered synthetic vectors.

Measures build time, peak memory, single-query latency (p50/p99), batched throughput,
recall@10 against exact search, filtered search (equality and price-range filters matching
about 1 %, 20 % and 80 % of the items, and a rare tag: recall@10 and p50 of each against the
unfiltered and the exact filtered search), the cost of durable adds, and the exact flat-search
baseline in the same run. Prints a table, then one line of JSON with every figure.

    python scripts/bench_index.py --n 1000000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from common.argtypes import non_negative_int, positive_int, refuse_file_as_folder, unit_interval
from common.errors import reporting_errors
from common.machine import run_context
from index.ann import create, resolve_kind
from index.benchmark import BenchConfig, format_table, run_benchmark
from index.errors import InvalidKindError


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=positive_int, default=d.n, help="catalog size (default %(default)s)")
    p.add_argument(
        "--dim", type=positive_int, default=d.dim, help="vector dimension (default %(default)s)"
    )
    p.add_argument(
        "--kind",
        default=d.kind,
        help="auto | flat | ivf | hnsw | FAISS factory string (default %(default)s)",
    )
    p.add_argument(
        "--clusters",
        type=positive_int,
        default=d.clusters,
        help="mixture components (default %(default)s)",
    )
    p.add_argument(
        "--spread-min",
        type=float,
        default=d.spread_min,
        help="cluster noise, low (default %(default)s)",
    )
    p.add_argument(
        "--spread-max",
        type=float,
        default=d.spread_max,
        help="cluster noise, high (default %(default)s)",
    )
    p.add_argument(
        "--nq",
        type=positive_int,
        default=d.nq,
        help="queries for recall and throughput (default %(default)s)",
    )
    p.add_argument(
        "--k", type=positive_int, default=d.k, help="neighbours per query (default %(default)s)"
    )
    p.add_argument(
        "--latency-queries",
        type=positive_int,
        default=d.latency_queries,
        help="single queries timed for p50/p99 (default %(default)s)",
    )
    p.add_argument(
        "--flat-queries",
        type=positive_int,
        default=d.flat_queries,
        help="queries timed on the exact flat baseline (default %(default)s)",
    )
    p.add_argument(
        "--filter-queries",
        type=positive_int,
        default=d.filter_queries,
        help="queries per filter for recall and p50 (default %(default)s)",
    )
    p.add_argument(
        "--exact-filter-limit",
        type=non_negative_int,
        default=None,
        help="filters matching at most this many items are searched exactly "
        "(default: the index default, 50000); lower it to exercise the approximate plan at small n",
    )
    p.add_argument(
        "--target-recall",
        type=unit_interval,
        default=d.target_recall,
        help="recall@10 the search defaults are tuned to, in (0, 1] (default %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="FAISS OpenMP threads (default: OpenMP's own, normally every core)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="data seed (default %(default)s)")
    p.add_argument(
        "--workdir",
        default=None,
        help="folder to build in: the index goes into a new bench_index_* folder there, "
        "removed at the end (default: the system's temporary folder)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the built index folder (its path is printed)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    a = p.parse_args(argv)
    refuse_file_as_folder(p, "--workdir", a.workdir)
    if not 0 <= a.spread_min <= a.spread_max:
        p.error(f"need 0 <= --spread-min ({a.spread_min}) <= --spread-max ({a.spread_max})")
    try:  # a kind FAISS cannot make fails now, not after the data and its ground truth
        create(resolve_kind(a.kind, a.n)[1], a.dim)
    except InvalidKindError as exc:
        p.error(f"--kind: {exc}")
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    fields = {k: v for k, v in vars(a).items() if k != "verbose"}
    return BenchConfig(**fields)


def _stop(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise SystemExit(128 + signum)  # unwinds, so the temporary index folder is removed


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop)
    # Each step on stderr as it starts: stdout stays the table and the JSON line.
    result = run_benchmark(
        parse_args(argv), stage=lambda m: print(f"... {m}", file=sys.stderr, flush=True)
    )
    print(format_table(result))
    print(json.dumps({**result, "context": run_context()}, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
