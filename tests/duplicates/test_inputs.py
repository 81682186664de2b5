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
