"""Head warm-up: fit the classifier on cached features of the frozen backbone.

A new head on a pretrained backbone starts random; fine-tuning everything at once would push
large, random gradients into the pretrained layers. Fitting the head first on frozen features
is cheap: the features are computed once per augmented view, so ``warmup_epochs`` cost
``warmup_views`` forward passes, and with ``epochs=0`` this alone is a linear probe.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from embedder.optim import adamw, warmup_cosine
from embedder.train_config import TrainConfig

HEAD_BATCH = 64  # feature rows per head step; features are small, so larger than image batches


def frozen_features(
    model: nn.Module,
    loader: DataLoader,
    views: int,
    progress: bool = False,
    amp: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features of the frozen backbone for ``views`` augmented passes, on the
    model's device (under autocast when ``amp`` is given)."""
    model.eval()
    device = next(model.parameters()).device
    feats, targets = [], []
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=amp, enabled=amp is not None),
    ):
        for view in range(views):
            bar = tqdm(
                loader,
                desc=f"frozen features {view + 1}/{views}",
                unit="batch",
                disable=not progress,
                leave=False,
            )
            for x, y in bar:
                x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                pre = model.forward_head(model.forward_features(x), pre_logits=True)
                feats.append(pre.float())
                targets.append(y.to(device))
    return torch.cat(feats), torch.cat(targets)


def warm_up_head(
    model: nn.Module,
    loader: DataLoader,
    config: TrainConfig,
    criterion: nn.Module,
    generator: torch.Generator,
    amp: torch.dtype | None = None,
) -> dict[str, float]:
    """Train only ``model``'s classifier; return the loss and accuracy of the last epoch.

    Dropout at ``drop_rate`` is applied to the cached features, where timm models apply it
    before their classifier. The learning rate warms up over the first tenth of the steps, then
    follows a cosine.
    """
    views = max(1, config.warmup_views)
    feats, targets = frozen_features(model, loader, views, config.progress, amp)
    head = model.get_classifier()
    head.train()
    optimizer = adamw(head, config.head_lr, config.weight_decay)
    steps_per_epoch = math.ceil(len(feats) / HEAD_BATCH)
    steps = max(1, config.warmup_epochs * steps_per_epoch)
    scheduler = warmup_cosine(optimizer, steps, steps // 10)
    step, loss_sum, correct, seen = 0, 0.0, 0, 0
    for _ in range(config.warmup_epochs):
        order = torch.randperm(len(feats), generator=generator)
        for start in range(0, len(feats), HEAD_BATCH):
            idx = order[start : start + HEAD_BATCH]
            x = nn.functional.dropout(feats[idx], p=config.drop_rate, training=True)
            logits = head(x)
            loss = criterion(logits, targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            if step > steps - steps_per_epoch:  # stats of the last epoch
                loss_sum += loss.item() * len(idx)
                correct += int((logits.argmax(1) == targets[idx]).sum())
                seen += len(idx)
    return {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen)}
