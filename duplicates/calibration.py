"""Calibrating the duplicate threshold on a labelled benchmark built from real photos.

The run builds the benchmark (``benchmark``), scores candidate pairs exactly as
``find_duplicates`` does, sweeps the threshold (group-level pairwise precision, recall, F1),
and picks the best F1 among thresholds with precision >= ``min_precision``. A perceptual hash
(pHash, 64 bits) is scored on the same benchmark as the baseline. The chosen threshold is
stored in the checkpoint's ``config.json`` under ``extra["duplicates"]`` together with the
descriptor and verification settings it is valid for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from duplicates.benchmark import Benchmark, BenchmarkConfig, build_benchmark
from duplicates.descriptor import CopyDescriptor, DescriptorConfig
from duplicates.evaluation import Sweep, sweep_thresholds
from duplicates.features import extract_features
from duplicates.finder import FALLBACK_THRESHOLD, FinderConfig, ScoredPairs, score_candidates
from duplicates.grouping import UnionFind
from duplicates.hashing import hamming_pairs, phash_bits
from duplicates.verify import VerifyConfig
from embedder.checkpoint import CONFIG_FILE, read_config
from embedder.errors import CheckpointError, ImageError
from embedder.images import load_image

log = logging.getLogger(__name__)

EXTRA_KEY = "duplicates"
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.30, 1.0001, 0.005), 4))


@dataclass(frozen=True)
class CalibrationConfig:
    """What to build and how to choose; the CLI flags parse into this."""

    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    finder: FinderConfig = field(default_factory=FinderConfig)
    min_precision: float = 0.95
    thresholds: tuple[float, ...] = THRESHOLDS


@dataclass
class CalibrationResult:
    """The sweep, the chosen operating point, and the pHash baseline on the same images."""

    sweep: Sweep
    chosen: dict[str, float] | None
    phash: Sweep
    phash_best: dict[str, float]
    images: int
    originals: int
    truth_pairs: int
    per_transform: dict[str, float]
    source: str
    config: CalibrationConfig

    def summary(self) -> str:
        ours = (
            f"no threshold reaches precision {self.config.min_precision:.2f}"
            if self.chosen is None
            else "threshold {threshold:.3f}: precision {precision:.3f}, recall {recall:.3f}, "
            "F1 {f1:.3f}".format(**self.chosen)
        )
        return (
            f"{self.images} benchmark images ({self.originals} originals, "
            f"{self.truth_pairs} duplicate pairs); {ours}; pHash baseline best F1 "
            f"{self.phash_best['f1']:.3f} (precision {self.phash_best['precision']:.3f}, "
            f"recall {self.phash_best['recall']:.3f} at similarity "
            f"{self.phash_best['threshold']:.3f})"
        )


def phash_sweep(benchmark: Benchmark) -> Sweep:
    """The baseline: 64-bit pHash, similarity = 1 - Hamming distance / 64, all pairs."""
    bits = []
    for s in benchmark.samples:
        try:
            bits.append(phash_bits(load_image(s.path)))
        except ImageError:
            bits.append(np.zeros(64, dtype=bool))
    i, j, s = hamming_pairs(np.stack(bits), max_distance=32)
    return sweep_thresholds(benchmark.truth, i, j, s, np.arange(64, 31, -1) / 64)


def per_transform_recall(
    benchmark: Benchmark, rows: np.ndarray, pairs: ScoredPairs, threshold: float
) -> dict[str, float]:
    """Share of copies grouped with their original, per edit (``crop2`` = crop at strength 2)."""
    uf = UnionFind(len(rows))
    for a, b in pairs.identical:
        uf.union(a, b)
    ok = pairs.scores >= threshold
    for a, b in zip(pairs.i[ok].tolist(), pairs.j[ok].tolist(), strict=True):
        uf.union(a, b)
    row_of = {int(s): r for r, s in enumerate(rows)}
    original = {}
    for r, s in enumerate(rows):
        meta = benchmark.samples[int(s)].metadata
        if meta.get("role") == "original":
            original[meta["truth"]] = r
    hits: dict[str, list[bool]] = defaultdict(list)
    for k, sample in enumerate(benchmark.samples):
        meta = sample.metadata
        if meta.get("role") != "copy":
            continue
        key = f"{meta['transform']}{meta['strength']}"
        r, o = row_of.get(k), original.get(meta["truth"])
        hits[key].append(r is not None and o is not None and uf.find(r) == uf.find(o))
    return {key: float(np.mean(v)) for key, v in sorted(hits.items())}


def calibrate(
    descriptor: CopyDescriptor, source: str | Path, work: str | Path, config: CalibrationConfig
) -> CalibrationResult:
    """Build the benchmark under ``work``, score it, and choose the threshold."""
    bench = build_benchmark(source, work, config.benchmark, progress=config.finder.progress)
    features = extract_features(
        descriptor,
        bench.samples,
        config.finder.batch_size,
        config.finder.workers,
        config.finder.progress,
    )
    try:
        truth = bench.truth[features.rows]
        pairs = score_candidates(features, config.finder)
    finally:
        features.close()
    if len(features) < len(bench.samples):
        log.warning("%d benchmark images could not be read", len(bench.samples) - len(features))
    sweep = sweep_thresholds(
        truth, pairs.i, pairs.j, pairs.scores, config.thresholds, always=pairs.identical
    )
    best = sweep.best(config.min_precision)
    chosen = sweep.row(best) if best is not None else None
    baseline = phash_sweep(bench)
    at = chosen["threshold"] if chosen else FALLBACK_THRESHOLD
    return CalibrationResult(
        sweep=sweep,
        chosen=chosen,
        phash=baseline,
        phash_best=baseline.row(baseline.best(0.0)),
        images=len(bench.samples),
        originals=bench.originals,
        truth_pairs=sweep.truth_pairs,
        per_transform=per_transform_recall(bench, features.rows, pairs, at),
        source=str(source),
        config=config,
    )


def sweep_table(result: CalibrationResult) -> str:
    """CSV of precision, recall and F1 per threshold (ours), plus pHash's own sweep."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "threshold", "precision", "recall", "f1", "predicted_pairs"])
    for name, sw in (("copy-descriptor", result.sweep), ("phash", result.phash)):
        for k in range(len(sw.thresholds)):
            values = (sw.thresholds[k], sw.precision[k], sw.recall[k], sw.f1[k])
            w.writerow([name, *(f"{v:.4f}" for v in values), int(sw.predicted_pairs[k])])
    return buf.getvalue()


