"""A labelled duplicate benchmark built from real photos.

Sampled originals each get a few perturbed copies (edit families, combined edits included,
rotate across originals so each is used equally often, and strengths rotate 1-2-3); the other
source photos join untouched as distractors. Groups of a handful of copies are what a catalog
sees, and keep the group-level pairwise metric from being dominated by a few large groups.

The source folder may already hold copies of one photo (byte-identical, re-encoded, resized,
re-framed or cropped, filed under other brands), so sources are first clustered by byte hash,
pixel hash and pixel-level near-copy tests that do not use the model under test: the mean
absolute difference of 32x32 colour thumbnails, and the best such difference between one
image's trimmed content and any window of the other's (crops and zooms). One photo per cluster
is used, so no two benchmark sources are copies of each other and the truth is not wrong.
"""

from __future__ import annotations

import csv
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.grouping import component_labels
from duplicates.hashing import bytes_digest, identical_pairs, pixel_digest
from duplicates.inputs import list_images
from duplicates.perturb import STRENGTHS, TRANSFORMS, apply
from embedder.data import Sample
from embedder.errors import DataError, ImageError
from embedder.images import load_image

log = logging.getLogger(__name__)

MANIFEST = "benchmark.csv"
COLUMNS = ("id", "image", "label", "truth", "role", "transform", "strength", "source")


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to sample: originals (each with perturbed copies) and untouched distractors."""

    originals: int = 250
    copies: int = 4  # per original; edit families and strengths rotate across originals
    distractors: int | None = None  # None: every remaining distinct source photo
    min_side: int = 64  # originals smaller than this are too small to crop/thumbnail
    near_copy_mad: float = 9.0  # mean abs difference (0-255) of 32x32 thumbnails
    near_copy_aspect: float = 0.05  # relative aspect-ratio difference allowed
    seed: int = 0


@dataclass(frozen=True)
class Benchmark:
    """The benchmark's images (as samples) and the truth group of each."""

    samples: list[Sample]
    truth: np.ndarray
    source_clusters: list[list[str]]
    root: Path

    @property
    def originals(self) -> int:
        return sum(1 for s in self.samples if s.metadata.get("role") == "original")


def _thumb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.resize((32, 32), Image.BOX), dtype=np.float32).ravel()


def content_box(img: Image.Image, tol: float = 24.0) -> tuple[int, int, int, int]:
    """Bounding box of what differs from the border colour (padding and margins trimmed)."""
    small = img.copy()
    small.thumbnail((256, 256))
    arr = np.asarray(small, dtype=np.float32)
    ring = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    mask = np.abs(arr - np.median(ring, axis=0)).max(axis=2) > tol
    ys, xs = np.nonzero(mask)
    if len(ys) < 16:
        return (0, 0, img.width, img.height)
    # Quantiles, not extremes: a small logo in a corner does not stretch the box.
    x0, x1 = np.quantile(xs, [0.005, 0.995])
    y0, y1 = np.quantile(ys, [0.005, 0.995])
    sx, sy = img.width / small.width, img.height / small.height
    return (int(x0 * sx), int(y0 * sy), int(np.ceil((x1 + 1) * sx)), int(np.ceil((y1 + 1) * sy)))


def near_copy_pairs(
    images: list[Image.Image], max_mad: float, max_aspect: float
) -> list[tuple[int, int]]:
    """Pairs of images that are the same picture up to resizing and re-encoding.

    Compares 32x32 thumbnails; meant for benchmark sources (hundreds to a few thousand), and
    uses each image's nearest neighbours only.
    """
    import faiss

    if len(images) < 2:
        return []
    thumbs = np.stack([_thumb(img) for img in images])
    aspect = np.log(np.array([img.width / img.height for img in images]))
    index = faiss.IndexFlatL2(thumbs.shape[1])
    index.add(thumbs)
    k = min(len(images), 32)
    _, I = index.search(thumbs, k)
    pairs = []
    for a in range(len(images)):
        for c in I[a].tolist():
            if c <= a or abs(aspect[a] - aspect[c]) > max_aspect:
                continue
            if float(np.abs(thumbs[a] - thumbs[c]).mean()) < max_mad:
                pairs.append((a, c))
    return pairs


