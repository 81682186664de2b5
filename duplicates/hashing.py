"""Exact-copy hashes (file bytes, decoded pixels) and the perceptual-hash baseline.

Byte- and pixel-identical copies are grouped whatever the threshold: the same pixels saved with
other metadata or in another container still hash the same at pixel level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixel_digest(img: Image.Image) -> str:
    """Hash of the decoded RGB pixels and the size (format and metadata do not count)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def identical_pairs(digests: Sequence[str | None]) -> list[tuple[int, int]]:
    """Pairs (first, other) joining every item to the first one with the same digest."""
    first: dict[str, int] = {}
    pairs = []
    for i, d in enumerate(digests):
        if not d:
            continue
        if d in first:
            pairs.append((first[d], i))
        else:
            first[d] = i
    return pairs


def phash_available() -> bool:
    """Whether the optional ``imagehash`` package (a dev extra) can be imported."""
    try:
        import imagehash  # noqa: F401
    except ImportError:
        return False
    return True


def phash_bits(img: Image.Image, hash_size: int = 8) -> np.ndarray:
    """Perceptual hash (DCT of a 32x32 greyscale) as a bool vector of hash_size^2 bits."""
    import imagehash  # optional: only the baseline needs it

    return np.asarray(imagehash.phash(img, hash_size=hash_size).hash, dtype=bool).ravel()


def hamming_pairs(bits: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) within ``max_distance`` bits, with similarity 1 - distance / bits.

    Compares every pair, so it is for the benchmark baseline (a few thousand hashes) only.
    """
    n, nbits = bits.shape
    packed = np.packbits(bits, axis=1)
    lut = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)
    out_i, out_j, out_s = [], [], []
    for start in range(0, n, 512):
        block = packed[start : start + 512]
        dist = lut[block[:, None, :] ^ packed[None, :, :]].sum(axis=2, dtype=np.int32)
        a, b = np.nonzero(dist <= max_distance)
        a = a + start
        keep = a < b
        out_i.append(a[keep])
        out_j.append(b[keep])
        out_s.append(1.0 - dist[a[keep] - start, b[keep]] / nbits)
    return (
        np.concatenate(out_i).astype(np.int64),
        np.concatenate(out_j).astype(np.int64),
        np.concatenate(out_s).astype(np.float32),
    )
