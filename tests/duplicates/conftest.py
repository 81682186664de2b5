"""Shared fixtures of the duplicate tests: a copy descriptor of the tiny checkpoint and one
finder run over the tiny catalog with planted copies (built once per session)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duplicates.pair_model import PairModel
from duplicates.result import Member
from duplicates.verify import EVIDENCE

TEST_SIZE = 128  # descriptor input for the tiny model: an 8 x 8 local feature grid


def synthetic_evidence(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Evidence where duplicates agree more and disagree in thin, not solid, regions."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.4
    x = np.zeros((n, len(EVIDENCE)), np.float32)
    # Noise in the first ten measurements only (the same draws as before the view evidence).
    x[:, :10] = rng.normal(0.0, 0.05, size=(n, 10))
    x[:, 0] += np.where(same, 0.88, 0.80)  # agreement overlaps between the two kinds
    x[:, EVIDENCE.index("solid_share")] += np.where(same, 0.01, 0.15)
    return x, same


def agreement_only_model(weight: float, bias: float) -> PairModel:
    """A pair model that reads the agreement only: sigmoid(weight * agreement + bias)."""
    n = len(EVIDENCE)
    return PairModel(EVIDENCE, (0.0,) * n, (1.0,) * n, (weight,) + (0.0,) * (n - 1), bias)


def member(id_: str, w: int, h: int, size: int, label: str = "", source: str = "input") -> Member:
    return Member(id_, f"/x/{id_}.jpg", label, w, h, size, source=source)


@pytest.fixture(scope="session")
def descriptor(tiny_checkpoint):
    from duplicates.descriptor import CopyDescriptor, DescriptorConfig

    return CopyDescriptor.from_checkpoint(tiny_checkpoint, DescriptorConfig(size=TEST_SIZE))


def _planted(root: Path, source: Path) -> dict[str, str]:
    """Copy the demo catalog and plant copies; returns planted id -> id of its original."""
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("*.csv"))
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    a, b, c, d, e = (sorted(classes[k % len(classes)].glob("*.jpg"))[k] for k in range(5))
    img = {p: Image.open(p).convert("RGB") for p in (a, b, c, d)}
    img[a].save(a.parent / "copy_jpeg.jpg", quality=30)
    img[b].resize((img[b].width * 3 // 4, img[b].height * 3 // 4), Image.LANCZOS).save(
        b.parent / "copy_small.jpg", quality=95
    )
    img[c].transpose(Image.FLIP_LEFT_RIGHT).save(c.parent / "copy_mirror.jpg", quality=95)
    img[d].save(d.parent / "copy_pixels.png")  # other bytes, same pixels
    shutil.copy(e, classes[(4 + 1) % len(classes)] / "copy_bytes.jpg")  # another label
    rel = lambda p: p.relative_to(root).with_suffix("").as_posix()  # noqa: E731
    return {
        rel(a.parent / "copy_jpeg.jpg"): rel(a),
        rel(b.parent / "copy_small.jpg"): rel(b),
        rel(c.parent / "copy_mirror.jpg"): rel(c),
        rel(d.parent / "copy_pixels.png"): rel(d),
        rel(classes[(4 + 1) % len(classes)] / "copy_bytes.jpg"): rel(e),
    }


@pytest.fixture(scope="session")
def planted_run(tiny_catalog, descriptor, tmp_path_factory):
    from duplicates.finder import FinderConfig, find_duplicates
    from duplicates.inputs import list_images

    root = tmp_path_factory.mktemp("planted") / "imgs"
    planted = _planted(root, tiny_catalog)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    samples = list_images(root)
    result = find_duplicates(descriptor, samples, FinderConfig(workers=0, progress=False))
    return root, planted, samples, result


@pytest.fixture(scope="session")
def ckpt_at_test_size(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with a TEST_SIZE input, so its ONNX graph takes the descriptor's
    size (an exported graph has one input size)."""
    from embedder.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(tiny_checkpoint)
    size = [3, TEST_SIZE, TEST_SIZE]
    config = replace(config, data_config={**config.data_config, "input_size": size})
    return save_checkpoint(model, config, tmp_path_factory.mktemp("dup-size") / "ckpt")
