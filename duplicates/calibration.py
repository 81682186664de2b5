"""Calibrating the duplicate threshold on a labelled benchmark built from real photos.

The run builds the benchmark (``benchmark``), verifies candidate pairs exactly as
``find_duplicates`` does, and fits the pair classifier (``pair_model``) on the verification
evidence. Thresholds are swept over *held-out* scores: each pair is scored by a model fitted
without its photo family (5 folds), so the reported precision, recall and F1 are those of
photos the model never saw. The chosen threshold is the best F1 among thresholds with
precision >= ``min_precision``; the model refitted on every pair is stored with it in the
checkpoint's ``config.json`` under ``extra["duplicates"]``, together with the descriptor and
verification settings it is valid for. In the same run the pixel agreement alone (the
uncalibrated score) and a perceptual hash (pHash, 64 bits) are swept as baselines.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from common.fsutil import atomic_write_text
from common.grouping import component_labels
from common.versions import version_problem
from duplicates.benchmark import Benchmark, BenchmarkConfig, Sources, build_benchmark
from duplicates.descriptor import CopyDescriptor, DescriptorConfig
from duplicates.evaluation import Sweep, sweep_thresholds
from duplicates.features import extract_features
from duplicates.finder import (
    FALLBACK_THRESHOLD,
    FinderConfig,
    ScoredPairs,
    score_candidates,
    stage_timing,
)
from duplicates.hashing import hamming_pairs, phash_available, phash_bits
from duplicates.pair_model import PairModel, cross_fitted_scores, fit_pair_model
from duplicates.verify import VerifyConfig
from embedder.checkpoint import CONFIG_FILE, read_config
from embedder.errors import CheckpointError, ImageError
from embedder.graphs import checkpoint_lock
from embedder.images import load_image

log = logging.getLogger(__name__)

EXTRA_KEY = "duplicates"
# Raised when a record gains settings an older phonesim would drop unread: it then refuses the
# record rather than run with a threshold calibrated for other settings. Records without one
# (before versions) drop the settings this phonesim no longer has, as they always did.
RECORD_VERSION = 1
_AGAIN = "run 'phonesim duplicates calibrate' again"  # what mends a damaged or newer record
_FINDER_KEYS = ("k", "candidate_floor", "whiten_dims", "whitened_floor")
# What calibration_record writes besides the settings: read for reports, never for finding.
_REPORT_KEYS = (
    "format_version", "threshold", "method", "pair_model", "selection", "precision", "recall",
    "f1", "phash_best_f1", "calibrated_on", "benchmark", "calibrated_at", "descriptor", "verify",
    "runtime",  # the model's runtime the scores were calibrated on (calibrate_cli adds it)
)  # fmt: skip
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 1.0001, 0.005), 4))


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
    agreement: Sweep  # the pixel agreement alone, as in an uncalibrated checkpoint
    agreement_chosen: dict[str, float] | None
    pair_model: PairModel | None  # None: too few pairs to fit; the agreement is the score
    phash: Sweep | None  # None: imagehash is not installed, the baseline was skipped
    phash_best: dict[str, float] | None
    images: int
    originals: int
    truth_pairs: int
    per_transform: dict[str, float]
    source: str
    config: CalibrationConfig
    false_pairs: list[dict[str, Any]] = field(default_factory=list)  # accepted, not one photo
    timing: dict[str, Any] = field(default_factory=dict)  # finder.stage_timing of the run

    def summary(self) -> str:
        ours = (
            f"no threshold reaches precision {self.config.min_precision:.2f}"
            if self.chosen is None
            else "threshold {threshold:.3f}: precision {precision:.3f}, recall {recall:.3f}, "
            "F1 {f1:.3f}".format(**self.chosen)
        )
        plain = (
            "agreement alone: no threshold reaches the precision"
            if self.agreement_chosen is None
            else "agreement alone: F1 {f1:.3f} (precision {precision:.3f}) at "
            "{threshold:.3f}".format(**self.agreement_chosen)
        )
        baseline = (
            "pHash baseline skipped (imagehash is not installed)"
            if self.phash_best is None
            else "pHash baseline best F1 {f1:.3f} (precision {precision:.3f}, recall "
            "{recall:.3f} at similarity {threshold:.3f})".format(**self.phash_best)
        )
        return (
            f"{self.images} benchmark images ({self.originals} originals, "
            f"{self.truth_pairs} duplicate pairs); {ours}; {plain}; {baseline}"
        )


def check_dependencies() -> bool:
    """Fail before the benchmark, not after it, when a package calibration needs is missing.

    Returns whether the optional pHash baseline can run (it needs ``imagehash``, a dev extra).
    """
    needed = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}
    missing = [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"calibration needs {', '.join(missing)}: pip install {' '.join(missing)}")
    return phash_available()


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
    group = component_labels(len(rows), pairs.accepted(threshold))
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
        hits[key].append(r is not None and o is not None and group[r] == group[o])
    return {key: float(np.mean(v)) for key, v in sorted(hits.items())}


def calibrate(
    descriptor: CopyDescriptor,
    source: str | Path,
    work: str | Path,
    config: CalibrationConfig,
    sources: Sources | None = None,
) -> CalibrationResult:
    """Build the benchmark under ``work``, score it, and choose the threshold.

    ``sources`` (``benchmark.read_sources``) are reused rather than read and clustered again.
    """
    with_phash = check_dependencies()
    if not with_phash:
        log.warning(
            "imagehash is not installed: the pHash baseline is skipped (pip install imagehash)"
        )
    bench = build_benchmark(
        source, work, config.benchmark, progress=config.finder.progress, sources=sources
    )
    features = extract_features(
        descriptor,
        bench.samples,
        config.finder.batch_size,
        config.finder.workers,
        config.finder.progress,
    )
    try:
        truth = bench.truth[features.rows]
        # Calibrate the verification itself, never a previously stored model.
        pairs = score_candidates(features, replace(config.finder, pair_model=None))
        timing = stage_timing(features, pairs, descriptor.engine.runtime)
    finally:
        features.close()
    if len(features) < len(bench.samples):
        log.warning("%d benchmark images could not be read", len(bench.samples) - len(features))

    def sweep_of(scores: np.ndarray) -> tuple[Sweep, dict[str, float] | None]:
        sw = sweep_thresholds(
            truth, pairs.i, pairs.j, scores, config.thresholds, always=pairs.identical
        )
        best = sw.best(config.min_precision)
        return sw, (sw.row(best) if best is not None else None)

    agreement, agreement_chosen = sweep_of(pairs.scores)
    model, held_out = fit_with_held_out_scores(pairs, truth)
    if model is None:
        sweep, chosen = agreement, agreement_chosen
    else:
        sweep, chosen = sweep_of(held_out)
        pairs = replace(pairs, scores=held_out)
    baseline = phash_sweep(bench) if with_phash else None
    # Without a threshold that reaches the precision, report at the best F1 of the same score.
    at = chosen["threshold"] if chosen else sweep.row(sweep.best_f1())["threshold"]
    rows = features.rows
    wrong = np.flatnonzero((pairs.scores >= at) & (truth[pairs.i] != truth[pairs.j]))
    false_pairs = [
        {
            "score": round(float(pairs.scores[k]), 4),
            **{
                f"{side}_{key}": bench.samples[int(rows[r])].metadata.get(key, "")
                for side, r in (("a", pairs.i[k]), ("b", pairs.j[k]))
                for key in ("image", "role", "transform", "strength", "source")
            },
        }
        for k in wrong[np.argsort(-pairs.scores[wrong])]
    ]
    return CalibrationResult(
        sweep=sweep,
        chosen=chosen,
        agreement=agreement,
        agreement_chosen=agreement_chosen,
        pair_model=model,
        phash=baseline,
        phash_best=baseline.row(baseline.best_f1()) if baseline else None,
        images=len(bench.samples),
        originals=bench.originals,
        truth_pairs=sweep.truth_pairs,
        per_transform=per_transform_recall(bench, features.rows, pairs, at),
        source=str(source),
        config=config,
        false_pairs=false_pairs,
        timing=timing,
    )


def fit_with_held_out_scores(
    pairs: ScoredPairs, truth: np.ndarray
) -> tuple[PairModel | None, np.ndarray]:
    """The pair model fitted on every verified pair, and each pair's held-out score.

    Pairs are grouped by photo family (the lower truth id of the two), so a fold holds out
    whole families. Identical pairs keep score 1; rejected pairs keep 0. Returns (None,
    agreement scores) when the benchmark has too few pairs of either kind to fit.
    """
    evidence = pairs.evidence
    if evidence is None or not len(evidence):
        return None, pairs.scores
    verified = ~np.isnan(evidence[:, 0])
    same = truth[pairs.i] == truth[pairs.j]
    family = np.minimum(truth[pairs.i], truth[pairs.j])
    if verified.sum() < 20 or min(same[verified].sum(), (~same[verified]).sum()) < 5:
        log.warning(
            "too few verified pairs to fit the pair model (%d); the pixel agreement is the score",
            int(verified.sum()),
        )
        return None, pairs.scores
    try:
        held = cross_fitted_scores(evidence[verified], same[verified], family[verified])
        model = fit_pair_model(evidence[verified], same[verified])
    except ValueError as exc:  # a fold without one of the two kinds of pair
        log.warning("pair model not fitted (%s); the pixel agreement is the score", exc)
        return None, pairs.scores
    # Unverified rows keep their score: 1 for identical files, 0 for rejected pairs.
    scores = pairs.scores.astype(np.float32).copy()
    scores[verified] = held
    return model, scores


def calibration_record(
    result: CalibrationResult, descriptor: DescriptorConfig, finder: FinderConfig
) -> dict[str, Any]:
    """What is stored in the checkpoint: the threshold and the settings it is valid for."""
    if result.chosen is None:
        raise CheckpointError(
            f"no threshold reached precision {result.config.min_precision}; nothing stored"
        )
    return {
        "format_version": RECORD_VERSION,
        "threshold": result.chosen["threshold"],
        "method": "copy-descriptor: GeM+mirror kNN candidates, local-feature RANSAC + "
        "photometric verification"
        + (", logistic pair model (held-out calibrated)" if result.pair_model else ""),
        "pair_model": result.pair_model.to_json() if result.pair_model else None,
        "selection": f"best F1 with precision >= {result.config.min_precision}",
        "precision": result.chosen["precision"],
        "recall": result.chosen["recall"],
        "f1": result.chosen["f1"],
        "phash_best_f1": result.phash_best["f1"] if result.phash_best else None,
        "calibrated_on": result.source,
        "benchmark": {
            "images": result.images,
            "originals": result.originals,
            "seed": result.config.benchmark.seed,
        },
        "calibrated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "k": finder.k,
        "candidate_floor": finder.candidate_floor,
        "whiten_dims": finder.whiten_dims,
        "whitened_floor": finder.whitened_floor,
        "descriptor": descriptor.to_json(),
        "verify": asdict(finder.verify),
    }


def store_calibration(checkpoint: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` into the checkpoint's config.json atomically (temp file + rename),
    under the lock the graph records are written under: each rewrites the whole file, and an
    export finishing meanwhile lost its record (the graph was made again on next use)."""
    checkpoint = Path(checkpoint)
    read_config(checkpoint)  # validates that it is a checkpoint
    path = checkpoint / CONFIG_FILE
    with checkpoint_lock(checkpoint):
        data = json.loads(path.read_text())
        data.setdefault("extra", {})[EXTRA_KEY] = record
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class StoredSettings:
    """Threshold and settings read back from a checkpoint (or defaults when uncalibrated)."""

    threshold: float
    calibrated: bool
    descriptor: DescriptorConfig
    finder_overrides: dict[str, Any]

    def finder_config(self, **changes: Any) -> FinderConfig:
        """The finder's settings as calibrated (threshold, verification, pair model), with
        ``changes`` on top: what ``duplicates find`` runs with. A plain ``FinderConfig()``
        ignores the calibration (threshold 0.90 on the raw agreement)."""
        return replace(
            FinderConfig(), **{**self.finder_overrides, "threshold": self.threshold, **changes}
        )


