"""Synthetic product renders: a tablet front-on, the same tablet turned, and copies of a photo."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from duplicates.perturb import _perspective_coeffs


def wallpaper(w: int, h: int, seed: int = 3) -> Image.Image:
    """Smooth colour gradients with discs: texture the local features can match."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    arr = np.stack(
        [
            120 + 120 * np.sin(6 * xx + 2 * yy),
            100 + 100 * np.cos(5 * yy - 3 * xx),
            180 + 60 * np.sin(9 * xx * yy),
        ],
        axis=2,
    )
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(14):
        x, y, r = rng.integers(0, w), rng.integers(0, h), rng.integers(6, w // 6)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return img


def device(screen: tuple[int, int] = (200, 150), bezel: int = 12) -> Image.Image:
    """A tablet seen front-on: dark rounded body, wallpaper on the screen, white around."""
    w, h = screen[0] + 2 * bezel, screen[1] + 2 * bezel
    body = Image.new("RGB", (w, h), (255, 255, 255))
    ImageDraw.Draw(body).rounded_rectangle(
        (0, 0, w - 1, h - 1), radius=2 * bezel, fill=(35, 35, 40)
    )
    body.paste(wallpaper(*screen), (bezel, bezel))
    return body


def _on_white(content: Image.Image, size: tuple[int, int], mask=None) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste(content, ((size[0] - content.width) // 2, (size[1] - content.height) // 2), mask)
    return img


def front(size: tuple[int, int] = (320, 260)) -> Image.Image:
    return _on_white(device(), size)


def turned(
    size: tuple[int, int] = (320, 260), squeeze: float = 0.7, perspective: float = 0.12
) -> Image.Image:
    """The same tablet turned about its vertical axis: foreshortened, the far edge shorter,
    its side visible. Another render of one device, not a copy of the front-on photo."""
    dev = device()
    w, h = dev.size
    nw, side = int(w * squeeze), 14
    dst = [(0, 0), (nw, h * perspective), (nw, h * (1 - perspective)), (0, h)]
    coeffs = _perspective_coeffs([(0, 0), (w, 0), (w, h), (0, h)], dst)
    canvas = Image.new("RGB", (nw + side, h), (255, 255, 255))
    edge = [(side * 0.2, 2), (side + 2, 0), (side + 2, h), (side * 0.2, h - 2)]
    ImageDraw.Draw(canvas).polygon(edge, fill=(170, 172, 178))
    warp = dict(fillcolor=0)
    mask = Image.new("L", dev.size, 255).transform((nw, h), Image.PERSPECTIVE, coeffs, **warp)
    body = dev.transform((nw, h), Image.PERSPECTIVE, coeffs, Image.BICUBIC)
    canvas.paste(body, (side, 0), mask)
    return _on_white(canvas, size)


def reencoded(img: Image.Image, quality: int = 25) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def cropped(img: Image.Image) -> Image.Image:
    w, h = img.size
    return img.crop((int(w * 0.08), int(h * 0.1), int(w * 0.92), int(h * 0.95)))


def watermarked(img: Image.Image) -> Image.Image:
    """Tiled semi-transparent text and a price tag."""
    w, h = img.size
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=22)
    for y in range(0, h, 50):
        draw.text((10 + y % 100, y), "(c) shop.example", font=font, fill=(255, 255, 255, 110))
    draw.rounded_rectangle((w - 90, h - 34, w - 4, h - 4), radius=6, fill=(220, 30, 30, 255))
    draw.text((w - 84, h - 32), "$499", font=font, fill=(255, 255, 255, 255))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def resized(img: Image.Image) -> Image.Image:
    return img.resize((img.width * 3 // 5, img.height * 3 // 5), Image.LANCZOS)
