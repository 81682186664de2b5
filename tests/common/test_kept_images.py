"""Which file in a server's --image-dir is the photo it kept for an item."""

from __future__ import annotations

from common.kept_images import kept_image, new_image_path


def test_a_kept_photo_is_named_for_its_item_and_lies_in_the_folder(tmp_path):
    path = new_image_path(tmp_path, "phone/1")
    assert path.parent == tmp_path and path != new_image_path(tmp_path, "phone/1")
    assert kept_image(tmp_path, "phone/1", str(path)) == path
    assert kept_image(str(tmp_path / "." / ""), "phone/1", str(path)) == path


def test_anything_else_is_not_the_servers_to_delete(tmp_path):
    path = new_image_path(tmp_path, "a")
    assert kept_image(tmp_path, "b", str(path)) is None  # another item's photo
    assert kept_image(tmp_path / "other", "a", str(path)) is None  # another folder
    deeper = tmp_path / "sub" / path.name
    assert kept_image(tmp_path, "a", str(deeper)) is None
    assert kept_image(tmp_path, "a", str(tmp_path / "a.jpg")) is None  # a catalog photo
    for value in (None, "", 3, ["x"]):
        assert kept_image(tmp_path, "a", value) is None
