"""Mapper stage: checkpoint to embeddings, bad images per row."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.checkpoint import checkpoint_hash
from export import ExportError
from export.mapper import EmbedMapper, embed_records, records_to_batch


def test_mapper_reports_bad_images_per_row(demo, ckpt):
    mapper = EmbedMapper(str(ckpt), expected_hash=checkpoint_hash(ckpt))
    good = sorted(demo.rglob("*.jpg"))[:2]
    records = {
        "index": np.array([10, 11, 12]),
        "path": np.array([str(good[0]), str(demo / "broken.jpg"), str(good[1])], dtype=object),
    }
    out = mapper(records)
    assert out["embedding"].shape == (3, mapper.embedder.dim)
    assert out["error"][0] == "" and "not a recognised" in out["error"][1] and out["error"][2] == ""
    batch = records_to_batch(out)
    assert (batch.start, batch.end) == (10, 13) and batch.indices.tolist() == [10, 12]
    assert [i for i, _ in batch.failures] == [11]
    direct = mapper.embedder.embed_paths(good)
    np.testing.assert_allclose(batch.embeddings, direct.embeddings, atol=1e-5)
    out["index"] = np.array([10, 12, 11])
    with pytest.raises(RuntimeError, match="out of order"):
        records_to_batch(out)
    with pytest.raises(ExportError, match="differs"):
        EmbedMapper(str(ckpt), expected_hash="0" * 64)
    assert embed_records(mapper.embedder, {"index": np.zeros(0), "path": []})["error"].size == 0