def has_calibration(checkpoint: str | Path) -> bool:
    """Whether the checkpoint holds a calibration record, readable by this phonesim or not
    (a damaged or newer one is still one that a weaker calibration must not replace)."""
    record = read_config(checkpoint).extra.get(EXTRA_KEY)
    return isinstance(record, dict) and "threshold" in record


def stored_settings(checkpoint: str | Path) -> StoredSettings:
    """The calibrated threshold and the settings it was calibrated with, if any; a
    :class:`CheckpointError` naming the setting when the record is damaged or newer."""
    record = read_config(checkpoint).extra.get(EXTRA_KEY) or {}
    if not isinstance(record, dict) or "threshold" not in record:
        return StoredSettings(FALLBACK_THRESHOLD, False, DescriptorConfig(), {})
    where = f"{Path(checkpoint) / CONFIG_FILE}: extra.{EXTRA_KEY}"
    version = record.get("format_version")
    problem = None if version is None else version_problem(version, (RECORD_VERSION,), _AGAIN)
    if problem:
        raise CheckpointError(f"{where}: {problem}")
    strict = version is not None  # a versioned record holds no setting this phonesim lacks
    unknown = sorted(set(record) - {*_FINDER_KEYS, *_REPORT_KEYS})
    if unknown and strict:
        raise CheckpointError(f"{where}: {_newer(unknown)}")
    threshold = record["threshold"]
    if not _is_number(threshold) or not 0 <= threshold <= 1:
        raise CheckpointError(f"{where}.threshold must be a number in [0, 1], got {threshold!r}")
    verify = VerifyConfig(
        **{
            "both_ways": False,  # calibrated before pairs were verified both ways
            **_settings(VerifyConfig, record.get("verify") or {}, f"{where}.verify", strict),
        }
    )
    # A record from before whitened candidates was calibrated on raw cosines: keep them.
    overrides: dict[str, Any] = {"verify": verify, "whiten_dims": 0}
    finder = {k: record[k] for k in _FINDER_KEYS if k in record}
    overrides.update(_settings(FinderConfig, finder, where, strict=True))
    if record.get("pair_model"):
        overrides["pair_model"] = PairModel.from_json(record["pair_model"])
    descriptor = _settings(
        DescriptorConfig, record.get("descriptor") or {}, f"{where}.descriptor", strict
    )
    return StoredSettings(float(threshold), True, DescriptorConfig.from_json(descriptor), overrides)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _settings(cls: type, data: Any, where: str, strict: bool) -> dict[str, Any]:
    """``data``'s settings of dataclass ``cls``, each of its default's type (an int where a
    float is expected too). ``strict``: a setting ``cls`` lacks means a newer phonesim wrote
    it; else such settings (removed since) are dropped."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} must be an object, got {data!r:.60}")
    defaults = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(defaults))
    if unknown and strict:
        raise CheckpointError(f"{where}: {_newer(unknown)}")
    kept = {}
    for key in data.keys() & defaults.keys():
        value, default = data[key], defaults[key]
        if not _fits(value, default):
            raise CheckpointError(
                f"{where}.{key} must be like {default!r}, got {value!r:.60}; {_AGAIN}"
            )
        integer = isinstance(default, int) and not isinstance(default, bool)
        kept[key] = int(value) if integer else value
    return kept


def _newer(unknown: list[str]) -> str:
    return (
        f"settings this phonesim does not know ({', '.join(unknown)}): a newer phonesim "
        f"calibrated it; upgrade phonesim or {_AGAIN}"
    )


def _fits(value: Any, default: Any) -> bool:
    """Whether a stored setting can stand for one whose default is ``default``."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return _is_number(value) and float(value).is_integer()
    if isinstance(default, float) or default is None:  # None: an optional size
        return _is_number(value) or (default is None and value is None)
    return isinstance(value, type(default))
