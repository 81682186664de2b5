"""Synthetic phone catalog rendered with Pillow.

The real benchmark data (product photos of phones) is large and not always at hand, so demos,
tests and smoke runs train and index this instead: every class is a made-up phone model with its
own body shape, camera module, front cut-out and colours, and every image is one photo-like shot
of it (front or back) under a random viewpoint, background, lighting and framing.

Output is a folder per class (folder name = label slug) of JPEGs plus ``catalog.csv`` with the
columns the index's catalog store reads: ``id,image,label,title,brand,price``. The same seed gives
byte-identical files, so a demo catalog can be regenerated instead of shipped.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from common.fsutil import atomic_write, is_temporary

logger = logging.getLogger(__name__)

__all__ = [
    "BRANDS",
    "CATALOG_COLUMNS",
    "CLASS_NAMES",
    "PhoneSpec",
    "generate_catalog",
    "make_specs",
    "render_phone_image",
    "slugify",
]

BRANDS: tuple[str, ...] = ("Orion", "Vertex", "Lumo", "Kestrel", "Zenith", "Nimbus")
_SERIES: tuple[str, ...] = (
    "Nova",
    "Astra",
    "Edge",
    "Flux",
    "Prime",
    "Spark",
    "Halo",
    "Vibe",
    "Zen",
    "Pulse",
    "Aero",
    "Terra",
)
_SUFFIXES: tuple[str, ...] = ("X2", "S", "Pro", "Lite", "Max", "Neo", "Ultra", "Mini")

#: Every model name a catalog can use ("Nova X2", ...); ``classes`` may not exceed its length.
CLASS_NAMES: tuple[str, ...] = tuple(f"{s} {x}" for s in _SERIES for x in _SUFFIXES)

CATALOG_COLUMNS: tuple[str, ...] = ("id", "image", "label", "title", "brand", "price")

# Named body colours; classes share them, so colour alone never identifies a model.
_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (28, 28, 32)),
    ("white", (236, 236, 232)),
    ("silver", (196, 199, 204)),
    ("graphite", (78, 80, 86)),
    ("blue", (52, 102, 186)),
    ("navy", (30, 44, 88)),
    ("green", (58, 120, 84)),
    ("mint", (168, 222, 196)),
    ("red", (178, 40, 46)),
    ("purple", (108, 70, 156)),
    ("lavender", (190, 176, 226)),
    ("gold", (214, 182, 120)),
    ("pink", (236, 176, 190)),
    ("orange", (232, 122, 50)),
    ("teal", (36, 136, 140)),
    ("yellow", (240, 210, 80)),
)

_CAMERA_SHAPES = ("square", "circle", "pill", "strip")
_CAMERA_POSITIONS = ("top-left", "top-center")
_CUTOUTS = ("notch", "punch-hole", "punch-hole-left", "none")
_WALLPAPERS = ("waves", "stripes", "bokeh", "gradient", "mountains")
_FINISHES = ("matte", "gloss", "two-tone")
_ASPECTS = (1.9, 2.05, 2.2)
_CORNERS = (0.07, 0.13, 0.19)
_LOGOS = ("circle", "diamond", "triangle", "bar", "ring", "square")

# Attributes compared when checking that two classes look different.
_DISTINCT_FIELDS = (
    "aspect",
    "corner",
    "camera_shape",
    "lens_count",
    "camera_position",
    "flash",
    "cutout",
    "wallpaper",
    "finish",
)


@dataclass(frozen=True)
class PhoneSpec:
    """What makes one made-up phone model recognisable, fixed per class.

    Sizes are fractions of the body width so one spec renders at any resolution.
    """

    name: str  # model name, e.g. "Nova X2"
    brand: str
    slug: str  # label and folder name, e.g. "nova-x2"
    price: str  # decimal string, e.g. "649.00"
    aspect: float  # body height / width
    corner: float  # corner radius / width
    camera_shape: str  # one of square, circle, pill, strip
    lens_count: int  # 1-4
    lens_layout: str  # how lenses sit in the module: centre, row, column, triangle, grid
    camera_position: str  # top-left or top-center
    module_size: float  # camera module's main dimension / width
    flash: bool
    cutout: str  # notch, punch-hole, punch-hole-left or none
    bezel: float  # screen bezel / width
    wallpaper: str  # front screen pattern
    wallpaper_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    finish: str  # matte, gloss or two-tone back
    logo: str  # brand mark drawn on the back
    colours: tuple[tuple[str, tuple[int, int, int]], ...]  # body colours sold

    def differences(self, other: PhoneSpec) -> int:
        """Count the visible attributes in which two models differ (used to keep classes apart)."""
        return sum(getattr(self, f) != getattr(other, f) for f in _DISTINCT_FIELDS)


def slugify(text: str) -> str:
    """Lower-case, hyphen-separated form of a name, usable as a label and a folder name."""
    out = []
    for ch in text.lower():
        out.append(ch if ch.isalnum() else "-")
    return "-".join(part for part in "".join(out).split("-") if part)


def _lens_layouts(shape: str, count: int) -> tuple[str, ...]:
    """Lens arrangements that fit a module shape and lens count."""
    if count == 1:
        return ("centre",)
    if shape == "pill":
        return ("row",)
    if shape == "strip":
        return ("column",)
    if count == 2:
        return ("column", "row")
    if count == 3:
        return ("triangle", "column") if shape == "square" else ("triangle",)
    return ("grid",)


def _balanced(rng: random.Random, values: Sequence, n: int) -> list:
    """`n` draws that use every value equally often (shuffled per cycle), so classes spread out."""
    out: list = []
    while len(out) < n:
        cycle = list(values)
        rng.shuffle(cycle)
        out.extend(cycle)
    return out[:n]


def _random_spec(
    rng: random.Random, name: str, shape: str, count: int, cutout: str, wallpaper: str
) -> PhoneSpec:
    if shape == "strip":
        count = max(count, 2)
    position = "top-left" if shape == "strip" else rng.choice(_CAMERA_POSITIONS)
    module = {"square": 0.40, "circle": 0.42, "pill": 0.50, "strip": 0.20}[shape]
    if shape in ("square", "circle") and count == 1:
        module = 0.28
    n_colours = rng.randint(2, 3)
    colours = tuple(rng.sample(_COLOURS, n_colours))
    hue_a = (rng.randint(20, 255), rng.randint(20, 255), rng.randint(20, 255))
    hue_b = (rng.randint(0, 200), rng.randint(0, 200), rng.randint(0, 200))
    return PhoneSpec(
        name=name,
        brand=rng.choice(BRANDS),
        slug=slugify(name),
        price=f"{rng.randrange(149, 1399, 10) - 0.01:.2f}",
        aspect=rng.choice(_ASPECTS),
        corner=rng.choice(_CORNERS),
        camera_shape=shape,
        lens_count=count,
        lens_layout=rng.choice(_lens_layouts(shape, count)),
        camera_position=position,
        module_size=round(module * rng.uniform(0.9, 1.1), 3),
        flash=rng.random() < 0.7,
        cutout=cutout,
        bezel=round(rng.uniform(0.025, 0.06), 3),
        wallpaper=wallpaper,
        wallpaper_colours=(hue_a, hue_b),
        finish=rng.choice(_FINISHES),
        logo=rng.choice(_LOGOS),
        colours=colours,
    )


def make_specs(classes: int, seed: int = 0) -> list[PhoneSpec]:
    """Deterministic, mutually distinct phone models for a catalog.

    Names are drawn so that series differ first (Nova, Astra, ...); camera shape, lens count,
    cut-out and wallpaper are spread evenly over the classes, and the remaining attributes are
    resampled until each spec differs from every earlier one in at least three visible attributes.
    That keeps the classification task learnable while colours stay shared between classes.
    """
    if not 2 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be between 2 and {len(CLASS_NAMES)}, got {classes}")
    rng = random.Random(f"phonesim-demo-specs:{seed}")
    series = list(_SERIES)
    rng.shuffle(series)
    suffixes = {s: rng.sample(_SUFFIXES, len(_SUFFIXES)) for s in series}
    shapes = _balanced(rng, _CAMERA_SHAPES, classes)
    counts = _balanced(rng, (1, 2, 3, 4), classes)
    cutouts = _balanced(rng, _CUTOUTS, classes)
    wallpapers = _balanced(rng, _WALLPAPERS, classes)
    specs: list[PhoneSpec] = []
    for i in range(classes):
        s = series[i % len(series)]
        name = f"{s} {suffixes[s][i // len(series)]}"
        best: PhoneSpec | None = None
        best_score = -1
        for _ in range(400):
            candidate = _random_spec(rng, name, shapes[i], counts[i], cutouts[i], wallpapers[i])
            score = min((candidate.differences(o) for o in specs), default=len(_DISTINCT_FIELDS))
            if score > best_score:
                best, best_score = candidate, score
            if score >= 3:
                break
        assert best is not None
        specs.append(best)
    return specs


# --------------------------------------------------------------------------------------------
# Drawing the flat phone (front or back) on a transparent layer.


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
    yy, xx = _unit_grid(h, w)
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
    yy, xx = _unit_grid(h, w)
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


# --------------------------------------------------------------------------------------------
# Photo-like variation: viewpoint, background, framing, lighting.


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


@lru_cache(maxsize=8)
def _unit_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates scaled to [0, 1), cached because every image of a size reuses them."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h, 1)
    xx /= max(w, 1)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _background(size: int, rng: random.Random, nprng: np.random.Generator) -> Image.Image:
    """Plain, gradient, noise or table-like (wood, marble, tiles) backdrop."""
    kind = rng.choice(("plain", "gradient", "noise", "wood", "marble", "tiles"))
    yy, xx = _unit_grid(size, size)
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
    draw = _draw_front if view == "front" else _draw_back
    layer = draw(spec, colour, pw, ph, rng)
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


# --------------------------------------------------------------------------------------------
# Writing the catalog.


def _prepare_out(out: Path) -> None:
    """Create `out`, or clear a previous demo catalog there; refuse to clobber anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    if not out.exists():
        out.mkdir(parents=True)
        return
    entries = list(out.iterdir())
    if not entries:
        return
    if not (out / "catalog.csv").is_file():
        raise ValueError(
            f"output folder {out} is not empty and holds no catalog.csv; "
            "pick an empty or new folder, or one holding a previous demo catalog"
        )
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            if any(not (p.is_file() and p.suffix == ".jpg") for p in entry.iterdir()):
                raise ValueError(
                    f"{entry} holds files other than .jpg images; not overwriting {out}"
                )
        elif entry.name != "catalog.csv" and not is_temporary(entry.name, "catalog.csv"):
            raise ValueError(f"{entry} is not part of a demo catalog; not overwriting {out}")
    logger.info("overwriting previous demo catalog in %s", out)
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def generate_catalog(
    out: str | Path,
    classes: int = 8,
    per_class: int = 40,
    seed: int = 0,
    image_size: int = 160,
    progress: bool = True,
) -> Path:
    """Render a synthetic phone catalog into `out` and return the path of its catalog.csv.

    The defaults (8 models x 40 shots at 160 px) render in seconds and are enough for a small
    classifier to learn on CPU. Images are seeded per (seed, class, index), so output is
    byte-identical for the same arguments. `out` must be new, empty, or a previous demo catalog
    (which is replaced).
    """
    for arg, value in (("classes", classes), ("per_class", per_class), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{arg} must be an int, got {value!r}")
    if not 2 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be between 2 and {len(CLASS_NAMES)}, got {classes}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    out = Path(out)
    _prepare_out(out)
    specs = make_specs(classes, seed)

    rows: list[dict[str, str]] = []
    bar = tqdm(total=classes * per_class, desc="demo catalog", unit="img", disable=not progress)
    with bar:
        for ci, spec in enumerate(specs):
            (out / spec.slug).mkdir()
            for i in range(per_class):
                rng = random.Random(f"phonesim-demo-image:{seed}:{ci}:{i}")
                nprng = np.random.default_rng(rng.getrandbits(64))
                view = "back" if rng.random() < 0.6 else "front"
                colour_name, colour = rng.choice(spec.colours)
                img = render_phone_image(spec, view, colour, image_size, rng, nprng)
                rel = f"{spec.slug}/{spec.slug}_{i:04d}.jpg"
                img.save(out / rel, format="JPEG", quality=90, optimize=False, subsampling=0)
                rows.append(
                    {
                        "id": f"demo-{spec.slug}-{i:04d}",
                        "image": rel,
                        "label": spec.slug,
                        "title": f"{spec.brand} {spec.name} ({view}, {colour_name})",
                        "brand": spec.brand,
                        "price": spec.price,
                    }
                )
                bar.update(1)

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CATALOG_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    csv_path = out / "catalog.csv"
    atomic_write(csv_path, write_csv)
    logger.info("wrote %d images of %d phone models to %s", len(rows), classes, out)
    return csv_path
