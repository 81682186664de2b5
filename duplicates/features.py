"""Reading every input once into the arrays duplicate detection works on.

Local feature maps are large (about 90 KB per image), so above ``memory_limit`` bytes they go to
a memory-mapped temporary file instead of RAM; everything else stays in memory.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import stopping
from duplicates.descriptor import CopyDescriptor
from duplicates.inputs import ImageInfo, iter_read
from embedder.batch import Failure
from embedder.data import Sample

log = logging.getLogger(__name__)

MEMORY_LIMIT = 1 << 30


@dataclass
class Features:
    """Features of the readable inputs; row r describes ``samples[rows[r]]``."""

    samples: Sequence[Sample]
    rows: np.ndarray
    infos: list[ImageInfo]
    global_: np.ndarray
    local: np.ndarray
    thumbs: np.ndarray
    grid_shape: tuple[int, int]
    failures: list[Failure] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    seconds: float = 0.0  # the whole stage: reading, decoding, hashing and the model
    model_seconds: float = 0.0  # the model's passes alone

    def __len__(self) -> int:
        return len(self.rows)

    def size_of(self, r: int) -> tuple[int, int]:
        """(width, height) of row r's image."""
        return self.infos[r].width, self.infos[r].height

    def sample(self, r: int) -> Sample:
        return self.samples[int(self.rows[r])]

    def close(self) -> None:
        """Drop a memory-mapped feature file, if one was used."""
        if self._tmp is not None:
            self.local = np.zeros((0,) + self.local.shape[1:], self.local.dtype)
            self._tmp.cleanup()
            self._tmp = None


def extract_features(
    descriptor: CopyDescriptor,
    samples: Sequence[Sample],
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    memory_limit: int = MEMORY_LIMIT,
) -> Features:
    """Read, hash and describe every sample; unreadable ones become ``failures``."""
    n = len(samples)
    side = descriptor.config.thumb_size
    h, w = descriptor.grid_shape
    shape = (n, 2, h * w, descriptor.local_dim)
    tmp = None
    if np.prod(shape) * 2 > memory_limit:
        tmp = tempfile.TemporaryDirectory(prefix="phonesim-dup-")
        local = np.lib.format.open_memmap(
            str(Path(tmp.name) / "local.npy"), mode="w+", dtype=np.float16, shape=shape
        )
        log.info("local features (%.1f GB) are memory-mapped in %s", local.nbytes / 1e9, tmp.name)
    else:
        local = np.zeros(shape, np.float16)
    global_ = np.zeros((n, descriptor.dim), np.float32)
    thumbs = np.zeros((n, side, side, 3), np.uint8)
    rows: list[int] = []
    infos: list[ImageInfo] = []
    failures: list[Failure] = []
    start, model_seconds = time.perf_counter(), 0.0
    for batch in iter_read(
        samples,
        descriptor.transform,
        side,
        batch_size,
        workers,
        progress=progress,
        desc="duplicates",
    ):
        stopping.check()  # a Ctrl-C or SIGTERM Python dropped (common.stopping)
        failures.extend(batch.failures)
        if not batch.indices:
            continue
        t = time.perf_counter()
        described = descriptor.describe_tensors(batch.pixels)
        model_seconds += time.perf_counter() - t
        at = slice(len(rows), len(rows) + len(batch.indices))
        global_[at] = described.global_
        local[at] = described.local
        thumbs[at] = batch.thumbs
        rows.extend(batch.indices)
        infos.extend(batch.infos)
    m = len(rows)
    return Features(
        samples=samples,
        rows=np.asarray(rows, dtype=np.int64),
        infos=infos,
        global_=global_[:m],
        local=local[:m],
        thumbs=thumbs[:m],
        grid_shape=(h, w),
        failures=failures,
        _tmp=tmp,
        seconds=time.perf_counter() - start,
        model_seconds=model_seconds,
    )
