"""Training photos filed under two classes are found by thumbnail and left out of training."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from embedder.errors import DataError
from embedder.label_conflicts import find_label_conflicts, thumbnail_vector
from embedder.train import train
from tests.conftest import tiny_train_config


def _class_dirs(root):
    return sorted(p for p in root.iterdir() if p.is_dir())


def _reencoded(img: Image.Image, scale: float, quality: int) -> Image.Image:
    small = img.resize((round(img.width * scale), round(img.height * scale)))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def listing_photos(tmp_path_factory):
    """Two demo phone models, two photos each, at a listing-like 160 px."""
    from demo.catalog import generate_catalog

    out = tmp_path_factory.mktemp("photos") / "demo"
    generate_catalog(out, classes=2, per_class=2, seed=1, image_size=160, progress=False)
    return out


def test_copies_score_near_one_and_other_photos_do_not(listing_photos):
    first, second = _class_dirs(listing_photos)[:2]
    photo = Image.open(next(first.glob("*.jpg"))).convert("RGB")
    other_model = Image.open(next(second.glob("*.jpg"))).convert("RGB")
    same_model = Image.open(sorted(first.glob("*.jpg"))[1]).convert("RGB")
    v = thumbnail_vector(photo)
    assert v.dtype == np.float32 and np.isclose(np.linalg.norm(v), 1.0)
    edited = ImageEnhance.Contrast(ImageEnhance.Brightness(photo).enhance(1.15)).enhance(0.8)
    for copy in (_reencoded(photo, 0.5, 40), _reencoded(photo, 2.0, 90), edited):
        assert float(v @ thumbnail_vector(copy)) >= 0.98
    for different in (other_model, same_model, ImageOps.mirror(photo)):
        assert float(v @ thumbnail_vector(different)) < 0.98
    assert not thumbnail_vector(Image.new("RGB", (40, 30), "white")).any()  # flat: no direction


def test_each_conflicting_image_is_listed_once_with_its_closest_copy():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    near = base[0] + 0.01 * rng.normal(size=32).astype(np.float32)
    thumbs = np.stack([base[0], base[0], near / np.linalg.norm(near), base[1], base[2], base[2]])
    # 0 and 1 identical under classes 0 and 1; 2 nearly 0 under class 0; 4 and 5 agree.
    conflicts = find_label_conflicts(thumbs, [0, 1, 0, 2, 1, 1], similarity=0.98)
    by_index = {c.index: c for c in conflicts}
    assert sorted(by_index) == [0, 1, 2]
    assert by_index[0].other == 1 and by_index[2].other == 1
    assert by_index[1].other == 0 and by_index[1].similarity == pytest.approx(1.0)
    assert find_label_conflicts(thumbs, [0, 0, 0, 2, 1, 1], similarity=0.98) == []
    assert find_label_conflicts(thumbs[:1], [0], similarity=0.98) == []


def test_conflicts_match_a_brute_force_search_over_all_pairs(monkeypatch):
    from embedder import label_conflicts

    monkeypatch.setattr(label_conflicts, "_BLOCK_CELLS", 50)  # many small blocks of rows
    rng = np.random.default_rng(1)
    photos = rng.normal(size=(30, 64)).astype(np.float32)
    copies = photos[rng.integers(0, 30, 70)] + 0.05 * rng.normal(size=(70, 64)).astype(np.float32)
    thumbs = np.concatenate([photos, copies])
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    labels = rng.integers(0, 4, len(thumbs))
    sims = thumbs @ thumbs.T
    expected = {}
    for i in range(len(thumbs)):
        others = np.flatnonzero(labels != labels[i])
        j = others[np.argmax(sims[i, others])]
        if sims[i, j] >= 0.99:
            expected[i] = j
    found = find_label_conflicts(thumbs, labels, similarity=0.99)
    assert expected and {c.index: c.other for c in found} == expected
    assert all(c.similarity == pytest.approx(sims[c.index, c.other]) for c in found)


@pytest.fixture
def conflicting_catalog(tiny_catalog, tmp_path):
    """The tiny catalog with one photo of the first class also filed under the second."""
    data = tmp_path / "data"
    shutil.copytree(tiny_catalog, data, ignore=shutil.ignore_patterns("*.csv"))
    first, second = _class_dirs(data)[:2]
    photo = sorted(first.glob("*.jpg"))[0]
    Image.open(photo).convert("RGB").resize((48, 48)).save(second / "refiled.jpg", quality=70)
    return data, f"{first.name}/{photo.stem}", f"{second.name}/refiled"


def test_training_leaves_out_both_sides_of_a_label_conflict(conflicting_catalog, tmp_path):
    data, original, refiled = conflicting_catalog
    result = train(tiny_train_config(data, tmp_path / "ck", val_fraction=0.0))
    assert len(result.label_conflicts) == 2
    assert any(n.startswith(original) and refiled in n for n in result.label_conflicts)
    assert any(n.startswith(refiled) and original in n for n in result.label_conflicts)
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert config["training"]["label_conflicts_left_out"] == result.label_conflicts

    kept = train(
        tiny_train_config(data, tmp_path / "ck2", val_fraction=0.0, label_conflicts="keep")
    )
    assert kept.label_conflicts == []


def test_a_class_made_only_of_conflicts_is_an_error(tiny_catalog, tmp_path):
    first = _class_dirs(tiny_catalog)[0]
    data = tmp_path / "data"
    shutil.copytree(first, data / "real")
    (data / "copies").mkdir()
    shutil.copy(sorted(first.glob("*.jpg"))[0], data / "copies" / "copy.jpg")
    with pytest.raises(DataError, match="--label-conflicts keep"):
        train(tiny_train_config(data, tmp_path / "ck", val_fraction=0.0))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"label_conflicts": "ignore"}, "--label-conflicts must be drop or keep"),
        ({"conflict_similarity": 0.0}, "--conflict-similarity must be in"),
        ({"conflict_similarity": float("nan")}, "--conflict-similarity must be in"),
    ],
)
def test_bad_label_conflict_settings_are_refused(tiny_catalog, tmp_path, overrides, message):
    with pytest.raises(DataError, match=message):
        train(tiny_train_config(tiny_catalog, tmp_path / "ck", **overrides))


@pytest.mark.slow
def test_cross_brand_copies_in_phone_brands_are_all_found(phone_brands):
    import hashlib

    from embedder.data import load_catalog
    from embedder.images import load_image

    samples = load_catalog(phone_brands / "train").samples
    labels = [s.label for s in samples]
    thumbs = np.stack([thumbnail_vector(load_image(s.path)) for s in samples])
    flagged = {c.index for c in find_label_conflicts(thumbs, labels, similarity=0.98)}

    by_bytes: dict[str, set[str]] = {}
    digests = [hashlib.sha256(s.path.read_bytes()).hexdigest() for s in samples]
    for digest, label in zip(digests, labels, strict=True):
        by_bytes.setdefault(digest, set()).add(label)
    cross_brand = {i for i, d in enumerate(digests) if len(by_bytes[d]) > 1}
    assert cross_brand and cross_brand <= flagged  # byte-identical files under two brands
    assert len(flagged) < 0.15 * len(samples)  # conflicts only, not similar-looking phones
