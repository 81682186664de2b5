"""Listing the input images of a duplicate run."""

from __future__ import annotations

import pytest

from embedder.errors import DataError


def test_missing_and_empty_inputs(tmp_path) -> None:
    from duplicates.inputs import list_images

    with pytest.raises(DataError, match="no such folder"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path / "empty")


def test_a_file_where_a_folder_is_expected_names_the_right_flag(tmp_path) -> None:
    from duplicates.inputs import list_images, load_inputs

    (tmp_path / "listings.csv").write_text("id,image\n")
    with pytest.raises(DataError, match="is a file; give a folder of images"):
        list_images(tmp_path / "listings.csv")  # calibrate's --data has no --manifest
    with pytest.raises(DataError, match="use --manifest for a CSV file"):
        load_inputs(tmp_path / "listings.csv", "images")  # find's --images


@pytest.mark.parametrize("workers", [0, 2])
def test_reading_keeps_input_order_and_reports_unreadable_files(tmp_path, workers) -> None:
    """Batches come back in input order whatever the decoding threads; a bad file becomes a
    Failure naming its path, the others are preprocessed and thumbnailed in their rows."""
    import numpy as np
    from PIL import Image

    from duplicates.descriptor import squash_transform
    from duplicates.inputs import iter_read, list_images, thumbnail

    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90), (250, 250, 0)]
    for k, colour in enumerate(colours):
        Image.new("RGB", (30 + k, 20), colour).save(tmp_path / f"img{k}.png")
    (tmp_path / "img2.png").write_bytes(b"not an image")
    samples = list_images(tmp_path)
    pre = squash_transform(16, {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
    batches = list(iter_read(samples, pre, 8, batch_size=2, workers=workers, progress=False))
    assert [b.indices for b in batches] == [[0, 1], [3], [4]]
    assert [f.id for b in batches for f in b.failures] == ["img2"]
    assert "img2.png: not a recognised image format" in batches[1].failures[0].reason
    last = batches[2]
    img = Image.open(samples[4].path)
    np.testing.assert_array_equal(last.pixels[0], pre(img))
    np.testing.assert_array_equal(last.thumbs[0], thumbnail(img, 8))
    assert (last.infos[0].width, last.infos[0].height) == (34, 20)


def test_a_broken_link_fails_saying_where_it_points(tmp_path) -> None:
    """It failed as "cannot read file (No such file or directory)", where embed and export
    say where the link points."""
    import pytest

    from duplicates.inputs import read_image
    from embedder.errors import ImageError

    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageError, match=r"gone.jpg: a link to .*nowhere.jpg, which does not"):
        read_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="missing.jpg: file not found"):
        read_image(tmp_path / "missing.jpg")


def test_a_huge_file_is_refused_unread(tmp_path) -> None:
    """duplicates find read each file whole before decoding: a 40 GB file was a MemoryError
    traceback, and a 2 GB one cost 2.25 GB of memory."""
    import os
    import resource

    import pytest

    from duplicates.inputs import read_image
    from embedder.errors import ImageError
    from embedder.images import load_image

    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as fh:  # sparse: no disk used
        fh.write(b"\xff\xd8\xff")
        fh.truncate(40 * 2**30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for read in (read_image, load_image):
        with pytest.raises(ImageError, match=r"huge.jpg: 40.0 GiB, larger than any image"):
            read(huge)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    os.remove(huge)


def test_a_link_loop_is_a_file_that_cannot_be_read(tmp_path) -> None:
    """It had been "cannot decode image ([Errno 40] ...)" in embed and export."""
    import pytest

    from duplicates.inputs import read_image
    from embedder.errors import ImageError
    from embedder.images import load_image

    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    for read in (read_image, load_image):
        with pytest.raises(ImageError, match="a.jpg: cannot read file \\(Too many levels"):
            read(tmp_path / "a.jpg")
