"""Snapshots larger than one PostgreSQL value may be (1 GB: about 200,000 vectors of 1280
floats) are stored in parts; tested with parts of a few KB."""

from __future__ import annotations

import psycopg
import pytest

from index import pg
from tests.index.test_following import N, build, vec


def _parts(url: str) -> list[tuple[int, int]]:
    with psycopg.connect(url) as c:
        return c.execute("SELECT seq, part FROM snapshot_parts ORDER BY seq, part").fetchall()


def _small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg, "SNAPSHOT_PART_BYTES", 4096)
    monkeypatch.setattr(pg, "SNAPSHOT_ONE_VALUE_MAX", 4096)


def test_a_snapshot_stored_in_parts_loads_whole_and_old_parts_go(
    tmp_path,
    pg_url,
    monkeypatch,
):
    _small_parts(monkeypatch)
    spec = build(tmp_path / "ix", pg_url)  # the pushed snapshot (record 0) is in parts
    assert {seq for seq, _ in _parts(pg_url)} == {0} and len(_parts(pg_url)) > 3
    with spec.open() as ix:
        expected = [h.id for h in ix.search(vec(2), 5)[0]]
        ix.add(["in-parts"], vec(2))
        assert ix.compact(force=True) is True
    assert {seq for seq, _ in _parts(pg_url)} == {1}  # record 0's parts went with its row
    with spec.open(readonly=True) as fresh:  # loads the parted snapshot of record 1
        assert len(fresh) == N + 1
        assert [h.id for h in fresh.search(vec(2), 6)[0]] == ["in-parts", *expected]
    # Larger than a part but within one value: one row, which older releases read.
    monkeypatch.setattr(pg, "SNAPSHOT_ONE_VALUE_MAX", 1 << 30)
    with spec.open() as ix:
        ix.remove(["in-parts"])
        assert ix.compact(force=True) is True
    assert _parts(pg_url) == []  # one row again; the parted one is gone
    with spec.open(readonly=True) as fresh:
        assert [h.id for h in fresh.search(vec(2), 5)[0]] == expected


def test_a_store_from_before_parts_gains_the_table_and_missing_parts_are_named(
    tmp_path,
    pg_url,
    monkeypatch,
):
    from index.errors import IndexCorruptError

    spec = build(tmp_path / "ix", pg_url)
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("DROP TABLE snapshot_parts")  # as made by an earlier phonesim
    _small_parts(monkeypatch)
    with spec.open() as ix:
        ix.add(["later"], vec(3))
        assert ix.compact(force=True) is True
    seq = _parts(pg_url)[0][0]
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("DELETE FROM snapshot_parts WHERE part = 1")
    with pytest.raises(IndexCorruptError, match=f"snapshot of record {seq}: its parts are missing"):
        spec.open(readonly=True)


def test_parts_left_by_an_older_push_do_not_stop_a_compaction(
    tmp_path,
    pg_url,
    monkeypatch,
):
    """An older phonesim's `restore --overwrite` numbers records from 0 again and drops only
    the tables it knows: parts left at the record a compaction then reached made it fail with
    a UniqueViolation traceback, for an operator and for every automatic compaction."""
    spec = build(tmp_path / "ix", pg_url)
    _small_parts(monkeypatch)
    with psycopg.connect(pg_url, autocommit=True) as c:  # as left behind by the older push
        c.cursor().executemany(
            "INSERT INTO snapshot_parts(seq, part, data) VALUES (%s, %s, %s)",
            [(1, part, b"stale") for part in range(3)],
        )
    with spec.open() as ix:
        ix.add(["later"], vec(3))
        assert ix.compact(force=True) is True
    assert {seq for seq, _ in _parts(pg_url)} == {1} and len(_parts(pg_url)) > 3
    with spec.open(readonly=True) as fresh:
        assert len(fresh) == N + 1 and fresh.search(vec(3), 1)[0][0].id == "later"


def test_a_snapshot_kept_as_one_value_can_be_read_back():
    """A value is read as hex text ("\\x" and two digits a byte) and PostgreSQL allocates at
    most 1 GB - 1: at 768 MiB a snapshot was written as one value and never read back
    ("invalid memory alloc request size 1258291203"). Parts read one at a time."""

    def hex_text(n_bytes: int) -> int:
        return 2 + 2 * n_bytes

    limit = 2**30 - 1
    assert max(hex_text(pg.SNAPSHOT_ONE_VALUE_MAX), hex_text(pg.SNAPSHOT_PART_BYTES)) < limit
