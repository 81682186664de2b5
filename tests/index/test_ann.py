"""FAISS kinds: which factory for which request, and ids kept readable."""

from __future__ import annotations

import os

import numpy as np
import pytest

from index import ann, build_index, open_index
from index.sizing import TRAIN_POINTS_PER_LIST, ivf_nlist
from tests.index.synthetic import HASH, MODEL


def test_auto_kind_is_flat_for_small_and_ivf_for_large_catalogs():
    assert ann.resolve_kind("auto", 10) == ("flat", "Flat")
    assert ann.resolve_kind("auto", ann.AUTO_FLAT_MAX - 1)[0] == "flat"
    kind, factory = ann.resolve_kind("auto", 1_000_000)
    assert kind == "ivf" and factory == "IVF2048_HNSW32,Flat"
    assert ann.resolve_kind("IVF16,Flat", 10) == ("factory", "IVF16,Flat")
    assert ivf_nlist(1000) * TRAIN_POINTS_PER_LIST <= 1000


def test_an_idmap_factory_still_returns_stored_vectors(tmp_path, small):
    xb, _, ids, _ = small
    build_index(tmp_path / "ix", ids, xb, model_name=MODEL, checkpoint_hash=HASH, kind="IDMap,Flat")
    with open_index(tmp_path / "ix", readonly=True) as ix:
        np.testing.assert_allclose(ix.get_vectors([ids[5]])[0], xb[5], atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "IVF16,SQ8"])
def test_a_faiss_file_is_checked_without_loading_and_damage_is_one_error(tmp_path, small, kind):
    """`serve` checks the file before its workers start: a damaged one was a FAISS traceback
    in every worker (exit 3)."""
    from index.errors import IndexCorruptError

    xb, _, ids, md = small
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind=kind)
    (path,) = (tmp_path / "ix").glob("*.faiss")
    ann.check_file(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError, match="cannot read FAISS index"):
        ann.check_file(path)


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("IVF32,Flat", ["coarse quantizer (32 centroids) on 300 vectors"]),
        ("PQ4", ["product"]),
        # An OPQ rotation trains quantizers of its own: 408 FAISS lines for OPQ8,IVF16,PQ8.
        ("OPQ4,IVF8,PQ4", ["OPQ rotation's quantizer", "coarse quantizer", "product"]),
    ],
)
def test_too_few_training_points_is_one_logged_warning_not_faiss_stderr(
    capfd, caplog, factory, expected
):
    """FAISS printed its clustering warning straight to stderr, past `-q` and the log format,
    once per k-means (eight lines for a PQ8)."""
    xb = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    index = ann.create(factory, 16)
    with caplog.at_level("WARNING", logger="index.ann"):
        ann.train(index, xb)
    assert index.is_trained
    assert "WARNING clustering" not in capfd.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if "FAISS advises" in r.getMessage()]
    assert len(warnings) == len(expected)
    assert all(want in got for want, got in zip(expected, warnings, strict=True))


def test_a_snapshot_that_does_not_fit_on_the_disk_is_an_error_not_a_short_file(tmp_path):
    """FAISS's own file writer only printed "close error: No space left on device" when the
    last buffered bytes did not fit, and returned: compaction committed the short file as the
    snapshot and deleted the one before it (every later open failed; vectors lost)."""
    import errno
    import shutil
    import subprocess

    import faiss

    from index import ann

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        index = faiss.IndexFlatIP(64)
        index.add(np.random.default_rng(0).standard_normal((4000, 64)).astype(np.float32))
        size = len(faiss.serialize_index(index))  # about 1 MB
        free = shutil.disk_usage(disk).free
        # Leave room for all but the last page of the file: only the final flush fails.
        filler = disk / "filler"
        with open(filler, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, free - (size // 4096) * 4096)
        with pytest.raises(OSError) as caught:
            ann.write(index, disk / "vectors.faiss")
        assert caught.value.errno in (errno.ENOSPC, errno.EIO)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no short file, no temp
        filler.unlink()
        ann.write(index, disk / "vectors.faiss")  # with room, it is written whole
        assert ann.read(disk / "vectors.faiss").ntotal == 4000
    finally:
        subprocess.run(["umount", str(disk)], check=False)
