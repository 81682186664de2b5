"""Child Python processes run phonesim's own modules, never a same-named file where they run."""

from __future__ import annotations

import subprocess
import sys

from common import child
from common.child import CODE_ROOT, python_child_env


def test_a_child_imports_phonesims_package_not_the_working_directorys(tmp_path):
    (tmp_path / "server.py").write_text("raise SystemExit('the user file was imported')\n")
    code = "import server; print(server.__file__)"
    plain = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert "the user file was imported" in plain.stderr  # what happened before
    ours = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=python_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip().startswith(str(CODE_ROOT))


def test_an_installed_code_root_is_not_put_before_the_standard_library(monkeypatch):
    """Installed, the code root is site-packages: first on PYTHONPATH it came before the
    standard library (a stale backport there would shadow it)."""
    assert python_child_env({"PYTHONPATH": "/x"})["PYTHONPATH"].split(":")[0] == str(CODE_ROOT)
    monkeypatch.setattr(child, "_in_site_packages", lambda folder: True)
    env = python_child_env({"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"] == "/x" and env["PYTHONSAFEPATH"] == "1"
