"""The two-phase recipe over prepared data: head warm-up, fine-tuning, best checkpoint kept.

The best checkpoint is saved atomically every time validation improves, so Ctrl-C or a crash
leaves it on disk.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from torch import nn

from common.errors import message_line
from common.stamps import utc_now
from embedder.backbone import create_backbone, source_model
from embedder.batch import embed_samples
from embedder.checkpoint import (
    CheckpointConfig,
    embedding_width,
    save_checkpoint,
    set_training_state,
)
from embedder.data import Catalog, Sample
from embedder.engine import autocast_dtype, resolve_device
from embedder.errors import DataError, NonFiniteOutputError, TrainingDivergedError
from embedder.fine_tune import (
    BATCH_NORMS,
    freezes_bn_stats,
    frozen_parameter_names,
    make_metric_loss,
    make_mixer,
    set_backbone_trainable,
    train_one_epoch,
)
from embedder.head_warmup import warm_up_head
from embedder.inference import Embedder
from embedder.label_conflicts import find_label_conflicts
from embedder.metrics import label_recall_at_k, macro_f1
from embedder.optim import adamw, warmup_cosine
from embedder.provenance import data_record, training_versions
from embedder.train_config import TrainConfig, frozen_group_count
from embedder.train_data import CachedImages, is_readable, seed_everything, training_loader
from embedder.transforms import model_data_config, train_transform

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """The best checkpoint, its epoch (0 = head warm-up) and metrics, and what was left out.

    ``skipped`` lists unreadable images, ``label_conflicts`` the training images left out as
    near copies of another class's.
    """

    checkpoint: Path
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    label_conflicts: list[str] = field(default_factory=list)
    interrupted: bool = False


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of several state dicts of one model (a weight soup); integer tensors, such as
    batch-norm's ``num_batches_tracked``, are taken from the last."""
    return {
        key: sum(s[key] for s in states) / len(states) if last.is_floating_point() else last
        for key, last in states[-1].items()
    }


