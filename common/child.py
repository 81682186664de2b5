"""The environment of a child Python process that runs one of phonesim's own modules."""

from __future__ import annotations

import os
import site
import sysconfig
from collections.abc import Mapping
from pathlib import Path

#: The folder holding phonesim's packages (the checkout, or site-packages when installed).
CODE_ROOT = Path(__file__).resolve().parents[1]


def python_child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) for a ``python -m server.preflight`` or
    ``python -m phonesim``: the code root first on the path, and the working directory not on
    it at all (``PYTHONSAFEPATH``, Python 3.11+): a user's own ``server.py`` or ``index.py``
    there was imported in place of phonesim's packages of those names."""
    env = dict(os.environ if base is None else base)
    if not _in_site_packages(CODE_ROOT):  # a checkout: installed, the path finds it already
        # (and site-packages first on PYTHONPATH would come before the standard library)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CODE_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONSAFEPATH"] = "1"
    return env


def _in_site_packages(folder: Path) -> bool:
    paths = sysconfig.get_paths()
    roots = [*site.getsitepackages(), site.getusersitepackages()]
    roots += [paths["purelib"], paths["platlib"]]
    return any(Path(root).resolve() == folder for root in roots)
