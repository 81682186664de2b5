"""Benchmark duplicate grouping on seeded synthetic embeddings with planted duplicates:
``phonesim duplicates bench`` (see ``--help``). Ends with one line of JSON.

    python scripts/bench_duplicates.py --n 100000 --dim 1280
"""

from duplicates.cli import main

if __name__ == "__main__":
    raise SystemExit(main("bench"))
