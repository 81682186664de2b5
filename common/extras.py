"""How to install an optional feature's packages, wherever phonesim was installed from.

``pip install -e '.[ocr]'`` works only in a checkout, and ``pip install 'phonesim[ocr]'`` only
where an index serves phonesim: a hint names the extra's packages themselves, as this
installation's metadata lists them (so they never disagree with ``pyproject.toml``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import shlex

DISTRIBUTION = "phonesim"


@functools.cache
def _declared_requirements() -> tuple[str, ...]:
    """The installed metadata's requirements, read once: the CLI's parsers ask for several hints
    while building their help, and each read scans the installation (3-10 ms here)."""
    try:
        return tuple(importlib.metadata.requires(DISTRIBUTION) or ())
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return ()


def extra_requirements(extra: str) -> list[str]:
    """The requirements of ``extra`` (``rapidocr<4,>=3.10``), [] where none are known."""
    declared = _declared_requirements()
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    return [req.split(";", 1)[0].strip() for req in declared if marker.search(req)]


def install_hint(extra: str) -> str:
    """``pip install 'rapidocr<4,>=3.10'`` for ``extra`` ("ocr"), naming the extra."""
    packages = extra_requirements(extra)
    if not packages:
        return f"pip install '{DISTRIBUTION}[{extra}]'"
    return f"pip install {' '.join(shlex.quote(p) for p in packages)} (phonesim's '{extra}' extra)"
