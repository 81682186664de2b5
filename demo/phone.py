"""Drawing a made-up phone flat, front (screen) or back (camera module), on a transparent layer.

Sizes come from the model's spec as fractions of the body width, so one spec draws at any
resolution.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from demo.specs import PhoneSpec


def _shade(rgb: Sequence[int], factor: float) -> tuple[int, int, int]:
    """Scale a colour towards black (<1) or white (>1)."""
    if factor <= 1:
        r, g, b = (int(c * factor) for c in rgb)
    else:
        r, g, b = (int(c + (255 - c) * (factor - 1)) for c in rgb)
    return r, g, b


def _wallpaper(spec: PhoneSpec, w: int, h: int, rng: random.Random) -> Image.Image:
    """Screen content: the model's wallpaper style, with a per-image phase."""
    a = np.array(spec.wallpaper_colours[0], dtype=np.float32)
    b = np.array(spec.wallpaper_colours[1], dtype=np.float32)
    yy, xx = unit_grid(h, w)
    phase = rng.uniform(0, 2 * math.pi)
    if spec.wallpaper == "waves":
        t = 0.5 + 0.5 * np.sin(yy * 9 + np.sin(xx * 5 + phase) * 1.5 + phase)
    elif spec.wallpaper == "stripes":
        t = (np.floor((xx + yy) * 7 + phase) % 2).astype(np.float32) * 0.8 + 0.1
    elif spec.wallpaper == "gradient":
        t = np.clip(yy * 0.8 + xx * 0.3 * math.cos(phase), 0, 1)
    else:  # bokeh and mountains start from a soft vertical gradient
        t = yy
    arr = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img, "RGBA")
    if spec.wallpaper == "bokeh":
        for _ in range(9):
            r = rng.uniform(0.08, 0.22) * w
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            draw.ellipse(
                (cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255, rng.randint(40, 90))
            )
    elif spec.wallpaper == "mountains":
        for layer, shade in ((0.55, 0.6), (0.7, 0.35)):
            pts = [(0.0, float(h))]
            for k in range(6):
                pts.append((k * w / 5, h * (layer + rng.uniform(-0.12, 0.08))))
            pts.append((float(w), float(h)))
            draw.polygon(pts, fill=(*_shade(spec.wallpaper_colours[1], shade), 255))
    return img


def _rounded_mask(size: tuple[int, int], radius: float) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rounded_rectangle(
        (0, 0, size[0] - 1, size[1] - 1), radius=max(1, int(radius)), fill=255
    )
    return mask


def _draw_front(
    spec: PhoneSpec, colour: tuple[int, int, int], w: int, h: int, rng: random.Random
) -> Image.Image:
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    r = spec.corner * w
    draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=int(r), fill=(*_shade(colour, 0.85), 255))
    rim = max(1, int(0.012 * w))
    draw.rounded_rectangle(
        (rim, rim, w - 1 - rim, h - 1 - rim), radius=int(max(r - rim, 1)), fill=(10, 10, 12, 255)
    )
    bez = max(rim + 1, int(spec.bezel * w))
    top = bez + (int(0.06 * w) if spec.cutout == "none" else 0)
    bottom = bez + (int(0.04 * w) if spec.cutout == "none" else 0)
    sw, sh = w - 2 * bez, h - top - bottom
    screen = _wallpaper(spec, sw, sh, rng)
    sdraw = ImageDraw.Draw(screen, "RGBA")
    # Status bar and a grid of app icons so the screen reads as a phone UI.
    bar = max(1, int(0.035 * sw))
    sdraw.rectangle((int(0.08 * sw), bar, int(0.2 * sw), 2 * bar), fill=(255, 255, 255, 200))
    sdraw.rectangle((int(0.78 * sw), bar, int(0.92 * sw), 2 * bar), fill=(255, 255, 255, 200))
    if rng.random() < 0.7:
        icon = sw / 6.5
        rows = 4 if spec.aspect < 2.1 else 5
        for row in range(rows):
            for col in range(4):
                x0 = icon * 0.6 + col * icon * 1.45
                y0 = sh * 0.18 + row * icon * 1.5
                sdraw.rounded_rectangle(
                    (x0, y0, x0 + icon, y0 + icon),
                    radius=int(icon * 0.25),
                    fill=(255, 255, 255, 110),
                )
    inner_r = max(r - bez, 1)
    layer.paste(
        screen, (bez, top), _rounded_mask((sw, sh), inner_r if spec.cutout != "none" else 2)
    )
    cut = (0, 0, 0, 255)
    if spec.cutout == "notch":
        nw, nh = 0.4 * w, 0.055 * w
        draw.rounded_rectangle(
            ((w - nw) / 2, bez - 2, (w + nw) / 2, bez + nh), radius=int(nh * 0.6), fill=cut
        )
    elif spec.cutout in ("punch-hole", "punch-hole-left"):
        pr = 0.03 * w
        cx = w / 2 if spec.cutout == "punch-hole" else bez + 0.1 * w
        cy = bez + 0.06 * w
        draw.ellipse((cx - pr, cy - pr, cx + pr, cy + pr), fill=cut)
    else:
        draw.rounded_rectangle(
            (w * 0.4, bez + 0.02 * w, w * 0.6, bez + 0.035 * w), radius=2, fill=(40, 40, 44, 255)
        )
    return layer


