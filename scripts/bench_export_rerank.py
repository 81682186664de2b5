#!/usr/bin/env python
"""Item-item neighbours of `phonesim export`: similarity order against --class-rerank.

For each fold of ``bench_quality.py`` (repeat 0 by default) it takes that fold's cached
``recipe`` checkpoint (trained on the fold's training photos only), runs the real export job
over every photo of the dataset (``export_features`` with ``--neighbors 5 --class-rerank W``)
and scores the file's first neighbour: does it carry the item's own brand (Recall@1)?

- **unseen items**: the fold's held-out photos (cross-brand copies left out), which the model
  never trained on, as items added to a catalog after training are;
- **trained items**: the fold's training photos (cross-brand copies left out too), whose
  probabilities mostly repeat their labels.

The baseline, similarity order, is the same file's neighbours re-sorted by their cosine
similarity (its rows' nearest other rows), so both orders rank the same candidates. Near
copies stay in one fold, so an unseen photo's near copy is in the catalog beside it (a
realistic catalog), which lifts both orders alike. Reported: mean and 95% interval over folds,
the paired difference (fold-corrected t; group bootstrap by near-copy group), and one JSON
line. Needs ``scripts/bench_quality.py --only recipe`` first (it caches the checkpoints).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.errors import reporting_errors  # noqa: E402
from common.machine import run_context  # noqa: E402
from embedder.class_rerank import DEFAULT_WEIGHT  # noqa: E402
from embedder.crossval import corrected_interval, group_bootstrap_interval  # noqa: E402
from export import ExportConfig, export_features  # noqa: E402


def load_bench_quality() -> Any:
    """scripts/bench_quality.py as a module: its folds, groups and checkpoint cache."""
    spec = importlib.util.spec_from_file_location(
        "bench_quality", REPO / "scripts" / "bench_quality.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_manifest(path: Path, samples: list) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "label"])
        for s in samples:
            writer.writerow([s.id, str(Path(s.path).resolve()), s.label])


def first_neighbours(path: Path, order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per photo (in ``order``, the bench's sample ids): the sample index of its first
    neighbour as the file ranks it, and of its most similar other photo."""
    with h5py.File(path, "r") as f:
        ids = f["ids"].asstr()[:]
        emb = f["embeddings"][:].astype(np.float64)
        first = f["neighbors/rows"][:, 0]
    if sorted(ids) != sorted(order):
        raise SystemExit(f"{path}: the export holds other photos than the bench")
    if (first < 0).any():
        raise SystemExit(f"{path}: a photo has no neighbour (fewer than 2 photos?)")
    sample_of = {sid: i for i, sid in enumerate(order)}
    to_sample = np.array([sample_of[i] for i in ids])
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(1)
    ranked, similar = np.empty(len(ids), int), np.empty(len(ids), int)
    ranked[to_sample] = to_sample[first]
    similar[to_sample] = to_sample[nearest]
    return ranked, similar


def main() -> int:
    bq = load_bench_quality()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bq.add_fold_options(parser, "bench_quality's cache with the fold checkpoints")
    parser.add_argument(
        "--weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help=f"--class-rerank weight of the export (default {DEFAULT_WEIGHT}, serve's)",
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        if args.data == bq.DATA:  # no ../shared on this machine: a skip, not an error
            print(f"skipped: no dataset at {bq.DATA}")
            print(json.dumps({"skipped": f"no dataset at {bq.DATA}"}))
            return 0
        parser.error(f"dataset not found at {args.data} (--data)")
    if args.folds < 2:
        parser.error("--folds must be >= 2")
    if args.weight <= 0:
        parser.error("--weight must be above 0 (0 is the similarity order it is compared with)")
    logging.basicConfig(level=logging.WARNING)
    bench = bq.Bench(argparse.Namespace(data=args.data, folds=args.folds, repeats=1,
                                        seed=args.seed, work=args.work, audit=None))  # fmt: skip
    missing = [
        s.name
        for s in bench.splits
        if not (args.work / s.name / "recipe" / "model.safetensors").exists()
    ]
    if missing:  # before writing anything into the cache folder
        raise SystemExit(
            f"no recipe checkpoint for fold(s) {', '.join(missing)} in {args.work}: "
            "run scripts/bench_quality.py --only recipe first"
        )
    out_dir = args.work / "export_rerank"
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "photos.csv"
    write_manifest(manifest, bench.samples)
    order = [s.id for s in bench.samples]
    y = bench.y

    keys = ("unseen_similarity", "unseen_class", "trained_similarity", "trained_class")
    per_fold: dict[str, list[float]] = {k: [] for k in keys}
    diffs, groups = [], []
    t0 = time.perf_counter()
    for split in bench.splits:
        ckpt = args.work / split.name / "recipe"
        out = out_dir / f"{split.name}.h5"
        started = time.perf_counter()
        export_features(
            ExportConfig(checkpoint=str(ckpt), input=str(manifest), out=str(out),
                         input_kind="manifest", neighbors=5, class_rerank=args.weight,
                         runtime="torch", overwrite=True, progress=False)
        )  # fmt: skip
        ranked, similar = first_neighbours(out, order)
        test = split.test[bench.headline[split.test]]
        train = split.train[bench.headline[split.train]]
        hit_class, hit_similar = y[ranked] == y, y[similar] == y
        figures = {
            "unseen_similarity": hit_similar[test].mean(),
            "unseen_class": hit_class[test].mean(),
            "trained_similarity": hit_similar[train].mean(),
            "trained_class": hit_class[train].mean(),
        }
        for key, value in figures.items():
            per_fold[key].append(float(value))
        diffs += list(hit_class[test].astype(float) - hit_similar[test])
        groups += [f"{split.name}-{bench.groups[p]}" for p in test]
        print(
            f"  {split.name}: unseen R@1 {figures['unseen_similarity']:.3f} -> "
            f"{figures['unseen_class']:.3f}, trained R@1 {figures['trained_similarity']:.3f} -> "
            f"{figures['trained_class']:.3f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    frac = 1.0 / (args.folds - 1)
    summary: dict[str, Any] = {
        key: corrected_interval(values, frac).to_json() for key, values in per_fold.items()
    }
    for kind in ("unseen", "trained"):
        paired = np.subtract(per_fold[f"{kind}_class"], per_fold[f"{kind}_similarity"])
        summary[f"{kind}_difference"] = corrected_interval(paired, frac).to_json()
    summary["unseen_difference_bootstrap"] = group_bootstrap_interval(
        np.array(diffs), np.array(groups)
    ).to_json()
    summary.update(
        folds=len(bench.splits),
        weight=args.weight,
        baseline="similarity order (the same file's neighbours by cosine similarity)",
        unseen_ratio=round(
            summary["unseen_class"]["mean"] / summary["unseen_similarity"]["mean"], 4
        ),
        seconds=round(time.perf_counter() - t0, 1),
    )
    for kind in ("unseen", "trained"):
        s, c, d = (summary[f"{kind}_{k}"] for k in ("similarity", "class", "difference"))
        print(
            f"{kind} items: Recall@1 similarity {s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"
            f", class re-rank {c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}], paired "
            f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        )
    b = summary["unseen_difference_bootstrap"]
    print(f"unseen paired, group bootstrap: {b['mean']:+.3f} [{b['low']:+.3f}, {b['high']:+.3f}]")
    print(json.dumps({**summary, "context": run_context()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
