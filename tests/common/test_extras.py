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
    extras._declared_requirements.cache_clear()
    try:
        assert install_hint("ocr") == "pip install 'phonesim[ocr]'"
    finally:
        extras._declared_requirements.cache_clear()


def test_the_metadata_is_read_once_for_all_hints(monkeypatch):
    """Every CLI start builds parsers that ask for several hints: one metadata read serves all."""
    reads = []
    real = importlib.metadata.requires

    def counting(name: str) -> list[str] | None:
        reads.append(name)
        return real(name)

    monkeypatch.setattr(extras.importlib.metadata, "requires", counting)
    extras._declared_requirements.cache_clear()
    try:
        hints = [install_hint(extra) for extra in ("ocr", "metric", "heif", "ocr")]
    finally:
        extras._declared_requirements.cache_clear()
    assert len(reads) == 1 and hints[0] == hints[3]
