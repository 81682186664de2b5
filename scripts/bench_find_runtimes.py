#!/usr/bin/env python
"""Duplicate finding per runtime: the descriptor stage's images/s and verification's pairs/s
of ``phonesim duplicates find`` on torch (the baseline) and onnx in one run, and whether their
groups are identical. Ends with one JSON line.

    python scripts/bench_find_runtimes.py [--checkpoint CKPT] [--data DIR] [--n 300]

Default checkpoint: the pretrained default backbone with an untrained 6-class head (speed and
groups do not depend on the head); default images: phone-brands train, else a demo catalog.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_embed import copy_checkpoint, image_folder, make_checkpoint

from common.argtypes import non_negative_int, positive_int, thread_count
from common.errors import reporting_errors
from common.machine import run_context
from duplicates.descriptor import CopyDescriptor
from duplicates.finder import FinderConfig, find_duplicates
from duplicates.inputs import list_images
from embedder.backbone import DEFAULT_MODEL
from embedder.engine import default_threads
from embedder.engine_options import EngineOptions

TARGET_SPEEDUP = 2.0  # descriptor stage with onnx >= 2x torch's


def run(ckpt: Path, samples: list, runtime: str, args: argparse.Namespace) -> dict:
    engine = EngineOptions(runtime, "cpu", args.threads)
    descriptor = CopyDescriptor.from_checkpoint(ckpt, engine=engine)
    config = FinderConfig(batch_size=args.batch_size, workers=args.workers, progress=False)
    result = find_duplicates(descriptor, samples, config)
    timing = result.extra["timing"]
    print(
        f"{runtime:>6}: descriptor stage {timing['describe_images_per_s']:7.1f} images/s "
        f"(model alone {timing['model_images_per_s']:.1f}), verification "
        f"{timing['verify_pairs_per_s']:.1f} pairs/s over {timing['pairs']} pairs, "
        f"{len(result.groups)} groups",
        flush=True,
    )
    groups = sorted(sorted(m.id for m in g.members) for g in result.groups)
    return {"timing": timing, "groups": groups}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoint", type=Path, help="default: pretrained Lite0, 6-class head")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="backbone when no --checkpoint (default %(default)s)"
    )
    p.add_argument("--data", type=Path, help="image folder (default: phone-brands train)")
    p.add_argument(
        "--n",
        type=positive_int,
        default=300,
        help="images (the first N, sorted) (default %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per batch (default 32)"
    )
    p.add_argument("--workers", type=non_negative_int, help="decoding workers (default: auto)")
    p.add_argument(
        "--threads",
        type=thread_count,
        default=default_threads(),
        help="model threads (default %(default)s)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        if args.checkpoint:
            copy_checkpoint(args.checkpoint, ckpt)
        else:
            make_checkpoint(args.model, ckpt)
        samples = list_images(image_folder(args.data, Path(tmp)))[: args.n]
        print(f"{len(samples)} images, {args.threads} model threads, batch {args.batch_size}")
        results = {rt: run(ckpt, samples, rt, args) for rt in ("torch", "onnx")}
    torch_, onnx = (results[rt]["timing"] for rt in ("torch", "onnx"))
    speedup = round(onnx["describe_images_per_s"] / torch_["describe_images_per_s"], 3)
    same = results["torch"]["groups"] == results["onnx"]["groups"]
    print(
        f"onnx / torch descriptor stage x{speedup} (target >= {TARGET_SPEEDUP}); "
        f"model alone x{onnx['model_images_per_s'] / torch_['model_images_per_s']:.2f}; "
        f"identical groups: {same}"
    )
    figures = {
        "images": len(samples),
        "threads": args.threads,
        "baseline_torch": torch_,
        "onnx": onnx,
        "descriptor_speedup": speedup,
        "identical_groups": same,
        "groups": len(results["onnx"]["groups"]),
        "targets_met": same and speedup >= TARGET_SPEEDUP,
    }
    print(json.dumps({**figures, "context": run_context()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
