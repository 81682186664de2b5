"""Export settings are checked when built."""

from __future__ import annotations

import pytest

from common.errors import UserError
from export import ExportConfig


def test_config_rejects_bad_settings():
    with pytest.raises(UserError, match="dtype"):
        ExportConfig("c", "i", "o", dtype="float64")
    with pytest.raises(UserError, match="neighbors"):
        ExportConfig("c", "i", "o", neighbors=-1)
    for weight in (-0.1, float("nan"), float("inf")):
        with pytest.raises(UserError, match="class_rerank"):
            ExportConfig("c", "i", "o", class_rerank=weight)
