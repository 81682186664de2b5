"""Command lines of the feature export: ``phonesim export`` (also ``scripts/export_features.py``)
and ``phonesim embed``, which is the same job with the neighbour pass off."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from common import stopping
from common.argtypes import (
    add_data_option,
    add_progress_option,
    add_store_option,
    batch_size,
    data_source,
    decode_workers,
    int_between,
    non_negative_float,
    positive_float,
    positive_int,
    show_progress,
)
from common.extras import install_hint
from embedder.class_rerank import DEFAULT_POOL as RERANK_POOL
from embedder.engine_options import add_engine_options
from embedder.knn_options import add_text_cue_options, text_options_from_args
from export.config import DTYPES, ExportConfig
from export.errors import ExportError

if TYPE_CHECKING:  # the job imports torch: only when the command runs
    from export.job import ExportSummary

# A recommender reads tens of neighbours; the N x K datasets of far more only fill the disk.
MAX_NEIGHBORS = 10_000

DESCRIPTION = """\
Write recommendation features for every catalog image to one HDF5 file: ids, L2-normalised
embeddings, class probabilities, predicted class, given labels, and the K visually nearest
other catalog items (ids and cosine scores). Unreadable images are skipped and listed in the
file's 'failed' dataset.

The job is resumable: progress is committed to OUT.partial/ every --shard-size inputs
(rounded up to whole batches), and re-running the same command after Ctrl-C, a SIGTERM or a
crash continues where it stopped. The file appears under its final name only when complete.
Memory stays flat in the number of images, apart from the neighbour index (see
docs/export.md).
"""

EPILOG = """\
examples:
  %(prog)s --checkpoint ckpt --data catalog/ --out features.h5
  %(prog)s --checkpoint ckpt --data catalog.csv --out features.h5 --neighbors 20 \\
      --dtype float16
  %(prog)s --checkpoint ckpt --data catalog.csv --out features.h5 --index my-index/
  %(prog)s ... --ray local                  # embedding stage on a local Ray instance
  %(prog)s ... --ray auto                   # on the Ray cluster this machine belongs to
  %(prog)s ... --ray ray://head:10001       # through Ray Client

Schema and loading examples (h5py, pandas): docs/export.md
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (from phonesim train)")
    add_data_option(
        p, "images: a folder (one subfolder per class, or flat) or a CSV manifest (id,image,...)"
    )
    p.add_argument("--out", required=True, help="HDF5 file to write, e.g. features.h5")
    p.add_argument(
        "--index",
        metavar="INDEX_DIR",
        help="search neighbours in this index folder (built with the same checkpoint) "
        "instead of an index built on the fly from the exported embeddings",
    )
    add_store_option(p, "search neighbours in the catalog of this PostgreSQL store (like --index)")
    p.add_argument(
        "--neighbors",
        type=int_between(0, MAX_NEIGHBORS),
        default=10,
        metavar="K",
        help=f"nearest other items per row, at most {MAX_NEIGHBORS} "
        "(default 10; 0 skips the neighbour pass)",
    )
    p.add_argument(
        "--class-rerank",
        type=non_negative_float,
        default=0.0,
        metavar="WEIGHT",
        help=f"re-rank each row's {RERANK_POOL} most similar items by similarity + WEIGHT x the "
        "row's predicted probability of the item's label, as 'phonesim serve' ranks a photo's "
        "hits (0.1 there), so that the first neighbour is more often of the row's own class "
        "(measured in docs/export.md); 0: similarity order (default 0)",
    )
    _add_text_options(p)
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="storage type of embeddings and probabilities (default float32; float16 halves "
        "the file)",
    )
    p.add_argument(
        "--batch-size", type=batch_size, default=64, help="images per forward pass (default 64)"
    )
    p.add_argument("--workers", type=decode_workers, help="decoding workers (default: spare cores)")
    add_engine_options(
        p,
        threads_help="model threads without --ray (default: one per core; 1 is faster on a "
        "busy machine); with --ray each actor uses --ray-cpus-per-actor threads",
    )
    p.add_argument(
        "--shard-size",
        type=positive_int,
        default=4096,
        help="inputs per committed shard, rounded up to whole --batch-size batches: at most "
        "that many are redone after a crash (default 4096)",
    )
    p.add_argument(
        "--neighbor-index",
        metavar="FACTORY",
        help="faiss index_factory string for the on-the-fly index, e.g. 'Flat' or "
        "'IVF4096,Flat' (default: exact Flat up to --exact-limit items, IVF beyond)",
    )
    p.add_argument(
        "--exact-limit",
        type=positive_int,
        default=200_000,
        help="largest catalog searched exactly on the fly (default 200000)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard unfinished progress in OUT.partial/ instead of resuming it",
    )
    ray = p.add_argument_group(f"distributed (needs: {install_hint('distributed')})")
    ray.add_argument(
        "--ray",
        metavar="local|ADDRESS",
        help="run the embedding stage on Ray: 'local' starts a Ray instance on this machine; "
        "an address ('auto', 'HOST:6379', 'ray://HOST:10001') joins a cluster. Images and "
        "the checkpoint must be at the same path on every node",
    )
    ray.add_argument(
        "--ray-actors",
        type=positive_int,
        help="embedder actors (default: cluster CPUs / --ray-cpus-per-actor)",
    )
    ray.add_argument(
        "--ray-cpus-per-actor",
        type=positive_float,
        help="CPUs reserved by each actor (default 1; its model, torch or ONNX Runtime, uses "
        "that many threads)",
    )
    ray.add_argument(
        "--ray-no-ship-code",
        dest="ray_ship_code",
        action="store_false",
        default=None,
        help="do not upload the phonesim packages to a remote cluster (use when the cluster "
        "image has phonesim installed)",
    )
    add_progress_option(p)
    _add_json_option(p)


