"""Writing the synthetic phone catalog: layout, determinism, replacing a previous one, arguments."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from PIL import Image

from demo.catalog import CATALOG_COLUMNS, MARKER, generate_catalog, is_demo_catalog
from demo.specs import CLASS_NAMES

SMALL = {"classes": 3, "per_class": 4, "image_size": 64, "progress": False}


def _read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_small_catalog_layout(tmp_path: Path) -> None:
    out = tmp_path / "cat"
    csv_path = generate_catalog(out, seed=3, **SMALL)

    assert csv_path == out / "catalog.csv"
    columns, rows = _read_rows(csv_path)
    assert columns == list(CATALOG_COLUMNS) == ["id", "image", "label", "title", "brand", "price"]
    assert len(rows) == 3 * 4
    assert b"\r" not in csv_path.read_bytes()

    labels = sorted({r["label"] for r in rows})
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == labels
    assert len(labels) == 3
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert row["image"].startswith(f"{row['label']}/")
        assert row["id"].startswith("demo-")
        assert row["brand"] and row["title"].startswith(row["brand"] + " ")
        assert float(row["price"]) > 0 and "." in row["price"]
        with Image.open(out / row["image"]) as img:
            assert img.format == "JPEG"
            assert img.mode == "RGB"
            assert img.size == (64, 64)
    # Every image on disk is listed, nothing else is written.
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")}
    assert on_disk == {r["image"] for r in rows}
    assert {p.name for p in out.iterdir() if p.is_file()} == {"catalog.csv", MARKER}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a = _digests(generate_catalog(tmp_path / "a", seed=7, **SMALL).parent)
    b = _digests(generate_catalog(tmp_path / "b", seed=7, **SMALL).parent)
    assert a == b

    c_root = generate_catalog(tmp_path / "c", seed=8, **SMALL).parent
    a_images = sorted(v for k, v in a.items() if k.endswith(".jpg"))
    c_images = sorted(v for k, v in _digests(c_root).items() if k.endswith(".jpg"))
    assert not set(a_images) & set(c_images)


def test_regenerating_over_previous_catalog_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "cat"
    generate_catalog(out, seed=1, classes=4, per_class=2, image_size=48, progress=False)
    generate_catalog(out, seed=2, classes=2, per_class=2, image_size=48, progress=False)
    _, rows = _read_rows(out / "catalog.csv")
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")} == {r["image"] for r in rows}


def test_refuses_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="the demo did not write"):
        generate_catalog(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"

    # A catalog.csv next to unrelated files is still not ours to delete.
    (tmp_path / "catalog.csv").write_text("id\n")
    with pytest.raises(ValueError, match="the demo did not write"):
        generate_catalog(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").exists()


def test_a_users_catalog_laid_out_like_the_demos_is_never_replaced(tmp_path: Path) -> None:
    """Class folders of JPEGs beside a catalog.csv is the layout the README asks users for:
    it passed for a previous demo catalog, and its photos were deleted."""
    out = tmp_path / "mine"
    (out / "pixel").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(out / "pixel" / "p1.jpg")
    (out / "catalog.csv").write_text("id,image,label,title\nu1,pixel/p1.jpg,pixel,Mine\n")
    before = _digests(out)
    assert not is_demo_catalog(out)
    with pytest.raises(ValueError, match="the demo did not write"):
        generate_catalog(out, **SMALL)
    assert _digests(out) == before
    # The demo's own rows, but a photo of the user's beside them: not the demo's either.
    generate_catalog(tmp_path / "demo", seed=1, **SMALL)
    (tmp_path / "demo" / MARKER).unlink()
    assert is_demo_catalog(tmp_path / "demo")  # written before the marker: still recognised
    label = next(p for p in (tmp_path / "demo").iterdir() if p.is_dir())
    Image.new("RGB", (8, 8)).save(label / "extra.jpg")
    assert not is_demo_catalog(tmp_path / "demo")


def test_a_render_interrupted_before_its_csv_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "cat"
    generate_catalog(out, seed=1, **SMALL)
    (out / "catalog.csv").unlink()  # as if stopped while rendering
    generate_catalog(out, seed=2, **SMALL)
    _, rows = _read_rows(out / "catalog.csv")
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")} == {r["image"] for r in rows}


def test_a_render_stopped_midway_leaves_no_class_folder_to_train_on(tmp_path, monkeypatch):
    """Images were written into the class folders as they rendered: Ctrl-C left class
    folders, the last half filled and no catalog.csv, that `train --data` took for a
    catalog. Now they appear when every image is written; the next run replaces the rest."""
    from demo import catalog as module
    from embedder.data import load_catalog
    from embedder.errors import DataError

    out = tmp_path / "cat"
    real_save, saved = Image.Image.save, []

    def stop_at_the_fifth(self, *args, **kwargs):  # noqa: ANN002, ANN003
        saved.append(1)
        if len(saved) == 5:
            raise KeyboardInterrupt
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", stop_at_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        generate_catalog(out, seed=1, **SMALL)
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, module.STAGING])
    with pytest.raises(DataError, match="no class folders found"):
        load_catalog(out)
    generate_catalog(out, seed=1, **SMALL)
    _, rows = _read_rows(out / "catalog.csv")
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.jpg")} == {r["image"] for r in rows}
    assert not (out / module.STAGING).exists()


def test_an_unwritable_location_is_a_one_line_refusal(tmp_path: Path) -> None:
    """It was an OSError ("Operation not permitted"), exit 1."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot be written there"):
        generate_catalog(tmp_path / "file" / "cat", **SMALL)


def test_refuses_file_as_output(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        generate_catalog(target, **SMALL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": 1}, "classes"),
        ({"classes": len(CLASS_NAMES) + 1}, "classes"),
        ({"per_class": 0}, "per_class"),
        ({"image_size": 31}, "image_size"),
        ({"classes": 2.5}, "classes"),
    ],
)
def test_bad_arguments_raise(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_catalog(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_a_leftover_temporary_catalog_csv_is_part_of_the_catalog(tmp_path: Path) -> None:
    """A crash while writing catalog.csv leaves its temporary; regenerating still replaces it."""
    out = tmp_path / "cat"
    generate_catalog(out, seed=1, **SMALL)
    (out / ".catalog.csv.abc123.tmp").write_text("id,ima")
    generate_catalog(out, seed=2, **SMALL)
    assert {p.name for p in out.iterdir() if p.is_file()} == {"catalog.csv", MARKER}
