#!/usr/bin/env python
"""Real-data training benchmark: the default recipe beside its two baselines, in one run.

1. recipe   : `phonesim train` defaults (pretrained Lite0, head warm-up, then fine-tuning
               all but the stem and the first two stages)
2. probe    : logistic regression (scikit-learn) on frozen pretrained features (no fine-tuning)
3. scratch  : the same recipe with --weights none

Each reports validation accuracy, macro-F1, Recall@1/5 (val queries against the train gallery)
and wall time. Ends with one JSON line of the figures. Needs ../shared/datasets/phone-brands
or --train/--val.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from common.errors import reporting_errors
from common.machine import run_context
from embedder.backbone import create_backbone
from embedder.batch import embed_samples
from embedder.checkpoint import CheckpointConfig
from embedder.data import load_catalog
from embedder.evaluate import evaluate
from embedder.inference import Embedder
from embedder.metrics import label_recall_at_k, macro_f1
from embedder.train import train
from embedder.train_config import DEFAULT_MODEL, TrainConfig
from embedder.transforms import model_data_config

REPO = Path(__file__).resolve().parents[1]

DATA = REPO.parent / "shared" / "datasets" / "phone-brands"


def run_recipe(train_dir: Path, val_dir: Path, out: Path, **overrides) -> dict:
    start = time.perf_counter()
    result = train(
        TrainConfig(
            data=str(train_dir), val=str(val_dir), out=str(out), progress=False, **overrides
        )
    )
    minutes = (time.perf_counter() - start) / 60
    report = evaluate(out, val_dir, gallery=train_dir, progress=False)
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "recall_at_1": report["recall_at_1"],
        "recall_at_5": report["recall_at_5"],
        "best_epoch": result.best_epoch,
        "label_conflicts_left_out": len(result.label_conflicts),
        "minutes": round(minutes, 2),
    }


def run_probe(train_dir: Path, val_dir: Path) -> dict:
    """Logistic regression on L2-normalised frozen ImageNet features."""
    from sklearn.linear_model import LogisticRegressionCV

    start = time.perf_counter()
    train_cat, val_cat = load_catalog(train_dir), load_catalog(val_dir)
    names = train_cat.label_names
    model = create_backbone(DEFAULT_MODEL, num_classes=len(names), weights="imagenet")
    # The recipe's preprocessing, so the only difference from the recipe is the fine-tuning.
    data_config = model_data_config(model, crop_mode=TrainConfig(data="", out="").crop_mode)
    config = CheckpointConfig(
        DEFAULT_MODEL, len(names), names, data_config, int(model.num_features)
    )
    embedder = Embedder(model, config)
    feats = {}
    for split, cat in (("train", train_cat), ("val", val_cat)):
        idx, batch, _ = embed_samples(embedder, cat.samples, progress=False)
        feats[split] = (
            batch.embeddings,
            np.array([names.index(cat.samples[i].label) for i in idx]),
        )
    (xt, yt), (xv, yv) = feats["train"], feats["val"]
    # Regularisation chosen by 5-fold cross-validation on the training images only.
    # Explicit scoring: sklearn 1.11 changes the default to log-loss.
    clf = LogisticRegressionCV(Cs=[0.3, 1, 3, 10, 30], cv=5, scoring="accuracy", max_iter=3000)
    clf = clf.fit(xt, yt)
    pred = clf.predict(xv)
    recall = label_recall_at_k(xv, yv, xt, yt)
    return {
        "accuracy": float((pred == yv).mean()),
        "macro_f1": macro_f1(yv, pred),
        "recall_at_1": recall[1],
        "recall_at_5": recall[5],
        "C": float(clf.C_[0]),
        "minutes": round((time.perf_counter() - start) / 60, 2),
    }


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (argparse reports a ValueError as an invalid value)."""
    seeds = [int(v) for v in text.split(",")]
    if len(set(seeds)) != len(seeds):  # one row per seed: a repeat would overwrite its row
        raise argparse.ArgumentTypeError(f"each seed once, got {text}")
    return seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train",
        type=Path,
        default=DATA / "train",
        help="training class folders (default %(default)s)",
    )
    parser.add_argument(
        "--val",
        type=Path,
        default=DATA / "val",
        help="validation class folders (default %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="keep checkpoints here (default: temporary)")
    parser.add_argument(
        "--only",
        choices=["recipe", "probe", "scratch"],
        action="append",
        help="run only these (repeatable; default all three)",
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=[0],
        help="comma-separated seeds for the recipe (default 0): the first runs as 'recipe', "
        "the others as 'recipe_seedN'; with several, 'recipe_seeds' gives their mean, min and "
        "max accuracy",
    )
    args = parser.parse_args()
    if not args.train.is_dir() or not args.val.is_dir():
        # No ../shared on this machine: a skip, not an error.
        if (args.train, args.val) == (DATA / "train", DATA / "val"):
            print(f"skipped: no dataset at {DATA}")
            print(json.dumps({"skipped": f"no dataset at {DATA}"}))
            return 0
        parser.error(f"training data not found at {args.train} / {args.val}")
    todo = args.only or ["probe", "recipe", "scratch"]
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for name in todo:
            print(f"running {name} ...", flush=True)
            if name == "probe":
                figures[name] = run_probe(args.train, args.val)
            elif name == "recipe":
                # The first seed is "recipe"; further seeds are rows of their own.
                for seed in args.seeds:
                    key = name if seed == args.seeds[0] else f"recipe_seed{seed}"
                    figures[key] = run_recipe(args.train, args.val, out / key, seed=seed)
                    if key != name:
                        print(f"  {key}: " + json.dumps(figures[key]), flush=True)
            else:
                figures[name] = run_recipe(args.train, args.val, out / "scratch", weights="none")
            print(f"  {name}: " + json.dumps(figures[name]), flush=True)
    print(f"\n{'run':<14}{'accuracy':>10}{'macro-F1':>10}{'R@1':>8}{'R@5':>8}{'minutes':>9}")
    for name, f in figures.items():
        print(
            f"{name:<14}{f['accuracy']:>10.4f}{f['macro_f1']:>10.4f}{f['recall_at_1']:>8.3f}"
            f"{f['recall_at_5']:>8.3f}{f['minutes']:>9.2f}"
        )
    if len(args.seeds) > 1 and "recipe" in figures:
        accs = [figures["recipe"]["accuracy"]] + [
            figures[f"recipe_seed{seed}"]["accuracy"] for seed in args.seeds[1:]
        ]
        figures["recipe_seeds"] = {
            "seeds": args.seeds,
            "accuracy": accs,
            "mean": round(float(np.mean(accs)), 4),
            "min": min(accs),
            "max": max(accs),
        }
    if "recipe" not in figures or "probe" not in figures:
        print("note: the ratio needs both the recipe and the probe (run without --only)")
    if "recipe" in figures and "probe" in figures:
        figures["recipe_vs_probe_accuracy_ratio"] = round(
            figures["recipe"]["accuracy"] / max(1e-9, figures["probe"]["accuracy"]), 3
        )
    print(json.dumps({**figures, "context": run_context()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
