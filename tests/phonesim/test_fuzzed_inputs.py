"""Every batch entry point over a folder that holds fuzzed image files: it finishes, skips and
counts the bad files, and gives a one-line reason for each (the tiny model of conftest.py)."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest

from embedder.errors import ImageError
from embedder.images import load_image
from phonesim.cli import main as phonesim
from tests.conftest import TINY_MODEL, TINY_SIZE
from tests.imagefuzz import foreign_files, mutated_files

SUFFIX = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp", "tiff": "tif"}


def _unreadable() -> dict[str, bytes]:
    """A handful of fuzzed files load_image refuses: one per format family, a foreign format
    under an image suffix, and an empty file."""
    picked: dict[str, bytes] = {}
    for name, data in mutated_files(per_seed=4, seed=11):
        family = name.split("-")[0]
        if family not in SUFFIX or any(k.startswith(family) for k in picked):
            continue
        try:
            load_image(data)
        except ImageError:
            picked[f"{name}.{SUFFIX[family]}"] = data
    picked["dds-texture.png"] = foreign_files()["dds"]
    picked["empty.jpg"] = b""
    return picked


@pytest.fixture(scope="module")
def fuzzed_folder(tiny_catalog, tmp_path_factory) -> tuple[Path, list[str]]:
    """The tiny catalog with the unreadable files spread over its class folders, and a catalog
    CSV that lists them too."""
    root = tmp_path_factory.mktemp("fuzzed") / "catalog"
    shutil.copytree(tiny_catalog, root)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    rows = list(csv.DictReader((root / "catalog.csv").open()))
    names = []
    for i, (name, data) in enumerate(_unreadable().items()):
        path = classes[i % len(classes)] / f"fuzz-{name}"
        path.write_bytes(data)
        names.append(path.name)
        rows.append({**rows[0], "id": f"fuzz-{i}", "image": str(path.relative_to(root))})
    with (root / "catalog.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert len(names) >= 6
    return root, names


def _reasons(text: str, names: list[str]) -> None:
    """One line names each bad file (by path or id) with a reason."""
    for name in names:
        lines = [line for line in text.splitlines() if Path(name).stem in line]
        assert lines, f"{name} not reported"
        assert any(
            word in lines[0]
            for word in ("cannot decode", "not a recognised", "truncated", "empty", "cannot")
        ), lines[0]


def _run(argv: list[str], capsys, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code = phonesim(argv)
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert code == 0, text[-3000:]
    return text


def test_train_embed_index_and_export_skip_and_count_bad_files(
    fuzzed_folder, tiny_checkpoint, tmp_path, capsys, caplog
):
    root, names = fuzzed_folder
    n = len(names)
    text = _run(
        [
            "train", "--data", str(root), "--out", str(tmp_path / "ckpt"), "--model", TINY_MODEL,
            "--weights", "none", "--img-size", str(TINY_SIZE), "--epochs", "1",
            "--warmup-epochs", "0", "--batch-size", "8", "--workers", "0",
        ],
        capsys, caplog,
    )  # fmt: skip
    _reasons(text, names)
    assert f"unreadable images skipped: {n}" in text

    emb = tmp_path / "e.h5"
    csv_path = str(root / "catalog.csv")
    text = _run(
        ["embed", "--checkpoint", str(tiny_checkpoint), "--data", csv_path, "--out", str(emb)],
        capsys,
        caplog,
    )
    _reasons(text, names)
    assert f"({n} failed)" in text

    index = tmp_path / "index"
    text = _run(
        ["index", "build", "--embeddings", str(emb), "--catalog", csv_path, "--index", str(index)],
        capsys,
        caplog,
    )
    _reasons(text, names)
    assert f"{n} unreadable image(s) not indexed" in text

    out = tmp_path / "features.h5"
    text = _run(
        [
            "export", "--checkpoint", str(tiny_checkpoint), "--data", str(root),
            "--out", str(out), "--neighbors", "3", "--no-progress",
        ],
        capsys, caplog,
    )  # fmt: skip
    _reasons(text, names)
    assert f"({n} failed)" in text


def test_find_duplicates_skips_and_counts_bad_files(
    fuzzed_folder, tiny_checkpoint, tmp_path, capsys, caplog
):
    root, names = fuzzed_folder
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        code = phonesim(
            [
                "duplicates", "find", "--checkpoint", str(tiny_checkpoint), "--data", str(root),
                "--out", str(tmp_path / "report"),
            ]
        )  # fmt: skip
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert code == 0, text[-3000:]
    _reasons(text, names)
    assert f"failed {len(names)}" in text
