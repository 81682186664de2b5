"""Files the service reads: the pixel count an upload declares, and whether a path lies inside
the folders images may be served from."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image

from embedder.images import IMAGE_FORMATS


def declared_pixels(data: bytes) -> int:
    """The pixel count an image file declares (0 if its header cannot be read), decoding none
    of it; JPEGs count after the reduced-size decode that load_image applies to them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt headers warn: load_image has the last word
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                return 0 if img.format == "JPEG" else img.width * img.height
    except Exception:  # the decoder proper reports what is wrong
        return 0


def inside(path: Path, roots: list[Path]) -> bool:
    """Whether ``path`` (symlinks resolved) lies inside one of ``roots``."""
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        try:
            if os.path.commonpath([real, base]) == base:
                return True
        except ValueError:
            continue
    return False
