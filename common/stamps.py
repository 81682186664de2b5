"""Stamps that say when and with which software something was made: a checkpoint, an index
build, a report, a benchmark's figures."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version


def utc_now() -> str:
    """The time now, ISO 8601 in UTC to the second (``2026-12-06T16:19:05+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """The installed version of each distribution in ``names``; absent ones left out."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@functools.cache
def phonesim_version() -> str | None:
    """The installed package's version (None for a checkout run without installing it)."""
    return package_versions(["phonesim"]).get("phonesim")
