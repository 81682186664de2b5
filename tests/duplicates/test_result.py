"""Keeper rules and label-conflict flags of duplicate groups."""

from __future__ import annotations

import pytest

from duplicates.result import has_label_conflict, order_members, parse_keep
from embedder.errors import DataError
from tests.duplicates.conftest import member


def test_keeper_rule_resolution_then_filesize() -> None:
    small_big_file = member("a", 100, 100, 9000)
    large = member("b", 200, 200, 1000)
    large_bigger_file = member("c", 200, 200, 2000)
    order = order_members([small_big_file, large, large_bigger_file])
    assert [m.id for m in order] == ["c", "b", "a"]
    by_size = order_members([small_big_file, large, large_bigger_file], parse_keep("filesize"))
    assert by_size[0].id == "a"
    tie = order_members([member("z", 10, 10, 5), member("y", 10, 10, 5)])
    assert tie[0].id == "y"  # deterministic: smallest id wins a full tie
    cat = order_members([large, member("k", 10, 10, 1, source="catalog")], parse_keep("catalog"))
    assert cat[0].id == "k"


def test_parse_keep_rejects_unknown() -> None:
    assert parse_keep(" resolution , filesize ") == ("resolution", "filesize")
    with pytest.raises(DataError, match="unknown keep rule"):
        parse_keep("resolution,colour")


def test_label_conflict_flag() -> None:
    assert has_label_conflict([member("a", 1, 1, 1, "iphone"), member("b", 1, 1, 1, "pixel")])
    assert not has_label_conflict([member("a", 1, 1, 1, "iphone"), member("b", 1, 1, 1, "iphone")])
    assert not has_label_conflict([member("a", 1, 1, 1, "iphone"), member("b", 1, 1, 1, "")])


def test_a_file_keeps_over_a_link_to_it(tmp_path) -> None:
    """A link ("alink") sorted before its target ("zorig") was kept, and the report marked
    the real file for removal: acting on it left the link dangling."""
    from dataclasses import replace

    (tmp_path / "zorig.jpg").write_bytes(b"photo")
    (tmp_path / "alink.jpg").symlink_to("zorig.jpg")
    link = replace(member("alink", 10, 10, 5), path=str(tmp_path / "alink.jpg"))
    target = replace(member("zorig", 10, 10, 5), path=str(tmp_path / "zorig.jpg"))
    assert [m.id for m in order_members([link, target])] == ["zorig", "alink"]
    bigger_link = replace(link, width=20)  # the rules still come first
    assert order_members([bigger_link, target])[0].id == "alink"
