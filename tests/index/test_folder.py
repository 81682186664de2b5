"""An index folder described on disk and by the opened index, in one vocabulary."""

from __future__ import annotations

from index import open_index
from index.folder import describe


def test_describe_and_info_agree(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        ix.add(["new"], xq[:1])
        info = ix.info()
        on_disk = describe(flat_dir)
    assert info == {**on_disk, "hidden_removed": 0, "disk_bytes": info["disk_bytes"]}
    assert on_disk["count"] == 3001 and on_disk["journal_pending"] == 1
    assert on_disk["faiss_file"] == "vectors-000000000000.faiss"
