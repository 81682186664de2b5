"""Decoding untrusted image files into RGB PIL images, with one error type for every failure."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from embedder.errors import ImageError

# Listings never need more than ~40 megapixels; anything larger is treated as a decompression bomb.
MAX_PIXELS = 40_000_000

# PIL only warns between MAX_IMAGE_PIXELS and 2x that; we raise at our own limit instead.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (P, RGBA, LA, L, I;16, I, F, CMYK, ...) to 8-bit RGB.

    Transparent areas become white, as product photos on a web page would show them.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit greyscale: stretch the image's own range to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def load_image(source: str | Path | bytes, min_side: int | None = None) -> Image.Image:
    """Open and fully decode an image file or byte string as RGB.

    With ``min_side``, a large JPEG is decoded at a reduced DCT scale whose shorter side stays
    at least ``min_side`` (much faster; the model resizes to its input size anyway).

    Raises ImageError (with the reason) for empty, corrupt, truncated, unsupported or
    oversized (decompression bomb) input, so batch jobs can skip and count it.
    """
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    try:
        if isinstance(source, bytes | bytearray):
            if not source:
                raise ImageError("empty image data")
            fp: io.BytesIO | str = io.BytesIO(source)
        else:
            fp = str(source)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: {img.width}x{img.height} exceeds the {MAX_PIXELS} pixel limit "
                        "(possible decompression bomb)"
                    )
                if min_side and img.format == "JPEG" and min(img.size) >= 2 * min_side:
                    # PIL picks the strongest DCT reduction that stays at least this size.
                    f = min_side / min(img.size)
                    img.draft(img.mode, (math.ceil(img.width * f), math.ceil(img.height * f)))
                img.load()
                # Phone cameras store rotation as an EXIF tag; apply it as every viewer does.
                ImageOps.exif_transpose(img, in_place=True)
                return to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{name}: refused as a possible decompression bomb (over the {MAX_PIXELS} pixel limit)"
        ) from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated/corrupt data as OSError (or SyntaxError for some plugins).
        raise ImageError(f"{name}: cannot decode image ({exc})") from exc
