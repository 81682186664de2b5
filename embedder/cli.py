"""``phonesim`` subcommands of the embedder stage: train, evaluate, embed."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from common.argtypes import (
    add_progress_option,
    batch_size,
    decode_workers,
    device,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    show_progress,
    thread_count,
    unit_interval,
)
from common.extras import install_hint
from embedder import optimize_cli
from embedder.engine_options import EngineOptions, add_engine_options
from embedder.errors import check_output_folder
from embedder.knn_options import (
    add_class_rerank_option,
    add_knn_fusion_options,
    add_text_cue_options,
    class_rerank_from_args,
    knn_fusion_from_args,
    rotations,
    text_options_from_args,
)
from embedder.text_reader import DEFAULT_ROTATIONS
from embedder.train_config import (
    BN_STATS_MODES,
    DEFAULT_FROZEN_GROUPS,
    DEFAULT_MODEL,
    LABEL_CONFLICT_MODES,
    METRIC_LOSSES,
    TrainConfig,
)


def register(sub: argparse._SubParsersAction) -> None:
    d = TrainConfig(data="", out="")
    p = sub.add_parser(
        "train",
        help="fine-tune a timm backbone into a phone classifier",
        description="Transfer learning: head-only warm-up with the backbone frozen, then "
        "fine-tuning of every layer group past --frozen-groups (AdamW, cosine schedule, label "
        "smoothing, augmentation, class balancing, early stopping). The defaults are the "
        "recommended recipe. The best checkpoint (model.safetensors + config.json) is saved "
        "whenever validation improves, so Ctrl-C keeps it.",
    )
    p.add_argument("--data", required=True, help="training images: class folders or CSV manifest")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", help="validation images (class folders or CSV)")
    val.add_argument(
        "--val-fraction",
        type=fraction,
        help=f"hold out this share of each class without --val (default {d.val_fraction})",
    )
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"timm model name (default {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (pretrained; offline for tf_efficientnet_lite0, and lite1/lite2 with "
        "the 'backbones' extra; other models download), a local weights file, "
        "or 'none' (default imagenet)",
    )
    p.add_argument("--img-size", type=positive_int, help="input size (default: the model's)")
    p.add_argument(
        "--crop-mode",
        choices=["squash", "center", "border"],
        help="how images meet the square input: 'squash' resizes the whole photo (keeps the "
        "camera module of portrait shots), 'center' is timm's centre crop, 'border' pads "
        f"(default {d.crop_mode})",
    )
    p.add_argument(
        "--epochs",
        type=non_negative_int,
        help=f"fine-tuning epochs after the head warm-up, 0 = linear probe (default {d.epochs})",
    )
    p.add_argument(
        "--warmup-epochs",
        type=non_negative_int,
        help=f"head-only epochs on cached frozen features (default {d.warmup_epochs})",
    )
    p.add_argument(
        "--batch-size", type=batch_size, help=f"images per training step (default {d.batch_size})"
    )
    p.add_argument("--lr", type=positive_float, help=f"fine-tuning learning rate (default {d.lr})")
    p.add_argument(
        "--head-lr", type=positive_float, help=f"head warm-up learning rate (default {d.head_lr})"
    )
    p.add_argument(
        "--label-smoothing",
        type=fraction,
        help=f"share of the target spread over the other classes, in [0, 1) "
        f"(default {d.label_smoothing})",
    )
    p.add_argument(
        "--weight-decay",
        type=non_negative_float,
        help=f"AdamW weight decay, >= 0; norms and biases are never decayed "
        f"(default {d.weight_decay})",
    )
    p.add_argument(
        "--drop-rate",
        type=fraction,
        help=f"dropout before the classifier, in [0, 1) (default {d.drop_rate})",
    )
    p.add_argument(
        "--augment",
        type=probability,
        help="augmentation strength 0-1: crop scale, colour jitter, RandAugment magnitude, "
        f"random erasing (default {d.augment})",
    )
    p.add_argument(
        "--frozen-groups",
        type=non_negative_int,
        help="leading layer groups (stem, then stages) kept frozen while fine-tuning; "
        f"0 fine-tunes everything (default {DEFAULT_FROZEN_GROUPS} for pretrained weights, 0 "
        "for --weights none)",
    )
    p.add_argument(
        "--bn-stats",
        choices=BN_STATS_MODES,
        help="batch-norm running statistics while fine-tuning: 'frozen' keeps the pretrained "
        "ones (their scale and shift still train), 'update' follows the training batches; "
        f"'auto' freezes them for pretrained weights, updates them for --weights none "
        f"(default {d.bn_stats})",
    )
    p.add_argument(
        "--label-conflicts",
        choices=LABEL_CONFLICT_MODES,
        help="'drop' leaves out training images that nearly copy an image filed under another "
        "class (the same photo under two brands teaches nothing but noise) and lists them; "
        f"'keep' trains on them as filed (default {d.label_conflicts})",
    )
    p.add_argument(
        "--conflict-similarity",
        type=unit_interval,
        help="greyscale-thumbnail cosine at which two training images count as one photo "
        f"(default {d.conflict_similarity})",
    )
    p.add_argument(
        "--patience", type=positive_int, help=f"early-stopping patience (default {d.patience})"
    )
    p.add_argument(
        "--average-last",
        type=non_negative_int,
        help="save the average of the weights of the last N fine-tuning epochs instead of the "
        "epoch with the best validation accuracy; 0 keeps the best epoch "
        f"(default {d.average_last})",
    )
    p.add_argument(
        "--no-balance",
        dest="balance",
        action="store_false",
        default=None,
        help="sample uniformly instead of class-balanced",
    )
    p.add_argument(
        "--metric-loss",
        choices=METRIC_LOSSES,
        help="'supcon' adds a supervised-contrastive loss on the penultimate features while "
        "fine-tuning, 'multisim' the margin-based multi-similarity loss on mined pairs (both "
        f"need pytorch-metric-learning: {install_hint('metric')}), to train them for "
        f"retrieval as well as for the class (default {d.metric_loss})",
    )
    p.add_argument(
        "--metric-weight",
        type=non_negative_float,
        help=f"weight of --metric-loss beside cross-entropy (default {d.metric_weight})",
    )
    p.add_argument(
        "--metric-temperature",
        type=positive_float,
        help="temperature of the supervised-contrastive loss (supcon only; default "
        f"{d.metric_temperature})",
    )
    p.add_argument(
        "--mixup",
        type=non_negative_float,
        metavar="ALPHA",
        help="blend each fine-tuning photo with another of its batch, image and target shares "
        f"drawn from Beta(ALPHA, ALPHA); 0 turns it off (default {d.mixup})",
    )
    p.add_argument(
        "--cutmix",
        type=non_negative_float,
        metavar="ALPHA",
        help="paste a patch of another photo of the batch into each, its area share drawn from "
        "Beta(ALPHA, ALPHA), targets blended by area; with --mixup, either per batch "
        f"(default {d.cutmix})",
    )
    p.add_argument(
        "--seed", type=int, help=f"random seed: same seed, same weights (default {d.seed})"
    )
    p.add_argument("--workers", type=decode_workers, help="data loader workers (default: up to 2)")
    p.add_argument(
        "--device",
        type=device,
        help="cpu, cuda, cuda:N or mps; autocast (bf16/fp16) on a GPU (default: cuda when "
        "available, else cpu)",
    )
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    add_progress_option(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "evaluate",
        help="accuracy, macro-F1, confusion matrix and retrieval Recall@k of a checkpoint",
        description="Classification metrics (accuracy, macro-F1, per-class precision/recall/F1, "
        "confusion matrix as JSON and PNG) and retrieval Recall@1/@5 (same label among the "
        "nearest neighbours; gallery = --gallery or leave-one-out within --data). "
        "By default, as the server predicts and ranks: the headline prediction fuses the "
        "classifier with the gallery neighbours' labels voting (the classifier's own figures "
        "kept beside it; --no-knn-fusion for the classifier alone), and Recall@1/@5 are also "
        "reported with the neighbours re-ranked by the classifier (--class-rerank 0 turns "
        "that off).",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (from phonesim train)")
    p.add_argument("--data", required=True, help="labelled images: class folders or CSV")
    p.add_argument("--gallery", help="gallery images for retrieval (default: leave-one-out)")
    p.add_argument("--out", help="report folder (default: <checkpoint>-eval next to it)")
    p.add_argument(
        "--batch-size", type=batch_size, default=32, help="images per forward pass (default 32)"
    )
    add_engine_options(p, threads_help="model threads (default: every core)")
    add_knn_fusion_options(
        p, "--gallery images (without a gallery: the other --data images, leave-one-out)"
    )
    add_class_rerank_option(p)
    add_text_cue_options(
        p, "reading costs about 0.25 s per image read and rotation on 2 cores (see --text-gate)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_progress_option(p)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "learn-text",
        help="read a labelled folder's photos into a text cue file with examples per class",
        description="Read the text on every photo of --data (RapidOCR, as serve --read-text "
        "reads an upload: decoded at the checkpoint's input size, turned no further once the "
        "text names a class) and write --out: the --text-cues words with, for each class, the "
        "text read on its photos. Give that file to serve, evaluate or export as --text-cues: "
        "a photo whose own text names no class then takes the vote of the examples nearest its "
        "text, which catches misread logos ('muawt' for HUAWEI) and words a brand's photos "
        "carry without naming it ('hasselblad'). Examples an earlier file held are replaced; "
        "its words are kept when no --text-cues is given. "
        "Reading takes 0.25-0.7 s per photo on 2 cores.",
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint folder: its classes and input size"
    )
    p.add_argument("--data", required=True, help="labelled images: class folders or CSV")
    p.add_argument("--out", required=True, help="cue file to write (JSON), replaced atomically")
    p.add_argument(
        "--text-cues",
        metavar="FILE",
        help='JSON {"label": ["word", ...]}: words that name a class besides its label, kept '
        "in --out (default: the words of an existing --out, else the labels alone)",
    )
    p.add_argument(
        "--text-rotations",
        type=rotations,
        default=DEFAULT_ROTATIONS,
        metavar="DEGREES",
        help="read each photo turned by these angles, as the server will read queries "
        f"(default {','.join(map(str, DEFAULT_ROTATIONS))})",
    )
    p.add_argument("--threads", type=thread_count, help="OCR threads (default: every core)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_progress_option(p)
    p.set_defaults(func=_learn_text)

    optimize_cli.register(sub)


def _learn_text(args: argparse.Namespace) -> int:
    from embedder.learn_text import learn_text

    learned = learn_text(
        args.checkpoint,
        args.data,
        args.out,
        cue_file=args.text_cues,
        rotations=args.text_rotations,
        threads=args.threads,
        progress=show_progress(args),
    )
    summary = {"out": args.out, **asdict(learned)}
    if args.json:
        print(json.dumps(summary))
    else:
        per_class = ", ".join(
            f"{name} {learned.examples[name]}/{n}" for name, n in learned.photos.items()
        )
        print(
            f"{args.out}: photos with text per class: {per_class}; "
            f"unreadable {learned.unreadable}; {learned.seconds:.0f} s"
        )
    return 0


def _train(args: argparse.Namespace) -> int:
    from embedder.train import train

    given = {
        name: getattr(args, name)
        for name in TrainConfig.__dataclass_fields__
        if getattr(args, name, None) is not None
    }
    config = TrainConfig(**{**given, "progress": show_progress(args)})
    result = train(config)  # SIGTERM stops it as Ctrl-C does (run_reporting_errors)
    summary = {
        "checkpoint": str(result.checkpoint),
        "best_epoch": result.best_epoch,
        "skipped_images": len(result.skipped),
        "label_conflicts_left_out": len(result.label_conflicts),
        "interrupted": result.interrupted,
        **result.metrics,
    }
    if args.json:
        print(json.dumps(summary))
    elif result.best_epoch < 0:
        from embedder.checkpoint import CONFIG_FILE

        # --out may hold an earlier training's checkpoint: "none was saved" read as none there.
        earlier = (result.checkpoint / CONFIG_FILE).is_file()
        kept = " (it still holds an earlier one)" if earlier else ""
        print(
            "interrupted before the first epoch ended: no checkpoint was saved to "
            f"{result.checkpoint}{kept}"
        )
    else:
        scores = ", ".join(
            f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}"
            for k, v in result.metrics.items()
            if k.startswith("val_")
        )
        # Without validation (--val-fraction 0) the last epoch is kept: nothing to score it by.
        print(f"best epoch {result.best_epoch}: {scores or 'no validation set, last epoch kept'}")
        print(
            f"checkpoint: {result.checkpoint}; unreadable images skipped: {len(result.skipped)}; "
            f"label conflicts left out: {len(result.label_conflicts)}"
        )
    return 130 if result.interrupted else 0


def _evaluate(args: argparse.Namespace) -> int:
    from embedder.evaluate import REPORT_FILES, evaluate, format_report

    checkpoint = Path(os.path.abspath(args.checkpoint))  # "." has no name to derive one from
    out = Path(args.out) if args.out else checkpoint.with_name(checkpoint.name + "-eval")
    check_output_folder(out, owns=REPORT_FILES, files=REPORT_FILES)  # now, not after the evaluation
    report = evaluate(
        args.checkpoint,
        args.data,
        args.gallery,
        out,
        batch_size=args.batch_size,
        engine=EngineOptions.from_args(args),
        fusion=knn_fusion_from_args(args),
        rerank=class_rerank_from_args(args),
        text=text_options_from_args(args),
        # Bars only for a person watching: not under -q, nor into a log file.
        progress=show_progress(args),
    )
    print(json.dumps(report) if args.json else format_report(report))
    return 0
