"""Optimiser and learning-rate schedule shared by the head warm-up and the fine-tuning.

Both phases use timm's pieces rather than hand-written ones: AdamW with timm's parameter
grouping, and timm's cosine scheduler stepped once per batch.
"""

from __future__ import annotations

import logging

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn


def adamw(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of ``module``, without decay on norms and biases.

    timm's grouping (``param_groups_weight_decay``) leaves every 1-d parameter (norm scales and
    shifts, biases) and the model's ``no_weight_decay()`` names undecayed: pulling a norm's
    scale towards zero shrinks the features instead of regularising the weights.
    """
    return create_optimizer_v2(module, "adamw", lr=lr, weight_decay=weight_decay)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> CosineLRScheduler:
    """Linear warm-up over ``warmup_steps`` batches (at most half of them), then a cosine
    decay to 0 at ``total_steps``.

    Call ``step_update(step)`` after each optimiser step (``step`` counts the steps done). The
    warm-up starts at ``lr / warmup_steps``, so the first batch already moves the weights.
    """
    # At most half the run: a one-epoch run was all warm-up and never decayed (and timm
    # warned that its cosine had no effect).
    warmup_steps = max(1, min(warmup_steps, total_steps // 2))
    lr = optimizer.param_groups[0]["lr"]
    cosine_steps = max(1, total_steps - warmup_steps)
    # A run of one or two batches leaves the cosine a single step: timm warns that it "will
    # have no effect", which is true and harmless there, and which -q cannot silence.
    timm_log = logging.getLogger("timm.scheduler.cosine_lr")
    was_disabled, timm_log.disabled = timm_log.disabled, cosine_steps == 1 or timm_log.disabled
    try:
        return CosineLRScheduler(
            optimizer,
            t_initial=cosine_steps,
            warmup_t=warmup_steps,
            warmup_lr_init=lr / warmup_steps,
            warmup_prefix=True,  # the cosine starts after the warm-up, at the full rate
            t_in_epochs=False,
        )
    finally:
        timm_log.disabled = was_disabled


__all__ = ["adamw", "warmup_cosine"]
