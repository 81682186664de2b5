"""Calibration over several benchmark seeds: is the operating point stable across samples?

One benchmark seed picks 250 originals out of ~700 photos; which photos are picked moves the
held-out F1 at the precision floor by several points (a photo that has a near-twin render
multiplies false pairs by its copies). ``calibrate_seeds`` runs the whole calibration once per
seed (sources are read and clustered once) and ``seed_summary`` reports each seed's operating
point with the mean, minimum and spread, beside the pixel agreement alone measured in the same
runs as the baseline. Nothing is stored: a threshold comes from a single-seed run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from duplicates.benchmark import read_sources
from duplicates.calibration import CalibrationConfig, CalibrationResult, calibrate
from duplicates.calibration_report import write_calibration
from duplicates.descriptor import CopyDescriptor

MAX_SEEDS = 100


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-4"``, ``"0,2,7"`` or a mix (``"0-2,9"``): distinct non-negative seeds, in order."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            first = int(lo)
            last = int(hi) if sep else first
            if first < 0 or last < first:
                raise ValueError
            seeds.extend(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seeds like 0-4 or 0,2,7 (non-negative, ranges ascending), got {text!r}"
        ) from None
    unique = tuple(dict.fromkeys(seeds))
    if len(unique) > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SEEDS} seeds, got {len(unique)}")
    return unique


def calibrate_seeds(
    descriptor: CopyDescriptor,
    source: str | Path,
    work: str | Path,
    config: CalibrationConfig,
    seeds: tuple[int, ...],
) -> list[tuple[int, CalibrationResult, float]]:
    """(seed, result, seconds) per seed; each seed's files go to ``work/seed-N``."""
    sources = read_sources(source, config.benchmark, config.finder.progress)
    out = []
    for seed in seeds:
        start = time.perf_counter()
        seeded = replace(config, benchmark=replace(config.benchmark, seed=seed))
        folder = Path(work) / f"seed-{seed}"
        result = calibrate(descriptor, source, folder / "benchmark", seeded, sources=sources)
        write_calibration(result, folder)
        out.append((seed, result, time.perf_counter() - start))
    return out


def _point(chosen: dict[str, float] | None) -> dict[str, float | None]:
    """An operating point; a seed with no threshold at the precision floor scores F1 0."""
    if chosen is None:
        return {"threshold": None, "precision": None, "recall": 0.0, "f1": 0.0}
    return {k: round(float(chosen[k]), 4) for k in ("threshold", "precision", "recall", "f1")}


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(v.mean()), 4),
        "min": round(float(v.min()), 4),
        "max": round(float(v.max()), 4),
        "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
    }


def seed_summary(
    runs: list[tuple[int, CalibrationResult, float]], min_precision: float
) -> dict[str, Any]:
    """Per-seed figures and their mean/min/max/std (sample std), for the pair model and for
    the agreement-alone baseline of the same runs."""
    per_seed = []
    for seed, result, seconds in runs:
        best = result.sweep.row(result.sweep.best_f1())
        per_seed.append(
            {
                "seed": seed,
                **_point(result.chosen),
                "agreement": _point(result.agreement_chosen),
                "best_f1_any_precision": round(best["f1"], 4),
                "false_pairs": len(result.false_pairs),
                "images": result.images,
                "truth_pairs": result.truth_pairs,
                "describe_images_per_s": result.timing.get("describe_images_per_s"),
                "verify_pairs_per_s": result.timing.get("verify_pairs_per_s"),
                "seconds": round(seconds, 1),
            }
        )
    summary: dict[str, Any] = {"seeds": [r["seed"] for r in per_seed]}
    summary["min_precision"] = min_precision
    for key in ("precision", "recall", "f1"):
        values = [r[key] if r[key] is not None else 0.0 for r in per_seed]
        summary[key] = _stats(values)
    summary["agreement_f1"] = _stats([r["agreement"]["f1"] for r in per_seed])
    summary["seeds_reaching_precision"] = sum(r["threshold"] is not None for r in per_seed)
    summary["per_seed"] = per_seed
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A table a person reads: one line per seed, then mean/min/max/std."""
    floor = summary["min_precision"]
    lines = [
        f"held-out operating point per seed (best F1 with precision >= {floor:.2f}); "
        "baseline: pixel agreement alone in the same runs",
        "seed  threshold  precision  recall     F1   agreement F1  best F1  false pairs",
    ]
    for r in summary["per_seed"]:
        t = "     none" if r["threshold"] is None else f"{r['threshold']:9.3f}"
        p = "     -" if r["precision"] is None else f"{r['precision']:6.3f}"
        lines.append(
            f"{r['seed']:4d}  {t}  {p:>9}  {r['recall']:6.3f}  {r['f1']:5.3f}  "
            f"{r['agreement']['f1']:12.3f}  {r['best_f1_any_precision']:7.3f}  "
            f"{r['false_pairs']:11d}"
        )
    for stat in ("mean", "min", "max", "std"):
        lines.append(
            f"{stat:>4}  {'':9}  {summary['precision'][stat]:9.3f}  "
            f"{summary['recall'][stat]:6.3f}  {summary['f1'][stat]:5.3f}  "
            f"{summary['agreement_f1'][stat]:12.3f}"
        )
    f1 = summary["f1"]
    base = summary["agreement_f1"]
    lines.append(
        f"F1 {f1['mean']:.3f} +- {f1['std']:.3f} (min {f1['min']:.3f}) vs agreement alone "
        f"{base['mean']:.3f} +- {base['std']:.3f} (min {base['min']:.3f}); "
        f"{summary['seeds_reaching_precision']}/{len(summary['seeds'])} seeds reach the "
        "precision floor"
    )
    return "\n".join(lines)


def run_seeds(
    descriptor: CopyDescriptor,
    source: str | Path,
    work: Path,
    config: CalibrationConfig,
    seeds: tuple[int, ...],
) -> int:
    """The ``calibrate --seeds`` command: table, then one JSON line; 1 if a seed fails the floor."""
    import json

    runs = calibrate_seeds(descriptor, source, work, config, seeds)
    summary = seed_summary(runs, config.min_precision)
    print(format_summary(summary))
    print(f"per-seed reports: {work}/seed-N/ (false_pairs.csv, calibration.csv)")
    print(json.dumps(summary))
    return 0 if summary["seeds_reaching_precision"] == len(seeds) else 1
