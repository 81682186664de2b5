"""Made-up phone models for the synthetic demo catalog: what makes each one recognisable.

Every class gets its own body shape, camera module, front cut-out, wallpaper, finish and body
colours, seeded, and any two classes differ in at least three visible attributes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

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
