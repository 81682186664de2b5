"""A seeded corpus of hostile image files: valid seeds of every accepted format and mode, and
deterministic mutations of them (bit flips, truncations, header edits, repeated chunks).

Shared by the decoder tests and the server's hostile-input tests, so both see the same files.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from embedder.images import HEIF_SUPPORTED


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(mode: str = "RGB", size: tuple[int, int] = (48, 36), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, mode="RGB")
    return img if mode == "RGB" else img.convert(mode)


def seed_files() -> dict[str, bytes]:
    """One small valid file per format, mode and compression an upload may use."""
    sixteen = Image.fromarray(np.arange(48 * 36, dtype=np.uint16).reshape(36, 48) * 37)
    floats = Image.fromarray(np.linspace(-1, 1, 48 * 36, dtype=np.float32).reshape(36, 48))
    seeds = {
        "jpeg-rgb": _encode(_photo(), "JPEG", quality=80),
        "jpeg-progressive": _encode(_photo(), "JPEG", progressive=True),
        "jpeg-grey": _encode(_photo("L"), "JPEG"),
        "jpeg-cmyk": _encode(_photo("CMYK"), "JPEG"),
        "png-rgb": _encode(_photo(), "PNG"),
        "png-rgba": _encode(_photo("RGBA"), "PNG"),
        "png-palette": _encode(_photo("P"), "PNG", transparency=0),
        "png-16bit": _encode(sixteen, "PNG"),
        "png-1bit": _encode(_photo("1"), "PNG"),
        "webp-lossy": _encode(_photo(), "WEBP", quality=70),
        "webp-lossless": _encode(_photo("RGBA"), "WEBP", lossless=True),
        "gif": _encode(_photo("P"), "GIF"),
        "bmp": _encode(_photo(), "BMP"),
        "tiff-raw": _encode(_photo(), "TIFF"),
        "tiff-lzw": _encode(_photo(), "TIFF", compression="tiff_lzw"),
        "tiff-deflate": _encode(_photo("RGBA"), "TIFF", compression="tiff_adobe_deflate"),
        "tiff-packbits": _encode(_photo("L"), "TIFF", compression="packbits"),
        "tiff-16bit": _encode(sixteen, "TIFF"),
        "tiff-float": _encode(floats, "TIFF"),
    }
    with contextlib.suppress(KeyError, OSError):  # Pillow built without libavif
        seeds["avif"] = _encode(_photo(), "AVIF", quality=60)
    if HEIF_SUPPORTED:
        seeds["heic"] = _encode(_photo(), "HEIF", quality=60)
    return seeds


def foreign_files() -> dict[str, bytes]:
    """Files Pillow can open that are no listing photo: refused by format, not decoded."""
    files = {}
    for fmt, mode in [
        ("DDS", "RGBA"),
        ("SPIDER", "F"),
        ("PCX", "RGB"),
        ("SGI", "RGB"),
        ("TGA", "RGB"),
        ("PPM", "RGB"),
        ("ICO", "RGB"),
        ("QOI", "RGB"),
        ("XBM", "1"),
        ("MSP", "1"),
        ("BLP", "P"),
    ]:
        try:
            files[fmt.lower()] = _encode(_photo(mode), fmt)
        except (KeyError, OSError, ValueError):
            continue
    return files


def _mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    buf = bytearray(data)
    kind = ("bitflip", "truncate", "header", "repeat")[int(rng.integers(4))]
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 9))):
            pos = int(rng.integers(len(buf)))
            buf[pos] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        del buf[int(rng.integers(0, len(buf))) :]
    elif kind == "header":
        # Size, offset and count fields live in the first bytes of every format: push them to
        # extremes (0, 0xFF.., 0x7F..) or random values.
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(0, min(len(buf), 96)))
            width = int(rng.integers(1, 5))
            fill = [0x00, 0xFF, 0x7F, int(rng.integers(256))][int(rng.integers(4))]
            buf[pos : pos + width] = bytes([fill]) * len(buf[pos : pos + width])
    else:
        start = int(rng.integers(len(buf)))
        chunk = buf[start : start + int(rng.integers(1, 64))]
        buf[start:start] = chunk * int(rng.integers(2, 50))
    return kind, bytes(buf)


def mutated_files(per_seed: int = 30, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """``per_seed`` deterministic mutations of every seed file, named ``seed-kind-n``."""
    rng = np.random.default_rng(seed)
    for name, data in seed_files().items():
        for n in range(per_seed):
            kind, mutated = _mutate(data, rng)
            yield f"{name}-{kind}-{n}", mutated
