"""Optimiser grouping and learning-rate schedule shared by both training phases."""

from __future__ import annotations

import logging
import math

import pytest
import timm
from torch import nn

from embedder.optim import adamw, warmup_cosine


def _decay_of(optimizer) -> dict[int, float]:
    return {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


def test_norms_and_biases_are_not_decayed_and_frozen_weights_are_left_out():
    model = timm.create_model("test_efficientnet", num_classes=3)
    model.conv_stem.weight.requires_grad = False
    decay = _decay_of(adamw(model, lr=1e-3, weight_decay=0.05))
    assert id(model.conv_stem.weight) not in decay
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert decay[id(p)] == (0.0 if p.ndim <= 1 else 0.05), name
    head = model.get_classifier()
    head_decay = _decay_of(adamw(head, lr=1e-3, weight_decay=0.05))
    assert head_decay == {id(head.weight): 0.05, id(head.bias): 0.0}


def _lrs(total: int, warmup: int) -> list[float]:
    optimizer = adamw(nn.Linear(2, 2), lr=1.0, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, total, warmup)
    lrs = []
    for step in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step_update(step + 1)
    return lrs


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_zero():
    lrs = _lrs(total=20, warmup=4)
    assert lrs[:4] == pytest.approx([0.25, 0.4375, 0.625, 0.8125])
    assert lrs[4] == pytest.approx(1.0)
    for t, lr in enumerate(lrs[4:]):
        assert lr == pytest.approx(0.5 * (1 + math.cos(math.pi * t / 16)))
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:], strict=False)) and lrs[-1] > 0


def test_a_run_as_short_as_its_warm_up_warms_up_for_half_then_decays():
    """A one-epoch run (warm-up = one epoch) was all warm-up: it never decayed."""
    lrs = _lrs(total=8, warmup=8)
    assert lrs[:4] == sorted(lrs[:4]) and lrs[0] == pytest.approx(1 / 4)
    assert lrs[4] == pytest.approx(1.0) and lrs[4:] == sorted(lrs[4:], reverse=True)


@pytest.mark.parametrize("total", [1, 2])
def test_a_run_of_one_or_two_batches_trains_without_timms_no_effect_warning(total, caplog):
    """The one-step cosine of such a run is harmless; timm's warning showed even under -q."""
    caplog.set_level(logging.WARNING)
    lrs = _lrs(total=total, warmup=1)
    assert lrs[0] == pytest.approx(1.0) and all(lr > 0 for lr in lrs)
    assert not [r for r in caplog.records if "no effect" in r.getMessage()]
    assert not logging.getLogger("timm.scheduler.cosine_lr").disabled
