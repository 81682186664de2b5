#!/usr/bin/env python
"""Cross-validated quality of the default recipe, its baselines and the candidate levers.

Repeated, grouped, stratified k-fold cross-validation over every labelled photo of a dataset
(default ../shared/datasets/phone-brands, train/ and val/ together). Copies (the
label-conflict detector's thumbnail similarity, as is or mirrored, and the duplicate
benchmark's resized, re-encoded, cropped or re-framed copies) stay in one fold; the photos of
a copy group that holds two brands are scored apart ("cross-brand copies"), not in the
headline.

Methods (each scored on the same folds; intervals from embedder/crossval.py):
  probe         logistic regression on frozen ImageNet Lite0 features (C by inner 3-fold CV)
  knn           weighted kNN vote (k 20, T 0.03) on frozen Lite0 features
  probe_knn     the probe's probabilities fused with that kNN vote (w 0.5), as `evaluate` does
  recipe        `phonesim train --data <training folds>` defaults (inner 15% validation split)
  recipe_knn    recipe's probabilities fused with its kNN vote over the training folds (w 0.5)
  recipe_flip   recipe with mirror test-time augmentation (mean of 2 views: 2x the model cost)
  recipe_soup   recipe with the weights averaged over its last 5 fine-tuning epochs
  probe_lite1   the probe on frozen Lite1 (240 px) features (needs phonesim[backbones])
  probe_lite2   the probe on frozen Lite2 (260 px) features (needs phonesim[backbones])
  supcon        recipe + supervised-contrastive loss (--only supcon; a training per fold)
  supcon_knn    supcon's probabilities fused with its kNN vote (--only supcon_knn, after supcon)
  supcon_soup   supcon with the weights averaged over its last 5 epochs (a training per fold);
                supcon_soup_knn fuses it with its kNN vote
  recipe_lite1  the recipe with an ImageNet Lite1 backbone (240 px; --only recipe_lite1, a
                training per fold; needs phonesim[backbones]); recipe_lite1_knn fuses it with
                its kNN vote (--only recipe_lite1_knn, after recipe_lite1)
  recipe_int8   the recipe checkpoints quantised to int8 (--only recipe_int8; ONNX Runtime)
  recipe_multiscale  recipe with multi-scale test-time augmentation: probabilities and
                embeddings averaged over the trained input side and 288 px (cost printed);
                recipe_multiscale_knn fuses it with its kNN vote (both: --only recipe_multiscale)
  recipe_lite1_multiscale  the same for recipe_lite1 over 240 and 320 px (+ _knn)
  recipe_pair   the recipe and recipe_lite1 checkpoints as one ensemble (mean probabilities,
                concatenated embeddings; from cached outputs); recipe_pair_knn fuses it and
                recipe_pair_rerank re-ranks its neighbours (see recipe_rerank)
  recipe_clean  the recipe trained without the photos whose label gets under 5% of a kNN vote
                of the other training photos on frozen Lite0 features (suspected wrong
                labels; --only recipe_clean, a training per fold); recipe_clean_knn fuses it
  recipe_knn_nested  recipe_knn with the fusion's k, temperature and weight chosen for each fold
                on the other folds of its repeat (nested: the choice never sees the fold)
  recipe_288    the recipe trained and scored at 288 px instead of 224 (a training per fold);
                recipe_288_knn fuses it with its kNN vote
  recipe_rerank recipe_knn's prediction, with Recall@1/@5 of the recipe's nearest training
                photos re-ranked by its classifier as `serve` ranks them (--class-rerank: the
                5 most similar reordered); the weight is chosen per fold on the other folds
                of its repeat. recipe_288_rerank and recipe_lite1_rerank do the same for theirs
  recipe_full   the recipe fitted on all of its training folds (no inner 15% validation split)
                for its 10 epochs, the checkpoint being the mean of the last 5 epochs' weights
                (a training per fold); recipe_full_knn and recipe_full_rerank as above
  recipe_lite2  the recipe with an ImageNet Lite2 backbone (260 px; a training per fold; needs
                phonesim[backbones]); recipe_lite2_knn and recipe_lite2_rerank as above
  recipe_full_lite1  recipe_full with the Lite1 backbone (+ _knn, _rerank)
  recipe_unfreeze  the recipe fine-tuning every stage but the stem (--frozen-groups 1 instead of
                3; a training per fold); recipe_unfreeze_knn and recipe_unfreeze_rerank as above
  recipe_border the recipe with --crop-mode border (the whole photo fitted inside the square at
                its own aspect ratio, padded, instead of squashed to it; a training per fold);
                recipe_border_knn and recipe_border_rerank as above
  recipe_crop_pair  recipe and recipe_border as one ensemble, as recipe_pair (+ _knn, _rerank)
  recipe_mix    the recipe with --mixup 0.2 --cutmix 1.0 (each fine-tuning batch blended by
                one or the other; a training per fold); recipe_mix_knn and recipe_mix_rerank
  recipe_long   the recipe fine-tuning for 20 epochs instead of 10 (a training per fold);
                recipe_long_knn and recipe_long_rerank as above
  recipe_multisim  the recipe + the margin-based multi-similarity loss on mined pairs
                (--metric-loss multisim; a training per fold); recipe_multisim_knn and
                recipe_multisim_rerank as above
  recipe_audited  the recipe trained without the photos the label audit rejects (their label
                names another product; needs --audit; a training per fold); scored on every
                test photo as the others are; recipe_audited_knn and recipe_audited_rerank
  recipe_fused_rerank  recipe_rerank with the neighbours re-ranked by the fused prediction (the
                classifier and its kNN vote, as recipe_knn predicts) instead of the classifier
                alone; its weight from FUSED_RERANK_GRID, chosen per fold as recipe_rerank's
  recipe_text   recipe_knn's prediction with the brand words read on each photo (RapidOCR
                upright and turned 90 degrees both ways; the classes' names and --text-cues'
                words; embedder/text_cues.py) added at weight 1; the photos are read once and
                cached in --work (needs phonesim[ocr]); recipe_text_upright reads upright only;
                recipe_text_rerank re-ranks the neighbours by the classifier with those cues
                (as `serve --read-text` does); recipe_text_gated and recipe_text_gated_rerank
                read only the photos whose fused prediction is less sure than the product's
                --text-gate (the default of `serve --read-text`); recipe_text_export is the
                prediction `export --read-text` writes: the classifier with the cues of the
                photos whose classifier prediction is below that gate (no catalog vote)
  recipe_lite1_text_gated  recipe_text_gated on recipe_lite1's outputs (after recipe_lite1);
                recipe_pair_text_gated on recipe_pair's (after recipe_pair); their _rerank
                twins re-rank as recipe_text_gated_rerank does: whether the words add to a
                better pixel model what they add to the recipe
  recipe_text_learned  recipe_text_gated with examples of read text (embedder/text_examples.py,
                as `phonesim learn-text` writes them): a photo whose text names no class takes
                the vote of the training photos' text nearest its own (those of its fold's
                training folds only, read as the product reads them); recipe_text_learned_rerank
                re-ranks as recipe_text_gated_rerank does; recipe_pair_text_learned (and
                _rerank) the same on recipe_pair's outputs: every opt-in lever at once
  recipe_pool_rerank  recipe_rerank with the pool it reorders chosen per fold as well (5, 10 or
                20 nearest; weights up to 1); recipe_text_learned_pool_rerank the same for
                recipe_text_learned_rerank

Metrics per fold: top-1 accuracy, macro-F1, Recall@1 and Recall@5 (a same-brand photo among the
k nearest training-fold photos). Reported: mean and 95% interval over folds, and each method's
paired difference to the recipe; the default (recipe_knn: `evaluate` and `serve` fuse by
default) is also paired with the probe and with probe_knn. Results and fold checkpoints are
cached in --work, so ``--only NAME`` adds a method to an earlier run. Ends with one JSON line.

With a label audit (--audit; by default phone_brands_label_audit.csv beside this script, for
the default dataset), each method's top-1 is also reported over the headline photos whose
label names the product shown, and over those that are phones (embedder/label_audit.py).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import sys
import time
import uuid
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import reporting_errors
from common.fsutil import atomic_write_text
from common.grouping import component_labels
from common.machine import run_context
from common.stamps import phonesim_version, utc_now
from embedder.class_rerank import ClassRerank, reranked_labels
from embedder.crossval import (
    Interval,
    Split,
    corrected_interval,
    group_bootstrap_interval,
    grouped_folds,
)
from embedder.data import Catalog, Sample, load_catalog
from embedder.errors import DataError
from embedder.images import load_image
from embedder.knn_vote import KnnFusion, fuse, knn_vote
from embedder.label_audit import AuditError, LabelAudit, load_label_audit
from embedder.label_conflicts import thumbnail_vector
from embedder.metrics import label_recall_at_k, macro_f1, nearest_neighbours
from embedder.preprocess import Preprocessor
from embedder.text_cues import DEFAULT_GATE as TEXT_GATE
from embedder.text_cues import DEFAULT_WEIGHT as TEXT_WEIGHT
from embedder.text_cues import TextCues, Texts, apply_text_cues, unsure
from embedder.text_examples import (
    MIN_SIMILARITY,
    MIN_VOTE_SHARE,
    NEIGHBOURS,
    SHARE,
    TEMPERATURE,
    TextExamples,
    document,
)
from embedder.text_reader import DEFAULT_ROTATIONS, DETECT_SIDE
from embedder.train_config import DEFAULT_MODEL, TrainConfig

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "phone-brands"
# What one person saw in 338 photos of DATA: every headline photo that any method cached in
# runs/bench_quality got wrong on 5 folds x 2, and 36 drawn at random from those none got wrong
# (README, "Label audit"); it applies to DATA only.
AUDIT = Path(__file__).with_name("phone_brands_label_audit.csv")
# Words that name DATA's brands besides the folder names (sub-brands, product lines, operating
# systems, a slogan), for the text-cue methods; written from what the brands sell, not per photo.
TEXT_CUES = Path(__file__).with_name("phone_brands_text_cues.json")
METRICS = ("accuracy", "macro_f1", "recall_at_1", "recall_at_5")
DEFAULT_METHODS = (
    "probe",
    "knn",
    "probe_knn",
    "recipe",
    "recipe_knn",
    "recipe_flip",
    "recipe_soup",
    "probe_lite1",
    "probe_lite2",
)
EXTRA_METHODS = (
    "supcon",
    "supcon_knn",
    "supcon_soup",
    "supcon_soup_knn",
    "recipe_int8",
    "recipe_multiscale",
    "recipe_multiscale_knn",
    "recipe_lite1",
    "recipe_lite1_knn",
    "recipe_lite1_multiscale",
    "recipe_lite1_multiscale_knn",
    "recipe_pair",
    "recipe_pair_knn",
    "recipe_pair_rerank",
    "recipe_knn_nested",
    "recipe_clean",
    "recipe_clean_knn",
    "recipe_288",
    "recipe_288_knn",
    "recipe_rerank",
    "recipe_288_rerank",
    "recipe_lite1_rerank",
    "recipe_full",
    "recipe_full_knn",
    "recipe_full_rerank",
    "recipe_lite2",
    "recipe_lite2_knn",
    "recipe_lite2_rerank",
    "recipe_full_lite1",
    "recipe_full_lite1_knn",
    "recipe_full_lite1_rerank",
    "recipe_unfreeze",
    "recipe_unfreeze_knn",
    "recipe_unfreeze_rerank",
    "recipe_border",
    "recipe_border_knn",
    "recipe_border_rerank",
    "recipe_crop_pair",
    "recipe_crop_pair_knn",
    "recipe_crop_pair_rerank",
    "recipe_mix",
    "recipe_mix_knn",
    "recipe_mix_rerank",
    "recipe_long",
    "recipe_long_knn",
    "recipe_long_rerank",
    "recipe_multisim",
    "recipe_multisim_knn",
    "recipe_multisim_rerank",
    "recipe_audited",
    "recipe_audited_knn",
    "recipe_audited_rerank",
    "recipe_fused_rerank",
    "recipe_text",
    "recipe_text_upright",
    "recipe_text_rerank",
    "recipe_text_gated",
    "recipe_text_gated_rerank",
    "recipe_text_export",
    "recipe_lite1_text_gated",
    "recipe_lite1_text_gated_rerank",
    "recipe_pair_text_gated",
    "recipe_pair_text_gated_rerank",
    "recipe_text_learned",
    "recipe_text_learned_rerank",
    "recipe_pair_text_learned",
    "recipe_pair_text_learned_rerank",
    "recipe_pool_rerank",
    "recipe_text_learned_pool_rerank",
)
# Text-cue methods: the rotations each reads a photo at, and its gate (1: every photo).
TEXT_METHODS = {
    "recipe_text": (DEFAULT_ROTATIONS, 1.0),
    "recipe_text_upright": ((0,), 1.0),
    "recipe_text_rerank": (DEFAULT_ROTATIONS, 1.0),
    "recipe_text_gated": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_text_gated_rerank": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_text_export": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_lite1_text_gated": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_lite1_text_gated_rerank": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_pair_text_gated": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_pair_text_gated_rerank": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_text_learned": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_text_learned_rerank": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_pair_text_learned": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_pair_text_learned_rerank": (DEFAULT_ROTATIONS, TEXT_GATE),
    "recipe_text_learned_pool_rerank": (DEFAULT_ROTATIONS, TEXT_GATE),
}
# Text-cue methods whose cues also take the vote of the training folds' read text.
LEARNED_TEXT = frozenset(
    {
        "recipe_text_learned",
        "recipe_text_learned_rerank",
        "recipe_pair_text_learned",
        "recipe_pair_text_learned_rerank",
        "recipe_text_learned_pool_rerank",
    }
)
# Each learned method and the same reading with the words alone.
LEARNED_PAIRS = {
    "recipe_text_learned": "recipe_text_gated",
    "recipe_text_learned_rerank": "recipe_text_gated_rerank",
    "recipe_pair_text_learned": "recipe_pair_text_gated",
    "recipe_pair_text_learned_rerank": "recipe_pair_text_gated_rerank",
}
# The cached model outputs a text-cue method reads (the recipe's unless named here): whether
# the words add to a better pixel model what they add to the recipe.
TEXT_BASES = {
    "recipe_lite1_text_gated": "recipe_lite1",
    "recipe_lite1_text_gated_rerank": "recipe_lite1",
    "recipe_pair_text_gated": "recipe_pair",
    "recipe_pair_text_gated_rerank": "recipe_pair",
    "recipe_pair_text_learned": "recipe_pair",
    "recipe_pair_text_learned_rerank": "recipe_pair",
}
# Text-cue methods on the classifier alone, as the export predicts (no kNN vote).
UNFUSED_TEXT = frozenset({"recipe_text_export"})
# The gates whose top-1 and share of photos read a gated text method also reports.
GATE_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)
# Each gated text method and the same method reading every photo.
GATED_PAIRS = {
    "recipe_text_gated": "recipe_text",
    "recipe_text_gated_rerank": "recipe_text_rerank",
}
FROZEN_MODELS = {
    "probe": DEFAULT_MODEL,
    "knn": DEFAULT_MODEL,
    "probe_knn": DEFAULT_MODEL,
    "probe_lite1": "tf_efficientnet_lite1",
    "probe_lite2": "tf_efficientnet_lite2",
}
SOUP_EPOCHS = 5
# Every training photo fitted (no inner validation split to pick the best epoch from): the
# checkpoint is the mean of the last SOUP_EPOCHS epochs' weights.
FIT_ALL = {"val_fraction": 0.0, "average_last": SOUP_EPOCHS}
# Recipe variants that train a model per fold, with their TrainConfig overrides.
TRAINED = {
    "recipe": {},
    "supcon": {"metric_loss": "supcon"},
    "supcon_soup": {"metric_loss": "supcon"},
    "recipe_lite1": {"model": "tf_efficientnet_lite1"},
    "recipe_lite2": {"model": "tf_efficientnet_lite2"},
    "recipe_clean": {},
    # Lite0 trained and scored at 288 px instead of its 224: brand cues (logos, camera
    # layouts) are small in a listing photo.
    "recipe_288": {"img_size": 288},
    "recipe_full": FIT_ALL,
    "recipe_full_lite1": {**FIT_ALL, "model": "tf_efficientnet_lite1"},
    # Only the stem kept frozen (the recipe freezes stem + 2 stages): the early stages adapt to
    # listing photos too, at the cost of a longer backward pass.
    "recipe_unfreeze": {"frozen_groups": 1},
    # Letterboxed instead of squashed: wide marketing banners and tall portrait shots keep
    # their proportions (a squash distorts the camera module's shape) at the cost of a
    # smaller phone in the frame.
    "recipe_border": {"crop_mode": "border"},
    # timm's Mixup: a regulariser for small training sets, untried on the recipe so far.
    "recipe_mix": {"mixup": 0.2, "cutmix": 1.0},
    # Twice the fine-tuning epochs (the cosine schedule stretched over them): the recipe's best
    # epoch fell anywhere from 4 to 10 of its 10, so whether 10 is enough was never measured.
    "recipe_long": {"epochs": 20},
    # The other retrieval loss: margin-based where supcon is contrastive over every
    # pair; weighted as supcon is (metric_weight 0.5).
    "recipe_multisim": {"metric_loss": "multisim"},
    # What fixing the catalog's labels would buy: the audit's wrong labels left out of training
    # (recipe_clean guessed them from a kNN vote instead).
    "recipe_audited": {},
}
# recipe_clean trains without the training photos whose label gets less than SUSPECT_SHARE of
# a kNN vote of the other training photos (their near copies left out) on frozen Lite0
# features: suspected wrong labels.
SUSPECT_SHARE = 0.05
SUSPECT_VOTE = KnnFusion(k=20, temperature=0.03)
# Input sides averaged with the trained one (224 for Lite0, 240 for Lite1), per trained method.
MULTISCALE_SIZES = {"recipe": (288,), "recipe_lite1": (320,)}
# Two-model ensembles scored from their members' cached outputs: two backbones, and one
# backbone seeing the photo squashed and letterboxed.
PAIRS = {
    "recipe_pair": ("recipe", "recipe_lite1"),
    "recipe_crop_pair": ("recipe", "recipe_border"),
}
FUSION = KnnFusion()
# Results cached before they recorded their fusion were computed with this setting.
LEGACY_FUSION = {"k": 20, "temperature": 0.07, "weight": 0.3}
# recipe_knn_nested picks its fusion from this grid on the other folds of its repeat.
FUSION_GRID = [
    KnnFusion(k, t, w) for k, t, w in itertools.product((10, 20), (0.03, 0.07), (0.3, 0.5, 0.7))
]
# recipe_rerank picks its class re-rank weight from this grid on the other folds of its repeat.
RERANK_GRID = [ClassRerank(weight=w) for w in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)]
# The fused prediction is surer than the classifier alone, so its grid reaches further: at 1 a
# candidate of the predicted class all but always comes first.
FUSED_RERANK_GRID = [*RERANK_GRID, ClassRerank(weight=0.5), ClassRerank(weight=1.0)]
# The _pool_rerank methods choose how many of the nearest the re-rank reorders as well: a
# photo's class is among its 5 nearest for 0.90 of the photos (Recall@5), so a deeper pool
# could put more first hits right. Its weights reach 1.0 where recipe_rerank's stop at 0.3,
# so the paired difference measures the deeper pool and the wider weights together.
POOL_RERANK_GRID = [replace(r, pool=n) for n in (5, 10, 20) for r in FUSED_RERANK_GRID]
# Each _pool_rerank method and the same re-rank over the product's pool of 5.
POOL_PAIRS = {
    "recipe_pool_rerank": "recipe_rerank",
    "recipe_text_learned_pool_rerank": "recipe_text_learned_rerank",
}
CHUNK = 64


# -- data ------------------------------------------------------------------------------------
def load_photos(data: Path) -> Catalog:
    """Every labelled photo under ``data`` (its train/ and val/ folders when it has them)."""
    parts = [data / "train", data / "val"] if (data / "train").is_dir() else [data]
    samples: list[Sample] = []
    for part in parts:
        for s in load_catalog(part).samples:
            samples.append(replace(s, id=f"{part.name}/{s.id}"))
    names = sorted({s.label for s in samples})
    return Catalog(samples, names, data)


def decode_all(samples: list[Sample], min_side: int) -> list:
    return [load_image(s.path, min_side) for s in samples]


def copy_groups(
    images: list, thumbs: np.ndarray, targets: np.ndarray, similarity: float
) -> tuple[np.ndarray, np.ndarray]:
    """Group label per photo, and which photos the headline scores.

    A group links every pair of copies the project can find: thumbnail cosine >= ``similarity``
    (the label-conflict test), as is or mirrored, and the duplicate benchmark's resized,
    re-encoded, cropped or re-framed copies. The thumbnail test alone split 21 cropped copies
    across groups, so a photo's copy could sit in the training folds (28 headline photos per
    repeat). A group that holds two brands is scored apart: no method can be right on all of it.
    """
    from PIL import ImageOps

    from duplicates.benchmark import BenchmarkConfig, crop_copy_pairs, near_copy_pairs

    rgb = [img.convert("RGB") for img in images]
    thumbs = np.asarray(thumbs, dtype=np.float32)
    mirrored = np.stack([thumbnail_vector(ImageOps.mirror(img)) for img in rgb])
    pairs = {
        (int(a), int(b))
        for sims in (thumbs @ thumbs.T, thumbs @ mirrored.T)
        for a, b in zip(*np.nonzero(np.triu(sims >= similarity, k=1)), strict=True)
    }
    cfg = BenchmarkConfig()
    pairs |= set(near_copy_pairs(rgb, cfg.near_copy_mad, cfg.near_copy_aspect))
    pairs |= set(crop_copy_pairs(rgb, cfg.near_copy_mad))
    groups = component_labels(len(images), np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2))
    labels_per_group = [set() for _ in range(int(groups.max()) + 1)]
    for g, t in zip(groups, targets, strict=True):
        labels_per_group[g].add(int(t))
    headline = np.array([len(labels_per_group[g]) == 1 for g in groups])
    return groups, headline


def preprocess_all(images: list, data_config: dict) -> np.ndarray:
    pre = Preprocessor(data_config)
    return np.concatenate([pre.batch(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)])


def embed_all(embedder, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and probabilities of preprocessed photos, in chunks."""
    embs, probs = [], []
    for i in range(0, len(x), CHUNK):
        out = embedder.embed_tensors(np.ascontiguousarray(x[i : i + CHUNK]))
        embs.append(out.embeddings)
        probs.append(out.probabilities)
    return np.concatenate(embs), np.concatenate(probs)


