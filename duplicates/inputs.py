"""Listing input images and reading them once for hashes, sizes and descriptors.

A folder is searched recursively; an image's label is the name of the folder holding it (so
``train/huawei/x.jpg`` is labelled ``huawei``; images directly in the folder have no label). A
CSV manifest (``id,image,label,...``) is read by ``embedder.data.load_catalog``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from duplicates.hashing import bytes_digest, phash_bits, pixel_digest
from embedder.batch import Failure, default_workers, stack
from embedder.data import IMAGE_SUFFIXES, Sample, is_image_name, load_catalog, path_ids
from embedder.errors import DataError, ImageError
from embedder.images import load_image

log = logging.getLogger(__name__)


def list_images(root: str | Path) -> list[Sample]:
    """Every image under ``root`` (recursively, sorted), labelled by its parent folder."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (use --manifest for a CSV file)")
    paths = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and is_image_name(p)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    samples = [
        Sample(id=i, path=p, label=p.parent.name if p.parent != root else "")
        for i, p in zip(path_ids(paths, root), paths, strict=True)
    ]
    if not samples:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(f"{root}: no images found (looked for {suffixes}, recursively)")
    return samples


def load_inputs(data: str | Path, kind: str | None = None):
    """Samples from a folder of images or a CSV manifest.

    ``kind`` is ``"images"`` or ``"manifest"`` when the caller was told which (``--images``,
    ``--manifest``), else None: a folder is listed, anything else read as a CSV manifest.
    """
    path = Path(data)
    if kind == "images" or (kind is None and path.is_dir()):
        return list_images(path)
    if path.is_dir():
        raise DataError(f"{data}: is a folder; --manifest takes a CSV file (use --data)")
    return load_catalog(path, require_labels=False).samples


@dataclass(frozen=True)
class ImageInfo:
    """What is known about a readable input without the model."""

    width: int
    height: int
    file_size: int
    byte_digest: str
    pixel_digest: str
    phash: np.ndarray | None = None


class ReadImages(Dataset):
    """Reads a file once: byte hash, decode, pixel hash, size, then the descriptor's transform."""

    def __init__(self, samples: Sequence[Sample], transform, with_phash: bool = False) -> None:
        self.samples = samples
        self.transform = transform
        self.with_phash = with_phash

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path = self.samples[i].path
        try:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
            img = load_image(data)
        except ImageError as exc:
            reason = str(exc).replace("<bytes>", str(path))
            return i, None, None, reason
        info = ImageInfo(
            width=img.width,
            height=img.height,
            file_size=len(data),
            byte_digest=bytes_digest(data),
            pixel_digest=pixel_digest(img),
            phash=phash_bits(img) if self.with_phash else None,
        )
        return i, self.transform(img), info, ""


def _collate(items):
    ok = [(i, x, info) for i, x, info, _ in items if x is not None]
    failed = [(i, reason) for i, x, _, reason in items if x is None]
    xs = [x for _, x, _ in ok]
    # Tensors stacked straight into shared memory: no copy on the way to the model process.
    if xs and isinstance(xs[0], tuple):  # (tensor, thumbnail) pairs
        batch = (stack([x[0] for x in xs]), np.stack([x[1] for x in xs]))
    else:
        batch = stack(xs)
    return [i for i, _, _ in ok], batch, [info for _, _, info in ok], failed


def iter_read(
    samples: Sequence[Sample],
    transform,
    batch_size: int = 32,
    workers: int | None = None,
    with_phash: bool = False,
    progress: bool = True,
    desc: str = "reading",
) -> Iterator[tuple[list[int], torch.Tensor, list[ImageInfo], list[Failure]]]:
    """Yield (indices, preprocessed batch, infos, failures) in input order; never raises on a
    bad image (it is logged and reported as a Failure)."""
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        ReadImages(samples, transform, with_phash),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=4 if workers else None,
    )
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for indices, tensors, infos, failed in loader:
            failures = [Failure(i, samples[i].id, reason) for i, reason in failed]
            for f in failures:
                log.warning("skipping %s: %s", f.id, f.reason)
            yield indices, tensors, infos, failures
            bar.update(len(indices) + len(failures))
