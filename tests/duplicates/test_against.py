"""New listings checked against a catalog index."""

from __future__ import annotations

import pytest
from PIL import Image


def index_catalog(tiny_checkpoint, tiny_catalog, out, edit=None, store=None):  # noqa: ANN001, ANN201
    """The tiny catalog indexed at ``out`` (or in ``store``), each item's metadata its image
    path and label as ``edit(metadata)`` leaves them; returns the embedder and the samples."""
    from embedder.data import load_catalog
    from embedder.inference import Embedder
    from index import build_index

    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    catalog = load_catalog(tiny_catalog / "catalog.csv").samples
    xb = embedder.embed_paths([s.path for s in catalog]).embeddings
    meta = [{"image": str(s.path.resolve()), "label": s.label} for s in catalog]
    if edit is not None:
        edit(meta)
    build_index(
        out,
        [s.id for s in catalog],
        xb,
        meta,
        model_name=embedder.model_name,
        checkpoint_hash=embedder.checkpoint_hash,
        progress=False,
        store=store,
    )
    return embedder, catalog


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_against_index_reports_catalog_matches(
    tiny_catalog, tiny_checkpoint, descriptor, tmp_path, request, backend
):
    from duplicates.against import find_against
    from duplicates.finder import FinderConfig
    from embedder.data import Sample

    store = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    embedder, catalog = index_catalog(tiny_checkpoint, tiny_catalog, tmp_path / "idx", store=store)
    where = None if store else tmp_path / "idx"  # from PostgreSQL, no folder is needed
    target = catalog[7]
    new = tmp_path / "new"
    new.mkdir()
    Image.open(target.path).convert("RGB").save(new / "relisted.jpg", quality=40)
    Image.new("RGB", (64, 64), (20, 200, 40)).save(new / "unrelated.jpg")
    config = FinderConfig(workers=0, progress=False)
    samples = [
        Sample("relisted", new / "relisted.jpg", ""),
        Sample("unrelated", new / "unrelated.jpg", ""),
    ]
    result = find_against(descriptor, embedder, samples, where, config, store=store)
    assert result.mode == "against" and len(result.groups) == 1
    timing = result.extra["timing"]  # printed as in a folder search
    assert timing["images"] >= 3 and timing["pairs"] >= 1 and timing["verify_s"] > 0
    group = result.groups[0]
    assert group.keeper.id == target.id and group.keeper.source == "catalog"
    assert group.members[-1].id == "relisted" and group.members[-1].source == "input"
    # One image works too.
    single = find_against(descriptor, embedder, samples[:1], where, config, store=store)
    assert [m.id for m in single.groups[0].members][0] == target.id


def test_an_index_without_image_paths_is_refused_before_any_input_is_read(
    tiny_catalog, tiny_checkpoint, descriptor, tmp_path, monkeypatch
):
    """Built without --catalog, it can verify no match: that was said only after every input
    had been described (20 minutes for 10,000 photos)."""
    from duplicates import against
    from duplicates.finder import FinderConfig
    from embedder.data import Sample, load_catalog
    from embedder.errors import DataError
    from embedder.inference import Embedder
    from index import build_index

    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    catalog = load_catalog(tiny_catalog / "catalog.csv").samples
    xb = embedder.embed_paths([s.path for s in catalog]).embeddings
    build_index(
        tmp_path / "idx",
        [s.id for s in catalog],
        xb,
        [{"label": s.label} for s in catalog],
        model_name=embedder.model_name,
        checkpoint_hash=embedder.checkpoint_hash,
        progress=False,
    )

    def read_nothing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("inputs were read before the index was checked")

    monkeypatch.setattr(against, "extract_features", read_nothing)
    config = FinderConfig(workers=0, progress=False)
    samples = [Sample("x", catalog[0].path, "")]
    with pytest.raises(DataError, match="no 'image' path"):
        against.find_against(descriptor, embedder, samples, tmp_path / "idx", config)


def test_catalog_items_that_cannot_be_read_are_listed_in_failed_csv(
    tiny_catalog, tiny_checkpoint, descriptor, tmp_path
):
    """A nearest catalog item whose photo is gone (or that has no image path) cannot be
    compared, so a new listing may duplicate it unnoticed: the report lists it. It was only
    logged."""
    import csv

    from duplicates.against import find_against
    from duplicates.finder import FinderConfig
    from duplicates.report import to_json, write_report
    from embedder.data import Sample

    def lose_two_photos(meta: list[dict]) -> None:
        meta[7]["image"] = str(tmp_path / "moved-away.jpg")
        del meta[8]["image"]

    embedder, catalog = index_catalog(
        tiny_checkpoint, tiny_catalog, tmp_path / "idx", edit=lose_two_photos
    )
    target, bare = catalog[7], catalog[8]
    new = tmp_path / "new"
    new.mkdir()
    Image.open(target.path).convert("RGB").save(new / "relisted.jpg", quality=40)
    Image.open(bare.path).convert("RGB").save(new / "relisted2.jpg", quality=40)
    samples = [
        Sample("relisted", new / "relisted.jpg", ""),
        Sample("relisted2", new / "relisted2.jpg", ""),
    ]
    config = FinderConfig(workers=0, progress=False)
    result = find_against(descriptor, embedder, samples, tmp_path / "idx", config)
    not_compared = {f.id: f.reason for f in result.catalog_failures}
    assert target.id in not_compared and bare.id in not_compared
    assert "no 'image' path" in not_compared[bare.id]
    assert not result.failures and result.read == 2  # the inputs themselves were read
    assert f"catalog items not compared {len(not_compared)}" in result.summary()
    paths = write_report(result, tmp_path / "report")
    with open(paths["catalog_failed"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"]: r["reason"] for r in rows} == not_compared
    assert paths["failed"].read_text() == "id,reason\n"  # the inputs' list keeps its columns
    assert {d["id"] for d in to_json(result)["catalog_failed"]} == set(not_compared)
    assert "Catalog items not compared" in paths["html"].read_text()
