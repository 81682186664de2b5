"""Decoding untrusted image files into RGB PIL images, with one error type for every failure."""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.errors import OutOfResourcesError, message_line, resources_exhausted
from common.extras import install_hint
from embedder.errors import ImageError

# Listings never need more than ~40 megapixels; anything larger is treated as a decompression bomb.
MAX_PIXELS = 40_000_000

# No image within MAX_PIXELS needs more, even uncompressed with four 32-bit float channels
# (640 MB): a larger file is refused unread, where it had been read whole (a 40 GB file, a
# MemoryError in duplicates find).
MAX_FILE_BYTES = 1 << 30

# PIL only warns between MAX_IMAGE_PIXELS and 2x that; we raise at our own limit instead.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Formats a product photo comes in (JPEG includes multi-picture MPO files). Pillow opens some
# 40 more (DDS textures, IM, SPIDER, FITS, ...), each a decoder an upload could reach; none of
# them is a listing photo.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")


def _register_heif() -> bool:
    """HEIC/HEIF (the iPhone camera's default) through pillow-heif, the optional ``heif`` extra."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF_SUPPORTED = _register_heif()
if HEIF_SUPPORTED:
    IMAGE_FORMATS += ("HEIF",)

_STRETCH_BAND_PIXELS = 1 << 20


# No photo has a longer side; past it a resize first reduces by a whole factor (the pixels
# then differ slightly from a plain resize, torchvision's included, for an image no listing
# holds).
LONGEST_EXACT_SIDE = 65_536


def resize_bounded(img: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """``img.resize(size, resample)`` in memory that does not grow with a side of ``img``:
    PIL's filter weights do (32 bytes a pixel of the side, bicubic), and a 116 KB PNG of
    40,000,000 x 1 pixels took 1.4 GB to resize. Past :data:`LONGEST_EXACT_SIDE` the image
    is first reduced by a whole factor (block means)."""
    if max(img.size) > LONGEST_EXACT_SIDE:
        return img.resize(size, resample, reducing_gap=2.0)
    return img.resize(size, resample)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (P, RGBA, LA, L, I;16, I, F, CMYK, ...) to 8-bit RGB.

    Transparent areas become white, as product photos on a web page would show them.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return stretch_to_8_bit(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "La":  # premultiplied: Pillow converts it to LA only
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        # convert() copies even to its own mode: 158 MB more for a 40 MP photo.
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


_ORIENTATION = 0x0112  # the EXIF tag


def caller_image(img: object, name: str = "image") -> Image.Image:
    """A PIL image handed to the library, made as :func:`load_image` makes a file's: decoded
    (ImageError where its pixels cannot be: a truncated file, or one opened in a ``with``
    block that has closed) and turned upright by its EXIF orientation, which phone cameras
    set and ``Image.open`` leaves to the caller. TypeError for anything but a PIL image."""
    if not isinstance(img, Image.Image):
        raise TypeError(
            f"{name}: expected a PIL image, got {type(img).__name__} (files go to embed_paths)"
        )
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{name}: the image is empty ({img.width}x{img.height})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            if img.getexif().get(_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 (untrusted: corrupt EXIF raises struct.error, ...)
        # Pillow asserts, with no message, on a file closed before it was read.
        reason = str(exc) or "its file was closed before it was read"
        raise ImageError(f"{name}: cannot decode image ({reason})") from exc
    return img


def stretch_to_8_bit(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale (I;16, I, F) to 8-bit L, stretching the image's own range.

    Works a band of rows at a time, so a 36-megapixel 16-bit scan costs its own size plus a
    few megabytes, not a float64 copy of the whole image (288 MB).
    """
    arr = np.asarray(img)
    finite = arr if arr.dtype.kind in "iu" else arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    out = np.zeros(arr.shape, dtype=np.uint8)
    if hi > lo:
        scale = 255.0 / (hi - lo)
        step = max(1, _STRETCH_BAND_PIXELS // max(arr.shape[1], 1))
        for top in range(0, arr.shape[0], step):
            band = arr[top : top + step].astype(np.float64)
            band = np.nan_to_num(band, nan=lo, posinf=hi, neginf=lo)
            np.clip((band - lo) * scale, 0, 255, out=band)
            out[top : top + step] = band.astype(np.uint8)
    return Image.fromarray(out, mode="L")


def load_image(source: str | Path | bytes, min_side: int | None = None) -> Image.Image:
    """Open and fully decode an image file or byte string as RGB.

    With ``min_side``, a large JPEG is decoded at a reduced DCT scale whose shorter side stays
    at least ``min_side`` (much faster; the model resizes to its input size anyway).

    Raises ImageError (with the reason) for empty, corrupt, truncated, unsupported or
    oversized (decompression bomb) input, so batch jobs can skip and count it; and
    :class:`~common.errors.OutOfResourcesError` where the machine ran out of memory or file
    descriptors meanwhile, which says nothing about the image.
    """
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(source, bytes | bytearray):
                if not source:
                    raise ImageError(f"{name}: empty image data")
                fp: BinaryIO = io.BytesIO(source)
            else:
                fp = stack.enter_context(open_image_file(source))
            return _decode(fp, name, min_side)
    except (ImageError, OutOfResourcesError):
        raise
    except Exception as exc:
        if resources_exhausted(exc):  # the machine's failure, not the photo's
            raise OutOfResourcesError(
                f"{name}: the machine ran out of resources while reading it ({message_line(exc)});"
                " raise the memory or open-file limit, use fewer --workers, or leave it out"
            ) from exc
        raise _image_error(exc, name, source) from exc


def _image_error(exc: Exception, name: str, source: str | Path | bytes) -> ImageError:
    """The :class:`ImageError` saying why ``source`` cannot be read, from ``exc``."""
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageError(
            f"{name}: refused as a possible decompression bomb (over the {MAX_PIXELS} pixel limit)"
        )
    if isinstance(exc, FileNotFoundError):
        return ImageError(f"{name}: file not found")
    if isinstance(exc, UnidentifiedImageError):
        if not HEIF_SUPPORTED and _looks_like_heif(source):
            return ImageError(f"{name}: HEIC/HEIF photos need pillow-heif ({install_hint('heif')})")
        return ImageError(
            f"{name}: not a recognised image format (accepted: {', '.join(IMAGE_FORMATS)})"
        )
    # The bytes are untrusted: Pillow's decoders report corrupt input as OSError, SyntaxError,
    # ValueError, EOFError, but also TypeError, OverflowError, IndexError, struct.error,
    # NotImplementedError... Every one of them means "this file cannot be read".
    reason = str(exc) or type(exc).__name__
    return ImageError(f"{name}: cannot decode image ({reason})")


def open_image_file(path: str | Path) -> BinaryIO:
    """``path`` opened for reading, refused (ImageError) unless it is a regular file with
    content. Opened without blocking and checked on the open file: reading a FIFO named in a
    CSV manifest waited for a writer for ever (export and duplicates hung), and a folder or an
    empty file had been "not a recognised image format"."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        if Path(path).is_symlink():  # a plain "not found" would send one to the wrong path
            raise ImageError(
                f"{path}: a link to {os.readlink(path)}, which does not exist"
            ) from exc
        raise
    except OSError as exc:
        if resources_exhausted(exc):  # no descriptor left: the machine's, not the file's
            raise OutOfResourcesError(f"{path}: cannot open it ({exc.strerror or exc})") from exc
        if exc.errno == errno.ENXIO:  # what opening a socket says
            raise ImageError(f"{path}: is not a regular file (a socket)") from exc
        # No permission, a link loop: said as such, not as "cannot decode image".
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{path}: is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: is not a regular file (a FIFO or a device)")
        if info.st_size == 0:
            raise ImageError(f"{path}: empty file")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(
                f"{path}: {info.st_size / 2**30:.1f} GiB, larger than any image within the "
                f"{MAX_PIXELS} pixel limit"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _decode(fp: BinaryIO, name: str, min_side: int | None) -> Image.Image:
    with warnings.catch_warnings():
        # Corrupt files make Pillow warn (bad EXIF, short tags): the outcome is what counts,
        # and a server must not log a warning per hostile upload.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(fp, formats=IMAGE_FORMATS) as img:
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


def decodes(path: str | Path) -> bool:
    """Whether the image file at ``path`` decodes (reading a folder stops at the first)."""
    try:
        load_image(path)
    except ImageError:
        return False
    return True


def _looks_like_heif(source: str | Path | bytes) -> bool:
    """An ISO base media file whose brand is one of HEIF's (heic, heix, mif1, msf1, ...)."""
    try:
        if isinstance(source, bytes | bytearray):
            head = bytes(source[:16])
        else:
            with open(source, "rb") as fh:
                head = fh.read(16)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