def _add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as one JSON object (logs stay on stderr)",
    )


def _print_summary(args: argparse.Namespace, summary: ExportSummary, line: str) -> None:
    """The one-line summary, or with --json the whole summary as one JSON object."""
    if getattr(args, "json", False):
        print(json.dumps({**asdict(summary), "out": str(summary.out)}))
    else:
        print(line)


def _add_text_options(p: argparse.ArgumentParser, ray: bool = True) -> None:
    """The text-reading flags; ``ray``: the command also runs on Ray (export, not embed)."""
    where = "one image at a time" + (
        " (with --ray, in the actors, each on its own batches)" if ray else ""
    )
    add_text_cue_options(
        p.add_argument_group(f"text on the photos (needs: {install_hint('ocr')})"),
        "the probabilities written are then the classifier's with those classes added (no "
        "catalog vote here, so the gate looks at the classifier alone). Reading runs in this "
        f"process, {where}: 0.25-0.7 s per image read on 2 cores, about half of them behind "
        "the default gate (docs/export.md)",
    )


def _text_line(args: argparse.Namespace, summary: ExportSummary) -> str:
    """What the text reading did, for the summary line ("" without --read-text)."""
    if not args.read_text:
        return ""
    line = f", text read on {summary.text_read} images, {summary.text_named} named a class"
    if summary.text_failed:
        line += f", {summary.text_failed} could not be read (see the warnings)"
    return line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export_features.py",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``phonesim export`` and ``phonesim embed`` to the main CLI."""
    p = sub.add_parser(
        "export",
        help="write recommendation features (embeddings, probabilities, neighbours) to HDF5",
        description=DESCRIPTION,
        epilog=EPILOG.replace("%(prog)s", "phonesim export"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run, interrupted=resume_hint)

    p = sub.add_parser(
        "embed",
        help="embed images into an HDF5 file (ids, embeddings, probabilities, labels)",
        description="Embed every image with a checkpoint and write ids, L2-normalised "
        "embeddings, class probabilities and labels to HDF5: 'phonesim export' without the "
        "neighbour pass, same schema (docs/export.md). Unreadable images are listed in the "
        "file's 'failed' dataset and skipped. An earlier export at --out is replaced (any "
        "other file is refused); after Ctrl-C or a crash, the same command resumes from "
        "OUT.partial/.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (from phonesim train)")
    add_data_option(p, "images: class folders, a flat image folder, or a CSV manifest")
    p.add_argument("--out", required=True, help="HDF5 file to write")
    p.add_argument(
        "--batch-size", type=batch_size, default=32, help="images per forward pass (default 32)"
    )
    p.add_argument("--workers", type=decode_workers, help="decoding workers (default: spare cores)")
    add_engine_options(p, threads_help="model threads (default: one per core)")
    _add_json_option(p)
    _add_text_options(p, ray=False)
    p.add_argument(
        "--restart",
        action="store_true",
        help="discard unfinished progress in OUT.partial/ instead of resuming it",
    )
    add_progress_option(p)
    p.set_defaults(func=run_embed, interrupted=resume_hint)


@contextmanager
def sigterm_stops_like_ctrl_c(args: argparse.Namespace) -> Iterator[None]:
    """Within the block, SIGTERM stops the export as Ctrl-C does (:mod:`common.stopping`):
    progress kept, the lock file removed, the resume hint said (exit 130). It had ended the
    process at once (143) with no word of the progress."""

    def terminated() -> None:
        args.stopped_by = "terminated"

    with stopping.signals_stop(terminated):
        yield


def resume_hint(args: argparse.Namespace) -> str:
    """What Ctrl-C or SIGTERM left, said instead of a bare "interrupted" (asked after the stop:
    a run stopped before its first shard removes its progress folder)."""
    stopped = getattr(args, "stopped_by", "interrupted")
    if not Path(f"{args.out}.partial").is_dir():
        return f"{stopped} before any progress was kept; nothing to resume"
    return (
        f"{stopped}; progress is kept in {args.out}.partial/, run the same command again to resume"
    )


def run_embed(args: argparse.Namespace) -> int:
    """``phonesim embed``: the export with neighbours off, replacing an existing file."""
    from export.job import export_features

    config = ExportConfig(**_shared_settings(args), neighbors=0, overwrite=True)
    with sigterm_stops_like_ctrl_c(args):
        summary = export_features(config)
    _print_summary(
        args,
        summary,
        f"embedded {summary.count} images ({summary.failed} failed) "
        f"into {summary.out} [{summary.dim}-d, {summary.runtime}{_text_line(args, summary)}]",
    )
    return 0


def _shared_settings(args: argparse.Namespace) -> dict:
    """The ExportConfig fields ``phonesim export`` and ``phonesim embed`` both take."""
    data, kind = data_source(args)
    return {
        "checkpoint": args.checkpoint,
        "input": data,
        "input_kind": kind,
        "out": args.out,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "runtime": args.runtime,
        "device": args.device,
        "threads": args.threads,
        "text": text_options_from_args(args),
        "restart": args.restart,
        "progress": show_progress(args),
    }


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    from index.stores import check_one_catalog

    if args.neighbors:  # without neighbours no catalog is read: nothing to tell apart
        check_one_catalog(args.index, args.store)
    if args.class_rerank and not args.neighbors:
        raise ExportError("--class-rerank orders neighbours: it needs --neighbors above 0")
    return ExportConfig(
        **_shared_settings(args),
        index=args.index,
        store=args.store,
        neighbors=args.neighbors,
        class_rerank=args.class_rerank,
        dtype=args.dtype,
        shard_size=args.shard_size,
        exact_limit=args.exact_limit,
        neighbor_index=args.neighbor_index,
        overwrite=args.overwrite,
        ray=args.ray,
        ray_actors=args.ray_actors,
        ray_cpus_per_actor=args.ray_cpus_per_actor,
        ray_ship_code=args.ray_ship_code,
    )


def run(args: argparse.Namespace) -> int:
    """Run the export and print a one-line summary (errors propagate to the caller)."""
    from export.job import export_features

    with sigterm_stops_like_ctrl_c(args):
        summary = export_features(config_from_args(args))
    resumed = f", resumed after {summary.resumed_from} inputs" if summary.resumed_from else ""
    read = _text_line(args, summary)
    _print_summary(
        args,
        summary,
        f"exported {summary.count} items ({summary.failed} failed) to {summary.out} "
        f"[{summary.dim}-d, {_neighbors_text(summary)}, {summary.runner}, "
        f"{summary.runtime}{resumed}{read}]",
    )
    return 0


def _neighbors_text(summary: ExportSummary) -> str:
    """K neighbours, or how few some items got when the catalog holds fewer than K others."""
    asked = summary.neighbors
    if summary.neighbors_found >= asked:
        return f"{asked} neighbours"
    return f"{asked} neighbours asked, as few as {summary.neighbors_found} found (the rest blank)"


def main(argv: list[str] | None = None) -> int:
    from common.errors import run_reporting_errors

    args = build_parser().parse_args(argv)
    return run_reporting_errors(
        "export_features",
        run,
        args,
        verbose=args.verbose,
        quiet=args.quiet,
        interrupted=lambda: resume_hint(args),
    )