# -- scoring -------------------------------------------------------------------------------
def score(
    split: Split,
    y: np.ndarray,
    headline: np.ndarray,
    pred: np.ndarray,
    emb: np.ndarray,
) -> dict[str, Any]:
    """Fold metrics over the test photos; ``pred`` and ``emb`` cover every photo (pred of
    training photos is ignored)."""
    test = split.test[headline[split.test]]
    apart = split.test[~headline[split.test]]
    recall = label_recall_at_k(emb[test], y[test], emb[split.train], y[split.train])
    return {
        "accuracy": float((pred[test] == y[test]).mean()),
        "macro_f1": macro_f1(y[test], pred[test]),
        "recall_at_1": recall[1],
        "recall_at_5": recall[5],
        "cross_brand_correct": int((pred[apart] == y[apart]).sum()),
        "cross_brand_count": int(len(apart)),
        # per-photo correctness, for the paired group bootstrap
        "photos": test.tolist(),
        "correct": (pred[test] == y[test]).astype(int).tolist(),
    }


def uses_fusion(method: str) -> bool:
    """Whether ``method``'s figures depend on FUSION (the kNN vote or its fusion)."""
    if method in UNFUSED_TEXT:
        return False
    return method == "knn" or method.endswith(("_knn", "_rerank")) or method in TEXT_METHODS


