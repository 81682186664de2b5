"""``image_roots``: the folders an index build records as the home of its catalog images."""

from __future__ import annotations

import os

from index.build import image_roots


def test_the_fewest_folders_that_hold_every_image(tmp_path):
    a = tmp_path.resolve() / "a"
    paths = [a / "b" / "x.jpg", a / "b" / "c" / "y.jpg", a / "b-c" / "z.jpg", a / "b" / "w.jpg"]
    assert image_roots([str(p) for p in paths]) == [str(a / "b"), str(a / "b-c")]
    assert image_roots([]) == []


def test_symlinked_folders_are_recorded_as_their_targets(tmp_path):
    real = tmp_path.resolve() / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert image_roots([str(tmp_path / "link" / "x.jpg")]) == [str(real)]


def test_a_sharded_store_becomes_its_shards_parents_but_never_the_filesystem_root():
    shards = [f"/store/{i:02x}/{j:02x}/f.jpg" for i in range(40) for j in range(10)]
    roots = image_roots(shards, limit=64)
    assert roots == sorted(f"/store/{i:02x}" for i in range(40))
    assert image_roots(shards, limit=8) == ["/store"]
    tops = [f"/top{i}/f.jpg" for i in range(10)]
    assert image_roots(tops, limit=3) == sorted(f"/top{i}" for i in range(10))
    assert os.sep not in image_roots(tops, limit=3)
