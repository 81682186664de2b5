"""Fine-tuning: which weights train, how batch norms behave, and one epoch over the images."""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common import stopping
from common.extras import install_hint
from embedder.errors import DataError
from embedder.train_config import TrainConfig

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def frozen_parameter_names(model: nn.Module, groups: int) -> set[str]:
    """Names of the parameters in the first ``groups`` of timm's coarse layer groups.

    timm models describe their depth order with ``group_matcher`` (stem, stage 1, stage 2, ...,
    head), which makes "freeze the early layers" work for any architecture.
    """
    if groups <= 0:
        return set()
    from timm.models import group_parameters

    layers = group_parameters(model, model.group_matcher(coarse=True))
    # The head by identity, not by the name in pretrained_cfg, which a model loaded from a
    # folder (local-dir:) may leave empty.
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    head = {name for name, p in model.named_parameters() if id(p) in head_ids}
    order = sorted(layers)
    # The last group holds the head (and the layers just below it): freezing as many groups
    # would fine-tune nothing of the backbone, silently.
    if groups >= len(order):
        raise DataError(
            f"--frozen-groups {groups}: {model.default_cfg.get('architecture', 'this model')} "
            f"has {len(order)} layer groups, the last holding the head; freeze at most "
            f"{len(order) - 1} (--epochs 0 trains the head alone)"
        )
    frozen = {name for gid in order[:groups] for name in layers[gid]}
    return frozen - head


def set_backbone_trainable(model: nn.Module, trainable: bool, frozen: set[str]) -> None:
    """The classifier always trains; the backbone trains if ``trainable``, except ``frozen``."""
    head = set(model.get_classifier().parameters())
    for name, p in model.named_parameters():
        p.requires_grad = p in head or (trainable and name not in frozen)


def freezes_bn_stats(config: TrainConfig) -> bool:
    """Whether fine-tuning keeps the batch-norm running statistics of the starting weights.

    Pretrained statistics describe the features the warmed-up head was fitted on; letting
    small, augmented batches overwrite them shifts those features under the head (measured on
    phone-brands: validation accuracy fell from 0.63 to 0.53 in the first epoch even at
    lr 1e-4). Random initial statistics (``--weights none``) must follow the data.
    """
    if config.bn_stats == "auto":
        return config.weights != "none"
    return config.bn_stats == "frozen"


def set_train_mode(model: nn.Module, freeze_bn_stats: bool) -> None:
    """Training mode, with batch norms left in eval mode when their statistics are frozen."""
    model.train()
    if freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, BATCH_NORMS):
                module.eval()  # normalise with, and keep, the running statistics


class _MinedLoss(nn.Module):
    """A pair loss over the pairs its miner picks in each batch: ``loss(features, labels)``
    like the other metric losses."""

    def __init__(self, loss: nn.Module, miner: nn.Module) -> None:
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(features, labels, self.miner(features, labels))


def make_metric_loss(config: TrainConfig) -> nn.Module | None:
    """The ``--metric-loss`` module, or None, from pytorch-metric-learning. Both pull photos of
    one class together on the unit sphere, which is what the retrieval side of the lookup API
    compares: supervised contrastive (Khosla et al. 2020) over every pair of the batch, or
    multi-similarity (Wang et al. 2019), a margin-based loss over the hard pairs its miner
    picks (positives less similar, negatives more similar than the other side's extreme)."""
    if config.metric_loss == "none":
        return None
    try:
        from pytorch_metric_learning import losses, miners
    except ImportError as exc:
        raise DataError(
            f"--metric-loss {config.metric_loss} needs pytorch-metric-learning: "
            f"{install_hint('metric')}"
        ) from exc
    if config.metric_loss == "multisim":
        return _MinedLoss(losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner())
    return losses.SupConLoss(temperature=config.metric_temperature)


def make_mixer(config: TrainConfig, num_classes: int) -> Callable | None:
    """timm's Mixup for ``--mixup``/``--cutmix``, or None when both are 0. Targets come back
    blended but unsmoothed: the cross-entropy smooths them as it smooths hard labels (for
    soft targets PyTorch's ``label_smoothing`` is the same blend with the uniform)."""
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=config.mixup,
        cutmix_alpha=config.cutmix,
        label_smoothing=0.0,
        num_classes=num_classes,
    )


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineLRScheduler,
    step: int,
    freeze_bn_stats: bool,
    desc: str = "epoch",
    progress: bool = False,
    amp: torch.dtype | None = None,
    metric_loss: nn.Module | None = None,
    metric_weight: float = 0.0,
    mixer: Callable | None = None,
) -> tuple[dict[str, float], int]:
    """One pass over ``loader``; returns the epoch's loss and accuracy and the step count after.

    ``step`` counts the optimiser steps done before this epoch; the scheduler follows it.
    Batches go to the model's device; ``amp`` (bf16 or fp16) runs the forward pass under
    autocast, with loss scaling for fp16. ``metric_loss`` (labels-aware, on the penultimate
    features) is added to the cross-entropy with ``metric_weight``. ``mixer`` (make_mixer)
    blends each even-sized batch and its targets; an odd one (a last batch, or a catalog
    smaller than a batch) trains unblended, as timm's batch mode pairs photos end to end.
    """
    set_train_mode(model, freeze_bn_stats)
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    total, correct, loss_sum = 0, 0, 0.0
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False)
    for x, y in bar:
        stopping.check()  # a Ctrl-C or SIGTERM Python dropped (common.stopping)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        target = y
        if mixer is not None and len(y) % 2 == 0:
            x, target = mixer(x, y)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            if metric_loss is None:
                logits = model(x)
                loss = criterion(logits.float(), target)
            else:
                features = model.forward_head(model.forward_features(x), pre_logits=True)
                logits = model.get_classifier()(features)
                loss = criterion(logits.float(), y) + metric_weight * metric_loss(
                    features.float(), y
                )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        scheduler.step_update(step)
        total += len(y)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    bar.close()
    return {"train_loss": loss_sum / max(1, total), "train_acc": correct / max(1, total)}, step
