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


def test_build_refuses_to_overwrite_unless_asked(flat_dir, small):
    xb, _, ids, _ = small
    with pytest.raises(BuildInputError, match="overwrite"):
        build_index(flat_dir, ids[:10], xb[:10], model_name=MODEL, checkpoint_hash=HASH)
    build_index(flat_dir, ids[:10], xb[:10], model_name="m2", checkpoint_hash=HASH, overwrite=True)
    with open_index(flat_dir) as ix:
        assert len(ix) == 10 and ix.manifest.model_name == "m2"
    assert [p.name for p in flat_dir.parent.iterdir() if p.name.startswith(".")] == []