def _lens_centres(spec: PhoneSpec, box: tuple[float, float, float, float]) -> list[tuple]:
    """Lens centres inside the camera module box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bw, bh = x1 - x0, y1 - y0
    n = spec.lens_count
    layout = spec.lens_layout
    if layout == "centre":
        return [(cx, cy)]
    if layout == "row":
        return [(x0 + bw * (k + 0.5) / n, cy) for k in range(n)]
    if layout == "column":
        return [(cx, y0 + bh * (k + 0.5) / n) for k in range(n)]
    if layout == "triangle":
        return [
            (x0 + bw * 0.3, y0 + bh * 0.3),
            (x0 + bw * 0.3, y0 + bh * 0.72),
            (x0 + bw * 0.72, y0 + bh * 0.5),
        ]
    return [(x0 + bw * fx, y0 + bh * fy) for fy in (0.29, 0.71) for fx in (0.29, 0.71)][:n]


def _draw_back(
    spec: PhoneSpec, colour: tuple[int, int, int], w: int, h: int, rng: random.Random
) -> Image.Image:
    r = spec.corner * w
    yy, xx = unit_grid(h, w)
    base = np.array(colour, dtype=np.float32)
    # Soft lighting across the body; gloss adds a diagonal highlight band.
    light = 1.0 + 0.12 * (0.5 - yy) + 0.05 * (0.5 - xx)
    if spec.finish == "gloss":
        d = (xx + yy * 0.5) - rng.uniform(0.4, 0.9)
        light = light + 0.25 * np.exp(-(d**2) / 0.01)
    arr = base[None, None, :] * light[..., None]
    if spec.finish == "gloss":
        arr = arr + 40 * np.clip(light - 1.1, 0, None)[..., None]
    body = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(body, "RGBA")
    if spec.finish == "two-tone":
        draw.rectangle((0, 0, w, int(h * 0.3)), fill=(*_shade(colour, 0.72), 255))
    # Camera module.
    m = spec.module_size * w
    margin = 0.08 * w
    if spec.camera_shape == "strip":
        mw, mh = m, m * 0.9 * spec.lens_count + 0.15 * w
    elif spec.camera_shape == "pill":
        mw, mh = m * (0.55 + 0.25 * spec.lens_count), m * 0.48
    else:
        mw = mh = m
    mx0 = margin if spec.camera_position == "top-left" else (w - mw) / 2
    my0 = margin
    box = (mx0, my0, mx0 + mw, my0 + mh)
    module_col = (*_shade(colour, 0.7 if sum(colour) > 200 else 1.35), 255)
    edge = (*_shade(colour, 0.5), 255)
    if spec.camera_shape == "circle":
        draw.ellipse(box, fill=module_col, outline=edge, width=max(1, int(0.01 * w)))
    else:
        rad = {"square": 0.22 * mw, "pill": mh / 2, "strip": mw / 2}[spec.camera_shape]
        draw.rounded_rectangle(
            box, radius=int(rad), fill=module_col, outline=edge, width=max(1, int(0.01 * w))
        )
    centres = _lens_centres(spec, box)
    if spec.camera_shape in ("pill", "strip"):
        lr = min(mw, mh) * 0.36
    else:
        lr = mw * (0.33 if spec.lens_count == 1 else 0.17 if spec.lens_count >= 3 else 0.2)
    for lx, ly in centres:
        draw.ellipse((lx - lr, ly - lr, lx + lr, ly + lr), fill=(20, 20, 24, 255))
        draw.ellipse(
            (lx - lr, ly - lr, lx + lr, ly + lr),
            outline=(150, 152, 160, 255),
            width=max(1, int(lr * 0.15)),
        )
        gr = lr * 0.55
        draw.ellipse((lx - gr, ly - gr, lx + gr, ly + gr), fill=(30, 40, 70, 255))
        hr = lr * 0.18
        draw.ellipse(
            (lx - gr * 0.4 - hr, ly - gr * 0.4 - hr, lx - gr * 0.4 + hr, ly - gr * 0.4 + hr),
            fill=(220, 230, 255, 200),
        )
    if spec.flash:
        fr = 0.035 * w
        if spec.camera_shape == "strip":
            fx, fy = box[2] + fr * 2, box[1] + fr * 2
        elif spec.camera_shape == "pill":
            fx, fy = box[2] + fr * 2.2, (box[1] + box[3]) / 2
        else:
            fx, fy = box[2] + fr * 2, box[1] + fr * 1.5
        draw.ellipse((fx - fr, fy - fr, fx + fr, fy + fr), fill=(250, 240, 200, 255))
        draw.ellipse((fx - fr, fy - fr, fx + fr, fy + fr), outline=(150, 140, 110, 255), width=1)
    # Brand mark near the middle of the back.
    lc = (*_shade(colour, 0.6 if sum(colour) > 300 else 1.5), 255)
    lx, ly, ls = w / 2, h * 0.55, 0.08 * w
    if spec.logo == "circle":
        draw.ellipse((lx - ls, ly - ls, lx + ls, ly + ls), fill=lc)
    elif spec.logo == "ring":
        draw.ellipse((lx - ls, ly - ls, lx + ls, ly + ls), outline=lc, width=max(1, int(ls * 0.3)))
    elif spec.logo == "diamond":
        draw.polygon([(lx, ly - ls), (lx + ls, ly), (lx, ly + ls), (lx - ls, ly)], fill=lc)
    elif spec.logo == "triangle":
        draw.polygon([(lx, ly - ls), (lx + ls, ly + ls), (lx - ls, ly + ls)], fill=lc)
    elif spec.logo == "bar":
        draw.rectangle((lx - 2 * ls, ly - ls * 0.3, lx + 2 * ls, ly + ls * 0.3), fill=lc)
    else:
        draw.rectangle((lx - ls, ly - ls, lx + ls, ly + ls), fill=lc)
    layer = body.convert("RGBA")
    layer.putalpha(_rounded_mask((w, h), r))
    # A darker rim reads as the frame seen at an angle.
    ImageDraw.Draw(layer).rounded_rectangle(
        (0, 0, w - 1, h - 1),
        radius=int(r),
        outline=(*_shade(colour, 0.6), 255),
        width=max(1, w // 90),
    )
    return layer


@lru_cache(maxsize=8)
def unit_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates scaled to [0, 1), cached because every image of a size reuses them."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h, 1)
    xx /= max(w, 1)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def draw_phone(
    spec: PhoneSpec, view: str, colour: tuple[int, int, int], w: int, h: int, rng: random.Random
) -> Image.Image:
    """The flat phone seen from the ``front`` (screen) or ``back`` (camera module), w x h RGBA."""
    draw = _draw_front if view == "front" else _draw_back
    return draw(spec, colour, w, h, rng)