def check_input_size(model: nn.Module, data_config: dict[str, Any], config: TrainConfig) -> None:
    """One forward pass at the input size, so a size the model refuses fails before training."""
    device = next(model.parameters()).device
    x = torch.zeros(1, *data_config["input_size"], device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    # Values each batch norm sees per channel for one photo: a batch norm that learns its
    # statistics needs more than one, so a batch of one photo fails at such a layer.
    per_channel: list[int] = []
    hooks = [
        m.register_forward_pre_hook(lambda _, a: per_channel.append(a[0].numel() // a[0].shape[1]))
        for m in model.modules()
        if isinstance(m, BATCH_NORMS)
    ]
    try:
        with torch.inference_mode():
            model(x)
    except Exception as exc:  # timm models assert, raise RuntimeError or ValueError
        detail = message_line(exc)
        raise DataError(
            f"{config.model} cannot take {data_config['input_size'][-1]} px input "
            f"(--img-size): {detail}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    if (
        config.batch_size == 1
        and config.epochs > 0
        and not freezes_bn_stats(config)
        and min(per_channel, default=2) < 2
    ):
        raise DataError(
            f"--batch-size 1 cannot train {config.model}'s batch-norm statistics at "
            f"{data_config['input_size'][-1]} px (one value per channel in its last layers): "
            "use --batch-size 2 or more, a larger --img-size, or --bn-stats frozen"
        )


class Trainer:
    """Runs the two-phase recipe over prepared datasets and keeps the best checkpoint."""

    def __init__(
        self,
        config: TrainConfig,
        train: Catalog,
        val_samples: list[Sample],
        on_epoch: Callable[[int, nn.Module], None] | None = None,
    ) -> None:
        """``on_epoch(epoch, model)`` runs after each epoch's validation (0 = head warm-up),
        e.g. to keep the weights of every epoch for averaging."""
        self.cfg = config
        self.on_epoch = on_epoch
        self.metric_loss = make_metric_loss(config)  # a missing package fails before the data
        self.label_names = train.label_names
        self.label_to_idx = {name: i for i, name in enumerate(self.label_names)}
        self.generator = seed_everything(config.seed)
        self.device = resolve_device(config.device)
        self.amp = autocast_dtype(self.device) if self.device.type == "cuda" else None
        # channels_last makes CPU convolutions about 1.6x faster (measured on Lite0).
        self.model = create_backbone(
            config.model, len(self.label_names), config.weights, drop_rate=config.drop_rate
        ).to(self.device, memory_format=torch.channels_last)
        log.info(
            "training on %s%s",
            self.device,
            f" with autocast {str(self.amp).removeprefix('torch.')}" if self.amp else "",
        )
        # What the checkpoint names: the architecture itself and the source's arguments
        # (drop_rate only matters in training), not "local-dir:PATH" or "hf-hub:NAME", which
        # would make loading it need that folder or the hub again.
        self.architecture, self.model_kwargs = source_model(config.model)
        self.data_config = model_data_config(self.model, config.img_size, config.crop_mode)
        check_input_size(self.model, self.data_config, config)
        # Checked now, before the images are read: a --frozen-groups the model lacks fails.
        self.frozen = frozen_parameter_names(self.model, frozen_group_count(config))
        self.val_samples = val_samples
        self.provenance: dict[str, Any] = {"started": utc_now(), "versions": training_versions()}
        # Now, not after the warm-up: a validation set without one readable image is an error
        # (reading stops at the first image that decodes).
        if val_samples and not any(is_readable(s) for s in val_samples):
            raise DataError(f"none of the {len(val_samples)} validation images could be read")
        side = int(self.data_config["input_size"][-1])
        dataset = CachedImages(
            train.samples,
            [self.label_to_idx[s.label] for s in train.samples],
            train_transform(self.data_config, config.augment),
            keep_side=round(side * 1.15),
            progress=config.progress,
        )
        missing = sorted(set(self.label_names) - {s.label for s in dataset.samples})
        if missing:
            raise DataError(f"no readable training images for class(es) {', '.join(missing)}")
        self.label_conflicts = self._leave_out_label_conflicts(dataset)
        self.skipped = dataset.skipped
        self.val_skipped: list[str] = []
        self.loader = training_loader(
            dataset, config, self.generator, pin_memory=self.device.type == "cuda"
        )
        # After the reading above: the files are in the page cache, hashing costs only CPU.
        self.provenance["data_record"] = data_record(train.samples, val_samples)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.mixer = make_mixer(config, len(self.label_names))

    def _leave_out_label_conflicts(self, dataset: CachedImages) -> list[str]:
        """Leave out training images that nearly copy an image of another class; list them."""
        if self.cfg.label_conflicts != "drop" or not dataset.samples:
            return []
        conflicts = find_label_conflicts(
            np.stack(dataset.thumbs), dataset.targets, self.cfg.conflict_similarity
        )
        samples = dataset.samples
        notes = [
            f"{samples[c.index].id} ({samples[c.index].label}) ~ "
            f"{samples[c.other].id} ({samples[c.other].label}), similarity {c.similarity:.3f}"
            for c in conflicts
        ]
        dataset.leave_out({c.index for c in conflicts})
        if notes:
            log.warning(
                "left out %d of %d training images: each nearly copies an image filed under "
                "another class (--label-conflicts keep trains on them)",
                len(notes),
                len(samples),
            )
            for note in notes:
                log.info("label conflict: %s", note)
        emptied = sorted(set(self.label_names) - {s.label for s in dataset.samples})
        if emptied:
            raise DataError(
                f"every training image of class(es) {', '.join(emptied)} nearly copies an image "
                "of another class; fix the labels or pass --label-conflicts keep"
            )
        return notes

    def checkpoint_config(self, metrics: dict[str, Any]) -> CheckpointConfig:
        training = {k: v for k, v in asdict(self.cfg).items() if k != "progress"}
        training["frozen_groups"] = frozen_group_count(self.cfg)  # what "default" meant
        training["label_conflicts_left_out"] = self.label_conflicts
        training["state"] = "running"  # until the run ends (set_training_state)
        # What the settings resolved to here, and what the run saw (embedder/provenance.py).
        training["workers_used"] = self.loader.num_workers
        training["device_used"] = str(self.device)
        training["threads"] = torch.get_num_threads()
        training.update(self.provenance)
        return CheckpointConfig(
            architecture=self.architecture,
            num_classes=len(self.label_names),
            label_names=self.label_names,
            data_config=self.data_config,
            feature_dim=embedding_width(self.model),
            model_kwargs=self.model_kwargs,
            training=training,
            metrics=metrics,
        )

    def validate(self) -> dict[str, Any]:
        """Accuracy, macro-F1 and leave-one-out Recall@1/5 on the validation images."""
        if not self.val_samples:
            return {}
        embedder = Embedder(self.model.eval(), self.checkpoint_config({}))
        idx, batch, failures = embed_samples(
            embedder,
            self.val_samples,
            batch_size=self.cfg.batch_size * 2,
            workers=0,
            progress=False,
        )
        self.val_skipped = [f"{f.id}: {f.reason}" for f in failures]
        if not len(idx):
            # Every score would be 0: the warm-up would be kept as the best, silently.
            raise DataError(
                f"none of the {len(self.val_samples)} validation images could be read "
                f"(first: {self.val_skipped[0] if self.val_skipped else 'unknown'})"
            )
        y_true = np.array([self.label_to_idx[self.val_samples[i].label] for i in idx])
        y_pred = batch.probabilities.argmax(1)
        recall = label_recall_at_k(batch.embeddings, y_true, ks=(1, 5))
        return {
            "val_accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
            "val_macro_f1": macro_f1(y_true, y_pred),
            "val_recall_at_1": recall[1],
            "val_recall_at_5": recall[5],
            "val_count": int(len(y_true)),
        }

    def _record(self, result: TrainResult, stats: dict, epoch: int, best_key: tuple) -> tuple:
        """Validate, log, and save the checkpoint if it is the best so far; return the best key."""
        self._check_finite(result, stats, epoch)
        try:
            stats.update(self.validate())
        except NonFiniteOutputError:
            # Finite weights whose outputs overflow (--lr 1e8): the evaluation's "its weights
            # are broken; retrain or restore the checkpoint" did not say why, nor what to do.
            raise self._diverged(result, epoch, "outputs no longer finite") from None
        stats["epoch"] = epoch
        stats["elapsed_s"] = round(time.monotonic() - self._started, 1)
        result.history.append(stats)
        if self.on_epoch is not None:
            self.on_epoch(epoch, self.model)
        key = (stats.get("val_accuracy", 0.0), stats.get("val_macro_f1", 0.0))
        improved = not self.val_samples or key > best_key
        if improved:  # saved before it is said or reported: Ctrl-C may stop the save
            save_checkpoint(self.model, self.checkpoint_config(stats), self.cfg.out)
            result.best_epoch, result.metrics = epoch, stats
        log.info(
            "%s: loss %.3f train acc %.3f%s%s",
            "head warm-up" if epoch == 0 else f"epoch {epoch}/{self.cfg.epochs}",
            stats["train_loss"],
            stats["train_acc"],
            f" val acc {stats['val_accuracy']:.3f} macro-F1 {stats['val_macro_f1']:.3f}"
            if self.val_samples
            else "",
            " (best, saved)" if improved else "",
        )
        return key if improved else best_key

    def _check_finite(self, result: TrainResult, stats: dict, epoch: int) -> None:
        """Stop at the first epoch whose loss or weights are not finite: without a validation
        set such weights were saved as the best (every prediction NaN), with one the run died
        on a "the checkpoint's weights are broken" error of the evaluation."""
        loss = float(stats["train_loss"])
        if math.isfinite(loss) and all(
            bool(torch.isfinite(p).all()) for p in self.model.parameters()
        ):
            return
        raise self._diverged(result, epoch, f"loss {loss:g}, or weights no longer finite")

    def _diverged(self, result: TrainResult, epoch: int, what: str) -> TrainingDivergedError:
        """The error for a run whose ``epoch`` diverged, naming the rate to lower and what
        ``--out`` still holds."""
        where = "the head warm-up" if epoch == 0 else f"epoch {epoch}"
        rate = (
            f"--head-lr (now {self.cfg.head_lr:g})" if epoch == 0 else f"--lr (now {self.cfg.lr:g})"
        )
        kept = (
            f"; the best checkpoint so far (epoch {result.best_epoch}) is kept at {self.cfg.out}"
            if result.best_epoch >= 0
            else "; nothing was saved"
        )
        return TrainingDivergedError(f"training diverged in {where} ({what}): lower {rate}{kept}")

    def _save_average(self, result: TrainResult, states: list[dict[str, torch.Tensor]]) -> None:
        """Save the mean of the last fine-tuning epochs' weights as the checkpoint (a "soup").

        With frozen batch-norm statistics (the default for pretrained weights) every epoch
        shares the running statistics, so the average is exact; with ``--bn-stats update`` they
        are averaged too, which is close to but not the statistics of the averaged weights.
        """
        self.model.load_state_dict(average_states(states))
        epochs = [h["epoch"] for h in result.history][-len(states) :]
        stats = {**self.validate(), "epoch": epochs[-1], "averaged_epochs": epochs}
        stats["elapsed_s"] = round(time.monotonic() - self._started, 1)
        save_checkpoint(self.model, self.checkpoint_config(stats), self.cfg.out)
        result.best_epoch, result.metrics = epochs[-1], stats
        log.info(
            "saved the average of epochs %d-%d%s",
            epochs[0],
            epochs[-1],
            f": val acc {stats['val_accuracy']:.3f}" if "val_accuracy" in stats else "",
        )

    def _mark(self, result: TrainResult, state: str) -> None:
        """Say in the saved checkpoint how its run ended (nothing if none was saved)."""
        if result.best_epoch >= 0:
            set_training_state(self.cfg.out, state)

    def fit(self) -> TrainResult:
        """Head warm-up (epoch 0), then ``epochs`` of full fine-tuning with early stopping."""
        cfg = self.cfg
        result = TrainResult(checkpoint=Path(cfg.out), best_epoch=-1, metrics={})
        self._started = time.monotonic()
        best_key, stale = (-1.0, -1.0), 0
        try:
            frozen = self.frozen
            if cfg.warmup_epochs > 0:
                set_backbone_trainable(self.model, False, frozen)
                stats = warm_up_head(
                    self.model, self.loader, cfg, self.criterion, self.generator, self.amp
                )
                best_key = self._record(result, stats, 0, best_key)
            if cfg.epochs == 0:
                self._mark(result, "finished")
                return result
            set_backbone_trainable(self.model, True, frozen)
            # The head already fits: backbone and head move together at the fine-tuning rate.
            optimizer = adamw(self.model, cfg.lr, cfg.weight_decay)
            steps_per_epoch = max(1, len(self.loader))
            scheduler = warmup_cosine(optimizer, cfg.epochs * steps_per_epoch, steps_per_epoch)
            step = 0
            recent: deque[dict[str, torch.Tensor]] = deque(maxlen=max(1, cfg.average_last))
            for epoch in range(1, cfg.epochs + 1):
                stats, step = train_one_epoch(
                    self.model,
                    self.loader,
                    self.criterion,
                    optimizer,
                    scheduler,
                    step,
                    freeze_bn_stats=freezes_bn_stats(cfg),
                    desc=f"epoch {epoch}/{cfg.epochs}",
                    progress=cfg.progress,
                    amp=self.amp,
                    metric_loss=self.metric_loss,
                    metric_weight=cfg.metric_weight,
                    mixer=self.mixer,
                )
                new_key = self._record(result, stats, epoch, best_key)
                stale = 0 if new_key != best_key else stale + 1
                best_key = new_key
                if cfg.average_last > 0:
                    recent.append(
                        {
                            k: v.detach().to("cpu", copy=True)
                            for k, v in self.model.state_dict().items()
                        }
                    )
                if self.val_samples and stale >= cfg.patience:
                    log.info("early stop: no validation improvement for %d epochs", stale)
                    break
            if recent:
                self._save_average(result, list(recent))
            self._mark(result, "finished")
        except TrainingDivergedError:
            self._mark(result, "diverged")
            raise
        except KeyboardInterrupt:
            result.interrupted = True
            self._mark(result, "interrupted")
            log.warning(
                "interrupted; best checkpoint so far %s",
                f"(epoch {result.best_epoch}) is at {cfg.out}"
                if result.best_epoch >= 0
                else "none",
            )
        return result
