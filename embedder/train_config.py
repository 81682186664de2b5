"""Training settings, importable without torch (the CLI reads its defaults for --help)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "tf_efficientnet_lite0"
BN_STATS_MODES = ("auto", "frozen", "update")
LABEL_CONFLICT_MODES = ("drop", "keep")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the CLI flags parse into this."""

    data: str
    out: str
    val: str | None = None
    val_fraction: float = 0.15
    model: str = DEFAULT_MODEL
    weights: str = "imagenet"
    img_size: int | None = None
    crop_mode: str = "squash"
    epochs: int = 10
    warmup_epochs: int = 30
    warmup_views: int = 2
    batch_size: int = 32
    lr: float = 3e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_rate: float = 0.2
    # Leading parameter groups (timm's coarse group_matcher: stem, then stages) kept frozen
    # during fine-tuning: fewer weights to overfit on small catalogs and a cheaper backward.
    frozen_groups: int = 3
    augment: float = 0.3
    # "frozen": batch-norm layers keep their pretrained running statistics while fine-tuning
    # (their scale and shift still train); "update" lets them follow the training batches;
    # "auto" = frozen with pretrained weights, update from scratch (random statistics).
    bn_stats: str = "auto"
    # "drop": training photos whose near copy is filed under another class are left out
    # (embedder/label_conflicts.py); "keep" trains on them as filed.
    label_conflicts: str = "drop"
    conflict_similarity: float = 0.98  # thumbnail cosine at which two photos count as one
    balance: bool = True
    patience: int = 5
    seed: int = 0
    workers: int | None = None
    progress: bool = True