def plot_curves(result: CalibrationResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sw = result.sweep
    ax1.plot(sw.thresholds, sw.precision, label="precision")
    ax1.plot(sw.thresholds, sw.recall, label="recall")
    ax1.plot(sw.thresholds, sw.f1, label="F1")
    if result.chosen:
        ax1.axvline(result.chosen["threshold"], color="k", ls="--", lw=1, label="default")
    ax1.axhline(result.config.min_precision, color="grey", ls=":", lw=1)
    ax1.set(
        xlabel="threshold (verified score)",
        ylabel="group-level pairwise metric",
        ylim=(0, 1.02),
        title="Copy detector vs threshold",
    )
    ax1.legend(loc="lower left")
    ax2.plot(sw.recall, sw.precision, label="copy detector")
    ax2.plot(result.phash.recall, result.phash.precision, label="pHash (baseline)")
    if result.chosen:
        ax2.plot([result.chosen["recall"]], [result.chosen["precision"]], "ko", label="default")
    ax2.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        title="Precision-recall",
    )
    ax2.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_calibration(result: CalibrationResult, out: str | Path) -> dict[str, Path]:
    """``calibration.csv`` (sweep table), ``calibration.png`` (curves), ``calibration.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "table": out / "calibration.csv",
        "plot": out / "calibration.png",
        "json": out / "calibration.json",
    }
    paths["table"].write_text(sweep_table(result))
    plot_curves(result, paths["plot"])
    report = {
        "summary": result.summary(),
        "chosen": result.chosen,
        "phash_best": result.phash_best,
        "images": result.images,
        "originals": result.originals,
        "truth_pairs": result.truth_pairs,
        "per_transform_recall": result.per_transform,
        "source": result.source,
        "benchmark": asdict(result.config.benchmark),
        "min_precision": result.config.min_precision,
    }
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    return paths


def calibration_record(
    result: CalibrationResult, descriptor: DescriptorConfig, finder: FinderConfig
) -> dict[str, Any]:
    """What is stored in the checkpoint: the threshold and the settings it is valid for."""
    if result.chosen is None:
        raise CheckpointError(
            f"no threshold reached precision {result.config.min_precision}; nothing stored"
        )
    return {
        "threshold": result.chosen["threshold"],
        "method": "copy-descriptor: GeM+mirror kNN candidates, local-feature RANSAC + "
        "photometric verification",
        "selection": f"best F1 with precision >= {result.config.min_precision}",
        "precision": result.chosen["precision"],
        "recall": result.chosen["recall"],
        "f1": result.chosen["f1"],
        "phash_best_f1": result.phash_best["f1"],
        "calibrated_on": result.source,
        "benchmark": {
            "images": result.images,
            "originals": result.originals,
            "seed": result.config.benchmark.seed,
        },
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "k": finder.k,
        "candidate_floor": finder.candidate_floor,
        "descriptor": descriptor.to_json(),
        "verify": asdict(finder.verify),
    }


def store_calibration(checkpoint: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` into the checkpoint's config.json atomically (temp file + rename)."""
    checkpoint = Path(checkpoint)
    read_config(checkpoint)  # validates that it is a checkpoint
    path = checkpoint / CONFIG_FILE
    data = json.loads(path.read_text())
    data.setdefault("extra", {})[EXTRA_KEY] = record
    fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", dir=checkpoint)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class StoredSettings:
    """Threshold and settings read back from a checkpoint (or defaults when uncalibrated)."""

    threshold: float
    calibrated: bool
    descriptor: DescriptorConfig
    finder_overrides: dict[str, Any]


def stored_settings(checkpoint: str | Path) -> StoredSettings:
    """The calibrated threshold and the settings it was calibrated with, if any."""
    record = read_config(checkpoint).extra.get(EXTRA_KEY) or {}
    if "threshold" not in record:
        return StoredSettings(FALLBACK_THRESHOLD, False, DescriptorConfig(), {})
    verify = VerifyConfig(
        **{
            k: v
            for k, v in (record.get("verify") or {}).items()
            if k in VerifyConfig.__dataclass_fields__
        }
    )
    overrides: dict[str, Any] = {"verify": verify}
    for key in ("k", "candidate_floor"):
        if key in record:
            overrides[key] = record[key]
    return StoredSettings(
        float(record["threshold"]),
        True,
        DescriptorConfig.from_json(record.get("descriptor") or {}),
        overrides,
    )
