"""Building an index folder: refusals and clean failures."""

from __future__ import annotations

import pytest

from index import build_index, open_index
from index.errors import BuildInputError, InvalidKindError
from tests.index.synthetic import HASH, MODEL


def test_bad_factory_string_is_a_clear_error(tmp_path, small):
    xb, _, ids, _ = small
    with pytest.raises(InvalidKindError, match="NotAnIndex"):
        build_index(
            tmp_path / "ix", ids, xb, model_name=MODEL, checkpoint_hash=HASH, kind="NotAnIndex"
        )
    assert not (tmp_path / "ix").exists()


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("PQ7", "should be a multiple of the number of subquantizers"),
        ("IVF4096,Flat", "should be at least as large as number of clusters (4096)"),
    ],
)
def test_faiss_refusals_say_the_reason_without_faiss_internals(tmp_path, small, kind, reason):
    """FAISS puts a C++ signature and source location before its reason; only the reason,
    and the kind asked for, reach the user."""
    xb, _, ids, _ = small
    with pytest.raises(InvalidKindError) as caught:
        build_index(tmp_path / "ix", ids, xb, model_name=MODEL, checkpoint_hash=HASH, kind=kind)
    message = str(caught.value)
    assert reason in message
    for internal in ("Error in", "faiss::", ".cpp", "failed:"):
        assert internal not in message
    assert not (tmp_path / "ix").exists()


def test_build_refuses_to_overwrite_unless_asked(flat_dir, small):
    xb, _, ids, _ = small
    with pytest.raises(BuildInputError, match="overwrite"):
        build_index(flat_dir, ids[:10], xb[:10], model_name=MODEL, checkpoint_hash=HASH)
    build_index(flat_dir, ids[:10], xb[:10], model_name="m2", checkpoint_hash=HASH, overwrite=True)
    with open_index(flat_dir) as ix:
        assert len(ix) == 10 and ix.manifest.model_name == "m2"
    assert [p.name for p in flat_dir.parent.iterdir() if p.name.startswith(".")] == []
