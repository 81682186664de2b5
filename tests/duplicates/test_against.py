"""New listings checked against a catalog index."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.pg import pg_server, pg_url  # noqa: F401 - fixtures


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_against_index_reports_catalog_matches(
    tiny_catalog, tiny_checkpoint, descriptor, tmp_path, request, backend
):
    from duplicates.against import find_against
    from duplicates.finder import FinderConfig
    from embedder.data import Sample, load_catalog
    from embedder.inference import Embedder
    from index import build_index

    store = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    catalog = load_catalog(tiny_catalog / "catalog.csv").samples
    xb = embedder.embed_paths([s.path for s in catalog]).embeddings
    meta = [{"image": str(s.path.resolve()), "label": s.label} for s in catalog]
    build_index(
        tmp_path / "idx",
        [s.id for s in catalog],
        xb,
        meta,
        model_name=embedder.model_name,
        checkpoint_hash=embedder.checkpoint_hash,
        progress=False,
        store=store,
    )
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
    group = result.groups[0]
    assert group.keeper.id == target.id and group.keeper.source == "catalog"
    assert group.members[-1].id == "relisted" and group.members[-1].source == "input"
    # One image works too.
    single = find_against(descriptor, embedder, samples[:1], where, config, store=store)
    assert [m.id for m in single.groups[0].members][0] == target.id
