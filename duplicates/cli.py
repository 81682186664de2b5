"""``phonesim duplicates find|calibrate|bench``: finding duplicate listings, calibrating the
threshold, and the grouping benchmark. ``register`` adds them to the main command; the
``*_main`` functions run one of them alone (the thin wrappers in ``scripts/`` call them)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common.argtypes import (
    add_data_option,
    add_progress_option,
    add_store_option,
    batch_size,
    data_source,
    decode_workers,
    positive_int,
    probability,
    show_progress,
    store_from_environment,
    unit_interval,
)
from common.errors import run_reporting_errors
from duplicates.calibrate_cli import (
    CALIBRATE_DESCRIPTION,
    add_calibrate_arguments,
    run_calibrate,
)
from duplicates.result import DuplicateResult
from embedder.engine_options import EngineOptions, add_engine_options
from embedder.errors import DataError, check_output_folder

log = logging.getLogger(__name__)


FIND_DESCRIPTION = """\
Find duplicate listing photos: the same picture re-uploaded, resized, re-encoded, cropped,
framed, watermarked, mirrored, recoloured (brightness, contrast, tint, saturation down to
about half) or photographed off a screen. Not covered: a copy turned greyscale, or turned 90
degrees without an EXIF orientation. Different photos of the same phone are not duplicates.
Byte- and pixel-identical files are always grouped (within a set; see --index).

Candidates come from a k-nearest-neighbour search (FAISS) over a copy-detection descriptor;
each candidate pair is verified geometrically and pixel-wise and scored by the checkpoint's
calibrated pair classifier, and groups are the connected components of accepted pairs. The
default threshold is the one calibrated for the checkpoint ('phonesim duplicates calibrate');
--threshold overrides it.
"""

FIND_EPILOG = """\
outputs in REPORT_DIR:
  duplicates.csv   group_id,id,path,keep,similarity,label,label_conflict,source,width,height,
                   file_size (one row per image in a group; keep=1 marks the one to keep)
  duplicates.json  {"groups": [[id, ...], ...], "group_ids": [...], "keepers": [...],
                   "label_conflicts": [group_id, ...], ...} (group_ids as in the CSV)
  duplicates.html  gallery of the groups with thumbnails (self-contained)
  failed.csv       unreadable images and why (id,reason)
  catalog_failed.csv  with --index: the nearest catalog items that could not be read for the
                   comparison, and why (id,reason)
  summary.txt      the one-line summary also printed at the end

