"""The CLI's error reporting: one line and an exit code, never a traceback."""

from __future__ import annotations

import errno
import logging

import pytest

from common.errors import UserError, configure_logging, describe_os_error, run_reporting_errors


def _raising(exc: BaseException):  # noqa: ANN202
    def run(_args):  # noqa: ANN001, ANN202
        raise exc

    return run


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (UserError("bad input"), 2, "tool: error: bad input"),
        (
            PermissionError(errno.EACCES, "Permission denied", "/ro/out.h5"),
            1,
            "tool: error: /ro/out.h5: Permission denied",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/a/.tmp", None, "/a/b"),
            1,
            "tool: error: /a/.tmp -> /a/b: No space left on device",
        ),
        (KeyboardInterrupt(), 130, "tool: interrupted"),
    ],
)
def test_errors_become_one_line(capsys, exc, code, line):
    assert run_reporting_errors("tool", _raising(exc), None) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [line]


def test_a_store_the_environment_named_is_said_to_come_from_it(capsys, monkeypatch):
    """With $PHONESIM_STORE set, export, duplicates and index commands work on that store
    unasked, and a refusal named only its URL."""
    url = "postgresql://x@127.0.0.1:1/db"
    error = UserError(f"{url}: unavailable (connection refused)")
    monkeypatch.delenv("PHONESIM_STORE", raising=False)
    run_reporting_errors("tool", _raising(error), None)
    assert "PHONESIM_STORE" not in capsys.readouterr().err
    hint = "(the store $PHONESIM_STORE names; --store '' for none)"
    # Stores are named without password or options, with the default port.
    for given in (url, "postgresql://x:secret@127.0.0.1:1/db?sslmode=require"):
        monkeypatch.setenv("PHONESIM_STORE", given)
        run_reporting_errors("tool", _raising(error), None)
        assert capsys.readouterr().err.strip().endswith(hint), given
    monkeypatch.setenv("PHONESIM_STORE", "postgres://u@db.example/phonesim")
    run_reporting_errors(
        "tool", _raising(UserError("postgresql://u@db.example:5432/phonesim")), None
    )
    assert capsys.readouterr().err.strip().endswith(hint)


def test_os_error_without_a_path():
    assert describe_os_error(OSError("connection reset")) == "connection reset"


def test_other_errors_are_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        run_reporting_errors("tool", _raising(ZeroDivisionError()), None)


def test_faiss_loader_info_is_quiet_unless_verbose():
    configure_logging()
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
    configure_logging(verbose=True)
    assert logging.getLogger("faiss.loader").isEnabledFor(logging.DEBUG)


def test_an_hdf5_write_failure_is_one_line_naming_the_file():
    """h5py raises HDF5's own multi-line report, with no errno or path on the exception."""
    raw = (
        "Can't close file (file write failed: time = Sat Dec  5 07:02:05 2026\n, filename = "
        "'/d/e.h5.partial/.shard-0.h5.tmp', file descriptor = 6, errno = 28, error message = "
        "'No space left on device', buf = 0x55bf, total write size = 15360, offset = 8192)"
    )
    assert (
        describe_os_error(OSError(raw))
        == "/d/e.h5.partial/.shard-0.h5.tmp: No space left on device"
    )
    assert describe_os_error(OSError("two\nlines")) == "two lines"


def test_a_reader_that_leaves_early_is_no_error() -> None:
    """`phonesim index info --json | head` printed "phonesim: error: Broken pipe"."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\nfrom common.errors import reporting_errors\n"
        "def run():\n    for _ in range(20000):\n        print('x' * 100)\n"
        "sys.exit(reporting_errors('tool', run))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.read(10) == b"x" * 10
    proc.stdout.close()  # the reader leaves, as `head` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""


PRINTS_NON_ASCII = r"""
import os, sys
from common.errors import reporting_errors
name = os.fsdecode(b"x\xe9y")  # a file name this locale cannot decode: a surrogate
sys.exit(reporting_errors("t", lambda: print("t\u00e9l\u00e9phone \u4e2d", name)))
"""


@pytest.mark.parametrize("utf8_mode", ["0", "1"])
def test_stdout_without_utf8_escapes_what_it_cannot_write(utf8_mode):
    """``LC_ALL=C PYTHONUTF8=0``: printing a non-ASCII catalog id was a UnicodeEncodeError
    traceback. It is escaped as stderr would; an undecodable file name's byte goes out as it
    came in."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": utf8_mode, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run(
        [sys.executable, "-c", PRINTS_NON_ASCII], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    if utf8_mode == "0":
        assert done.stdout == b"t\\xe9l\\xe9phone \\u4e2d x\xe9y\n"
    else:  # UTF-8 mode: written as it is
        assert done.stdout == "t\u00e9l\u00e9phone \u4e2d x".encode() + b"\xe9y\n"