def soup_outputs(best, states: list, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and probabilities of ``best``'s model with the weights averaged over the
    last SOUP_EPOCHS fine-tuning epochs (loaded into that model in place)."""
    from embedder.inference import Embedder
    from embedder.trainer import average_states

    model = best.engine.model
    model.load_state_dict(average_states(states[-SOUP_EPOCHS:]))
    return embed_all(Embedder(model, best.config), x)


def learned_setting() -> dict[str, float]:
    """What a LEARNED_TEXT method's figures depend on besides the cue words."""
    return {
        "neighbours": NEIGHBOURS,
        "temperature": TEMPERATURE,
        "min_similarity": MIN_SIMILARITY,
        "share": SHARE,
        "min_vote_share": MIN_VOTE_SHARE,
    }


def recipe_twin(method: str) -> str:
    """A TEXT_BASES method's counterpart reading the recipe's outputs with the same words."""
    return method.replace(TEXT_BASES[method], "recipe", 1)


def fused_predictions(split: Split, y: np.ndarray, probs: np.ndarray, emb: np.ndarray):
    scores, idx = nearest_neighbours(emb, emb[split.train], FUSION.k)
    return fuse(probs, scores, y[split.train][idx], FUSION).argmax(1)


def text_predictions(
    split: Split,
    y: np.ndarray,
    probs: np.ndarray,
    emb: np.ndarray,
    cues: np.ndarray,
    gate: float = 1.0,
    fused: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The fused prediction with each photo's text cues (N x C) added at TEXT_WEIGHT where the
    fused prediction is less sure than ``gate`` (a server with that --text-gate reads no other
    photo), and which photos those were. ``fused=False``: the classifier's prediction in
    place of the fused one, as the export predicts."""
    base = probs
    if fused:
        scores, idx = nearest_neighbours(emb, emb[split.train], FUSION.k)
        base = fuse(probs, scores, y[split.train][idx], FUSION)
    cues, read = gated_cues(cues, base, gate)
    return apply_text_cues(base, cues, TEXT_WEIGHT).argmax(1), read


def gated_cues(cues: np.ndarray, fused: np.ndarray, gate: float) -> tuple[np.ndarray, np.ndarray]:
    """``cues`` of the photos a server with that --text-gate would read (their ``fused``
    prediction below it), zero rows for the rest; and which photos those are."""
    read = unsure(fused, gate)
    return np.where(read[:, None], cues, 0.0).astype(np.float32), read


# -- methods -------------------------------------------------------------------------------
def _git_commit() -> str | None:
    """The checkout's commit (with ``+changes`` when files differ from it), or None."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # Stamped on each fold's figures: cached folds may be another commit's (see summary).
        self.stamp = {
            "run": uuid.uuid4().hex[:12],
            "when": utc_now(),
            "phonesim": phonesim_version(),
            "commit": _git_commit(),
        }
        self.work: Path = args.work
        self.work.mkdir(parents=True, exist_ok=True)
        self.catalog = load_photos(args.data)
        self.samples = self.catalog.samples
        self.names = self.catalog.label_names
        self.y = np.array([self.names.index(s.label) for s in self.samples])
        t0 = time.perf_counter()
        self.images = decode_all(self.samples, min_side=300)
        thumbs = np.stack([thumbnail_vector(img) for img in self.images])
        similarity = TrainConfig(data="", out="").conflict_similarity
        self.groups, self.headline = copy_groups(self.images, thumbs, self.y, similarity)
        self.splits = grouped_folds(self.y, self.groups, args.folds, args.repeats, args.seed)
        self.results_path = self.work / "results.json"
        self.results: dict[str, dict[str, dict]] = (
            json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        )
        # Repeat r's folds do not depend on --repeats, so more repeats extend the same cache.
        # "copies2": the groups join cropped and mirrored copies (earlier caches' folds did not).
        self.key = f"{args.data}|{args.folds} folds|seed{args.seed}|{len(self.samples)}|copies2"
        stored = self.results.get("_key")
        if stored not in (None, self.key):
            sys.exit(
                f"{self.results_path} holds another setting's results (or folds made before "
                "cropped copies were grouped); use another --work"
            )
        self.results["_key"] = self.key  # type: ignore[assignment]
        self._x: dict[tuple, np.ndarray] = {}
        self.audit = self.load_audit(args.audit, explicit=args.audit is not AUDIT)
        self.cue_file: Path | None = getattr(args, "text_cues", None)
        print(
            f"{len(self.samples)} photos, {len(self.names)} classes, {self.groups.max() + 1} "
            f"near-copy groups, {int((~self.headline).sum())} cross-brand copies scored apart; "
            f"{len(self.splits)} folds; decoded in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )

    def load_audit(self, path: Path | None, explicit: bool) -> LabelAudit | None:
        """The label audit, or None; a default audit that does not fit the data is skipped."""
        if path is None:
            return None
        try:
            return load_label_audit(
                path, [s.id for s in self.samples], [s.label for s in self.samples]
            )
        except (AuditError, OSError) as e:
            if explicit:
                sys.exit(f"--audit: {e}")
            print(f"label audit skipped: {e}", flush=True)
            return None

    def text_cues(self) -> TextCues:
        """The classes' names plus the cue file's words; a default file that names other
        classes than the data's is left out, as a default audit is."""
        if self.cue_file is not None:
            try:
                return TextCues.load(self.cue_file, self.names)
            except DataError as e:
                if self.cue_file is not TEXT_CUES:
                    sys.exit(f"--text-cues: {e}")
                print(f"text cue file skipped: {e}", flush=True)
        return TextCues.from_labels(self.names)

    def text_setting(self, method: str) -> dict[str, Any]:
        """What a text-cue method's figures depend on besides FUSION."""
        cues = self.text_cues()
        return {
            "words": [list(w) for w in cues.words],
            "min_confidence": cues.min_confidence,
            "fuzzy": cues.fuzzy,
            # how read words are matched: results cached before these changed are scored again
            "generic": sorted(cues.generic),
            "normal_form": "NFKC",
            "weight": TEXT_WEIGHT,
            "rotations": list(TEXT_METHODS[method][0]),
            "gate": TEXT_METHODS[method][1],
            "stop_once_named": True,  # no further rotation once the text names a class
            "detect_side": DETECT_SIDE,
            **({"examples": learned_setting()} if method in LEARNED_TEXT else {}),
        }

    def photo_cues(self, method: str, split: Split | None = None) -> tuple[np.ndarray, float]:
        """Each photo's text cues (N x C) at ``method``'s rotations, and the mean seconds per
        photo the reading took. A LEARNED_TEXT method's cues depend on ``split``: its examples
        are the text read on that fold's training photos."""
        cues = self.text_cues()
        texts, seconds = self.photo_texts(TEXT_METHODS[method][0], cues)
        if method in LEARNED_TEXT and split is not None:
            by_class: list[list[str]] = [[] for _ in self.names]
            for i in split.train:
                by_class[self.y[i]].append(document(texts[i], cues.min_confidence))
            cues = replace(cues, examples=TextExamples.from_lists(by_class))
        return cues.matrix(texts), seconds

    def photo_texts(self, rotations: tuple[int, ...], cues: TextCues) -> tuple[list[Texts], float]:
        """What RapidOCR reads on each photo at ``rotations`` (cached per rotation in --work,
        so each photo is read once) and the mean seconds per photo it took. As the product's
        reader, a photo is turned no further once its text names a class (``cues``)."""
        from embedder.text_reader import TextReader

        path = self.work / f"photo-text-{DETECT_SIDE}.json"  # each detector size its own
        cache: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        for angle in rotations:
            key = str(angle)
            todo = [i for i, s in enumerate(self.samples) if key not in cache.get(s.id, {})]
            if not todo:
                continue
            reader = TextReader(rotations=(angle,))
            print(f"  reading text at {angle} degrees on {len(todo)} photos ...", flush=True)
            for n, i in enumerate(todo, 1):
                t0 = time.perf_counter()
                lines = reader.read_each(self.images[i])[angle]
                entry = cache.setdefault(self.samples[i].id, {})
                entry[key] = lines
                entry[f"{key}_s"] = round(time.perf_counter() - t0, 4)
                if n % 100 == 0 or n == len(todo):
                    atomic_write_text(path, json.dumps(cache))  # a crash keeps what was read
                    print(f"    {n}/{len(todo)}", flush=True)
        texts, times = [], []
        for s in self.samples:
            lines: list = []
            took = 0.0
            for angle in rotations:
                if lines and cues.names_any(lines):
                    break
                lines += [(t, c) for t, c in cache[s.id][str(angle)]]
                took += cache[s.id][f"{angle}_s"]
            texts.append(lines)
            times.append(took)
        return texts, float(np.mean(times))

    def run_text(self, method: str) -> None:
        """recipe_knn's prediction with each photo's text cues (embedder/text_cues.py); for
        UNFUSED_TEXT, the classifier's prediction with them (as the export writes it)."""
        setting = self.text_setting(method)
        if all(self.done(method, split) for split in self.splits):
            return
        cues, seconds = self.photo_cues(method)
        base = TEXT_BASES.get(method, "recipe")
        for split in self.splits:
            outputs = self.work / split.name / base / "outputs.npz"
            if self.done(method, split):
                continue
            if not outputs.exists():
                print(f"  {method} {split.name}: run {base} first", flush=True)
                continue
            with np.load(outputs) as cached:
                emb, probs = cached["embeddings"], cached["probabilities"]
            if method in LEARNED_TEXT:
                cues, _ = self.photo_cues(method, split)
            fused = method not in UNFUSED_TEXT
            pred, read = text_predictions(
                split, self.y, probs, emb, cues, setting["gate"], fused=fused
            )
            figures = score(split, self.y, self.headline, pred, emb)
            test = split.test[self.headline[split.test]]
            read = read[test]
            figures.update(
                text_cues=setting,
                cue_photos=int((cues[test][read].sum(axis=1) > 0).sum()),
                read_fraction=round(float(read.mean()), 4),
                # the mean reading time per photo, the ones the gate leaves unread at 0
                text_s=round(seconds * float(read.mean()), 3),
            )
            if setting["gate"] < 1.0:  # what other gates would have read and scored
                figures["gate_curve"] = {}
                for gate in GATE_GRID:
                    at, read = text_predictions(split, self.y, probs, emb, cues, gate, fused)
                    correct = at[test] == self.y[test]
                    figures["gate_curve"][str(gate)] = [
                        float(correct.mean()),
                        float(read[test].mean()),
                    ]
            self.save(method, split, figures)
            print(
                f"    {method} {split.name}: accuracy {figures['accuracy']:.3f} "
                f"({figures['cue_photos']} of {len(test)} photos with a cue)",
                flush=True,
            )

    def save(self, method: str, split: Split, figures: dict) -> None:
        if uses_fusion(method):
            figures["fusion"] = asdict(FUSION)
        figures["computed"] = self.stamp
        self.results.setdefault(method, {})[split.name] = figures
        atomic_write_text(self.results_path, json.dumps(self.results))  # a crash keeps the rest

    def done(self, method: str, split: Split) -> bool:
        """Scored on this fold (with the current FUSION, for a method that fuses)."""
        figures = self.results.get(method, {}).get(split.name)
        if figures is None:
            return False
        if method.endswith("_rerank") and "hits_at_1" not in figures:
            return False  # scored before per-photo hits were kept (the label audit needs them)
        if method in TEXT_METHODS and figures.get("text_cues") != self.text_setting(method):
            return False
        return not uses_fusion(method) or figures.get("fusion", LEGACY_FUSION) == asdict(FUSION)

    # preprocessed photos at a trained model's input (the same for every fold of one backbone)
    def recipe_inputs(self, data_config: dict) -> np.ndarray:
        key = tuple(data_config["input_size"])
        if key not in self._x:
            self._x[key] = preprocess_all(self.images, data_config)
        return self._x[key]

    def frozen_features(self, model_name: str) -> np.ndarray:
        cache = self.work / f"frozen-{model_name}.npy"
        if cache.exists():
            return np.load(cache)
        from embedder.backbone import create_backbone
        from embedder.checkpoint import CheckpointConfig
        from embedder.inference import Embedder
        from embedder.transforms import model_data_config

        model = create_backbone(model_name, num_classes=len(self.names), weights="imagenet")
        crop = TrainConfig(data="", out="").crop_mode
        data_config = model_data_config(model, crop_mode=crop)
        config = CheckpointConfig(
            model_name, len(self.names), self.names, data_config, int(model.num_features)
        )
        t0 = time.perf_counter()
        emb, _ = embed_all(Embedder(model, config), preprocess_all(self.images, data_config))
        print(f"  frozen {model_name}: {time.perf_counter() - t0:.0f} s", flush=True)
        np.save(cache, emb)
        return emb

    def run_frozen(self, method: str) -> None:
        try:
            feats = self.frozen_features(FROZEN_MODELS[method])
        except Exception as exc:  # a missing weights package: skip this method, say why
            print(f"  {method}: skipped ({exc})", flush=True)
            return
        from sklearn.linear_model import LogisticRegressionCV

        for split in self.splits:
            if self.done(method, split):
                continue
            t0 = time.perf_counter()
            if method == "knn":
                scores, idx = nearest_neighbours(feats, feats[split.train], FUSION.k)
                labels = self.y[split.train][idx]
                pred = knn_vote(scores, labels, len(self.names), FUSION.temperature).argmax(1)
            else:
                # C by inner 3-fold CV on the training photos only (a wider grid changed
                # nothing measurable and cost minutes per fold on 2 cores).
                clf = LogisticRegressionCV(Cs=[1, 3, 10], cv=3, scoring="accuracy", max_iter=2000)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.8-1.10 notices
                    clf.fit(feats[split.train], self.y[split.train])
                if method == "probe_knn":
                    pred = fused_predictions(split, self.y, clf.predict_proba(feats), feats)
                else:
                    pred = np.full(len(self.y), -1)
                    pred[split.test] = clf.predict(feats[split.test])
            figures = score(split, self.y, self.headline, pred, feats)
            figures["seconds"] = round(time.perf_counter() - t0, 1)
            self.save(method, split, figures)

    def train_fold(
        self, split: Split, name: str, train: np.ndarray, **overrides
    ) -> tuple[Path, list, float]:
        """Train the recipe on the photos ``train`` (the split's training photos or a subset);
        the checkpoint folder, the weights of each fine-tuning epoch and the minutes it took."""
        from embedder.train_data import stratified_split
        from embedder.trainer import Trainer

        out = self.work / split.name / name
        train_samples = [self.samples[i] for i in train]
        config = TrainConfig(
            data=str(self.args.data), out=str(out), progress=False, seed=split.repeat, **overrides
        )
        fit, inner_val = stratified_split(train_samples, config.val_fraction, config.seed)
        states: list = []

        def keep(epoch: int, model) -> None:
            if epoch > 0:
                states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

        t0 = time.perf_counter()
        if out.exists():
            import shutil

            shutil.rmtree(out)  # an interrupted earlier fold: train it again
        trainer = Trainer(config, Catalog(fit, self.names, self.args.data), inner_val, keep)
        result = trainer.fit()
        if result.interrupted:
            raise KeyboardInterrupt
        return out, states, (time.perf_counter() - t0) / 60

    def run_trained(self, method: str) -> None:
        """recipe (+ its knn, flip and soup variants from the same models) or another entry of
        ``TRAINED``."""
        from embedder.inference import Embedder

        variants = (
            ["recipe", "recipe_knn", "recipe_flip", "recipe_soup"] if method == "recipe" else []
        )
        wanted = [v for v in variants if v in self.todo] or [method]
        if "recipe_knn" in wanted:
            self.run_fused("recipe", quiet=True)  # from cached outputs, e.g. after FUSION changed
        overrides = TRAINED[method]
        for split in self.splits:
            if all(self.done(v, split) for v in wanted):
                continue
            print(f"  {method} {split.name}: training ...", flush=True)
            train = self.training_photos(method, split)
            out, states, minutes = self.train_fold(split, method, train, **overrides)
            best = Embedder.from_checkpoint(out, runtime="torch", device="cpu")
            x = self.recipe_inputs(best.config.data_config)
            t0 = time.perf_counter()
            if method == "supcon_soup":  # scored as the soup, not as the best epoch
                emb, probs = soup_outputs(best, states, x)
            else:
                emb, probs = embed_all(best, x)
            embed_s = time.perf_counter() - t0
            pred = probs.argmax(1)
            base = score(split, self.y, self.headline, pred, emb)
            base.update(
                minutes=round(minutes, 2),
                embed_s=round(embed_s, 1),
                dropped=len(split.train) - len(train),
            )
            self.save(method, split, base)
            np.savez(out / "outputs.npz", embeddings=emb, probabilities=probs)
            print(
                f"    {method} {split.name}: accuracy {base['accuracy']:.3f} R@1 "
                f"{base['recall_at_1']:.3f} ({minutes:.1f} min)",
                flush=True,
            )
            if method != "recipe":
                continue
            t0 = time.perf_counter()
            fused = fused_predictions(split, self.y, probs, emb)
            figures = score(split, self.y, self.headline, fused, emb)
            figures["extra_s"] = round(time.perf_counter() - t0, 2)
            self.save("recipe_knn", split, figures)

            t0 = time.perf_counter()
            emb_f, probs_f = embed_all(best, x[..., ::-1])
            emb_tta = emb + emb_f
            emb_tta /= np.linalg.norm(emb_tta, axis=1, keepdims=True)
            figures = score(split, self.y, self.headline, (probs + probs_f).argmax(1), emb_tta)
            figures.update(extra_s=round(time.perf_counter() - t0, 1), model_cost=2.0)
            self.save("recipe_flip", split, figures)

            emb_s, probs_s = soup_outputs(best, states, x)
            figures = score(split, self.y, self.headline, probs_s.argmax(1), emb_s)
            figures["epochs_averaged"] = len(states[-SOUP_EPOCHS:])
            self.save("recipe_soup", split, figures)

    def training_photos(self, method: str, split: Split) -> np.ndarray:
        """The photos ``method`` trains on in ``split``: all of its training folds, except for
        the variants that leave suspected or audited wrong labels out."""
        if method == "recipe_clean":
            return self.unsuspected(split)
        if method == "recipe_audited":
            if self.audit is None:
                raise ValueError("recipe_audited needs a label audit (--audit)")
            return split.train[self.audit.kept[split.train]]
        return split.train

    def unsuspected(self, split: Split) -> np.ndarray:
        """The split's training photos less those whose label gets under SUSPECT_SHARE of the
        kNN vote of the other training photos (their near copies left out) on frozen
        features: the photos most likely filed under the wrong brand."""
        feats = self.frozen_features(DEFAULT_MODEL)[split.train]
        y, groups = self.y[split.train], self.groups[split.train]
        k = SUSPECT_VOTE.k
        scores, idx = nearest_neighbours(feats, feats, min(len(feats), k + 40))
        other = groups[idx] != groups[:, None]  # not itself, not its near copies
        order = np.argsort(~other, axis=1, kind="stable")[:, :k]  # others first, by rank
        rows = np.arange(len(feats))[:, None]
        labels = np.where(other[rows, order], y[idx[rows, order]], -1)
        vote = knn_vote(scores[rows, order], labels, len(self.names), SUSPECT_VOTE.temperature)
        keep = vote[np.arange(len(feats)), y] >= SUSPECT_SHARE
        return split.train[keep]

    def run_fused(self, method: str, quiet: bool = False) -> None:
        """A trained method's cached outputs fused with their kNN vote (``<method>_knn``)."""
        for split in self.splits:
            if self.done(f"{method}_knn", split):
                continue
            outputs = self.work / split.name / method / "outputs.npz"
            if not outputs.exists():
                if not quiet:
                    print(
                        f"  {method}_knn {split.name}: no {method} outputs yet (run {method} first)"
                    )
                continue
            with np.load(outputs) as cached:
                emb, probs = cached["embeddings"], cached["probabilities"]
            pred = fused_predictions(split, self.y, probs, emb)
            self.save(f"{method}_knn", split, score(split, self.y, self.headline, pred, emb))

    def run_int8(self) -> None:
        """Each fold's recipe checkpoint quantised on its own training photos (QDQ int8)."""
        from embedder.inference import Embedder
        from embedder.quantize import quantize_int8

        for split in self.splits:
            ckpt = self.work / split.name / "recipe"
            if self.done("recipe_int8", split):
                continue
            if not (ckpt / "outputs.npz").exists():
                print(f"  recipe_int8 {split.name}: no recipe checkpoint yet (run recipe first)")
                continue
            manifest = self.work / split.name / "calibration.csv"
            with manifest.open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", "image", "label"])
                for i in split.train:
                    s = self.samples[i]
                    writer.writerow([s.id, str(s.path.resolve()), s.label])
            t0 = time.perf_counter()
            quantize_int8(ckpt, manifest)
            int8 = Embedder.from_checkpoint(ckpt, runtime="onnx-int8", device="cpu")
            emb, probs = embed_all(int8, self.recipe_inputs(int8.config.data_config))
            fp32 = np.load(ckpt / "outputs.npz")["embeddings"]
            figures = score(split, self.y, self.headline, probs.argmax(1), emb)
            figures.update(
                cosine_to_fp32=float((emb * fp32).sum(1).mean()),
                seconds=round(time.perf_counter() - t0, 1),
            )
            self.save("recipe_int8", split, figures)
            print(f"    recipe_int8 {split.name}: accuracy {figures['accuracy']:.3f}", flush=True)

    def run_multiscale(self, base: str) -> None:
        """``base``'s checkpoints' outputs averaged over input sides (its cached outputs at the
        trained side plus ``MULTISCALE_SIZES[base]``), alone and fused with their kNN vote."""
        names = (f"{base}_multiscale", f"{base}_multiscale_knn")
        for split in self.splits:
            if all(self.done(m, split) for m in names):
                continue
            ckpt = self.work / split.name / base
            if not (ckpt / "outputs.npz").exists():
                print(f"  {names[0]} {split.name}: no {base} outputs yet (run {base} first)")
                continue
            sizes = MULTISCALE_SIZES[base]
            cache = ckpt / "outputs_multiscale.npz"  # lets a new FUSION re-score it cheaply
            cached: dict[str, np.ndarray] = {}
            if cache.exists():
                with np.load(cache) as stored:
                    cached = dict(stored)
            if "sizes" in cached and tuple(cached["sizes"]) == sizes:
                emb, probs = cached["embeddings"], cached["probabilities"]
                cost, extra_s = float(cached["model_cost"]), float(cached["extra_s"])
            else:
                emb, probs, cost, extra_s = self.multiscale_outputs(ckpt, sizes)
                np.savez(
                    cache,
                    embeddings=emb,
                    probabilities=probs,
                    sizes=np.array(sizes),
                    model_cost=cost,
                    extra_s=extra_s,
                )
            figures = score(split, self.y, self.headline, probs.argmax(1), emb)
            figures.update(extra_s=extra_s, model_cost=round(cost, 2))
            self.save(names[0], split, figures)
            fused = fused_predictions(split, self.y, probs, emb)
            figures = score(split, self.y, self.headline, fused, emb)
            figures.update(extra_s=extra_s, model_cost=round(cost, 2))
            self.save(names[1], split, figures)
            print(
                f"    {names[0]} {split.name}: accuracy {figures['accuracy']:.3f} fused",
                flush=True,
            )

    def multiscale_outputs(
        self, ckpt: Path, sizes: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """A checkpoint's cached outputs averaged with its outputs at ``sizes``; the cost in
        pixels relative to the trained side, and the extra seconds."""
        from embedder.inference import Embedder

        model = Embedder.from_checkpoint(ckpt, runtime="torch", device="cpu")
        with np.load(ckpt / "outputs.npz") as cached:
            emb, probs = cached["embeddings"], cached["probabilities"]
        side = model.config.data_config["input_size"][-1]
        t0 = time.perf_counter()
        for size in sizes:
            config = {**model.config.data_config, "input_size": [3, size, size]}
            e, p = embed_all(model, preprocess_all(self.images, config))
            emb, probs = emb + e, probs + p
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        probs = probs / (1 + len(sizes))
        cost = 1.0 + sum((size / side) ** 2 for size in sizes)
        return emb, probs, round(cost, 2), round(time.perf_counter() - t0, 1)

    def run_pair(self, name: str) -> None:
        """The ``PAIRS[name]`` checkpoints as one ensemble: mean probabilities, concatenated
        L2-normalised embeddings (re-normalised), alone and fused with their kNN vote. Its
        outputs are cached like a trained method's, for ``<name>_rerank``."""
        members = PAIRS[name]
        for split in self.splits:
            out = self.work / split.name / name
            if (out / "outputs.npz").exists() and all(
                self.done(m, split) for m in (name, f"{name}_knn")
            ):
                continue
            paths = [self.work / split.name / m / "outputs.npz" for m in members]
            if not all(path.exists() for path in paths):
                print(f"  {name} {split.name}: run {' and '.join(members)} first")
                continue
            embs, probs = [], []
            for path in paths:
                with np.load(path) as cached:
                    embs.append(cached["embeddings"])
                    probs.append(cached["probabilities"])
            emb = np.concatenate(embs, axis=1) / np.sqrt(len(embs))
            prob = np.mean(probs, axis=0)
            out.mkdir(parents=True, exist_ok=True)
            np.savez(out / "outputs.npz", embeddings=emb, probabilities=prob)
            # measured: both models' embedding seconds over the first's, on this fold
            seconds = [self.results.get(m, {}).get(split.name, {}).get("embed_s") for m in members]
            cost = {"model_cost": round(sum(seconds) / seconds[0], 2)} if all(seconds) else {}
            figures = score(split, self.y, self.headline, prob.argmax(1), emb)
            self.save(name, split, {**figures, **cost})
            fused = fused_predictions(split, self.y, prob, emb)
            figures = score(split, self.y, self.headline, fused, emb)
            self.save(f"{name}_knn", split, {**figures, **cost})

    def run_nested(self) -> None:
        """recipe_knn with its fusion chosen per fold from FUSION_GRID by the pooled accuracy
        of the other folds of its repeat: what tuning the fusion is worth, measured on photos
        the choice never saw."""
        # fold -> (its embeddings, every grid setting's predictions, grid x test correctness)
        graded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for split in self.splits:
            outputs = self.work / split.name / "recipe" / "outputs.npz"
            if outputs.exists():
                with np.load(outputs) as cached:
                    emb, probs = cached["embeddings"], cached["probabilities"]
                k = max(f.k for f in FUSION_GRID)
                scores, idx = nearest_neighbours(emb, emb[split.train], k)
                labels = self.y[split.train][idx]
                preds = np.array([fuse(probs, scores, labels, f).argmax(1) for f in FUSION_GRID])
                test = split.test[self.headline[split.test]]
                graded[split.name] = (emb, preds, preds[:, test] == self.y[test])
        correct = {name: g[2] for name, g in graded.items()}
        for split in self.splits:
            best = self.chosen_on_other_folds("recipe_knn_nested", split, correct, "recipe")
            if best is None:
                continue
            chosen = FUSION_GRID[best]
            emb, preds, _ = graded[split.name]
            figures = score(split, self.y, self.headline, preds[best], emb)
            figures["chosen_fusion"] = asdict(chosen)
            self.save("recipe_knn_nested", split, figures)
            print(f"    recipe_knn_nested {split.name}: {chosen}", flush=True)

    def chosen_on_other_folds(
        self, method: str, split: Split, graded: dict[str, np.ndarray], needs: str
    ) -> int | None:
        """The grid row (``graded[fold]``: grid x test photos, per-photo scores) with the best
        pooled score on the other folds of ``split``'s repeat; None when ``split`` is already
        scored or a fold of its repeat lacks ``needs``' outputs (said once per fold)."""
        if self.done(method, split):
            return None
        others = [s.name for s in self.splits if s.repeat == split.repeat and s != split]
        if not all(o in graded for o in [split.name, *others]):
            print(f"  {method} {split.name}: run {needs} on all folds of its repeat")
            return None
        return int(np.concatenate([graded[o] for o in others], axis=1).mean(axis=1).argmax())

    def run_rerank(
        self, base: str, fused: bool = False, text: str | None = None, pools: bool = False
    ) -> None:
        """``<base>_knn``'s prediction with the trained ``base``'s neighbours re-ranked by its
        classifier (embedder/class_rerank.py): Recall@1 and @5 of the re-ranked lists, the
        weight chosen per fold from RERANK_GRID by the pooled Recall@1 of the other folds of
        its repeat. ``fused``: re-ranked by the fused prediction instead (classifier and kNN
        vote over the training folds), the weight from FUSED_RERANK_GRID. ``text`` (the
        method, recipe_text_rerank or recipe_text_gated_rerank): re-ranked by the classifier
        with the text cues of the photos its gate reads, and predicted as its recipe_text.
        ``pools`` (or a text method named _pool_rerank): the weight and the pool from
        POOL_RERANK_GRID."""
        method = text or (f"{base}_fused_rerank" if fused else f"{base}_rerank")
        if pools and not text:
            method = f"{base}_pool_rerank"
        pools = pools or method.endswith("_pool_rerank")
        grid = POOL_RERANK_GRID if pools else FUSED_RERANK_GRID if fused else RERANK_GRID
        cues, gate = None, 1.0
        if text:
            cues, _ = self.photo_cues(method)
            gate = TEXT_METHODS[method][1]
        pool = max(r.pool for r in grid)
        # fold -> (embeddings, probabilities, grid x test photos x pool: label matches)
        graded: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        split_cues: dict[str, np.ndarray] = {}  # a LEARNED_TEXT method's, fold by fold
        for split in self.splits:
            outputs = self.work / split.name / base / "outputs.npz"
            if not outputs.exists():
                continue
            with np.load(outputs) as cached:
                emb, probs = cached["embeddings"], cached["probabilities"]
            if method in LEARNED_TEXT:
                cues, _ = self.photo_cues(method, split)
                split_cues[split.name] = cues
            test = split.test[self.headline[split.test]]
            scores, idx = nearest_neighbours(emb[test], emb[split.train], max(pool, FUSION.k))
            labels = self.y[split.train][idx]
            voted = fuse(probs[test], scores, labels, FUSION)
            belief = voted if fused else probs[test]
            if cues is not None:  # the gate looks at the fused prediction, as the server's
                read_cues, _ = gated_cues(cues[test], voted, gate)
                belief = apply_text_cues(belief, read_cues, TEXT_WEIGHT)
            scores, labels = scores[:, :pool], labels[:, :pool]
            match = np.stack(
                [reranked_labels(scores, labels, belief, r) == self.y[test][:, None] for r in grid]
            )
            graded[split.name] = (emb, probs, match)
        first = {name: g[2][:, :, 0] for name, g in graded.items()}  # Recall@1 per photo
        for split in self.splits:
            best = self.chosen_on_other_folds(method, split, first, base)
            if best is None:
                continue
            emb, probs, match = graded[split.name]
            if cues is None:
                pred = fused_predictions(split, self.y, probs, emb)
            else:
                cues = split_cues.get(split.name, cues)
                pred, _ = text_predictions(split, self.y, probs, emb, cues, gate)
            figures = score(split, self.y, self.headline, pred, emb)
            figures["recall_at_1"] = float(match[best][:, 0].mean())
            # per test photo (in the order of "photos"), for the label audit's view
            figures["hits_at_1"] = match[best][:, 0].astype(int).tolist()
            figures["recall_at_5"] = float(match[best][:, :5].any(axis=1).mean())
            figures["chosen_rerank"] = asdict(grid[best])
            if cues is not None:
                figures["text_cues"] = self.text_setting(method)
            self.save(method, split, figures)
            print(f"    {method} {split.name}: {grid[best]}", flush=True)

    def run(self, todo: list[str]) -> None:
        self.todo = todo
        for method in todo:
            if method in FROZEN_MODELS:
                print(f"{method} ...", flush=True)
                self.run_frozen(method)
            elif method == "recipe_audited" and self.audit is None:
                print(f"{method}: no label audit for this dataset (--audit FILE)", flush=True)
            elif method in TRAINED:
                print(f"{method} ...", flush=True)
                self.run_trained(method)
            elif method != "recipe_knn" and method.removesuffix("_knn") in TRAINED:
                print(f"{method} ...", flush=True)
                self.run_fused(method.removesuffix("_knn"))
            elif method == "recipe_int8":
                print(f"{method} ...", flush=True)
                self.run_int8()
            elif method.endswith(("_multiscale", "_multiscale_knn")):
                print(f"{method} ...", flush=True)
                self.run_multiscale(method.split("_multiscale")[0])
            elif method.removesuffix("_knn") in PAIRS:
                print(f"{method} ...", flush=True)
                self.run_pair(method.removesuffix("_knn"))
            elif method == "recipe_knn_nested":
                print(f"{method} ...", flush=True)
                self.run_nested()
            elif method == "recipe_pool_rerank":
                print(f"{method} ...", flush=True)
                self.run_rerank("recipe", pools=True)
            elif method in TEXT_METHODS and method.endswith("_rerank"):
                print(f"{method} ...", flush=True)
                self.run_rerank(TEXT_BASES.get(method, "recipe"), text=method)
            elif method in TEXT_METHODS:
                print(f"{method} ...", flush=True)
                self.run_text(method)
            elif method.endswith("_fused_rerank"):
                print(f"{method} ...", flush=True)
                self.run_rerank(method.removesuffix("_fused_rerank"), fused=True)
            elif method.endswith("_rerank"):
                print(f"{method} ...", flush=True)
                self.run_rerank(method.removesuffix("_rerank"))
            elif method in ("recipe_knn", "recipe_flip", "recipe_soup") and "recipe" not in todo:
                self.todo = [*todo, "recipe"]
                self.run_trained("recipe")

    # -- summary -----------------------------------------------------------------------------
    def computed(self, folds: list[dict]) -> dict[str, Any]:
        """How many of a method's folds this run computed, and which commits and versions
        computed the others: a cached fold is reported beside new ones without a word, and it
        may be an older recipe's (a retrained recipe had read 0.750 beside 0.738 on record)."""
        stamps = [f.get("computed") or {} for f in folds]
        return {
            "this_run": sum(s.get("run") == self.stamp["run"] for s in stamps),
            "commits": sorted({str(s.get("commit") or "unknown") for s in stamps}),
            "versions": sorted({str(s.get("phonesim") or "unknown") for s in stamps}),
        }

    def summary(self) -> dict[str, Any]:
        frac = 1.0 / (self.args.folds - 1)
        names = [s.name for s in self.splits]
        methods = [m for m in (*DEFAULT_METHODS, *EXTRA_METHODS) if m in self.results]
        out: dict[str, Any] = {"methods": {}, "paired_vs_recipe": {}}
        for m in methods:
            folds = [self.results[m][n] for n in names if n in self.results[m]]
            entry: dict[str, Any] = {"folds": len(folds), "computed": self.computed(folds)}
            for metric in METRICS:
                entry[metric] = corrected_interval([f[metric] for f in folds], frac).to_json()
            apart = sum(f["cross_brand_count"] for f in folds)
            entry["cross_brand_accuracy"] = round(
                sum(f["cross_brand_correct"] for f in folds) / max(1, apart), 4
            )
            for extra in ("minutes", "model_cost", "cosine_to_fp32", "text_s", "read_fraction"):
                if extra in folds[0]:
                    entry[extra] = round(float(np.mean([f[extra] for f in folds])), 4)
            if "gate_curve" in folds[0]:  # gate -> mean [top-1, share of photos read]
                entry["gate_curve"] = {
                    g: np.round(np.mean([f["gate_curve"][g] for f in folds], axis=0), 4).tolist()
                    for g in folds[0]["gate_curve"]
                }
            out["methods"][m] = entry
        for m in methods:
            if m == "recipe" or "recipe" not in self.results:
                continue
            out["paired_vs_recipe"][m] = self.paired(m, "recipe", names, frac)
        if "probe" in self.results and "recipe" in self.results:
            out["recipe_vs_probe"] = self.paired("recipe", "probe", names, frac)
        for base in ("probe", "probe_knn"):
            if base in self.results and "recipe_knn" in self.results:
                out[f"default_vs_{base}"] = self.paired("recipe_knn", base, names, frac)
        # Fused candidates against the default prediction (which fuses too).
        out["paired_vs_default"] = {
            m: self.paired(m, "recipe_knn", names, frac)
            for m in methods
            if (m.endswith(("_knn", "_knn_nested", "_rerank")) or m in TEXT_METHODS)
            and m not in ("recipe_knn", "probe_knn", *UNFUSED_TEXT)
            and "recipe_knn" in self.results
        }
        # Which belief re-ranks better: the fused prediction or the classifier alone.
        if "recipe_fused_rerank" in self.results and "recipe_rerank" in self.results:
            out["fused_rerank_vs_rerank"] = self.paired(
                "recipe_fused_rerank", "recipe_rerank", names, frac
            )
        # What reading the photo turned both ways adds to reading it upright.
        if "recipe_text" in self.results and "recipe_text_upright" in self.results:
            out["text_vs_upright"] = self.paired("recipe_text", "recipe_text_upright", names, frac)
        # Whether the photo's text helps the re-rank as it helps the prediction.
        if "recipe_text_rerank" in self.results and "recipe_rerank" in self.results:
            out["text_rerank_vs_rerank"] = self.paired(
                "recipe_text_rerank", "recipe_rerank", names, frac
            )
        # What reading only the unsure photos gives up against reading every photo.
        for gated_m, every in GATED_PAIRS.items():
            if gated_m in self.results and every in self.results:
                out[f"{gated_m}_vs_every"] = self.paired(gated_m, every, names, frac)
        # What the words add to another model against what they add to the recipe.
        for m in TEXT_BASES:
            if m in self.results and recipe_twin(m) in self.results:
                out[f"{m}_vs_recipe"] = self.paired(m, recipe_twin(m), names, frac)
        # What a deeper re-rank pool adds to the product's 5.
        for m, five in POOL_PAIRS.items():
            if m in self.results and five in self.results:
                out[f"{m}_vs_pool_5"] = self.paired(m, five, names, frac)
        # What the examples of read text add to the words alone (same gate, same reading).
        for m, words_only in LEARNED_PAIRS.items():
            if m in self.results and words_only in self.results:
                out[f"{m}_vs_words"] = self.paired(m, words_only, names, frac)
        if "recipe_text_gated" in self.results and "recipe_text" in self.results:
            out["gate_nested"] = self.gate_nested()
        if self.audit is not None:
            out["audited"] = self.audited(methods, names, frac, self.audit)
        return out

    def gate_nested(self) -> dict[str, Any]:
        """The gate chosen for each fold on the other folds of its repeat: the lowest of
        GATE_GRID whose pooled top-1 there is that of reading every photo (1 if none), and
        the top-1 and share read it gives on the fold itself (from recipe_text_gated's gate
        curve)."""
        gated, every = self.results["recipe_text_gated"], self.results["recipe_text"]
        names = [s.name for s in self.splits if s.name in gated and s.name in every]
        chosen, accuracy, read = {}, [], []
        for split in self.splits:
            if split.name not in names:
                continue
            others = [s.name for s in self.splits if s.repeat == split.repeat and s != split]
            others = [o for o in others if o in names]
            target = np.mean([every[o]["accuracy"] for o in others])
            gate = next(
                (
                    g
                    for g in map(str, GATE_GRID)
                    if np.mean([gated[o]["gate_curve"][g][0] for o in others]) >= target
                ),
                None,
            )
            chosen[split.name] = float(gate) if gate else 1.0
            curve = gated[split.name]["gate_curve"]
            accuracy.append(curve[gate][0] if gate else every[split.name]["accuracy"])
            read.append(curve[gate][1] if gate else 1.0)
        return {
            "chosen": chosen,
            "accuracy": round(float(np.mean(accuracy)), 4),
            "read_fraction": round(float(np.mean(read)), 4),
        }

    def audited(
        self, methods: list[str], names: list[str], frac: float, audit: LabelAudit
    ) -> dict[str, Any]:
        """Top-1 per method over the headline photos the audit leaves in: those whose label
        may name the product shown (``label_ok``), and those of them that are phones; fused
        candidates are also paired with the default prediction on ``label_ok``."""
        headline = self.headline
        views = {"label_ok": audit.kept, "phones": audit.phones}
        out: dict[str, Any] = {
            "audited_photos": int(audit.audited.sum()),
            "wrong_label_in_headline": int((audit.wrong_label & headline).sum()),
            "not_phone_in_headline": int((audit.not_phone & ~audit.wrong_label & headline).sum()),
            "methods": {},
            "label_ok_paired_vs_default": {},
        }

        def fold_mean(m: str, n: str, field: str, keep: np.ndarray) -> float:
            """A fold's per-photo ``field`` ("correct", "hits_at_1") averaged over ``keep``."""
            f = self.results[m][n]
            return float(np.asarray(f[field])[keep[np.asarray(f["photos"], dtype=int)]].mean())

        for m in methods:
            done = [n for n in names if n in self.results[m]]
            out["methods"][m] = {
                view: corrected_interval(
                    [fold_mean(m, n, "correct", keep) for n in done], frac
                ).to_json()
                for view, keep in views.items()
            }
            # Re-ranked Recall@1 of the queries whose label names the product shown (the
            # catalog they search keeps its labels); only results scored since it was kept.
            if done and all("hits_at_1" in self.results[m][n] for n in done):
                recall = [fold_mean(m, n, "hits_at_1", audit.kept) for n in done]
                out["methods"][m]["recall_at_1_label_ok"] = corrected_interval(
                    recall, frac
                ).to_json()
        # A _rerank method predicts as its _knn twin, so only the fused ones are paired.
        fused = [
            m
            for m in methods
            if m != "recipe_knn"
            and (
                m.endswith(("_knn", "_knn_nested"))
                or (m in TEXT_METHODS and not m.endswith("_rerank") and m not in UNFUSED_TEXT)
            )
        ]
        for m in fused if "recipe_knn" in self.results else []:
            common = [n for n in names if n in self.results[m] and n in self.results["recipe_knn"]]
            diffs = [
                fold_mean(m, n, "correct", audit.kept)
                - fold_mean("recipe_knn", n, "correct", audit.kept)
                for n in common
            ]
            out["label_ok_paired_vs_default"][m] = corrected_interval(diffs, frac).to_json()
        return out

    def paired(self, m: str, base: str, names: list[str], frac: float) -> dict[str, Any]:
        common = [n for n in names if n in self.results[m] and n in self.results[base]]
        entry: dict[str, Any] = {"folds": len(common)}
        if not common:
            return entry
        for metric in METRICS:
            diffs = [self.results[m][n][metric] - self.results[base][n][metric] for n in common]
            entry[metric] = corrected_interval(diffs, frac).to_json()
        diffs, groups = [], []
        for n in common:
            a, b = self.results[m][n], self.results[base][n]
            diffs += list(np.subtract(a["correct"], b["correct"]))
            # A photo's group, whatever the repeat: both repeats score the same photos, and a
            # change that fixes a photo in one tends to fix it in the other. Keyed by repeat,
            # the bootstrap took them as independent (intervals up to 1.4x too narrow).
            groups += [str(self.groups[p]) for p in a["photos"]]
        entry["accuracy_photo_bootstrap"] = group_bootstrap_interval(
            np.array(diffs), np.array(groups)
        ).to_json()
        # Two re-rankings of the same photos: their first hits, paired photo by photo.
        if all("hits_at_1" in self.results[x][n] for x in (m, base) for n in common):
            hits = [
                np.subtract(self.results[m][n]["hits_at_1"], self.results[base][n]["hits_at_1"])
                for n in common
            ]
            entry["recall_at_1_photo_bootstrap"] = group_bootstrap_interval(
                np.concatenate(hits), np.array(groups)
            ).to_json()
        return entry


def print_summary(summary: dict[str, Any]) -> None:
    width = max(len(m) for m in ("method", *summary["methods"])) + 2
    print(f"\n{'method':<{width}}{'folds':>6}  " + "".join(f"{m:<26}" for m in METRICS))
    for m, e in summary["methods"].items():
        cells = "".join(
            f"{e[k]['mean']:.3f} [{e[k]['low']:.3f},{e[k]['high']:.3f}]    " for k in METRICS
        )
        print(f"{m:<{width}}{e['folds']:>6}  {cells}")
    print(
        "\npaired difference to the recipe (fold-corrected t; accuracy, and Recall@1 between two "
        "re-rankings, also by photo bootstrap)"
    )
    rows = dict(summary["paired_vs_recipe"])
    if "recipe_vs_probe" in summary:
        rows["recipe - probe"] = summary["recipe_vs_probe"]
    for base in ("probe", "probe_knn"):  # the default fuses with the kNN vote
        if f"default_vs_{base}" in summary:
            rows[f"recipe_knn - {base}"] = summary[f"default_vs_{base}"]
    for m, e in summary.get("paired_vs_default", {}).items():
        rows[f"{m} - recipe_knn"] = e
    if "fused_rerank_vs_rerank" in summary:
        rows["recipe_fused_rerank - recipe_rerank"] = summary["fused_rerank_vs_rerank"]
    if "text_vs_upright" in summary:
        rows["recipe_text - recipe_text_upright"] = summary["text_vs_upright"]
    if "text_rerank_vs_rerank" in summary:
        rows["recipe_text_rerank - recipe_rerank"] = summary["text_rerank_vs_rerank"]
    for gated_m, every in GATED_PAIRS.items():
        if f"{gated_m}_vs_every" in summary:
            rows[f"{gated_m} - {every}"] = summary[f"{gated_m}_vs_every"]
    for m in TEXT_BASES:
        if f"{m}_vs_recipe" in summary:
            rows[f"{m} - {recipe_twin(m)}"] = summary[f"{m}_vs_recipe"]
    for m, five in POOL_PAIRS.items():
        if f"{m}_vs_pool_5" in summary:
            rows[f"{m} - {five}"] = summary[f"{m}_vs_pool_5"]
    for m, words_only in LEARNED_PAIRS.items():
        if f"{m}_vs_words" in summary:
            rows[f"{m} - {words_only}"] = summary[f"{m}_vs_words"]
    width = max(map(len, rows), default=0) + 2
    for m, e in rows.items():
        if "accuracy" not in e:
            continue
        parts = [f"{k} {Interval(**e[k])}" for k in ("accuracy", "recall_at_1")]
        parts.append(f"photo bootstrap {Interval(**e['accuracy_photo_bootstrap'])}")
        if "recall_at_1_photo_bootstrap" in e:
            parts.append(f"(Recall@1 {Interval(**e['recall_at_1_photo_bootstrap'])})")
        print(f"  {m:<{width}}" + "  ".join(parts))
    for m, e in summary["methods"].items():
        if "gate_curve" in e:
            print(f"\n{m}: top-1 and share of photos read at each --text-gate (mean of folds)")
            for gate, (accuracy, read) in e["gate_curve"].items():
                print(f"  gate {gate}: top-1 {accuracy:.3f}, read {read:.2f}")
            if m == "recipe_text_gated" and "gate_nested" in summary:
                nested = summary["gate_nested"]
                gates = ", ".join(f"{g:g}" for g in nested["chosen"].values())
                print(
                    f"  chosen per fold on the other folds (as reading every photo there): "
                    f"{gates}; top-1 {nested['accuracy']:.3f}, read {nested['read_fraction']:.2f}"
                )
    if "audited" in summary:
        print_audited(summary["audited"])


def print_audited(audited: dict[str, Any]) -> None:
    print(
        f"\ntop-1 by the label audit ({audited['audited_photos']} photos audited; left out of "
        f"the headline: {audited['wrong_label_in_headline']} whose label names another "
        f"product, then {audited['not_phone_in_headline']} watches and tablets for 'phones')"
    )
    width = max(len(m) for m in ("method", *audited["methods"])) + 2
    print(f"{'method':<{width}}{'label_ok':<26}phones")
    for m, e in audited["methods"].items():
        cells = [f"{e[v]['mean']:.3f} [{e[v]['low']:.3f},{e[v]['high']:.3f}]" for v in e]
        recall = f"  Recall@1 (label_ok queries) {cells[2]}" if len(cells) > 2 else ""
        print(f"{m:<{width}}{cells[0]:<26}{cells[1]}{recall}")
    for m, e in audited["label_ok_paired_vs_default"].items():
        print(f"  label_ok {m} - recipe_knn  {Interval(**e)}")


def add_fold_options(parser: argparse.ArgumentParser, work_help: str) -> None:
    """``--data``, ``--folds``, ``--seed`` and ``--work``: the fold setting and its cache, shared
    with the scripts that read this cache (bench_export_rerank.py)."""
    parser.add_argument("--data", type=Path, default=DATA, help=f"dataset (default {DATA})")
    parser.add_argument("--folds", type=int, default=5, help="folds per repeat (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="fold shuffling seed (default 0)")
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "runs" / "bench_quality",
        help=f"{work_help} (default runs/bench_quality)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=Path(__file__).name,
        description=__doc__.split("\n\n")[0],
        epilog="methods: " + ", ".join((*DEFAULT_METHODS, *EXTRA_METHODS)),
    )
    add_fold_options(parser, "cache of fold checkpoints, features and results")
    parser.add_argument("--repeats", type=int, default=1, help="repeats (default 1)")
    parser.add_argument(
        "--only",
        action="append",
        choices=(*DEFAULT_METHODS, *EXTRA_METHODS),
        help="run only this method (repeatable); cached results of others are still reported",
    )
    parser.add_argument("--report", action="store_true", help="only print the cached results")
    parser.add_argument(
        "--audit",
        type=Path,
        help="label audit CSV (photo,filed,verdict,shows) for the audited top-1 view "
        f"(default {AUDIT.name} beside this script, with the default --data)",
    )
    parser.add_argument(
        "--text-cues",
        type=Path,
        help="JSON {label: [word, ...]} of words naming each class besides its name, for the "
        f"text-cue methods (default {TEXT_CUES.name} beside this script, with the default --data)",
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        if args.data == DATA:  # no ../shared on this machine: a skip, not an error
            print(f"skipped: no dataset at {DATA}")
            print(json.dumps({"skipped": f"no dataset at {DATA}"}))
            return 0
        parser.error(f"dataset not found at {args.data} (--data)")
    if args.audit is None and args.data.resolve() == DATA.resolve():
        args.audit = AUDIT
    if args.text_cues is None and args.data.resolve() == DATA.resolve():
        args.text_cues = TEXT_CUES
    if args.folds < 2 or args.repeats < 1:
        parser.error("--folds must be >= 2 and --repeats >= 1")
    logging.basicConfig(level=logging.WARNING)
    bench = Bench(args)
    started = time.perf_counter()
    if not args.report:
        bench.run(list(args.only or DEFAULT_METHODS))
    summary = bench.summary()
    if args.report and not summary["methods"]:
        parser.error(f"--report: nothing cached in {args.work} for these folds; run without it")
    print_summary(summary)
    summary.update(
        photos=len(bench.samples),
        headline_photos=int(bench.headline.sum()),
        near_copy_groups=int(bench.groups.max() + 1),
        folds=args.folds,
        repeats=args.repeats,
        baseline="recipe",
        minutes=round((time.perf_counter() - started) / 60, 1),
    )
    methods = summary["methods"]
    if "recipe" not in methods:  # the baseline every method is paired with
        print(
            f"note: no recipe results in {args.work} for these folds, so nothing is paired; "
            "run --only recipe (a training per fold) for the baseline and the paired intervals"
        )
    if "recipe" in methods and "probe" in methods:
        summary["recipe_over_probe_accuracy_ratio"] = round(
            methods["recipe"]["accuracy"]["mean"] / methods["probe"]["accuracy"]["mean"], 4
        )
    print(json.dumps({**summary, "context": run_context()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
