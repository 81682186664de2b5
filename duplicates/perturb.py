"""The edits a re-listed photo goes through, used to build the labelled duplicate benchmark.

Each transform takes an RGB image, a strength (1 light, 2 medium, 3 strong) and a seeded
``random.Random``, and returns a new RGB image. ``jpeg`` returns the decoded low-quality JPEG, so
its artefacts are in the pixels whatever format the copy is saved in later.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, int, random.Random], Image.Image]

STRENGTHS = (1, 2, 3)


def _pick(strength: int, values: tuple) -> object:
    return values[min(max(strength, 1), len(values)) - 1]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, size))


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def jpeg(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Re-encode at low JPEG quality (artefacts, colour subsampling)."""
    quality = int(_pick(strength, (40, 22, 10))) + rng.randrange(-3, 4)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=max(5, quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def thumbnail(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Downscale to thumbnail size (the long side to 160, 96 or 64 px, always smaller)."""
    target = int(_pick(strength, (160, 96, 64))) + rng.randrange(-8, 9)
    long_side = max(img.size)
    scale = min(target / long_side, 0.7)
    size = (max(8, round(img.width * scale)), max(8, round(img.height * scale)))
    return img.resize(size, resample=rng.choice([Image.BILINEAR, Image.BICUBIC, Image.LANCZOS]))


def crop(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Keep a random window of about 85%, 75% or 65% of the area (so ~70% on average)."""
    area = float(_pick(strength, (0.85, 0.75, 0.65))) + rng.uniform(-0.03, 0.03)
    aspect = rng.uniform(0.85, 1.15)
    w = min(img.width, max(4, round(img.width * (area * aspect) ** 0.5)))
    h = min(img.height, max(4, round(img.height * (area / aspect) ** 0.5)))
    x0 = rng.randint(0, img.width - w)
    y0 = rng.randint(0, img.height - h)
    return img.crop((x0, y0, x0 + w, y0 + h))


def border(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Add a frame or letterbox padding in a flat colour, sometimes uneven."""
    frac = float(_pick(strength, (0.05, 0.12, 0.22)))
    colour = rng.choice([(255, 255, 255), (0, 0, 0), (240, 240, 240), _random_colour(rng)])
    if rng.random() < 0.4:
        # Pad to a square canvas, as marketplaces do for mixed aspect ratios.
        side = round(max(img.size) * (1 + frac))
        canvas = Image.new("RGB", (side, side), colour)
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        return canvas
    pads = [max(1, round(frac * s * rng.uniform(0.5, 1.5))) for s in (*img.size, *img.size)]
    framed = ImageOps.expand(img, border=(pads[0], pads[1], pads[2], pads[3]), fill=colour)
    if strength >= 2 and rng.random() < 0.5:
        inner = _random_colour(rng)
        framed = ImageOps.expand(framed, border=max(1, round(0.02 * max(img.size))), fill=inner)
    return framed


_TEXTS = ("SALE", "NEW", "-30%", "Best price!", "Free shipping", "shop.example.com", "HOT DEAL")


def overlay(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Draw price tags, promotional text or a tiled semi-transparent watermark on top."""
    out = img.convert("RGBA")
    w, h = out.size
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    # A price tag in a corner (every strength).
    tag_h = max(6, round(h * rng.uniform(0.07, 0.12) * (1 + 0.3 * (strength - 1))))
    font = _font(round(tag_h * 0.7))
    price = f"${rng.randrange(99, 1500)}"
    tw = draw.textlength(price, font=font) + tag_h * 0.6
    x0 = rng.choice([2, max(2, round(w - tw - 2))])
    y0 = rng.choice([2, max(2, h - tag_h - 2)])
    fill = rng.choice([(220, 30, 30, 255), (255, 200, 0, 255), (20, 20, 20, 230)])
    draw.rounded_rectangle((x0, y0, x0 + tw, y0 + tag_h), radius=tag_h // 4, fill=fill)
    draw.text((x0 + tag_h * 0.3, y0 + tag_h * 0.12), price, font=font, fill=(255, 255, 255, 255))
    if strength >= 2:
        text = rng.choice(_TEXTS)
        size = max(8, round(min(w, h) * rng.uniform(0.08, 0.14)))
        font = _font(size)
        tx = rng.randint(0, max(0, round(w - draw.textlength(text, font=font))))
        ty = rng.randint(0, max(0, h - size))
        colour = (*_random_colour(rng), 255)
        draw.text((tx, ty), text, font=font, fill=colour, stroke_width=1, stroke_fill=(0, 0, 0))
    if strength >= 3:
        mark = Image.new("RGBA", (w * 2, h * 2), (0, 0, 0, 0))
        mdraw = ImageDraw.Draw(mark)
        size = max(8, round(min(w, h) * 0.09))
        font = _font(size)
        alpha = rng.randrange(70, 130)
        for y in range(0, h * 2, size * 3):
            for x in range(0, w * 2, size * 9):
                mdraw.text((x, y), "© shop.example", font=font, fill=(255, 255, 255, alpha))
        mark = mark.rotate(rng.uniform(20, 40), resample=Image.BILINEAR)
        mark = mark.crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
        layer = Image.alpha_composite(layer, mark)
    return Image.alpha_composite(out, layer).convert("RGB")


def mirror(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Mirror left-right (sellers flip photos to dodge duplicate filters)."""
    return ImageOps.mirror(img)


def colour(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Change brightness, contrast, saturation and colour balance."""
    amount = float(_pick(strength, (0.15, 0.3, 0.45)))

    def factor() -> float:
        return 1.0 + rng.choice([-1, 1]) * amount * rng.uniform(0.6, 1.0)

    out = ImageEnhance.Brightness(img).enhance(factor())
    out = ImageEnhance.Contrast(out).enhance(factor())
    out = ImageEnhance.Color(out).enhance(factor())
    arr = np.asarray(out, dtype=np.float32)
    tint = np.array([rng.uniform(1 - amount / 2, 1 + amount / 2) for _ in range(3)], np.float32)
    return Image.fromarray(np.clip(arr * tint, 0, 255).astype(np.uint8))


def _perspective_coeffs(src: list[tuple[float, float]], dst: list[tuple[float, float]]):
    """Coefficients for PIL's PERSPECTIVE transform mapping output ``dst`` onto input ``src``."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = np.array(rows, dtype=np.float64)
    b = np.array([c for pt in src for c in pt], dtype=np.float64)
    return np.linalg.solve(a, b).tolist()


def screen_photo(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Simulate photographing a screen: bezel, perspective, blur, noise, colour cast, moire."""
    tilt = float(_pick(strength, (0.03, 0.06, 0.1)))
    w, h = img.size
    pad = max(4, round(0.08 * max(w, h)))
    bezel = rng.choice([(10, 10, 10), (30, 30, 35), (200, 200, 205)])
    canvas = ImageOps.expand(img, border=pad, fill=bezel)
    cw, ch = canvas.size
    corners = [(0, 0), (cw, 0), (cw, ch), (0, ch)]
    moved = [
        (x + rng.uniform(-tilt, tilt) * cw, y + rng.uniform(-tilt, tilt) * ch) for x, y in corners
    ]
    coeffs = _perspective_coeffs(corners, moved)
    warped = canvas.transform(
        canvas.size, Image.PERSPECTIVE, coeffs, Image.BICUBIC, fillcolor=(60, 60, 60)
    )
    warped = warped.filter(ImageFilter.GaussianBlur(float(_pick(strength, (0.6, 1.0, 1.6)))))
    arr = np.asarray(warped, dtype=np.float32)
    nprng = np.random.default_rng(rng.randrange(2**32))
    yy, xx = np.mgrid[0:ch, 0:cw]
    period = rng.uniform(3.0, 6.0)
    moire = 4.0 * strength * np.sin((xx * 0.9 + yy * 0.4) * 2 * np.pi / period)
    cast = np.array([rng.uniform(0.9, 1.1) for _ in range(3)], np.float32)
    sigma = float(_pick(strength, (3.0, 6.0, 10.0)))
    arr = arr * cast + moire[..., None] + nprng.normal(0, sigma, arr.shape)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return jpeg(out, 1, rng)


TRANSFORMS: dict[str, Transform] = {
    "jpeg": jpeg,
    "thumbnail": thumbnail,
    "crop": crop,
    "border": border,
    "overlay": overlay,
    "mirror": mirror,
    "colour": colour,
    "screen": screen_photo,
}


def combined(img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Two or three different edits in a row, e.g. crop + price tag + JPEG."""
    names = rng.sample(sorted(TRANSFORMS), k=2 if strength < 3 else 3)
    for name in names:
        img = TRANSFORMS[name](img, rng.choice(STRENGTHS[: max(1, strength)]), rng)
    return img


def apply(name: str, img: Image.Image, strength: int, rng: random.Random) -> Image.Image:
    """Apply transform ``name`` (one of ``TRANSFORMS`` or ``"combined"``) to an RGB image."""
    fn = combined if name == "combined" else TRANSFORMS[name]
    return fn(img.convert("RGB"), strength, rng)
