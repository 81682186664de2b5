"""Install hints for optional features name the packages, not a checkout's `-e '.[X]'`."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import tomllib

from common import extras
from common.extras import install_hint

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_every_extra_hint_names_the_packages_pyproject_declares():
    """`pip install -e '.[ocr]'` failed outside a checkout ("does not appear to be a Python
    project"): the hint is the extra's own requirements, as installed metadata lists them."""
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for extra, requirements in declared.items():
        hint = install_hint(extra)
        assert hint.startswith("pip install ") and "-e" not in hint.split(), hint
        for requirement in requirements:
            name = re.split(r"[<>=!\[;]", requirement, maxsplit=1)[0]
            assert name in hint, (extra, name, hint)


def test_without_metadata_the_hint_names_the_extra(monkeypatch):
    def missing(name: str) -> list[str]:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(extras.importlib.metadata, "requires", missing)
    assert install_hint("ocr") == "pip install 'phonesim[ocr]'"
