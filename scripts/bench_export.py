"""Benchmark the feature export: items/s single-process vs ``--ray local`` on the demo catalog,
and peak memory at N and 4N items (it should stay flat). Ends with one JSON line of figures.

    python scripts/bench_export.py --n 1000 --workdir /tmp/bench-export
"""

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from common.argtypes import positive_int, refuse_file_as_folder, thread_count
from common.errors import reporting_errors
from common.machine import run_context
from demo.catalog import generate_catalog
from export.bench import CHILD_FLAG, BenchSettings, child_main, run_bench


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_FLAG:
        return child_main(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--n",
        type=positive_int,
        default=1000,
        help="N: the small run; the large one is 4N (default %(default)s)",
    )
    p.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "phonesim-bench-export"),
        help="data, checkpoint and outputs, reused by later runs (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        default="test_efficientnet",
        help="timm model of the checkpoint (default %(default)s)",
    )
    p.add_argument("--img-size", type=positive_int, default=64, help="input side (default 64)")
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per batch (default 64)"
    )
    p.add_argument("--threads", type=thread_count, help="torch threads of the single-process runs")
    p.add_argument("--ray-actors", type=positive_int, help="default: one per CPU")
    p.add_argument("--skip-ray", action="store_true", help="single-process figures only")
    args = p.parse_args()
    refuse_file_as_folder(p, "--workdir", args.workdir)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    figures = run_bench(
        BenchSettings(
            n=args.n,
            workdir=args.workdir,
            model=args.model,
            img_size=args.img_size,
            batch_size=args.batch_size,
            ray_actors=args.ray_actors,
            threads=args.threads,
            skip_ray=args.skip_ray,
        ),
        Path(__file__).resolve(),
        generate_catalog,
    )
    for key, value in figures.items():
        print(f"{key:>30}: {value}")
    print(json.dumps({**figures, "context": run_context()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