keeper: per group, the image ranked first by --keep (default: highest resolution, then largest
file, then a file over a symbolic link to it, then by id). With --index the catalog item is
always kept.
labels: the folder an image is in (or the manifest's label column); a group whose members carry
different labels is flagged as a label conflict.

examples:
  %(prog)s --checkpoint runs/model --data listings/ --out report/
  %(prog)s --checkpoint runs/model --data new.csv --index idx/ --out report/
"""


def add_find_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="model checkpoint folder")
    add_data_option(
        p, "listing images: a folder (searched recursively) or a CSV manifest (id,image,...)"
    )
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for the report")
    p.add_argument(
        "--index",
        "--against",
        dest="index",
        metavar="INDEX_DIR",
        help="check the images against this catalog index (built by 'phonesim index build "
        "--catalog CSV') instead of among themselves: each image that duplicates catalog "
        "items gets a group of its own with them (two identical new files: two groups); run "
        "without --index to find the copies among the new images",
    )
    add_store_option(p, "check against the catalog in this PostgreSQL store (like --against)")
    p.add_argument(
        "--threshold",
        type=unit_interval,
        help="score threshold in (0, 1] (default: the checkpoint's calibrated one; a pair "
        "that verification rejects scores 0); the score "
        "is the calibrated pair model's probability, or the pixel agreement for a checkpoint "
        "that was never calibrated, so thresholds do not carry over between checkpoints",
    )
    p.add_argument(
        "--keep",
        default="resolution,filesize",
        help="keeper rules in priority order, from resolution, filesize, catalog "
        "(default: %(default)s)",
    )
    p.add_argument(
        "-k",
        type=positive_int,
        help="neighbours checked per image (default 16; with --index: catalog neighbours "
        "verified per orientation, default 20)",
    )
    p.add_argument(
        "--batch-size", type=batch_size, default=32, help="images per forward pass (default 32)"
    )
    p.add_argument("--workers", type=decode_workers, help="image decoding threads (default: auto)")
    add_engine_options(p, threads_help="model threads (default: every core)")
    add_progress_option(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run's counts and report files as one JSON object (logs stay on stderr)",
    )


def _made_with(
    args: argparse.Namespace,
    data: str,
    descriptor: Any,
    calibrated: bool,
    model: str,
    weights_hash: str,
) -> dict:
    """What produced a report, for ``duplicates.json``: it had said nothing of the model, the
    data or where its threshold came from, so two reports could not be compared."""
    from common.stamps import phonesim_version, utc_now

    if args.threshold is not None:
        threshold_from = "--threshold"
    else:
        threshold_from = "calibration" if calibrated else "default (not calibrated)"
    return {
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "checkpoint_hash": weights_hash,
        "model": model,
        "runtime": descriptor.engine.runtime,
        "data": str(Path(data).resolve()),
        "threshold_from": threshold_from,
        "phonesim": phonesim_version(),
        "created": utc_now(),
    }


def run_find(args: argparse.Namespace) -> int:
    # A SIGTERM stops it as Ctrl-C does (run_reporting_errors), so its temporary files go:
    # above 1 GiB of features it keeps them in a memory-mapped folder of the system's
    # temporary folder, which a SIGTERM had left behind.
    from duplicates.against import AgainstConfig, find_against
    from duplicates.calibration import stored_settings
    from duplicates.descriptor import CopyDescriptor
    from duplicates.finder import find_duplicates
    from duplicates.inputs import load_inputs
    from duplicates.report import REPORT_FILES, write_report
    from duplicates.result import parse_keep
    from embedder.checkpoint import checkpoint_hash, read_config
    from index.stores import check_one_catalog

    check_one_catalog(args.index, args.store)
    keep = parse_keep(args.keep)
    if "catalog" in keep and not (args.index or args.store):
        raise DataError("--keep catalog needs a catalog to keep: give --index or --store")
    check_output_folder(args.out, owns=REPORT_FILES, files=REPORT_FILES)
    data, kind = data_source(args)
    samples = load_inputs(data, kind)
    stored = stored_settings(args.checkpoint)
    if args.threshold is None and not stored.calibrated:
        log.warning(
            "checkpoint %s has no calibrated duplicate threshold; using %.2f, which also "
            "groups different photos of look-alike phones on look-alike backdrops; run "
            "'phonesim duplicates calibrate' for a threshold measured on your photos",
            args.checkpoint,
            stored.threshold,
        )
    config = stored.finder_config(
        threshold=stored.threshold if args.threshold is None else args.threshold,
        keep=keep,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=show_progress(args),
    )
    if args.k:
        config = replace(config, k=args.k)
    engine = EngineOptions.from_args(args)
    descriptor = CopyDescriptor.from_checkpoint(args.checkpoint, stored.descriptor, engine)
    log.info("descriptor runs on %s", descriptor.engine.describe())
    # Once each: the report and the index check both need them.
    ckpt, weights_hash = read_config(args.checkpoint), checkpoint_hash(args.checkpoint)
    if args.index or args.store:
        from embedder.inference import Embedder

        # The same engine: one model in memory for the descriptor and the index queries.
        embedder = Embedder(descriptor.engine, ckpt, weights_hash)
        against = AgainstConfig(k=args.k) if args.k else AgainstConfig()
        if args.store:  # $PHONESIM_STORE turns a folder's search into this one: say so
            from index.pg import redact

            given = " ($PHONESIM_STORE)" if store_from_environment(args.store) else ""
            log.info("checking against the catalog in %s%s", redact(args.store), given)
        result = find_against(
            descriptor, embedder, samples, args.index, config, against, store=args.store
        )
    else:
        result = find_duplicates(descriptor, samples, config)
    result.extra["made_with"] = _made_with(
        args, data, descriptor, stored.calibrated, ckpt.architecture, weights_hash
    )
    paths = write_report(result, args.out)
    if args.json:  # the failures are in the report's files
        print(json.dumps(_summary_json(result, paths)))
        return 0
    for f in result.failures[:10]:
        print(f"failed: {f.id}: {f.reason}")
    if len(result.failures) > 10:
        print(f"... {len(result.failures) - 10} more in {paths['failed']}")
    for f in result.catalog_failures[:10]:
        print(f"catalog item not compared: {f.id}: {f.reason}")
    if len(result.catalog_failures) > 10:
        print(f"... {len(result.catalog_failures) - 10} more in {paths['catalog_failed']}")
    print(f"report: {paths['html']}")
    timing = result.extra.get("timing")
    if timing:
        from duplicates.finder import format_timing

        print(format_timing(timing))
    print(result.summary())
    return 0


def _summary_json(result: DuplicateResult, paths: dict[str, Path]) -> dict[str, Any]:
    """What the summary line says, by name, with the report's files."""
    return {
        "mode": result.mode,
        "images": result.listed,
        "read": result.read,
        "failed": len(result.failures),
        "catalog_not_compared": len(result.catalog_failures),
        "groups": len(result.groups),
        "duplicates": result.duplicates,
        "label_conflicts": result.label_conflicts,
        "threshold": result.threshold,
        "score": result.score,
        "timing": result.extra.get("timing"),
        "report": {key: str(path) for key, path in paths.items()},
    }


BENCH_DESCRIPTION = """\
Benchmark duplicate grouping on seeded synthetic embeddings with planted duplicates: groups --n
vectors with the FAISS k-NN + connected-components path that 'find' uses, checks the planted
groups are recovered, compares with brute force on a subset, and prints time and memory,
ending with one line of JSON.
"""


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from duplicates.bench import BenchConfig

    d = BenchConfig()
    p.add_argument("--n", type=positive_int, default=d.n, help="vectors (default %(default)s)")
    p.add_argument(
        "--dim", type=positive_int, default=d.dim, help="dimension (default %(default)s)"
    )
    p.add_argument(
        "--threshold",
        type=probability,
        default=d.threshold,
        help="cosine at which two vectors are grouped (default %(default)s)",
    )
    p.add_argument(
        "--baseline-n",
        type=positive_int,
        default=d.baseline_n,
        help="brute-force subset size (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="data seed (default %(default)s)")


def run_bench(args: argparse.Namespace) -> int:
    import json

    from duplicates import bench

    r = bench.run_bench(
        bench.BenchConfig(
            n=args.n,
            dim=args.dim,
            threshold=args.threshold,
            baseline_n=args.baseline_n,
            seed=args.seed,
        )
    )
    print(
        f"grouped {r['n']:,} x {r['dim']} vectors in {r['seconds']:.1f} s "
        f"({r['candidate_pairs']:,} pairs above {r['threshold']})"
    )
    print(
        f"planted groups {r['groups_planted']:,}, found {r['groups_found']:,}; pairwise "
        f"precision {r['pair_precision']:.4f}, recall {r['pair_recall']:.4f}"
    )
    print(
        f"peak memory {r['peak_rss_mb']:.0f} MB (grouping added {r['peak_rss_growth_mb']:.0f} MB)"
    )
    print(
        f"baseline: {r['baseline']}: {r['baseline_subset_seconds']:.1f} s on the subset, "
        f"~{r['baseline_extrapolated_seconds']:g} s at n; speed-up x{r['speedup_vs_baseline']}; "
        f"groups on the subset identical to brute force: {r['subset_matches_brute_force']}"
    )
    from common.machine import run_context

    figures = {k: v for k, v in r.items() if k != "config"}
    print(json.dumps({**figures, "context": run_context()}))
    return 0


@dataclass(frozen=True)
class _Command:
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str | None = None

    def configure(self, p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.description, p.epilog = self.description, self.epilog
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        self.add_arguments(p)
        p.set_defaults(func=self.run)
        return p


COMMANDS = {
    "find": _Command(
        "find duplicate listing photos", FIND_DESCRIPTION, add_find_arguments, run_find, FIND_EPILOG
    ),
    "calibrate": _Command(
        "calibrate the duplicate threshold of a checkpoint on real photos",
        CALIBRATE_DESCRIPTION,
        add_calibrate_arguments,
        run_calibrate,
    ),
    "bench": _Command(
        "benchmark duplicate grouping on synthetic embeddings",
        BENCH_DESCRIPTION,
        add_bench_arguments,
        run_bench,
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``duplicates find|calibrate|bench`` to the ``phonesim`` command."""
    p = sub.add_parser(
        "duplicates",
        help="find duplicate listing photos, calibrate the threshold, benchmark grouping",
        description="Duplicate listing photos: 'find' groups them, 'calibrate' measures and "
        "stores the threshold of a checkpoint, 'bench' times grouping at scale.",
    )
    commands = p.add_subparsers(dest="duplicates_command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        command.configure(commands.add_parser(name, help=command.help))


def main(command: str, argv: list[str] | None = None) -> int:
    """Run one subcommand alone (``scripts/find_duplicates.py`` is ``main("find")``)."""
    parser = COMMANDS[command].configure(argparse.ArgumentParser())
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    return run_reporting_errors(
        parser.prog, args.func, args, verbose=args.verbose, quiet=args.quiet
    )
