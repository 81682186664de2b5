"""A small flat index built from a seeded clustered catalog, shared by the index tests."""

from __future__ import annotations

import pytest

from index import build_index
from tests.index.synthetic import HASH, MODEL, make_catalog


@pytest.fixture(scope="module")
def small():
    return make_catalog(3000)


@pytest.fixture
def flat_dir(tmp_path, small):
    xb, _, ids, md = small
    build_index(tmp_path / "ix", ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="flat")
    return tmp_path / "ix"
