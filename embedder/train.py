"""Transfer learning: fine-tune a timm backbone into a phone classifier.

Recipe (the defaults are the recommended one): a head-only warm-up with the backbone frozen,
then full fine-tuning at a lower rate; AdamW with a cosine schedule and linear warm-up; label
smoothing (the labels of real listings are noisy); training photos whose near copy is filed under
another class left out; timm's training augmentation; class-balanced sampling; early stopping on
validation accuracy. The best checkpoint is saved atomically every
time validation improves, so Ctrl-C or a crash leaves it on disk.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import accuracy_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from embedder.backbone import create_backbone
from embedder.batch import embed_samples
from embedder.checkpoint import CheckpointConfig, check_checkpoint_target, save_checkpoint
from embedder.data import Catalog, Sample, load_catalog
from embedder.errors import DataError, ImageError
from embedder.images import load_image
from embedder.inference import Embedder
from embedder.label_conflicts import find_label_conflicts, thumbnail_vector
from embedder.metrics import label_recall_at_k, macro_f1
from embedder.train_config import BN_STATS_MODES, LABEL_CONFLICT_MODES, TrainConfig
from embedder.transforms import model_data_config, train_transform

log = logging.getLogger(__name__)

# Decoded training images are kept in memory (downscaled) up to this many; beyond, re-read.
CACHE_LIMIT = 20_000


@dataclass
class TrainResult:
    checkpoint: Path
    best_epoch: int
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    label_conflicts: list[str] = field(default_factory=list)
    interrupted: bool = False


class CachedImages(Dataset):
    """Training images decoded once up front and augmented per epoch.

    Unreadable images are dropped here (listed in ``skipped``); up to ``CACHE_LIMIT`` images are
    kept in memory, downscaled to what random crops at the training size need. A small thumbnail
    vector per image serves to find label conflicts.
    """

    def __init__(
        self,
        samples: list[Sample],
        targets: list[int],
        transform,
        keep_side: int,
        progress: bool = True,
    ):
        self.transform = transform
        self.samples, self.targets, self.cache, self.skipped = [], [], [], []
        self.thumbs: list[np.ndarray] = []
        keep = len(samples) <= CACHE_LIMIT
        for s, t in zip(
            tqdm(samples, desc="decoding", unit="img", leave=False, disable=not progress),
            targets,
            strict=True,
        ):
            try:
                img = load_image(s.path)
            except ImageError as exc:
                log.warning("skipping %s", exc)
                self.skipped.append(str(exc))
                continue
            self.samples.append(s)
            self.targets.append(t)
            self.thumbs.append(thumbnail_vector(img))
            if keep:
                scale = keep_side / min(img.size)
                if scale < 1:
                    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                    img = img.resize(size, resample=Image.BICUBIC)
                self.cache.append(img)

    def leave_out(self, indices: set[int]) -> None:
        """Remove these images from training."""
        keep = [i for i in range(len(self.samples)) if i not in indices]
        self.samples = [self.samples[i] for i in keep]
        self.targets = [self.targets[i] for i in keep]
        self.thumbs = [self.thumbs[i] for i in keep]
        if self.cache:
            self.cache = [self.cache[i] for i in keep]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        img = self.cache[i] if self.cache else load_image(self.samples[i].path)
        return self.transform(img), self.targets[i]


def stratified_split(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of each class (at least one image where a class has two or more)."""
    rng = random.Random(seed)
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    train, val = [], []
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * fraction))) if fraction > 0 else 0
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return train, val


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def frozen_parameter_names(model: nn.Module, groups: int) -> set[str]:
    """Names of the parameters in the first ``groups`` of timm's coarse layer groups.

    timm models describe their depth order with ``group_matcher`` (stem, stage 1, stage 2, ...,
    head), which makes "freeze the early layers" work for any architecture.
    """
    if groups <= 0:
        return set()
    from timm.models import group_parameters

    layers = group_parameters(model, model.group_matcher(coarse=True))
    head = {name for name, _ in model.named_parameters() if name.startswith(_head_prefix(model))}
    order = sorted(layers)
    frozen = {name for gid in order[:groups] for name in layers[gid]}
    return frozen - head


def _head_prefix(model: nn.Module) -> str:
    return model.pretrained_cfg.get("classifier", "classifier") + "."


def _set_backbone_trainable(model: nn.Module, trainable: bool, frozen: set[str]) -> None:
    head = set(model.get_classifier().parameters())
    for name, p in model.named_parameters():
        p.requires_grad = p in head or (trainable and name not in frozen)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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


def _set_train_mode(model: nn.Module, freeze_bn_stats: bool) -> None:
    model.train()
    if freeze_bn_stats:
        for module in model.modules():
            if isinstance(module, BATCH_NORMS):
                module.eval()  # normalise with, and keep, the running statistics


