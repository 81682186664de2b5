"""Transfer learning: fine-tune a timm backbone into a phone classifier.

Recipe (the defaults are the recommended one): a head-only warm-up with the backbone frozen
(``head_warmup``), then full fine-tuning at a lower rate (``fine_tune``); AdamW without decay
on norms and biases, with a cosine schedule and linear warm-up (``optim``); label smoothing
(the labels of real listings are noisy); training photos whose near copy is filed under another
class left out (``label_conflicts``); timm's training augmentation; class-balanced sampling
(``train_data``); early stopping on validation accuracy (``trainer``).
"""

from __future__ import annotations

import logging

from embedder.backbone import check_model_and_weights
from embedder.checkpoint import (
    check_checkpoint_target,
    check_outside_inputs,
    remove_interrupted_saves,
    training_lock,
)
from embedder.data import Catalog, load_catalog, shared_images
from embedder.engine import resolve_device
from embedder.errors import DataError
from embedder.train_config import TrainConfig, check_train_config
from embedder.train_data import is_readable, stratified_split
from embedder.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)


def train(config: TrainConfig) -> TrainResult:
    """Load data, fine-tune, and return where the best checkpoint is with its metrics."""
    check_train_config(config)
    out = check_checkpoint_target(config.out)  # before any work: never train into the wrong folder
    check_outside_inputs(out, {"--data": config.data, "--val": config.val})
    # A typo'd model name or weights path fails now, not after the images were read.
    check_model_and_weights(config.model, config.weights)
    resolve_device(config.device)  # a device this machine lacks fails before the data loads
    with training_lock(out):  # a second training into the same folder is refused at once
        remove_interrupted_saves(out)
        return _train(config)


def _train(config: TrainConfig) -> TrainResult:
    """Read the data, split it and fine-tune (under the training lock)."""
    catalog = load_catalog(config.data, require_labels=True)
    if config.val:
        val_catalog = load_catalog(config.val, require_labels=True, min_classes=1)
        unknown = sorted(set(val_catalog.label_names) - set(catalog.label_names))
        if unknown:
            raise DataError(f"{config.val}: classes not in the training data: {', '.join(unknown)}")
        train_samples, val_samples = catalog.samples, val_catalog.samples
        shared = shared_images(val_samples, train_samples)
        if shared:  # the best epoch would be chosen on photos the model learns
            log.warning(
                "%s: %d of the %d validation images are training images too (the same files "
                "or byte-identical copies); the best "
                "checkpoint is then chosen on photos the model learned (give --val "
                "photos kept out of --data)",
                config.val,
                len(shared),
                len(val_samples),
            )
    else:
        train_samples, val_samples = stratified_split(
            catalog.samples, config.val_fraction, config.seed, readable=is_readable
        )
    log.info(
        "training %s (%s weights) on %d images in %d classes, validating on %d",
        config.model,
        config.weights,
        len(train_samples),
        len(catalog.label_names),
        len(val_samples),
    )
    train_catalog = Catalog(train_samples, catalog.label_names, catalog.source)
    trainer = Trainer(config, train_catalog, val_samples)
    result = trainer.fit()
    result.skipped = trainer.skipped + trainer.val_skipped
    result.label_conflicts = trainer.label_conflicts
    return result
