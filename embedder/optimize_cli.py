"""``phonesim optimize``: export a checkpoint's ONNX graph (and an int8 one) ahead of serving."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common.argtypes import positive_int, thread_count
from common.fsutil import folder_write_problem
from embedder.engine_options import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_FLOAT_LAYERS,
    FLOAT_LAYERS,
)


def float_layers(text: str) -> tuple[str, ...]:
    """Comma-separated names from FLOAT_LAYERS, or 'none'."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in FLOAT_LAYERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected 'none' or comma-separated names from {', '.join(FLOAT_LAYERS)}"
        )
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="export the checkpoint's ONNX graph (optionally an int8 one) for faster inference",
        description="Export the checkpoint to model.onnx (ONNX Runtime, dynamic batch), record "
        "its SHA-256, opset and exporter in config.json and check it against torch eager: "
        "runtime 'auto' uses it when the embeddings agree (cosine >= 0.9999, same top-1). "
        "Without this command the graph is made the first time it is needed, and again "
        "whenever the weights change. --quantize int8 also writes model.int8.onnx, statically "
        "quantised (QDQ, per-channel weights) and calibrated on training images; it is used "
        "only with runtime 'onnx-int8'.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (written into)")
    p.add_argument("--quantize", choices=["int8"], help="also write a quantised graph")
    p.add_argument("--calibration", help="training images for the int8 ranges (folders or CSV)")
    p.add_argument(
        "--calibration-images",
        type=positive_int,
        help=f"at most this many, spread over the set (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    p.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        help="activation ranges of the int8 graph from the calibration activations' min/max, "
        f"99.999th percentile or entropy (default {DEFAULT_CALIBRATION_METHOD})",
    )
    p.add_argument(
        "--float-layers",
        type=float_layers,
        help="layers the int8 graph keeps float beside the head: comma-separated from "
        f"{', '.join(FLOAT_LAYERS)}, or 'none' (default "
        f"{','.join(DEFAULT_FLOAT_LAYERS) or 'none'}); 'depthwise' alone measured worse than "
        "'none' (README): check a choice with --val",
    )
    p.add_argument(
        "--val",
        help="labelled images: accuracy, macro-F1, Recall@1, cosine to fp32 and speed of int8",
    )
    p.add_argument("--threads", type=thread_count, help="ONNX Runtime threads (default: cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_optimize)


def _optimize(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from embedder.checkpoint import load_checkpoint
    from embedder.engine import default_threads
    from embedder.errors import DataError, EngineError
    from embedder.onnx_export import graph_problem, read_graph_record
    from embedder.quantize import compare_int8, quantize_int8, read_val_images
    from embedder.runtime import check_against_torch, open_fp32, save_check

    if args.quantize and not args.calibration:
        raise DataError("--quantize int8 needs --calibration TRAIN_IMAGES")
    int8_only = {
        "--calibration": args.calibration,
        "--val": args.val,
        "--calibration-images": args.calibration_images,
        "--calibration-method": args.calibration_method,
        "--float-layers": args.float_layers,
    }
    given = [flag for flag, value in int8_only.items() if value is not None]
    if given and not args.quantize:  # they would change nothing: say so, not ignore them
        verb = "goes" if len(given) == 1 else "go"
        raise DataError(f"{', '.join(given)} {verb} with --quantize int8; add --quantize int8")
    ckpt = Path(args.checkpoint)
    problem = folder_write_problem(ckpt) if args.quantize and ckpt.is_dir() else None
    if problem:  # before the model and the calibration images load, not after
        raise EngineError(
            f"{ckpt}: cannot write model.int8.onnx there ({problem}); run as a user who can "
            "write the checkpoint folder, or copy it to a folder you can write"
        )
    threads = args.threads or default_threads()
    model, config = load_checkpoint(ckpt)
    if args.val:
        # now: a bad --val must not leave a half-done int8 graph
        read_val_images(args.val, config.label_names)
    engine = open_fp32(ckpt, "cpu", threads, model)
    check = check_against_torch(engine, model, config.data_config["input_size"])
    save_check(engine, check)  # runtime auto then trusts this graph without loading torch
    changed = graph_problem(ckpt, "fp32")
    if changed:  # new weights written meanwhile (a retrain into the folder): not this model's
        raise EngineError(f"{ckpt}: {changed}: the checkpoint changed meanwhile; run again")
    summary: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "fp32": asdict(read_graph_record(ckpt, "fp32")),
        "check": {**asdict(check), "problem": check.problem},
    }
    if args.quantize:
        record = quantize_int8(
            ckpt,
            args.calibration,
            args.calibration_images or DEFAULT_CALIBRATION_IMAGES,
            method=args.calibration_method or DEFAULT_CALIBRATION_METHOD,
            keep_float=DEFAULT_FLOAT_LAYERS if args.float_layers is None else args.float_layers,
        )
        summary["int8"] = asdict(record)
        if args.val:
            summary["val"] = compare_int8(ckpt, args.val, threads)
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    fp32, check = summary["fp32"], summary["check"]
    verdict = (
        f"runtime auto falls back to torch: {check['problem']}"
        if check["problem"]
        else "runtime auto uses it"
    )
    lines = [
        f"{fp32['file']}: opset {fp32['opset']}, {fp32['exporter']}",
        f"check against torch: min cosine {check['min_cosine']:.6f}, same top-1 on "
        f"{check['top1_agree']}/{check['images']} check images; {verdict}",
    ]
    if "int8" in summary:
        q = summary["int8"]["quantization"]
        lines.append(
            f"{summary['int8']['file']}: {q['format']}, weights {q['weights']}, activations "
            f"{q['activations']}, {q['calibration']} on {q['calibration_images']} images, "
            f"float layers: {', '.join(q.get('float_layers') or ['head only'])}"
        )
    if "val" in summary:
        val = summary["val"]
        lines += [
            f"on {val['images']} validation images, {val['threads']} threads:",
            f"{'':12}{'accuracy':>10}{'macro-F1':>10}{'Recall@1':>10}{'img/s':>10}",
        ]
        for kind in ("fp32", "int8"):
            s = val[kind]
            lines.append(
                f"{'onnx ' + kind:<12}{s['accuracy']:>10.4f}{s['macro_f1']:>10.4f}"
                f"{s['recall_at_1']:>10.4f}{s['img_per_s']:>10.1f}"
            )
        lines.append(
            f"int8 vs fp32: mean cosine {val['mean_cosine_to_fp32']:.4f}, "
            f"speed ratio {val['speed_ratio']:.2f}x"
        )
    return "\n".join(lines)