def _check_input_size(model: nn.Module, data_config: dict[str, Any], config: TrainConfig) -> None:
    """One forward pass at the input size, so a size the model refuses fails before training."""
    x = torch.zeros(1, *data_config["input_size"]).contiguous(memory_format=torch.channels_last)
    model.eval()
    try:
        with torch.inference_mode():
            model(x)
    except Exception as exc:  # timm models assert, raise RuntimeError or ValueError
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{config.model} cannot take {data_config['input_size'][-1]} px input "
            f"(--img-size): {detail}"
        ) from None


class Trainer:
    """Runs the two-phase recipe over prepared datasets and keeps the best checkpoint."""

    def __init__(self, config: TrainConfig, train: Catalog, val_samples: list[Sample]):
        self.cfg = config
        self.label_names = train.label_names
        self.label_to_idx = {name: i for i, name in enumerate(self.label_names)}
        self.generator = _seed_everything(config.seed)
        model_kwargs: dict[str, Any] = {"drop_rate": config.drop_rate}
        # channels_last makes CPU convolutions about 1.6x faster (measured on Lite0).
        self.model = create_backbone(
            config.model, len(self.label_names), config.weights, **model_kwargs
        ).to(memory_format=torch.channels_last)
        self.model_kwargs = {}  # drop_rate only matters in training; not needed to rebuild
        self.data_config = model_data_config(self.model, config.img_size, config.crop_mode)
        _check_input_size(self.model, self.data_config, config)
        self.val_samples = val_samples
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
        self.targets = dataset.targets
        sampler = None
        if config.balance:
            counts = Counter(self.targets)
            weights = torch.tensor([1.0 / counts[t] for t in self.targets], dtype=torch.double)
            sampler = WeightedRandomSampler(weights, len(weights), generator=self.generator)
        workers = config.workers if config.workers is not None else min(2, os.cpu_count() or 1)
        self.loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=sampler,
            shuffle=sampler is None,
            generator=self.generator,
            num_workers=workers,
            worker_init_fn=_worker_init,
            persistent_workers=workers > 0,
            drop_last=len(dataset) > config.batch_size,
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

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
        training["label_conflicts_left_out"] = self.label_conflicts
        return CheckpointConfig(
            architecture=self.cfg.model,
            num_classes=len(self.label_names),
            label_names=self.label_names,
            data_config=self.data_config,
            feature_dim=int(self.model.num_features),
            model_kwargs=self.model_kwargs,
            training=training,
            metrics=metrics,
        )

    def _frozen_features(self, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features of the frozen backbone for ``views`` augmented passes."""
        self.model.eval()
        feats, targets = [], []
        with torch.inference_mode():
            for view in range(views):
                bar = tqdm(
                    self.loader,
                    desc=f"frozen features {view + 1}/{views}",
                    unit="batch",
                    disable=not self.cfg.progress,
                    leave=False,
                )
                for x, y in bar:
                    x = x.contiguous(memory_format=torch.channels_last)
                    pre = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
                    feats.append(pre.float())
                    targets.append(y)
        return torch.cat(feats), torch.cat(targets)

    def warm_up_head(self) -> dict[str, float]:
        """Head-only phase: fit the classifier on cached features of the frozen backbone.

        Features are computed once per augmented view, so the warm-up costs ``warmup_views``
        forward passes instead of ``warmup_epochs`` of them; with ``epochs=0`` this is a
        linear probe.
        """
        cfg = self.cfg
        feats, targets = self._frozen_features(max(1, cfg.warmup_views))
        head = self.model.get_classifier()
        head.train()
        optimizer = torch.optim.AdamW(
            head.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay
        )
        batch = 64
        steps = max(1, cfg.warmup_epochs * math.ceil(len(feats) / batch))
        step, loss_sum, correct, seen = 0, 0.0, 0, 0
        for _ in range(cfg.warmup_epochs):
            order = torch.randperm(len(feats), generator=self.generator)
            for start in range(0, len(feats), batch):
                idx = order[start : start + batch]
                for group in optimizer.param_groups:
                    group["lr"] = cfg.head_lr * _cosine_lr(step, steps, max(1, steps // 10))
                x = nn.functional.dropout(feats[idx], p=cfg.drop_rate, training=True)
                logits = head(x)
                loss = self.criterion(logits, targets[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step > steps - math.ceil(len(feats) / batch):  # stats of the last epoch
                    loss_sum += loss.item() * len(idx)
                    correct += int((logits.argmax(1) == targets[idx]).sum())
                    seen += len(idx)
        return {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen)}

    def _run_epoch(self, epoch: int, optimizer, schedule, step: int) -> tuple[dict, int]:
        model = self.model
        _set_train_mode(model, freezes_bn_stats(self.cfg))
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            unit="batch",
            disable=not self.cfg.progress,
            leave=False,
        )
        for x, y in bar:
            for group in optimizer.param_groups:
                group["lr"] = self.cfg.lr * schedule(step)
            logits = model(x.contiguous(memory_format=torch.channels_last))
            loss = self.criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(y)
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        bar.close()
        return {"train_loss": loss_sum / max(1, total), "train_acc": correct / max(1, total)}, step

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
        stats.update(self.validate())
        stats["epoch"] = epoch
        stats["elapsed_s"] = round(time.monotonic() - self._started, 1)
        result.history.append(stats)
        key = (stats.get("val_accuracy", 0.0), stats.get("val_macro_f1", 0.0))
        improved = not self.val_samples or key > best_key
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
        if improved:
            result.best_epoch, result.metrics = epoch, stats
            save_checkpoint(self.model, self.checkpoint_config(stats), self.cfg.out)
            return key
        return best_key

    def fit(self) -> TrainResult:
        """Head warm-up (epoch 0), then ``epochs`` of full fine-tuning with early stopping."""
        cfg = self.cfg
        result = TrainResult(checkpoint=Path(cfg.out), best_epoch=-1, metrics={})
        self._started = time.monotonic()
        best_key, stale = (-1.0, -1.0), 0
        try:
            frozen = frozen_parameter_names(self.model, cfg.frozen_groups)
            if cfg.warmup_epochs > 0:
                _set_backbone_trainable(self.model, False, frozen)
                best_key = self._record(result, self.warm_up_head(), 0, best_key)
            if cfg.epochs == 0:
                return result
            _set_backbone_trainable(self.model, True, frozen)
            # The head already fits: backbone and head move together at the fine-tuning rate.
            optimizer = torch.optim.AdamW(
                [p for p in self.model.parameters() if p.requires_grad],
                lr=cfg.lr,
                weight_decay=cfg.weight_decay,
            )
            steps_per_epoch = max(1, len(self.loader))
            total = cfg.epochs * steps_per_epoch
            schedule = lambda s: _cosine_lr(s, total, steps_per_epoch)  # noqa: E731
            step = 0
            for epoch in range(1, cfg.epochs + 1):
                stats, step = self._run_epoch(epoch, optimizer, schedule, step)
                new_key = self._record(result, stats, epoch, best_key)
                stale = 0 if new_key != best_key else stale + 1
                best_key = new_key
                if self.val_samples and stale >= cfg.patience:
                    log.info("early stop: no validation improvement for %d epochs", stale)
                    break
        except KeyboardInterrupt:
            result.interrupted = True
            log.warning(
                "interrupted; best checkpoint so far %s",
                f"(epoch {result.best_epoch}) is at {cfg.out}"
                if result.best_epoch >= 0
                else "none",
            )
        return result


def _check_settings(config: TrainConfig) -> None:
    """Numeric settings in their valid ranges, as one-line errors (not torch tracebacks)."""
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
    if config.frozen_groups < 0:
        raise DataError(f"--frozen-groups must be >= 0, got {config.frozen_groups}")
    if config.label_conflicts not in LABEL_CONFLICT_MODES:
        raise DataError(f"--label-conflicts must be drop or keep, got {config.label_conflicts!r}")
    if not (0.0 < config.conflict_similarity <= 1.0):
        raise DataError(
            f"--conflict-similarity must be in (0, 1], got {config.conflict_similarity}"
        )
    if config.bn_stats not in BN_STATS_MODES:
        modes = ", ".join(BN_STATS_MODES[:-1]) + f" or {BN_STATS_MODES[-1]}"
        raise DataError(f"--bn-stats must be {modes}, got {config.bn_stats!r}")
    if config.img_size is not None and config.img_size < 16:
        raise DataError(f"--img-size must be at least 16, got {config.img_size}")


def train(config: TrainConfig) -> TrainResult:
    """Load data, fine-tune, and return where the best checkpoint is with its metrics."""
    if not (0.0 <= config.val_fraction < 1.0):
        raise DataError("--val-fraction must be in [0, 1)")
    if config.epochs < 0 or config.warmup_epochs < 0 or config.batch_size < 1:
        raise DataError("--epochs and --warmup-epochs must be >= 0, --batch-size >= 1")
    if config.epochs == 0 and config.warmup_epochs == 0:
        raise DataError("nothing to train: --epochs and --warmup-epochs are both 0")
    _check_settings(config)
    check_checkpoint_target(config.out)  # before any work: never train into the wrong folder
    catalog = load_catalog(config.data, require_labels=True)
    if config.val:
        val_catalog = load_catalog(config.val, require_labels=True, min_classes=1)
        unknown = sorted(set(val_catalog.label_names) - set(catalog.label_names))
        if unknown:
            raise DataError(f"{config.val}: classes not in the training data: {', '.join(unknown)}")
        train_samples, val_samples = catalog.samples, val_catalog.samples
    else:
        train_samples, val_samples = stratified_split(
            catalog.samples, config.val_fraction, config.seed
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
