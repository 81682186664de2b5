"""The catalog store: items read back by column name, lookups beyond SQLite's variable limit."""

from __future__ import annotations

import numpy as np

from index.store import CatalogStore


def test_lookups_of_more_ids_than_one_query_binds(tmp_path):
    store = CatalogStore(tmp_path / "catalog.sqlite", create=True)
    n = 2500  # ~3 chunks of bound variables
    fids = np.arange(n, dtype=np.int64) * 3
    ids = [f"id-{i}" for i in range(n)]
    with store.transaction():
        store.insert_items(fids, ids, [{"shelf": f"s{i % 1000}"} for i in range(n)])
    assert store.fids_for_ids([*ids, "unknown"]) == dict(zip(ids, fids.tolist(), strict=True))
    items = store.lookup(fids[::-1])
    assert len(items) == n and items[9].id == "id-3" and items[9].metadata == {"shelf": "s3"}
    assert store.get("id-3") == items[9]
    shelves = {"shelf": [f"s{i}" for i in range(1000)]}  # one filter value per bound variable
    np.testing.assert_array_equal(store.filter_fids(shelves), fids)
    store.close()