def window_mad(big: Image.Image, small: Image.Image, side: int = 32, steps: int = 8) -> float:
    """Smallest mean absolute difference between ``small`` and a window of ``big``.

    ``small`` is assumed to show a crop of ``big`` at the same pixel aspect, with its window
    between half and all of the largest window that fits; every position is tried (``big`` at
    ``side`` px). A zoomed or cropped re-upload of a photo scores like a resized one.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    scale = side / max(big.size)
    big_arr = np.asarray(
        big.resize(
            (max(1, round(big.width * scale)), max(1, round(big.height * scale))), Image.BOX
        ),
        dtype=np.float32,
    )
    hb, wb = big_arr.shape[:2]
    aspect = small.width / small.height
    h_max = min(hb, wb / aspect)
    best = float("inf")
    for s in np.linspace(0.5, 1.0, steps):
        h = int(round(s * h_max))
        w = int(round(h * aspect))
        if min(h, w) < 6 or h > hb or w > wb:
            continue
        patch = np.asarray(small.resize((w, h), Image.BOX), dtype=np.float32)
        windows = sliding_window_view(big_arr, (h, w, 3))[:, :, 0]
        best = min(best, float(np.abs(windows - patch).mean(axis=(2, 3, 4)).min()))
    return best


def crop_copy_pairs(images: list[Image.Image], max_mad: float, k: int = 8) -> list[tuple[int, int]]:
    """Pairs where one image's content is a crop (or re-framing) of the other's.

    Candidates are each image's nearest neighbours by colour histogram of the trimmed content
    (crop-tolerant, model-free); each is confirmed by ``window_mad`` in both directions.
    """
    import faiss

    if len(images) < 2:
        return []
    content = [img.crop(content_box(img)) for img in images]
    hists = []
    for c in content:
        small = np.asarray(c.resize((48, 48), Image.BOX)) // 32  # 8 levels per channel
        codes = (small[..., 0] * 64 + small[..., 1] * 8 + small[..., 2]).ravel()
        hists.append(np.sqrt(np.bincount(codes, minlength=512) / codes.size))
    xb = np.ascontiguousarray(np.stack(hists), dtype=np.float32)
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    _, I = index.search(xb, min(k + 1, len(images)))
    pairs = set()
    for a in range(len(images)):
        for b in I[a].tolist():
            if b == a or (min(a, b), max(a, b)) in pairs:
                continue
            mad = min(window_mad(content[a], content[b]), window_mad(content[b], content[a]))
            if mad < max_mad:
                pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def source_clusters(
    samples: list[Sample], config: BenchmarkConfig, progress: bool = False
) -> tuple[list[Sample], list[Image.Image], list[list[int]]]:
    """Readable sources, their images, and clusters of sources that are copies of each other."""
    ok, images, bdig, pdig = [], [], [], []
    for s in tqdm(samples, desc="sources", unit="img", disable=not progress):
        try:
            data = s.path.read_bytes()
            img = load_image(data)
        except (OSError, ImageError) as exc:
            log.warning("benchmark: skipping source %s (%s)", s.id, exc)
            continue
        ok.append(s)
        images.append(img)
        bdig.append(bytes_digest(data))
        pdig.append(pixel_digest(img))
    pairs = identical_pairs(bdig) + identical_pairs(pdig)
    pairs += near_copy_pairs(images, config.near_copy_mad, config.near_copy_aspect)
    # Re-framed, zoomed or cropped copies: compare content windows too.
    pairs += crop_copy_pairs(images, config.near_copy_mad)
    labels = component_labels(len(ok), pairs)
    clusters: list[list[int]] = [[] for _ in range(int(labels.max(initial=-1)) + 1)]
    for k, label in enumerate(labels.tolist()):
        clusters[label].append(k)  # labels follow first members, so clusters come in that order
    return ok, images, clusters


FAMILIES = (*sorted(TRANSFORMS), "combined")


def copy_schedule(o_idx: int, copies: int) -> list[tuple[str, int]]:
    """(edit family, strength) of each copy of original ``o_idx``.

    Families rotate through ``FAMILIES`` (so across originals each is used equally often) and
    strengths rotate 1-2-3 independently of the family.
    """
    out = []
    for t in range(copies):
        k = o_idx * copies + t
        out.append((FAMILIES[k % len(FAMILIES)], STRENGTHS[(k // len(FAMILIES)) % len(STRENGTHS)]))
    return out


Sources = tuple[list[Sample], list[Image.Image], list[list[int]]]


def read_sources(source: str | Path, config: BenchmarkConfig, progress: bool = True) -> Sources:
    """The source photos and their clusters of copies (the same for every benchmark seed)."""
    return source_clusters(list_images(source), config, progress)


def build_benchmark(
    source: str | Path,
    out: str | Path,
    config: BenchmarkConfig,
    progress: bool = True,
    sources: Sources | None = None,
) -> Benchmark:
    """Write the benchmark images and ``benchmark.csv`` under ``out`` (replacing it).

    ``sources`` (from ``read_sources``) skips reading and clustering the sources again when
    several seeds are built from one folder.
    """
    ok, images, clusters = sources or read_sources(source, config, progress)
    rng = random.Random(config.seed)
    reps = [c[0] for c in clusters]  # one photo per cluster of copies
    rng.shuffle(reps)
    big = [r for r in reps if min(images[r].size) >= config.min_side]
    originals = big[: config.originals]
    if len(originals) < 2:
        raise DataError(f"{source}: too few distinct photos to build a benchmark")
    chosen = set(originals)
    rest = [r for r in reps if r not in chosen]
    distractors = rest if config.distractors is None else rest[: config.distractors]

    out = Path(out)
    img_dir = out / "images"
    shutil.rmtree(img_dir, ignore_errors=True)
    img_dir.mkdir(parents=True)
    rows: list[dict[str, str]] = []

    def add(
        name: str,
        truth: int,
        role: str,
        src: int,
        transform: str,
        strength: int,
        data: bytes | Image.Image,
    ) -> None:
        path = img_dir / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            data.save(path, format="JPEG", quality=90)
        rows.append(
            {
                "id": path.stem,
                "image": f"images/{name}",
                "label": ok[src].label,
                "truth": str(truth),
                "role": role,
                "transform": transform,
                "strength": str(strength),
                "source": ok[src].id,
            }
        )

    for o_idx, src in enumerate(tqdm(originals, desc="copies", unit="img", disable=not progress)):
        add(f"o{o_idx:04d}.jpg", o_idx, "original", src, "", 0, ok[src].path.read_bytes())
        for f_idx, (family, strength) in enumerate(copy_schedule(o_idx, config.copies)):
            copy_rng = random.Random(config.seed * 1_000_003 + o_idx * 1009 + f_idx)
            img = apply(family, images[src], strength, copy_rng)
            add(
                f"o{o_idx:04d}_{f_idx:02d}_{family}{strength}.jpg",
                o_idx,
                "copy",
                src,
                family,
                strength,
                img,
            )
    for d_idx, src in enumerate(distractors):
        truth = len(originals) + d_idx
        add(
            f"d{d_idx:04d}{ok[src].path.suffix.lower()}",
            truth,
            "distractor",
            src,
            "",
            0,
            ok[src].path.read_bytes(),
        )

    with (out / MANIFEST).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    log.info(
        "benchmark: %d originals x %d copies + %d distractors from %d distinct of %d sources",
        len(originals),
        config.copies,
        len(distractors),
        len(clusters),
        len(ok),
    )
    return read_benchmark(out, [[ok[k].id for k in c] for c in clusters if len(c) > 1])


def read_benchmark(root: str | Path, source_clusters: list[list[str]] | None = None) -> Benchmark:
    """Load a benchmark folder written by ``build_benchmark``."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{root}: not a benchmark folder (no {MANIFEST})")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    samples = [Sample(r["id"], root / r["image"], r["label"], metadata=r) for r in rows]
    truth = np.array([int(r["truth"]) for r in rows], dtype=np.int64)
    return Benchmark(samples, truth, source_clusters or [], root)
