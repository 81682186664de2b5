#!/usr/bin/env python
"""Embedding throughput: JPEG files -> embeddings, against the raw model forward on ready tensors.

Both runs use the same model, batch size and torch thread count in the same process, so the
ratio says how much decoding, preprocessing and batching cost on top of the model itself.
Ends with one JSON line of the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from embedder.backbone import DEFAULT_MODEL, create_backbone
from embedder.batch import default_workers, iter_embeddings
from embedder.checkpoint import CheckpointConfig, save_checkpoint
from embedder.data import Sample, load_catalog
from embedder.images import load_image
from embedder.inference import Embedder
from embedder.transforms import model_data_config

REPO = Path(__file__).resolve().parents[1]

PHONE_BRANDS = REPO.parent / "shared" / "datasets" / "phone-brands"


def make_checkpoint(model_name: str, out: Path) -> Path:
    """Pretrained backbone with a 6-class head: speed does not depend on training."""
    model = create_backbone(model_name, num_classes=6, weights="imagenet")
    config = CheckpointConfig(
        architecture=model_name,
        num_classes=6,
        label_names=[f"class{i}" for i in range(6)],
        data_config=model_data_config(model),
        feature_dim=int(model.num_features),
    )
    return save_checkpoint(model, config, out)


def image_samples(images: Path | None, n: int, tmp: Path) -> list[Sample]:
    if images is None and (PHONE_BRANDS / "train").is_dir():
        images = PHONE_BRANDS / "train"
    if images is None:
        from demo.catalog import generate_catalog

        images = generate_catalog(tmp / "demo", classes=8, per_class=32, image_size=320)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: pretrained Lite0, 6-class head")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="backbone when no --checkpoint")
    parser.add_argument("--images", type=Path, help="default: phone-brands train, else demo")
    parser.add_argument("--n", type=int, default=384, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs each")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or make_checkpoint(args.model, Path(tmp) / "ckpt")
        embedder = Embedder.from_checkpoint(ckpt)
        samples = image_samples(args.images, args.n, Path(tmp))
        time_raw_forward(embedder, samples[: args.batch_size], args.batch_size)  # warm-up
        raw, e2e = [], []
        for _ in range(args.repeats):  # interleaved so background load hits both alike
            raw.append(time_raw_forward(embedder, samples, args.batch_size))
            e2e.append(time_end_to_end(embedder, samples, args.batch_size, args.workers))
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures = {
        "model": embedder.model_name,
        "input_size": embedder.config.data_config["input_size"],
        "images": args.n,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "decode_workers": args.workers,
        "end_to_end_img_per_s": round(max(e2e), 2),
        "raw_forward_img_per_s": round(max(raw), 2),
        "ratio": round(max(e2e) / max(raw), 3),
        "peak_rss_mb": round(peak_self, 1),
        "peak_worker_rss_mb": round(peak_children, 1),
    }
    print(
        f"model {figures['model']} {figures['input_size']}, batch {args.batch_size}, "
        f"{figures['torch_threads']} torch threads, {args.workers} decode workers"
    )
    print(
        f"raw forward on ready tensors : {figures['raw_forward_img_per_s']:8.1f} img/s (baseline)"
    )
    print(f"JPEG files -> embeddings     : {figures['end_to_end_img_per_s']:8.1f} img/s")
    print(f"ratio                        : {figures['ratio']:8.3f}  (target >= 0.85)")
    print(f"peak RSS                     : {peak_self:8.1f} MB (+ workers {peak_children:.1f} MB)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
