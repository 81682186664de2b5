"""The decoder against hostile files: every file is an RGB image or an ImageError, nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from embedder.errors import ImageError
from embedder.images import load_image
from tests.imagefuzz import foreign_files, mutated_files, seed_files


def test_every_seed_format_decodes():
    seeds = seed_files()
    assert len(seeds) >= 19
    for name, data in seeds.items():
        img = load_image(data)
        assert img.mode == "RGB" and img.size == (48, 36), name


def test_foreign_formats_are_refused_by_name():
    files = foreign_files()
    assert len(files) >= 8
    for data in files.values():
        with pytest.raises(ImageError, match="not a recognised image format"):
            load_image(data)


def test_mutated_files_decode_or_raise_image_error():
    outcomes = {"decoded": 0, "refused": 0}
    slowest = (0.0, "")
    count = 0
    for name, data in mutated_files(per_seed=30, seed=0):
        count += 1
        t0 = time.perf_counter()
        try:
            img = load_image(data, min_side=32)
        except ImageError as exc:
            assert str(exc).startswith("<bytes>: "), (name, exc)
            outcomes["refused"] += 1
        else:
            assert img.mode == "RGB" and img.width > 0 and img.height > 0, name
            outcomes["decoded"] += 1
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, (elapsed, name))
    print(f"\n{count} mutated files: {outcomes}, slowest {slowest[0] * 1000:.0f} ms ({slowest[1]})")
    assert count >= 500
    # Both outcomes occur, or the mutations are too weak (or too strong) to test anything.
    assert outcomes["decoded"] > 50 and outcomes["refused"] > 50
    assert slowest[0] < 10.0, slowest


_PEAK_SCRIPT = """
import io, json, resource, sys
import numpy as np
from PIL import Image
from embedder.images import load_image
side = int(sys.argv[1])
arr = np.tile(np.arange(side, dtype=np.uint16) * 7, (side, 1))
buf = io.BytesIO()
Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
data = buf.getvalue()
del arr
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img = load_image(data, min_side=224)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"bytes": len(data), "before_mb": before / 1024, "after_mb": after / 1024,
                  "size": img.size}))
"""


def test_16_bit_scan_memory_stays_near_its_own_size():
    """A 6000x6000 16-bit PNG (the worst input of the hostile suite) is 72 MB decoded: the
    8-bit conversion must not add float64 copies (288 MB each) on top."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, "6000"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    grew = figures["after_mb"] - figures["before_mb"]
    print(f"\n6000x6000 16-bit PNG ({figures['bytes']} bytes): peak RSS grew {grew:.0f} MB")
    assert figures["size"] == [6000, 6000]
    assert grew < 250, figures


def test_stretch_handles_non_finite_floats():
    arr = np.array([[np.nan, 0.0], [np.inf, 1.0]], dtype=np.float32)
    out = np.asarray(load_image(_tiff(Image.fromarray(arr))))[..., 0]
    assert out[0, 1] == 0 and out[1, 1] == 255


def _tiff(img: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    return buf.getvalue()
