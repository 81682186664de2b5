"""What writes cost the reads beside them, on a synthetic flat catalog in a SQLite folder.

Measures, each against its own baseline measured in the same run:

- a filtered search (a price range and a brand) with its caches warm, then right after a
  metadata update of a field it does not filter on (stock), and of one it does (price), made
  by the same process and by another process following the folder; and after the caches
  were dropped whole (what a write whose rows the store does not know costs: the way every
  write of another process was followed before);
- a page of items under a filter matching few items (`list_items`), and unfiltered;
- the slowest search of a thread searching while the same process compacts, against that
  thread's median search, and the compaction's time.

Prints a table, then one JSON line with every figure (baselines and ratios included).

    python scripts/bench_catalog_writes.py --n 80000 --dim 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common.argtypes import positive_int
from common.errors import reporting_errors
from common.machine import run_context
from index import build_index, open_index

BRANDS = ("Acme", "Beta", "Gamma")
FILTER = {"price": {"gte": 100, "lt": 300}, "brand": "Acme"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=positive_int, default=80_000, help="items (default %(default)s)")
    p.add_argument("--dim", type=positive_int, default=64, help="dimension (default %(default)s)")
    p.add_argument(
        "--rounds", type=positive_int, default=10, help="timed rounds per figure (default 10)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    return p.parse_args(argv)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _timed(work) -> float:  # noqa: ANN001
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _catalog(folder: Path, n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((n, dim)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    metadata = [
        {
            "brand": BRANDS[i % 3],
            "price": float(i % 1000),
            "stock": 1,
            "tag": "rare" if i % (n // 20 or 1) == 0 else "common",
        }
        for i in range(n)
    ]
    build_index(
        folder, [f"i{i:07d}" for i in range(n)], xb, metadata, model_name="m",
        checkpoint_hash="h", kind="flat", progress=False,
    )  # fmt: skip
    return xb


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-catalog-writes-") as tmp:
        folder = Path(tmp) / "index"
        xb = _catalog(folder, args.n, args.dim, args.seed)
        with open_index(folder) as ix:
            q = xb[0]
            ix.search(q, 10, filter=FILTER)
            warm = statistics.median(
                _timed(lambda: ix.search(q, 10, filter=FILTER)) for _ in range(args.rounds)
            )
            after = {}
            for field in ("stock", "price"):
                times = []
                for r in range(args.rounds):
                    ix.update_metadata(f"i{r % args.n:07d}", {field: 150.0 + r})
                    times.append(_timed(lambda: ix.search(q, 10, filter=FILTER)))
                after[field] = statistics.median(times)
            with open_index(folder, readonly=True) as other:
                other.search(q, 10, filter=FILTER)
                times, dropped = [], []
                for r in range(args.rounds):
                    ix.update_metadata(f"i{(r + 7) % args.n:07d}", {"price": 120.0 + r})
                    # Its next read follows the write first: timed with the search.
                    times.append(_timed(lambda: (other.sync(), other.search(q, 10, filter=FILTER))))
                    other._store.invalidate_caches()  # rows not known: every cache goes
                    dropped.append(_timed(lambda: other.search(q, 10, filter=FILTER)))
                after["other"], after["dropped"] = (
                    statistics.median(times),
                    statistics.median(dropped),
                )
            rare = {"tag": "rare"}
            ix.list_items(None, 20, filter=rare)
            page_rare = statistics.median(
                _timed(lambda: ix.list_items(None, 20, filter=rare)) for _ in range(args.rounds)
            )
            page_all = statistics.median(
                _timed(lambda: ix.list_items(None, 20)) for _ in range(args.rounds)
            )
            searches, compactions, stop = [], [], threading.Event()

            def search_on() -> None:
                while not stop.is_set():
                    searches.append(_timed(lambda: ix.search(q, 10)))

            searcher = threading.Thread(target=search_on)
            searcher.start()
            try:
                for r in range(3):
                    ix.add([f"new-{r}"], xb[1:2])
                    time.sleep(0.2)
                    compactions.append(_timed(lambda: ix.compact(force=True)))
                time.sleep(0.2)
            finally:
                stop.set()
                searcher.join()
    return {
        "n": args.n,
        "dim": args.dim,
        "filtered_search_warm_ms": _ms(warm),
        "after_stock_update_ms": _ms(after["stock"]),
        "after_price_update_ms": _ms(after["price"]),
        "stock_update_ratio": round(after["stock"] / warm, 2),
        "price_update_ratio": round(after["price"] / warm, 2),
        "after_other_process_price_update_ms": _ms(after["other"]),
        "other_process_update_ratio": round(after["other"] / warm, 2),
        "after_caches_dropped_ms": _ms(after["dropped"]),
        "caches_dropped_ratio": round(after["dropped"] / warm, 2),
        "rare_filter_page_ms": _ms(page_rare),
        "unfiltered_page_ms": _ms(page_all),
        "rare_page_ratio": round(page_rare / page_all, 2),
        "search_p50_ms": _ms(statistics.median(searches)),
        "slowest_search_during_compaction_ms": _ms(max(searches)),
        "compaction_ms": [_ms(c) for c in compactions],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return reporting_errors("bench_catalog_writes.py", lambda: report(measure(args)))


def report(result: dict) -> int:
    rows = [
        ("filtered search, caches warm", result["filtered_search_warm_ms"], "baseline"),
        ("  after a stock update", result["after_stock_update_ms"], result["stock_update_ratio"]),
        ("  after a price update", result["after_price_update_ms"], result["price_update_ratio"]),
        (
            "  ... by another process",
            result["after_other_process_price_update_ms"],
            result["other_process_update_ratio"],
        ),
        (
            "  after every cache dropped",
            result["after_caches_dropped_ms"],
            result["caches_dropped_ratio"],
        ),
        ("page of 20, unfiltered", result["unfiltered_page_ms"], "baseline"),
        ("  filter matching 20", result["rare_filter_page_ms"], result["rare_page_ratio"]),
        ("search p50 while compacting", result["search_p50_ms"], "baseline"),
        ("  slowest search", result["slowest_search_during_compaction_ms"], ""),
    ]
    print(f"{result['n']:,} items x {result['dim']}, flat, SQLite folder")
    for name, ms, ratio in rows:
        print(f"{name:32s} {ms:10.2f} ms  {ratio}")
    print(f"{'compactions':32s} {', '.join(f'{c:.0f}' for c in result['compaction_ms'])} ms")
    print(json.dumps({**result, "context": run_context()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
