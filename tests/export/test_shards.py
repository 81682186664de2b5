"""Writer stages: crash-safe shards, resuming them, assembling the final file."""

from __future__ import annotations

import numpy as np
import pytest

from export import ResumeError
from export.assemble import assemble
from export.mapper import FeatureBatch
from export.shards import JobIdentity, PartialDir, ShardWriter


def _identity(n: int) -> JobIdentity:
    return JobIdentity("hash", "m", dim=4, num_classes=2, inputs_fingerprint="fp", inputs_count=n)


def test_shards_commit_resume_and_assemble_without_a_model(tmp_path):
    from embedder.data import Sample

    samples = [Sample(f"id{i}", tmp_path / f"{i}.jpg", "x" if i % 2 else "") for i in range(7)]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(7, 4)).astype(np.float32)
    probs = rng.dirichlet([1, 1], size=7).astype(np.float32)
    out = tmp_path / "f.h5"

    def batch(lo: int, hi: int, bad: tuple[int, ...] = ()) -> FeatureBatch:
        ok = [i for i in range(lo, hi) if i not in bad]
        return FeatureBatch(lo, hi, np.array(ok), emb[ok], probs[ok], [(i, "bad") for i in bad])

    partial = PartialDir.open(out, _identity(7))
    writer = ShardWriter(partial, samples, shard_size=3)
    writer.write(batch(0, 2))
    writer.write(batch(2, 4, bad=(3,)))  # 4 inputs buffered >= 3: one shard
    writer.write(batch(4, 5))
    assert [(s.input_start, s.input_end) for s in partial.shards] == [(0, 4)]
    with pytest.raises(RuntimeError, match="expected 5"):
        writer.write(batch(6, 7))
    # "Crash" here: input 4 was only buffered. Reopening resumes after the committed shard.
    (partial.path / "shard-000000000004.h5.tmp").write_bytes(b"torn")
    again = PartialDir.open(out, _identity(7))
    assert again.cursor == 4 and not list(again.path.glob("*.tmp"))
    writer = ShardWriter(again, samples, shard_size=3)
    writer.write(batch(4, 7))
    writer.flush()
    h5, done = assemble(again, tmp_path / "assembled.h5", "float32", ["a", "b"], samples)
    with h5:
        ids = h5["ids"].asstr()[:].tolist()
        assert ids == ["id0", "id1", "id2", "id4", "id5", "id6"]
        assert h5["failed"].asstr()[:].tolist() == ["id3"]
        np.testing.assert_array_equal(h5["embeddings"][:], emb[[0, 1, 2, 4, 5, 6]])
        assert h5["predicted"][:].tolist() == probs[[0, 1, 2, 4, 5, 6]].argmax(1).tolist()
        assert h5["labels"].asstr()[:].tolist() == ["", "x", "", "", "x", ""]
    assert (done.count, done.failed) == (6, 1)
    with pytest.raises(ResumeError, match="different input list"):
        PartialDir.open(out, JobIdentity("hash", "m", 4, 2, "other", 7))


def test_a_shard_of_other_widths_is_refused_on_resume_not_a_broadcast_traceback(tmp_path):
    """A shard holding 512-d embeddings where the job makes 4-d ones (a hand edit, another
    writer) failed the assembly with "Can't broadcast (64, 512) -> (64, 1280)"."""
    import h5py

    from embedder.data import Sample

    samples = [Sample(f"id{i}", tmp_path / f"{i}.jpg", "") for i in range(3)]
    out = tmp_path / "f.h5"
    partial = PartialDir.open(out, _identity(3))
    writer = ShardWriter(partial, samples, shard_size=2)
    emb, probs = np.ones((2, 4), np.float32), np.full((2, 2), 0.5, np.float32)
    writer.write(FeatureBatch(0, 2, np.array([0, 1]), emb, probs, []))
    assert PartialDir.open(out, _identity(3)).cursor == 2  # as written, it resumes
    shard = partial.shards[0].path
    with h5py.File(shard, "a") as h5:
        del h5["embeddings"]
        h5.create_dataset("embeddings", data=np.ones((2, 7), np.float32))
    with pytest.raises(ResumeError, match="holds 7-d embeddings and 2 class probabilities"):
        PartialDir.open(out, _identity(3))
