"""Synthetic phone catalog rendered with Pillow: the class folders and ``catalog.csv``.

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
import random
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.fsutil import atomic_write, folder_write_problem, is_temporary
from demo.render import render_phone_image
from demo.specs import CLASS_NAMES, make_specs

logger = logging.getLogger(__name__)

CATALOG_COLUMNS: tuple[str, ...] = ("id", "image", "label", "title", "brand", "price")
# Written first into a folder the demo renders into: a run interrupted before its catalog.csv
# is still recognised as the demo's own.
MARKER = ".phonesim-demo-catalog"
# Class folders render here (hidden, so no command reads them) and move into the catalog
# folder when every image is written: an interrupted run left class folders, the last half
# filled, that `train --data` took for a catalog.
STAGING = ".phonesim-demo-rendering"
_DEMO_ROW = re.compile(r"demo-(?P<label>[a-z0-9-]+)-(?P<n>\d{4})")


def is_demo_catalog(folder: Path) -> bool:
    """Whether ``folder`` holds what :func:`generate_catalog` writes and nothing else: its
    marker, or (written before the marker) a catalog.csv whose every row has the demo's ids
    and image names and lists every image in the folder. A user's catalog laid out the same
    way (class folders of JPEGs and a catalog.csv) is not the demo's, whatever its shape."""
    if (folder / MARKER).is_file():
        return True
    try:
        with (folder / "catalog.csv").open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != CATALOG_COLUMNS:
                return False
            listed = set()
            for row in reader:
                m = _DEMO_ROW.fullmatch(row["id"] or "")
                label = row["label"]
                if m is None or m["label"] != label:
                    return False
                if row["image"] != f"{label}/{label}_{m['n']}.jpg":
                    return False
                listed.add(row["image"])
        on_disk = {p.relative_to(folder).as_posix() for p in folder.glob("*/*") if p.is_file()}
    except (OSError, csv.Error, UnicodeDecodeError):
        return False
    return bool(listed) and on_disk == listed


def _prepare_out(out: Path) -> None:
    """Create `out`, or clear a previous demo catalog there; refuse to clobber anything else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    problem = folder_write_problem(out, created=True)
    if problem:  # an OSError traceback line and exit 1 before; a one-line refusal now
        raise ValueError(f"{out}: {problem}; the demo catalog cannot be written there")
    if not out.exists():
        out.mkdir(parents=True)
    if (out / MARKER).is_file() and (out / STAGING).is_dir():
        shutil.rmtree(out / STAGING)  # what an interrupted run of ours left
    entries = [e for e in out.iterdir() if e.name != MARKER]
    if entries and not is_demo_catalog(out):
        raise ValueError(
            f"output folder {out} holds files the demo did not write (its own catalog has "
            f"a {MARKER} file, or demo ids and image names only); pick an empty or new folder"
        )
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            if any(not (p.is_file() and p.suffix == ".jpg") for p in entry.iterdir()):
                raise ValueError(
                    f"{entry} holds files other than .jpg images; not overwriting {out}"
                )
        elif entry.name != "catalog.csv" and not is_temporary(entry.name, "catalog.csv"):
            raise ValueError(f"{entry} is not part of a demo catalog; not overwriting {out}")
    (out / MARKER).write_text("written by phonesim make-demo-catalog; its folder may be replaced\n")
    if entries:
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
    staging = out / STAGING
    staging.mkdir()
    bar = tqdm(total=classes * per_class, desc="demo catalog", unit="img", disable=not progress)
    with bar:
        for ci, spec in enumerate(specs):
            (staging / spec.slug).mkdir()
            for i in range(per_class):
                rng = random.Random(f"phonesim-demo-image:{seed}:{ci}:{i}")
                nprng = np.random.default_rng(rng.getrandbits(64))
                view = "back" if rng.random() < 0.6 else "front"
                colour_name, colour = rng.choice(spec.colours)
                img = render_phone_image(spec, view, colour, image_size, rng, nprng)
                rel = f"{spec.slug}/{spec.slug}_{i:04d}.jpg"
                img.save(staging / rel, format="JPEG", quality=90, optimize=False, subsampling=0)
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

    for spec in specs:  # renames within one folder: the catalog appears at once
        (staging / spec.slug).rename(out / spec.slug)
    staging.rmdir()
    csv_path = out / "catalog.csv"
    atomic_write(csv_path, write_csv)
    logger.info("wrote %d images of %d phone models to %s", len(rows), classes, out)
    return csv_path
