"""A PostgreSQL catalog replaced under running replicas (`index restore --store`, `index build
--store --overwrite`): each takes up the new catalog's kind and search settings, refuses one
built with another embedder (and says so), and never writes into a catalog it did not load."""

from __future__ import annotations

from pathlib import Path

import pytest

from index import build_index, open_index
from index.errors import CatalogReplacedError
from index.pg_admin import push_folder
from tests.index.synthetic import HASH, MODEL, make_catalog
from tests.index.test_following import D, build, vec


def _replace(folder: Path, url: str, n: int, **settings) -> None:  # noqa: ANN003
    """Build another catalog of ``n`` items in ``folder`` and restore it into ``url``."""
    d = settings.pop("d", D)
    xb, _, _, md = make_catalog(n, seed=11, d=d)
    ids = [f"new-{i}" for i in range(n)]
    options = {"model_name": MODEL, "checkpoint_hash": HASH, "kind": "flat", **settings}
    build_index(folder, ids, xb, md, **options)
    push_folder(folder, url, overwrite=True)


def test_a_restored_catalog_of_another_kind_brings_its_kind_and_search_settings(
    tmp_path,
    pg_url,
):
    """The replica kept the flat manifest: it searched the restored IVF index without its
    tuned nprobe (recall@10 0.164 where a fresh replica had 1.000)."""
    spec = build(tmp_path / "ix", pg_url)
    with spec.open(readonly=True) as running:
        assert running.kind == "flat"
        _replace(tmp_path / "ivf", pg_url, 2000, kind="ivf")
        status = running.sync()
        assert status.store_error is None and status.catalog_error is None
        with open_index(None, store=pg_url, readonly=True) as fresh:
            assert running.kind == fresh.kind == "ivf"
            assert running.search_defaults == fresh.search_defaults != {}
            queries = make_catalog(20, seed=12, d=D)[0]
            ours, theirs = running.search(queries, 10), fresh.search(queries, 10)
            assert [[h.id for h in hits] for hits in ours] == [[h.id for h in t] for t in theirs]


@pytest.mark.parametrize(
    "other", [{"checkpoint_hash": "another-checkpoint"}, {"d": 8}], ids=["checkpoint", "dim"]
)
def test_a_catalog_of_another_embedder_is_reported_and_never_written_into(
    tmp_path,
    pg_url,
    other,
):
    """The replica took up the vectors of another checkpoint under its own manifest; with
    another dimension every sync raised (a traceback per tick) while its status said healthy,
    and a write through it put a 16-d record into the 8-d catalog, which broke every later
    open of the store."""
    spec = build(tmp_path / "ix", pg_url)
    with spec.open() as running:
        held = len(running)
        _replace(tmp_path / "other", pg_url, 30, **other)
        status = running.sync()
        assert status.store_error is None and not status.ok
        assert "built with a different embedder" in status.catalog_error
        assert "restart it with the new catalog's checkpoint" in status.catalog_error
        assert len(running) == held and running.search(vec(1), 1)  # answers from what it holds
        with pytest.raises(CatalogReplacedError, match="nothing was written"):
            running.add(["stale-write"], vec(3))
        with pytest.raises(CatalogReplacedError):
            running.remove(["sku-1"])
    with open_index(None, store=pg_url, readonly=True) as fresh:
        assert len(fresh) == 30 and "stale-write" not in fresh
        assert fresh.sync_status.head_seq == 0


def test_a_write_reaching_a_catalog_restored_since_the_last_sync_is_refused(
    tmp_path,
    pg_url,
):
    """A replica at journal record 0 took the restored catalog's record 1 for its own next
    record and applied it on top of the old catalog: a duplicate fid closed its index (every
    later search and sync raised "index is closed") for a write the store had made."""
    spec = build(tmp_path / "ix", pg_url)
    with spec.open() as running:
        assert running.sync_status.applied_seq == 0
        _replace(tmp_path / "other", pg_url, 30)
        with pytest.raises(CatalogReplacedError, match="catalog was replaced"):
            running.add(["late-write"], vec(5))
        with open_index(None, store=pg_url, readonly=True) as fresh:
            assert "late-write" not in fresh and fresh.sync_status.head_seq == 0
        status = running.sync()  # takes up the new catalog: then writes go in
        assert status.ok and len(running) == 30
        running.add(["late-write"], vec(5))
        assert running.search(vec(5), 1)[0][0].id == "late-write"
    with open_index(None, store=pg_url, readonly=True) as fresh:
        assert len(fresh) == 31 and "late-write" in fresh and "new-0" in fresh


@pytest.mark.parametrize("manifest", ["newer", "not json"])
def test_a_manifest_this_version_cannot_read_is_reported_not_raised_at_every_sync(
    tmp_path,
    pg_url,
    manifest,
):
    """A catalog written by a newer phonesim (a rolling upgrade), or a damaged manifest: the
    sync raised ManifestError at every tick (a traceback each in a server) while its status
    said healthy, and writes were told to retry after a reload that could never come."""
    import json

    import psycopg

    spec = build(tmp_path / "ix", pg_url)
    with spec.open() as running, psycopg.connect(pg_url, autocommit=True) as c:
        text = c.execute("SELECT value FROM state WHERE key='manifest'").fetchone()[0]
        newer = {**json.loads(text), "format_version": 99}
        value = json.dumps(newer) if manifest == "newer" else "{not json"
        c.execute("UPDATE state SET value=%s WHERE key='manifest'", (value,))
        c.execute("UPDATE state SET value='another' WHERE key='generation'")
        status = running.sync()
        assert status.store_error is None and status.catalog_error
        assert "state.manifest" in status.catalog_error
        with pytest.raises(CatalogReplacedError, match="nothing was written"):
            running.add(["during-upgrade"], vec(4))
        assert running.search(vec(1), 1)[0]  # reads go on from what it holds


def test_catalog_tables_of_another_schema_are_named_as_such_not_as_an_outage(
    tmp_path,
    pg_url,
):
    """A journal without its items column read 'unavailable (column "items" does not exist)':
    an outage to wait out, where retrying can never help."""
    import psycopg

    from index.errors import IndexCorruptError

    build(tmp_path / "ix", pg_url)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("ALTER TABLE journal DROP COLUMN items")
    with pytest.raises(IndexCorruptError, match="catalog tables are not those phonesim writes"):
        open_index(None, store=pg_url, readonly=True)
