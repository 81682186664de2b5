"""Listing input images and reading them once for hashes, sizes and descriptors.

A folder is searched recursively; an image's label is the name of the folder holding it (so
``train/huawei/x.jpg`` is labelled ``huawei``; images directly in the folder have no label). A
CSV manifest (``id,image,label,...``) is read by ``embedder.data.load_catalog``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.fsutil import stream_sha256
from duplicates.hashing import phash_bits, pixel_digest
from embedder.batch import Failure, default_workers, ordered_batches
from embedder.data import (
    IMAGE_SUFFIX_LIST,
    Sample,
    image_files,
    load_catalog,
    path_ids,
    text_named,
)
from embedder.errors import DataError, ImageError
from embedder.images import load_image, open_image_file, resize_bounded, to_rgb
from embedder.preprocess import Preprocessor

log = logging.getLogger(__name__)


def list_images(root: str | Path) -> list[Sample]:
    """Every image under ``root`` (recursively, sorted), labelled by its parent folder."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: is a file; give a folder of images")
    paths = text_named(image_files(root))
    samples = [
        Sample(id=i, path=p, label=p.parent.name if p.parent != root else "")
        for i, p in zip(path_ids(paths, root), paths, strict=True)
    ]
    if not samples:
        raise DataError(f"{root}: no images found (looked for {IMAGE_SUFFIX_LIST}, recursively)")
    return samples


def load_inputs(data: str | Path, kind: str | None = None) -> list[Sample]:
    """Samples from a folder of images or a CSV manifest.

    ``kind`` is ``"images"`` or ``"manifest"`` when the caller was told which (``--images``,
    ``--manifest``), else None: a folder is listed, anything else read as a CSV manifest.
    """
    path = Path(data)
    if kind == "images" and path.is_file():
        raise DataError(f"{data}: not a folder (use --manifest for a CSV file)")
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


def thumbnail(img: Image.Image, side: int) -> np.ndarray:
    """Squashed side x side RGB uint8 thumbnail, in the same unit square as the features."""
    return np.asarray(resize_bounded(to_rgb(img), (side, side), Image.BILINEAR), np.uint8)


def read_image(path: str | Path, with_phash: bool = False) -> tuple[Image.Image, ImageInfo]:
    """Full decode (no draft: the pixel hash needs every pixel), pixel hash, size and the
    hash of the file's bytes, read as a stream: the file had been read whole into memory
    first, where the decode refuses a huge file unread. Raises ImageError naming the path."""
    img = load_image(path)  # a FIFO listed in a manifest had hung the run: refused here
    try:
        with open_image_file(path) as fh:
            file_size = os.fstat(fh.fileno()).st_size
            byte_digest = stream_sha256(fh)
    except OSError as exc:  # gone since the decode
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    info = ImageInfo(
        width=img.width,
        height=img.height,
        file_size=file_size,
        byte_digest=byte_digest,
        pixel_digest=pixel_digest(img),
        phash=phash_bits(img) if with_phash else None,
    )
    return img, info


@dataclass(frozen=True)
class ReadBatch:
    """The readable images of one batch of inputs, in input order: ``pixels`` N x 3 x H x W
    float32 (the preprocessor's model input), ``thumbs`` N x side x side x 3 uint8."""

    indices: list[int]
    pixels: np.ndarray
    thumbs: np.ndarray
    infos: list[ImageInfo]
    failures: list[Failure]


def read_batch(
    samples: Sequence[Sample],
    indices: Sequence[int],
    preprocessor: Preprocessor,
    thumb_side: int,
    with_phash: bool = False,
) -> ReadBatch:
    """Read ``samples[indices]``, each preprocessed straight into its row of the batch."""
    pixels = np.empty((len(indices), *preprocessor.shape), np.float32)
    thumbs = np.empty((len(indices), thumb_side, thumb_side, 3), np.uint8)
    ok: list[int] = []
    infos: list[ImageInfo] = []
    failures: list[Failure] = []
    for i in indices:
        try:
            img, info = read_image(samples[i].path, with_phash)
        except ImageError as exc:
            failures.append(Failure(i, samples[i].id, str(exc)))
            continue
        preprocessor.into(img, pixels[len(ok)])
        thumbs[len(ok)] = thumbnail(img, thumb_side)
        ok.append(i)
        infos.append(info)
    n = len(ok)
    return ReadBatch(ok, pixels[:n], thumbs[:n], infos, failures)


def iter_read(
    samples: Sequence[Sample],
    preprocessor: Preprocessor,
    thumb_side: int,
    batch_size: int = 32,
    workers: int | None = None,
    with_phash: bool = False,
    progress: bool = True,
    desc: str = "reading",
) -> Iterator[ReadBatch]:
    """:func:`read_batch` over consecutive batches, in input order, decoded by ``workers``
    threads ahead of the consumer (None: :func:`embedder.batch.default_workers`; 0: in the
    calling thread). Never raises on a bad image: it is logged and reported as a Failure.

    Threads, not processes: reading, Pillow and numpy release the GIL, and a worker process
    would have to import (and hold) its own copy of everything."""
    workers = default_workers() if workers is None else workers
    batches = ordered_batches(
        len(samples),
        batch_size,
        workers,
        lambda chunk: read_batch(samples, chunk, preprocessor, thumb_side, with_phash),
    )
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            for f in batch.failures:
                log.warning("skipping %s: %s", f.id, f.reason)
            yield batch
            bar.update(len(batch.indices) + len(batch.failures))
