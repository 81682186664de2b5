#!/usr/bin/env python
"""Embedding throughput per runtime: JPEG files -> embeddings on torch, onnx and onnx-int8,
against the raw torch eager forward on ready tensors (the baseline), with peak memory of each.

Every runtime runs in its own fresh child process (so its peak RSS is its own, and what it
imports is its own: the ONNX runtimes never load torch) on the same copy of the checkpoint, the
same images, batch size and thread count, in one run. Peak RSS counts the child and any process
it starts (decoding runs in threads, so normally none). The int8 graph is calibrated on the
benchmark images. Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common.argtypes import non_negative_int, positive_int, thread_count
from common.errors import reporting_errors
from common.machine import own_peak_rss_mb, run_context
from embedder.batch import default_workers, iter_embeddings
from embedder.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from embedder.data import Sample, load_catalog
from embedder.engine import default_threads
from embedder.images import load_image
from embedder.inference import Embedder
from embedder.train_config import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
PHONE_BRANDS = REPO.parent / "shared" / "datasets" / "phone-brands"
RUNTIMES = ("torch", "onnx", "onnx-int8")


def runtime_list(text: str) -> str:
    """``--runtimes``: comma-separated runtimes, each one phonesim knows."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"give some of {', '.join(RUNTIMES)}, got {text!r}")
    return ",".join(names)


def make_checkpoint(model_name: str, out: Path) -> Path:
    """Pretrained backbone with a 6-class head: speed does not depend on training."""
    from embedder.backbone import create_backbone
    from embedder.checkpoint import CheckpointConfig, save_checkpoint
    from embedder.transforms import model_data_config

    model = create_backbone(model_name, num_classes=6, weights="imagenet")
    config = CheckpointConfig(
        architecture=model_name,
        num_classes=6,
        label_names=[f"class{i}" for i in range(6)],
        data_config=model_data_config(model),
        feature_dim=int(model.num_features),
    )
    return save_checkpoint(model, config, out)


def copy_checkpoint(src: Path, out: Path) -> Path:
    """Weights and config only: the benchmark makes its own graphs, never in the user's folder."""
    out.mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        shutil.copy(src / name, out / name)
    return out


def image_folder(images: Path | None, tmp: Path) -> Path:
    if images is not None:
        return images
    if (PHONE_BRANDS / "train").is_dir():
        return PHONE_BRANDS / "train"
    from demo.catalog import generate_catalog

    return generate_catalog(tmp / "demo", classes=8, per_class=32, image_size=320)


def image_samples(images: Path, n: int) -> list[Sample]:
    samples = load_catalog(images, require_labels=False).samples
    return [samples[i % len(samples)] for i in range(n)]


