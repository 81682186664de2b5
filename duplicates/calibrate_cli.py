"""``phonesim duplicates calibrate``: its flags and the run (one seed, or several with --seeds)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.argtypes import (
    add_progress_option,
    batch_size,
    decode_workers,
    non_negative_float,
    non_negative_int,
    positive_int,
    probability,
    show_progress,
)
from duplicates.descriptor import DescriptorConfig
from embedder.checkpoint import CALIBRATION_FOLDER
from embedder.engine_options import EngineOptions, add_engine_options

if TYPE_CHECKING:
    from duplicates.calibration import CalibrationResult

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)
DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "phone-brands"


CALIBRATE_DESCRIPTION = """\
Calibrate the duplicate threshold of a checkpoint on real photos: build a labelled benchmark
(sampled originals, each with perturbed copies: JPEG, thumbnail, crop, border/padding, text and
price tags, mirror, colour, screen photo, and combinations, at several strengths; plus untouched
distractors), verify candidate pairs exactly as find_duplicates does, and fit the pair
classifier that turns the verification evidence into a score. Thresholds are swept over held-out
scores (each photo family scored by a model fitted without it, 5 folds); the best F1 among
thresholds with precision >= --min-precision is stored in the checkpoint's config.json with the
classifier refitted on all pairs. The pixel agreement alone and a pHash are swept on the same
benchmark as baselines. Source photos that are already copies of each other (byte, pixel or
near-identical, re-framed or cropped) are clustered first and used once. The output ends with
one line of JSON: the chosen operating point beside the agreement-alone baseline (per seed and
their spread with --seeds).
"""

# What calibrate writes into its --work folder, besides a seed-N folder per --seeds seed.
WORK_FILES = frozenset(
    {"benchmark", "calibration.csv", "calibration.png", "calibration.json", "false_pairs.csv"}
)


def seed_folders(work: Path) -> set[str]:
    """The seed-N folders of an earlier ``--seeds`` run in ``work``."""
    if not work.is_dir():
        return set()
    return {p.name for p in work.iterdir() if re.fullmatch(r"seed-\d+", p.name) and p.is_dir()}


def _seed_list(text: str) -> tuple[int, ...]:
    from duplicates.calibration_seeds import parse_seeds

    return parse_seeds(text)


def check_checkpoint_writable(checkpoint: str | Path) -> None:
    """Refuse, before minutes of calibration, a checkpoint whose config.json cannot be
    replaced (the threshold is written there atomically: a new file beside it, renamed)."""
    from common.fsutil import folder_write_problem
    from embedder.errors import CheckpointError

    folder = Path(checkpoint)
    problem = folder_write_problem(folder) if folder.is_dir() else None
    if problem:
        raise CheckpointError(
            f"{folder}: {problem}, so the threshold cannot be stored; "
            "use --dry-run to calibrate without storing it"
        )


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="model checkpoint folder")
    p.add_argument(
        "--data",
        "--images",
        dest="data",
        default=str(DEFAULT_SOURCE),
        metavar="DIR",
        help="a folder of real photos to build the benchmark from (default: %(default)s)",
    )
    p.add_argument(
        "--work",
        metavar="DIR",
        help="folder for the benchmark images and report (default: CKPT/duplicates-calibration)",
    )
    p.add_argument(
        "--originals", type=positive_int, default=250, help="originals (default %(default)s)"
    )
    p.add_argument(
        "--copies", type=positive_int, default=4, help="copies per original (default %(default)s)"
    )
    p.add_argument(
        "--distractors",
        type=non_negative_int,
        help="untouched distractors (default: all remaining photos)",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument(
        "--seed", type=non_negative_int, default=0, help="benchmark seed (default 0)"
    )
    seeds.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="SEEDS",
        help="calibrate on several benchmark seeds (e.g. 0-4 or 0,2,7) and print each seed's "
        "precision/recall/F1 with mean, min and spread, ending with one JSON line; stores nothing",
    )
    p.add_argument(
        "--min-precision",
        type=probability,
        default=0.95,
        help="lowest precision a stored threshold may have (default 0.95)",
    )
    p.add_argument(
        "--blur",
        type=non_negative_float,
        default=DescriptorConfig.blur,
        metavar="SIGMA",
        help="Gaussian blur (input pixels) of the pass the candidate-finding descriptor comes "
        "from, so photographed screens and noisy copies find their originals; 0 describes the "
        "sharp image only, half the model time (default %(default)s; stored with the threshold)",
    )
    p.add_argument("--dry-run", action="store_true", help="report only; do not store")
    p.add_argument(
        "--batch-size", type=batch_size, default=32, help="images per forward pass (default 32)"
    )
    p.add_argument("--workers", type=decode_workers, help="image decoding threads (default: auto)")
    add_engine_options(p, threads_help="model threads (default: every core)")
    add_progress_option(p)


def run_calibrate(args: argparse.Namespace) -> int:
    from duplicates.benchmark import BenchmarkConfig
    from duplicates.calibration import (
        CalibrationConfig,
        calibrate,
        calibration_record,
        has_calibration,
        store_calibration,
    )
    from duplicates.calibration_report import write_calibration
    from duplicates.descriptor import CopyDescriptor
    from duplicates.finder import FinderConfig
    from embedder.errors import DataError, check_output_folder

    if args.data == str(DEFAULT_SOURCE) and not DEFAULT_SOURCE.is_dir():
        raise DataError(
            f"--data: no photos at the default {DEFAULT_SOURCE} (the shared phone-brands "
            "dataset is not on this machine); give a folder of real photos with --data DIR"
        )
    work = Path(args.work) if args.work else Path(args.checkpoint) / CALIBRATION_FOLDER
    # Its benchmark/images is replaced: never in a folder of other files (a data folder).
    check_output_folder(work, owns=WORK_FILES | seed_folders(work))
    if not args.dry_run and args.seeds is None:
        check_checkpoint_writable(args.checkpoint)  # the threshold is stored there at the end
    descriptor = CopyDescriptor.from_checkpoint(
        args.checkpoint, DescriptorConfig(blur=args.blur), EngineOptions.from_args(args)
    )
    finder = FinderConfig(
        batch_size=args.batch_size, workers=args.workers, progress=show_progress(args)
    )
    config = CalibrationConfig(
        benchmark=BenchmarkConfig(
            originals=args.originals,
            copies=args.copies,
            distractors=args.distractors,
            seed=args.seed,
        ),
        finder=finder,
        min_precision=args.min_precision,
    )
    if args.seeds is not None:
        from duplicates.calibration_seeds import run_seeds

        return run_seeds(descriptor, args.data, work, config, args.seeds)
    result = calibrate(descriptor, args.data, work / "benchmark", config)
    paths = write_calibration(result, work)
    print("threshold  precision  recall  F1")
    sw = result.sweep
    for k in range(0, len(sw.thresholds), 10):
        print(
            f"{sw.thresholds[k]:9.3f}  {sw.precision[k]:9.3f}  {sw.recall[k]:6.3f}  {sw.f1[k]:.3f}"
        )
    print(
        "recall per edit at the default:",
        ", ".join(f"{k} {v:.2f}" for k, v in result.per_transform.items()),
    )
    print(f"table: {paths['table']}  curve: {paths['plot']}")
    unmeasured = result.pair_model is None  # too few pairs of both kinds to fit it
    if result.chosen is not None and not args.dry_run and unmeasured:
        # Such a precision is no measure (1.000 without one pair of different photos): it
        # may stand in for no calibration, never replace one (it had replaced a good one).
        small = (
            f"the benchmark of {result.images} images from {result.originals} photos holds "
            "too few pairs of both kinds to fit the pair model or measure precision"
        )
        if has_calibration(args.checkpoint):
            print(result.summary())
            print(
                f"threshold not stored: {small}, and {args.checkpoint} holds a calibration "
                "already; calibrate on a folder of more photos (the demo's 160 are enough), "
                "or look with --dry-run",
                file=sys.stderr,
            )
            print(json.dumps(figures(result, stored=False)))
            return 1
        log.warning("%s; its threshold is stored for want of a better one", small)
    if result.chosen is not None and not args.dry_run:
        record = calibration_record(result, descriptor.config, finder)
        record["runtime"] = descriptor.engine.runtime  # the scores it was calibrated on
        where = store_calibration(args.checkpoint, record)
        print(f"stored threshold {result.chosen['threshold']:.3f} in {where}")
    print(result.summary())
    print(json.dumps(figures(result, stored=result.chosen is not None and not args.dry_run)))
    return 0 if result.chosen is not None else 1


def figures(result: CalibrationResult, stored: bool) -> dict[str, Any]:
    """The run's one JSON line, as ``--seeds`` ends with: the chosen operating point, its
    baseline (the pixel agreement alone on the same pairs) and the F1 ratio between them."""
    ours, base = result.chosen, result.agreement_chosen
    return {
        "seed": result.config.benchmark.seed,
        "images": result.images,
        "originals": result.originals,
        "truth_pairs": result.truth_pairs,
        "min_precision": result.config.min_precision,
        "chosen": ours,
        "baseline": "agreement",
        "agreement_only": base,
        "f1_over_agreement": (
            round(ours["f1"] / base["f1"], 4) if ours and base and base["f1"] > 0 else None
        ),
        "phash_best": result.phash_best,
        "stored": stored,
    }
