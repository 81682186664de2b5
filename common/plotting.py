"""matplotlib for the reports' PNGs, on a server or in a container.

matplotlib keeps its config and font cache under ``~/.config`` and ``~/.cache``. Where HOME
cannot be written (a container's service user), it warned two lines on every run and failed
outright where /tmp was read-only too. There it is given a scratch folder beside the report
being written, removed afterwards (so its font cache is still built on each such run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from common.fsutil import folder_write_problem

CONFIG_ENV = "MPLCONFIGDIR"


def _own_folders_writable() -> bool:
    """Whether matplotlib can keep its config and cache where it looks by default."""
    if os.environ.get(CONFIG_ENV) or "matplotlib" in sys.modules:
        return True  # the user's choice, or already settled in this process
    home = Path(os.path.expanduser("~"))
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "matplotlib"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "matplotlib"
    # matplotlib makes the folders itself: where it could (a real write, not the mode bits).
    return all(folder_write_problem(f, created=True) is None for f in (config, cache))


@contextlib.contextmanager
def pyplot(beside: Path) -> Iterator[ModuleType]:
    """``matplotlib.pyplot`` on the Agg backend (no display). ``beside``: the folder of the
    file being drawn, whose scratch subfolder holds matplotlib's config where its own cannot."""
    scratch = None
    if not _own_folders_writable():
        scratch = tempfile.mkdtemp(prefix=".matplotlib-", dir=beside)
        os.environ[CONFIG_ENV] = scratch
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        yield plt
    finally:
        if scratch is not None:
            os.environ.pop(CONFIG_ENV, None)
            shutil.rmtree(scratch, ignore_errors=True)