def time_end_to_end(embedder: Embedder, samples, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    count = sum(
        len(idx)
        for idx, _, _ in iter_embeddings(embedder, samples, batch_size, workers, progress=False)
    )
    return count / (time.perf_counter() - start)


def time_raw_forward(embedder: Embedder, samples, batch_size: int) -> float:
    x = embedder.preprocess([load_image(s.path) for s in samples[:batch_size]])
    batches = max(1, len(samples) // batch_size)
    start = time.perf_counter()
    for _ in range(batches):
        embedder.embed_tensors(x)
    return batches * len(x) / (time.perf_counter() - start)


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return found + [d for c in found for d in _descendants(c)]


def _pss_mb(pid: int) -> float:
    """Proportional set size: shared pages split among their users, so a forked helper is
    not counted as a second copy of this process."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


class ChildMemory:
    """Peak summed memory of this process's descendants, sampled (decode workers, helpers)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            total = sum(_pss_mb(pid) for pid in _descendants(os.getpid()))
            self.peak_mb = max(self.peak_mb, total)

    def __enter__(self) -> ChildMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(args: argparse.Namespace) -> dict:
    """One runtime in this process: best raw and end-to-end rates, and peak memory."""
    with ChildMemory() as children:
        result = _measure(args)
    # Its decode workers and helpers (0: decoding ran in threads).
    result["peak_worker_rss_mb"] = round(children.peak_mb, 1)
    return result


def _measure(args: argparse.Namespace) -> dict:
    embedder = Embedder.from_checkpoint(
        args.checkpoint, runtime=args.child, device="cpu", threads=args.threads
    )
    samples = image_samples(args.images, args.n)
    time_raw_forward(embedder, samples[: args.batch_size], args.batch_size)  # warm-up
    raw, e2e = [], []
    for _ in range(args.repeats):  # interleaved so background load hits both alike
        raw.append(time_raw_forward(embedder, samples, args.batch_size))
        e2e.append(time_end_to_end(embedder, samples, args.batch_size, args.workers))
    return {
        "runtime": embedder.runtime,
        "raw_forward_img_per_s": round(max(raw), 2),
        "end_to_end_img_per_s": round(max(e2e), 2),
        "peak_rss_mb": round(own_peak_rss_mb(), 1),
        "torch_imported": "torch" in sys.modules,
    }


def run_child(runtime: str, ckpt: Path, images: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", runtime, "--checkpoint", str(ckpt)]
    command += ["--images", str(images), "--n", str(args.n), "--batch-size", str(args.batch_size)]
    command += ["--workers", str(args.workers), "--repeats", str(args.repeats)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:  # say why: the child's stderr was captured
        sys.exit(f"bench_embed.py: the {runtime} run failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="default: pretrained Lite0, 6-class head")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="backbone when no --checkpoint")
    parser.add_argument("--images", type=Path, help="default: phone-brands train, else demo")
    parser.add_argument(
        "--n", type=positive_int, default=384, help="images per measurement (default 384)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per batch (default 32)"
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=default_workers(),
        help="decode workers (0: in the calling thread)",
    )
    parser.add_argument(
        "--threads", type=thread_count, default=default_threads(), help="model threads"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=2, help="best of this many runs each"
    )
    parser.add_argument(
        "--runtimes",
        type=runtime_list,
        default=",".join(RUNTIMES),
        help=f"comma-separated, of {', '.join(RUNTIMES)} (torch, the baseline, always runs)",
    )
    parser.add_argument("--child", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    if args.images is not None and not args.images.exists():  # before the minute of export
        parser.error(f"--images: no such file or folder: {args.images}")
    if args.checkpoint is not None:
        from embedder.checkpoint import read_config
        from embedder.errors import CheckpointError

        try:  # "model.safetensors: No such file or directory" (exit 1) before
            read_config(args.checkpoint)
        except CheckpointError as exc:
            parser.error(f"--checkpoint: {exc}")

    from embedder.quantize import quantize_int8

    # The baseline is measured in every run: without it no ratio could be printed.
    runtimes = ["torch", *(rt for rt in args.runtimes.split(",") if rt != "torch")]

    def stage(message: str) -> None:  # on stderr: stdout stays the table and the JSON line
        print(f"... {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        stage("the checkpoint and the images")
        if args.checkpoint:
            copy_checkpoint(args.checkpoint, ckpt)
        else:
            make_checkpoint(args.model, ckpt)
        images = image_folder(args.images, Path(tmp))
        if any(rt.startswith("onnx") for rt in runtimes):
            # Made here, as 'phonesim optimize' would: the children measure inference only.
            from embedder.graphs import ensure_fp32_graph

            stage("exporting the ONNX graph")
            ensure_fp32_graph(ckpt)
        if "onnx-int8" in runtimes:
            stage("quantising it to int8")
            quantize_int8(ckpt, images, max_images=min(args.n, 128))
        results = {}
        for rt in runtimes:
            stage(
                f"measuring {rt} ({args.repeats} runs of {args.n} images, in a process of its own)"
            )
            results[rt] = run_child(rt, ckpt, images, args)
        config = json.loads((ckpt / CONFIG_FILE).read_text())
    baseline = results["torch"]["raw_forward_img_per_s"]
    torch_row = results["torch"]
    for r in results.values():
        # Peak memory of the runtime's processes together: its own and its children's peaks
        # (an upper bound: the two need not coincide).
        r["peak_total_rss_mb"] = round(r["peak_rss_mb"] + r["peak_worker_rss_mb"], 1)
    for r in results.values():
        r["raw_forward_vs_baseline"] = round(r["raw_forward_img_per_s"] / baseline, 2)
        r["end_to_end_vs_baseline"] = round(r["end_to_end_img_per_s"] / baseline, 2)
        r["end_to_end_vs_torch"] = round(
            r["end_to_end_img_per_s"] / torch_row["end_to_end_img_per_s"], 2
        )
        r["peak_rss_vs_torch"] = round(r["peak_total_rss_mb"] / torch_row["peak_total_rss_mb"], 2)
    figures = {
        "model": config["architecture"],
        "input_size": config["data_config"]["input_size"],
        "images": args.n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "decode_workers": args.workers,
        "baseline_torch_raw_img_per_s": baseline,
        "runtimes": results,
    }
    print(
        f"model {figures['model']} {figures['input_size']}, batch {args.batch_size}, "
        f"{args.threads} model threads, {args.workers} decode workers, {args.n} images"
    )
    print(
        f"{'':28}{'img/s':>9}{'x baseline':>12}{'x torch':>9}"
        f"{'peak RSS MB':>13}{'x torch':>9}{'torch loaded':>14}"
    )
    for rt, r in results.items():
        rows = [(f"{rt} raw forward", r["raw_forward_img_per_s"], None)]
        rows.append((f"{rt} JPEG -> embedding", r["end_to_end_img_per_s"], "end_to_end_vs_torch"))
        for label, rate, key in rows:
            ratio = f"{rate / baseline:12.2f}"
            vs_torch = f"{r[key]:9.2f}" if key and key in r else f"{'':>9}"
            rss = r.get("peak_rss_vs_torch")
            print(
                f"{label:<28}{rate:9.1f}{ratio}{vs_torch}{r['peak_total_rss_mb']:13.1f}"
                + (f"{rss:9.2f}" if rss is not None else f"{'':>9}")
                + f"{'yes' if r['torch_imported'] else 'no':>14}"
            )
    print(
        "baseline: torch eager raw forward on ready tensors, same run; x torch: against the "
        "torch runtime's end-to-end rate and peak RSS; peak RSS: the runtime's own process "
        "(VmHWM) plus the sampled peak PSS of every process it started (decoding runs in "
        "threads: normally none)"
    )
    print(json.dumps({**figures, "context": run_context()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
