"""``phonesim demo``: the whole pipeline on the built-in synthetic catalog, offline.

generate catalog -> fine-tune the default pretrained backbone -> evaluate -> embed -> build the
FAISS index -> (serve). The catalog and the checkpoint are reused when they were made with the
same options (and the training finished), so a second run starts quickly; the cheap steps after
them run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from common.argtypes import (
    add_progress_option,
    host,
    int_between,
    non_negative_int,
    port,
    show_progress,
)
from common.child import python_child_env
from demo.specs import CLASS_NAMES

log = logging.getLogger(__name__)

# Small enough to train in about a minute on 2 CPU cores, large enough to be meaningful.
DEMO_IMG_SIZE = 128
DEMO_EPOCHS = 3
# In the workdir: the options of the training that finished, so that an interrupted one (its
# checkpoint holds the warm-up only) or one with other options is not reused.
TRAINED_STAMP = "trained.json"


CLASS_COUNT = int_between(2, len(CLASS_NAMES))
CLASS_HELP = f"phone models, 2-{len(CLASS_NAMES)} (default 8)"
# A demo, not a data set: 100,000 a model had rendered for minutes toward 800,000 images.
PER_CLASS = int_between(1, 1000)
PER_CLASS_HELP = "images per model, 1-1000 (default 40)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-demo-catalog",
        help="render a synthetic phone catalog (no data needed)",
        description="Render a synthetic phone catalog with Pillow: one folder per phone model "
        "plus catalog.csv (id,image,label,title,brand,price). Same seed, same bytes.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", type=CLASS_COUNT, default=8, help=CLASS_HELP)
    p.add_argument("--per-class", type=PER_CLASS, default=40, help=PER_CLASS_HELP)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_progress_option(p)
    p.set_defaults(func=_make_demo_catalog)

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the built-in demo catalog (no data, no internet)",
        description="Generate the synthetic demo catalog, fine-tune the default pretrained "
        "backbone on it, evaluate, embed, build the index and start the server. Outputs go "
        "to --workdir; the next run reuses the catalog and the checkpoint when they were made "
        "with the same options and the training finished (delete it to start over).",
    )
    p.add_argument("--workdir", default="runs/demo", help="where outputs go (default ./runs/demo)")
    p.add_argument("--classes", type=CLASS_COUNT, default=8, help=CLASS_HELP)
    p.add_argument("--per-class", type=PER_CLASS, default=40, help=PER_CLASS_HELP)
    p.add_argument(
        "--epochs",
        type=non_negative_int,
        default=DEMO_EPOCHS,
        help=f"fine-tuning epochs (default {DEMO_EPOCHS}; 0 trains only the head)",
    )
    p.add_argument("--no-serve", action="store_true", help="stop after building the index")
    p.add_argument(
        "--host", type=host, default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    p.add_argument("--port", type=port, default=8000, help="port to serve on (default 8000)")
    add_progress_option(p)
    # SIGTERM stops its stages as Ctrl-C does; the server it ends in is a fresh process
    # (exec), whose signals start from the defaults.
    p.set_defaults(func=run_demo)


def _make_demo_catalog(args: argparse.Namespace) -> int:
    from demo.catalog import generate_catalog

    try:
        csv_path = generate_catalog(
            args.out, args.classes, args.per_class, args.seed, progress=show_progress(args)
        )
    except ValueError as exc:
        from common.errors import UserError

        raise UserError(str(exc)) from exc
    print(f"demo catalog written: {csv_path}")
    return 0


def _catalog_shape(csv_path: Path) -> tuple[int, int] | None:
    """(classes, images per class) of a demo catalog, None if there is none (or it is odd)."""
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            counts = Counter(row["label"] for row in csv.DictReader(fh))
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return None
    sizes = set(counts.values())
    return (len(counts), sizes.pop()) if len(sizes) == 1 else None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_demo(args: argparse.Namespace) -> int:
    from common.fsutil import atomic_write_text
    from demo.catalog import generate_catalog, is_demo_catalog
    from embedder.checkpoint import CONFIG_FILE, WEIGHTS_FILE, checkpoint_hash
    from embedder.class_rerank import DEFAULT_WEIGHT as RERANK_WEIGHT
    from embedder.class_rerank import class_rerank
    from embedder.evaluate import evaluate, format_report
    from embedder.knn_vote import FUSE_BY_DEFAULT, KnnFusion
    from embedder.train import TrainConfig, train
    from export import ExportConfig, export_features

    work = Path(args.workdir)
    if work.exists() and not work.is_dir():  # mkdir said only "File exists"
        from common.errors import UserError

        raise UserError(f"--workdir {work}: a file, not a folder")
    work.mkdir(parents=True, exist_ok=True)
    catalog_dir, checkpoint = work / "catalog", work / "checkpoint"
    embeddings, index_dir = work / "embeddings.h5", work / "index"
    progress = show_progress(args)

    csv_path = catalog_dir / "catalog.csv"
    # Only the demo's own catalog is reused (or replaced: generate_catalog refuses others).
    if not is_demo_catalog(catalog_dir) or _catalog_shape(csv_path) != (
        args.classes,
        args.per_class,
    ):
        print(f"[1/5] generating demo catalog in {catalog_dir}", flush=True)
        try:
            generate_catalog(catalog_dir, args.classes, args.per_class, seed=0, progress=progress)
        except ValueError as exc:  # a folder of someone else's: one line, not a traceback
            from common.errors import UserError

            raise UserError(str(exc)) from exc
    else:
        print(f"[1/5] reusing demo catalog {catalog_dir}", flush=True)

    stamp = work / TRAINED_STAMP
    settings = {
        "classes": args.classes,
        "per_class": args.per_class,
        "epochs": args.epochs,
        "img_size": DEMO_IMG_SIZE,
    }
    # The stamp names the weights it trained: a checkpoint trained into the folder since (by
    # `phonesim train --out`) had been reused, evaluated and served under the demo's options.
    made = (checkpoint / CONFIG_FILE).exists() and (checkpoint / WEIGHTS_FILE).exists()
    if _read_json(stamp) != {
        **settings,
        "checkpoint_hash": checkpoint_hash(checkpoint) if made else None,
    }:
        stamp.unlink(missing_ok=True)  # until this training finishes
        print("[2/5] fine-tuning tf_efficientnet_lite0 (ImageNet weights, offline)", flush=True)
        result = train(
            TrainConfig(
                data=str(csv_path),
                out=str(checkpoint),
                img_size=DEMO_IMG_SIZE,
                epochs=args.epochs,
                val_fraction=0.2,
                progress=progress,
            )
        )
        if result.interrupted:
            return 130
        settings["checkpoint_hash"] = checkpoint_hash(checkpoint)
        atomic_write_text(stamp, json.dumps(settings) + "\n")
    else:
        print(f"[2/5] reusing checkpoint {checkpoint}", flush=True)

    print(
        "[3/5] evaluating on the training catalog itself (leave-one-out retrieval): a sanity "
        "check, not a held-out score",
        flush=True,
    )
    # As `phonesim evaluate` and the server predict by default: kNN fusion, class re-rank.
    report = evaluate(
        checkpoint,
        csv_path,
        out=work / "evaluation",
        progress=progress,
        fusion=KnnFusion() if FUSE_BY_DEFAULT else None,
        rerank=class_rerank(RERANK_WEIGHT),
    )
    print(format_report(report), flush=True)

    print(f"[4/5] embedding the catalog into {embeddings}", flush=True)
    # `phonesim embed`: the export without neighbours. restart: a leftover from an interrupted
    # run may belong to another checkpoint, and the demo catalog embeds in seconds.
    config = ExportConfig(
        checkpoint=str(checkpoint),
        input=str(csv_path),
        out=str(embeddings),
        neighbors=0,
        batch_size=32,
        overwrite=True,
        restart=True,
        progress=progress,
    )
    summary = export_features(config)
    print(f"      {summary.count} embedded, {summary.failed} failed, {summary.dim}-d", flush=True)

    print(f"[5/5] building the index in {index_dir}", flush=True)
    from index.build import build_from_files

    built = build_from_files(
        embeddings, index_dir, catalog=csv_path, overwrite=True, progress=progress
    )
    print(
        f"      {built.manifest.count} items, kind {built.manifest.kind}, "
        f"{built.manifest.dim}-d, at {built.path}",
        flush=True,
    )

    if args.no_serve:
        return 0
    print(f"serving on http://{args.host}:{args.port}/  (Ctrl-C to stop)", flush=True)
    # A fresh interpreter in this process's place: this one has run torch (training), and
    # gunicorn's forked workers would inherit its thread pools, whose handles are invalid in a
    # child (a worker aborted with std::system_error at shutdown). `phonesim serve` keeps its
    # master torch-free.
    command = [sys.executable, "-m", "phonesim", "serve", "--checkpoint", str(checkpoint)]
    command += ["--index", str(index_dir), "--host", args.host, "--port", str(args.port)]
    os.execve(sys.executable, command, python_child_env())
