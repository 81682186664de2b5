"""The advice given for a format version this phonesim does not read."""

from __future__ import annotations

import pytest

from common.versions import version_problem

FIX = "rebuild it"


@pytest.mark.parametrize("found", [1, 2])
def test_a_readable_version_has_no_problem(found):
    assert version_problem(found, (1, 2), FIX) is None


def test_a_newer_version_says_to_upgrade_not_to_rebuild():
    """'Rebuild' would overwrite a newer phonesim's catalog in a rolling upgrade."""
    problem = version_problem(3, (1, 2), FIX)
    assert "newer than this phonesim reads (1, 2)" in problem and "upgrade phonesim" in problem
    assert FIX not in problem


@pytest.mark.parametrize(
    ("found", "shown"),
    [(None, "no format_version"), ("2", "format_version '2'"), (True, "True"), (0, " 0 ")],
)
def test_a_missing_odd_or_older_version_names_the_value_and_the_fix(found, shown):
    """'2' (a string) had read "version 2 is not supported (this phonesim reads 1, 2)"."""
    problem = version_problem(found, (1, 2), FIX)
    assert shown in problem and problem.endswith(FIX) and "upgrade" not in problem
