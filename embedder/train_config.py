"""Training settings and their checks, importable without torch (the CLI reads the defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from embedder.errors import DataError

DEFAULT_MODEL = "tf_efficientnet_lite0"
BN_STATS_MODES = ("auto", "frozen", "update")
LABEL_CONFLICT_MODES = ("drop", "keep")
METRIC_LOSSES = ("none", "supcon", "multisim")
DEFAULT_FROZEN_GROUPS = 3
MAX_IMG_SIZE = 2048  # one 2048 px image is 50 MB of activations per layer already
MAX_SEED = 2**63 - 1  # torch's generator takes a 64-bit seed


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
    # None: DEFAULT_FROZEN_GROUPS for pretrained weights, 0 for --weights none (random early
    # layers kept frozen would never learn anything).
    frozen_groups: int | None = None
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
    # "supcon": a supervised-contrastive loss (pytorch-metric-learning) on the penultimate
    # features beside cross-entropy while fine-tuning, to train them for retrieval too;
    # weighted by metric_weight, at metric_temperature. "multisim": the margin-based
    # multi-similarity loss on the pairs its miner picks, weighted the same way.
    metric_loss: str = "none"
    metric_weight: float = 0.5
    metric_temperature: float = 0.1
    # > 0: while fine-tuning, each batch is blended with itself in another order (timm's
    # Mixup): whole images with a Beta(mixup, mixup) share, or a Beta(cutmix, cutmix)-sized
    # patch pasted in; with both, either one per batch. Targets are blended likewise.
    mixup: float = 0.0
    cutmix: float = 0.0
    patience: int = 5
    # > 0: the checkpoint is the average of the weights of the last N fine-tuning epochs (a
    # soup) instead of the epoch with the best validation accuracy.
    average_last: int = 0
    seed: int = 0
    workers: int | None = None
    # cpu, cuda, cuda:N or mps; None: cuda when available, else cpu. Autocast on a CUDA GPU.
    device: str | None = None
    progress: bool = True


def check_train_config(config: TrainConfig) -> None:
    """Settings in their valid ranges, as one-line errors naming the flag (not torch tracebacks)."""
    if not (0.0 <= config.val_fraction < 1.0):
        raise DataError("--val-fraction must be in [0, 1)")
    if config.epochs < 0 or config.warmup_epochs < 0 or config.batch_size < 1:
        raise DataError("--epochs and --warmup-epochs must be >= 0, --batch-size >= 1")
    if config.epochs == 0 and config.warmup_epochs == 0:
        raise DataError("nothing to train: --epochs and --warmup-epochs are both 0")
    for name in ("lr", "head_lr"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value > 0):
            raise DataError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    ranges = {
        "label_smoothing": (0.0, 1.0, False),
        "drop_rate": (0.0, 1.0, False),
        "augment": (0.0, 1.0, True),
    }
    for name, (low, high, closed) in ranges.items():
        value = getattr(config, name)
        if not (low <= value < high or (closed and value == high)):
            bracket = "]" if closed else ")"
            flag = name.replace("_", "-")
            raise DataError(f"--{flag} must be in [{low:g}, {high:g}{bracket}, got {value}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise DataError(f"--weight-decay must be >= 0, got {config.weight_decay}")
    if config.workers is not None and config.workers < 0:
        raise DataError(f"--workers must be >= 0, got {config.workers}")
    if config.average_last < 0:
        raise DataError(f"--average-last must be >= 0, got {config.average_last}")
    if config.frozen_groups is not None and config.frozen_groups < 0:
        raise DataError(f"--frozen-groups must be >= 0, got {config.frozen_groups}")
    if config.label_conflicts not in LABEL_CONFLICT_MODES:
        raise DataError(f"--label-conflicts must be drop or keep, got {config.label_conflicts!r}")
    if not (0.0 < config.conflict_similarity <= 1.0):
        raise DataError(
            f"--conflict-similarity must be in (0, 1], got {config.conflict_similarity}"
        )
    if config.metric_loss not in METRIC_LOSSES:
        raise DataError(
            f"--metric-loss must be one of {', '.join(METRIC_LOSSES)}, got {config.metric_loss!r}"
        )
    if not (math.isfinite(config.metric_weight) and config.metric_weight >= 0):
        raise DataError(f"--metric-weight must be >= 0, got {config.metric_weight}")
    if not (math.isfinite(config.metric_temperature) and config.metric_temperature > 0):
        raise DataError(f"--metric-temperature must be > 0, got {config.metric_temperature}")
    for name in ("mixup", "cutmix"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise DataError(f"--{name} must be >= 0, got {value}")
    if (config.mixup > 0 or config.cutmix > 0) and config.metric_loss != "none":
        # a blended photo has two classes: no positive or negative pair for the metric loss
        raise DataError("--mixup and --cutmix cannot be combined with --metric-loss")
    if (config.mixup > 0 or config.cutmix > 0) and config.batch_size % 2:
        # timm's mixer pairs each photo with another; the loader drops the last partial batch,
        # so with an odd size no batch would ever be blended
        raise DataError(f"--mixup and --cutmix need an even --batch-size, got {config.batch_size}")
    if not (0 <= config.seed <= MAX_SEED):
        raise DataError(f"--seed must be in [0, 2**63 - 1], got {config.seed}")
    if config.bn_stats not in BN_STATS_MODES:
        modes = ", ".join(BN_STATS_MODES[:-1]) + f" or {BN_STATS_MODES[-1]}"
        raise DataError(f"--bn-stats must be {modes}, got {config.bn_stats!r}")
    if config.img_size is not None and not (16 <= config.img_size <= MAX_IMG_SIZE):
        raise DataError(f"--img-size must be in [16, {MAX_IMG_SIZE}], got {config.img_size}")


def frozen_group_count(config: TrainConfig) -> int:
    """The leading layer groups kept frozen while fine-tuning (see ``frozen_groups``)."""
    if config.frozen_groups is not None:
        return config.frozen_groups
    return 0 if config.weights == "none" else DEFAULT_FROZEN_GROUPS
