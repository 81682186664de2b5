"""One photo-like shot of a made-up phone: the flat phone (``demo.phone``) under a random
viewpoint, background, framing and lighting, drawn with Pillow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from demo.phone import draw_phone, unit_grid
from demo.specs import PhoneSpec


def _perspective_coeffs(
    dst: Sequence[tuple[float, float]], src: Sequence[tuple[float, float]]
) -> tuple[float, ...]:
    """Coefficients for Image.transform(PERSPECTIVE) mapping output points `dst` to input `src`."""
    rows = []
    rhs = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    sol = np.linalg.solve(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64))
    return tuple(float(c) for c in sol)


def _apply_viewpoint(layer: Image.Image, rng: random.Random) -> Image.Image:
    """Tilt (yaw/pitch, small corner jitter) and rotate the flat phone in one perspective warp.

    Rotation is folded into the destination quad so the layer is resampled once, not twice.
    """
    w, h = layer.size
    yaw = rng.uniform(-0.22, 0.22)  # >0: right edge further away (shorter)
    pitch = rng.uniform(-0.12, 0.12)  # >0: top edge further away (narrower)
    src = [(0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))]
    dst = [
        (w * max(pitch, 0) * 0.5, h * max(-yaw, 0) * 0.5),
        (w * (1 - max(pitch, 0) * 0.5), h * max(yaw, 0) * 0.5),
        (w * (1 - max(-pitch, 0) * 0.5), h * (1 - max(yaw, 0) * 0.5)),
        (w * max(-pitch, 0) * 0.5, h * (1 - max(-yaw, 0) * 0.5)),
    ]
    # Foreshortening: the far side also gets narrower.
    squeeze = 1 - abs(yaw) * 0.6
    dst = [(x * squeeze if yaw > 0 else w - (w - x) * squeeze, y) for x, y in dst]
    jit = 0.025 * w
    dst = [(x + rng.uniform(-jit, jit), y + rng.uniform(-jit, jit)) for x, y in dst]
    angle = math.radians(rng.uniform(-25, 25))
    ca, sa = math.cos(angle), math.sin(angle)
    dst = [(x * ca - y * sa, x * sa + y * ca) for x, y in dst]
    xs, ys = [p[0] for p in dst], [p[1] for p in dst]
    ox, oy = min(xs), min(ys)
    dst = [(x - ox, y - oy) for x, y in dst]
    size = (max(1, math.ceil(max(xs) - ox)), max(1, math.ceil(max(ys) - oy)))
    coeffs = _perspective_coeffs(dst, src)
    # Premultiplied alpha avoids dark fringes when resampling the transparent border; bilinear is
    # enough because the whole image is downsampled 2x afterwards.
    out = layer.convert("RGBa").transform(size, Image.PERSPECTIVE, coeffs, Image.BILINEAR)
    return out.convert("RGBA")


def _background(size: int, rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    """Plain, gradient, noise or table-like (wood, marble, tiles) backdrop."""
    kind = rng.choice(("plain", "gradient", "noise", "wood", "marble", "tiles"))
    yy, xx = unit_grid(size, size)
    c1 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    c2 = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)

    def lowfreq(cells: int) -> np.ndarray:
        small = nprng.random((cells, cells), dtype=np.float32)
        img = Image.fromarray((small * 255).astype(np.uint8), "L").resize(
            (size, size), Image.BICUBIC
        )
        return np.asarray(img, dtype=np.float32) / 255

    if kind == "plain":
        arr = np.broadcast_to(c1, (size, size, 3)).copy()
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        t = np.clip(0.5 + (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang), 0, 1)
        arr = c1 * (1 - t[..., None]) + c2 * t[..., None]
    elif kind == "noise":
        t = lowfreq(rng.randint(3, 8))
        arr = c1 * (1 - t[..., None]) + c2 * t[..., None]
        arr += nprng.normal(0, 6, (size, size, 1)).astype(np.float32)
    elif kind == "wood":
        light = np.array(
            [rng.randint(170, 220), rng.randint(120, 160), rng.randint(70, 100)], np.float32
        )
        dark = light * rng.uniform(0.5, 0.7)
        ang = rng.uniform(-0.4, 0.4) + (math.pi / 2 if rng.random() < 0.5 else 0)
        u = xx * math.cos(ang) + yy * math.sin(ang)
        warp = lowfreq(4) * 1.5
        t = 0.5 + 0.5 * np.sin((u + warp * 0.15) * rng.uniform(30, 60))
        t = t**2
        arr = light * (1 - t[..., None]) + dark * t[..., None]
        arr += nprng.normal(0, 4, (size, size, 1)).astype(np.float32)
    elif kind == "marble":
        base = np.array([rng.randint(215, 245)] * 3, np.float32)
        vein = np.abs(np.sin((xx + yy + lowfreq(5) * 1.2) * rng.uniform(6, 12)))
        t = np.clip(1 - vein, 0, 1) ** 8
        arr = base * (1 - 0.45 * t[..., None])
    else:  # tiles
        n = rng.randint(3, 7)
        grout = ((xx * n) % 1 < 0.04) | ((yy * n) % 1 < 0.04)
        arr = np.broadcast_to(c1, (size, size, 3)).copy()
        arr[grout] = c1 * 0.55
        arr += nprng.normal(0, 5, (size, size, 1)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def render_phone_image(
    spec: PhoneSpec,
    view: str,
    colour: tuple[int, int, int],
    image_size: int,
    rng: random.Random,
    nprng: np.random.Generator,
) -> Image.Image:
    """One photo-like RGB shot of a phone model, `image_size` square.

    Drawn at twice the size and downsampled with LANCZOS, which anti-aliases the hard edges that
    ImageDraw produces.
    """
    if view not in ("front", "back"):
        raise ValueError(f"view must be 'front' or 'back', got {view!r}")
    canvas = 2 * image_size
    # Framing: usually the whole phone, sometimes close-up and partly out of frame.
    close_up = rng.random() < 0.2
    height = canvas * (rng.uniform(0.95, 1.35) if close_up else rng.uniform(0.55, 0.9))
    ph = max(8, int(height))
    pw = max(4, int(ph / spec.aspect))
    layer = draw_phone(spec, view, colour, pw, ph, rng)
    layer = _apply_viewpoint(layer, rng)

    # Phone and shadow go on a transparent 2x layer that is downsampled on its own; the smooth
    # background needs no supersampling, so it is synthesised directly at the output size.
    spread = 0.3 if close_up else 0.18
    cx = canvas / 2 + rng.uniform(-spread, spread) * canvas
    cy = canvas / 2 + rng.uniform(-spread, spread) * canvas
    x0, y0 = int(cx - layer.width / 2), int(cy - layer.height / 2)
    fg = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    # Soft drop shadow under the phone.
    shadow = layer.getchannel("A").filter(ImageFilter.BoxBlur(max(1, canvas // 60)))
    shadow = shadow.point(lambda a: int(a * 0.45))
    off = max(1, canvas // 50)
    fg.paste((0, 0, 0, 255), (x0 + off, y0 + off), shadow)
    fg.alpha_composite(layer, (max(x0, 0), max(y0, 0)), (max(-x0, 0), max(-y0, 0)))
    fg = fg.convert("RGBa").resize((image_size, image_size), Image.LANCZOS).convert("RGBA")
    bg = _background(image_size, rng, nprng).convert("RGBA")
    img = Image.alpha_composite(bg, fg).convert("RGB")

    # Lighting: exposure, contrast about the mean grey, and a slight colour cast.
    brightness = rng.uniform(0.75, 1.2)
    contrast = rng.uniform(0.8, 1.2)
    cast = np.array([rng.uniform(0.93, 1.07) for _ in range(3)], dtype=np.float32)
    arr = np.asarray(img, dtype=np.float32) * brightness
    mean = float(arr.mean())
    arr = (mean + (arr - mean) * contrast) * cast
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
