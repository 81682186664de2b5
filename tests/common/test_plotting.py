"""Report plots where HOME cannot be written (a container's service user)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

DRAWS = """
import sys
from pathlib import Path
import numpy as np
from embedder.evaluate import plot_confusion
plot_confusion(np.eye(3, dtype=int), ["a", "b", "c"], Path(sys.argv[1]) / "cm.png")
"""


@pytest.mark.parametrize("home_writable", [False, True])
def test_a_plot_needs_no_writable_home_and_leaves_only_itself(tmp_path, home_writable):
    """matplotlib warned two lines on each run where ~/.config could not be written, rebuilt its
    font cache each time, and failed where /tmp was read-only as well."""
    home = tmp_path / "home"
    if home_writable:
        home.mkdir()
    else:
        home.write_text("a file: nothing can be made under it")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    for name in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", DRAWS, str(out)], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "matplotlib" not in done.stderr.lower(), done.stderr
    assert [p.name for p in out.iterdir()] == ["cm.png"]  # no scratch folder left behind
    assert (out / "cm.png").read_bytes().startswith(b"\x89PNG")
    if home_writable:  # matplotlib's own folder, as before
        assert (home / ".config" / "matplotlib").is_dir()
