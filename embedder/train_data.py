"""Training data: the validation split, images decoded once, and the class-balanced loader."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm import tqdm

from common.machine import available_cores
from embedder.data import Sample
from embedder.errors import ImageError
from embedder.images import decodes, load_image
from embedder.label_conflicts import thumbnail_vector
from embedder.train_config import TrainConfig

log = logging.getLogger(__name__)

# Decoded training images are kept in memory (downscaled) up to this many; beyond, re-read.
CACHE_LIMIT = 20_000


def is_readable(sample: Sample) -> bool:
    """Whether the sample's image decodes (a validation image is worth holding out)."""
    return decodes(sample.path)


def stratified_split(
    samples: list[Sample],
    fraction: float,
    seed: int,
    readable: Callable[[Sample], bool] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of each class (at least one image where a class has two or more).

    ``readable``: held-out images must pass it, and each class keeps one that passes for
    training; the others stay in the training list, whose reader skips and lists them. Only
    the images looked at are checked (about ``fraction`` of them): without it, unreadable
    images drawn for validation could leave a class, or the whole split, with none to score.
    """
    rng = random.Random(seed)
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label, []).append(s)
    train, val = [], []
    known: dict[int, bool] = {}  # each image decoded once at most

    def passes(s: Sample) -> bool:
        if id(s) not in known:
            known[id(s)] = readable(s)
        return known[id(s)]

    for label in sorted(by_label):
        items = by_label[label]
        # One file listed under several ids (a re-listed item) goes to one side whole: split
        # apart, its copies in training would be validated on as unseen photos.
        groups = list(_by_file(items).values())
        rng.shuffle(groups)
        n_val = min(len(items) - 1, max(1, round(len(items) * fraction))) if fraction > 0 else 0
        held: list[list[Sample]] = []
        kept: list[list[Sample]] = []
        for group in groups:
            room = sum(map(len, held)) < n_val
            ok = room and (readable is None or passes(group[0]))
            (held if ok else kept).append(group)
        if not kept and held:  # one file under every id of the class: it trains
            kept.append(held.pop())
        if readable is not None and held and not any(passes(g[0]) for g in kept):
            kept.append(held.pop())  # stops at the first readable one
        val.extend(s for g in held for s in g)
        train.extend(s for g in kept for s in g)
    return train, val


def _by_file(samples: list[Sample]) -> dict[Path, list[Sample]]:
    """The samples by the file they name (links and relative paths resolved), in order."""
    groups: dict[Path, list[Sample]] = {}
    for s in samples:
        try:
            key = Path(s.path).resolve()
        except OSError:  # a link loop: the path as given
            key = Path(s.path)
        groups.setdefault(key, []).append(s)
    return groups


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
        transform: Callable[[Image.Image], torch.Tensor],
        keep_side: int,
        progress: bool = True,
    ) -> None:
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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.cache[i] if self.cache else load_image(self.samples[i].path)
        return self.transform(img), self.targets[i]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; the returned generator drives sampling and shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def training_loader(
    dataset: CachedImages,
    config: TrainConfig,
    generator: torch.Generator,
    pin_memory: bool = False,
) -> DataLoader:
    """Augmented batches, class-balanced unless ``config.balance`` is off; reproducible by seed.

    ``pin_memory`` for a CUDA model: page-locked batches copy to the GPU asynchronously.
    """
    sampler = None
    if config.balance:
        counts = Counter(dataset.targets)
        weights = torch.tensor([1.0 / counts[t] for t in dataset.targets], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, len(weights), generator=generator)
    workers = config.workers if config.workers is not None else min(2, available_cores())
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        shuffle=sampler is None,
        generator=generator,
        num_workers=workers,
        worker_init_fn=_worker_init,
        persistent_workers=workers > 0,
        drop_last=len(dataset) > config.batch_size,
        pin_memory=pin_memory,
    )


__all__ = [
    "CACHE_LIMIT",
    "CachedImages",
    "is_readable",
    "seed_everything",
    "stratified_split",
    "training_loader",
]
