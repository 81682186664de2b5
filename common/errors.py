"""Errors that the CLI reports as one line instead of a traceback."""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import io
import logging
import os
import re
import select
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from common import stopping
from common.argtypes import STORE_ENV


class UserError(Exception):
    """Bad input from the user: a missing path, a malformed manifest, an incompatible index.
    A command ends with :attr:`exit_code`."""

    exit_code = 2


class MachineError(UserError):
    """The machine failed the work (a full disk, an I/O error), not the input: exit 1, as an
    ``OSError`` is. A :class:`UserError` still, so every handler of those answers it."""

    exit_code = 1


class OutOfResourcesError(MachineError):
    """The machine ran out of memory, file descriptors or threads while doing the work: not
    the input's fault and not a fact about it. A server answers 503 (try again) and a batch
    job stops (exit 1, its progress kept) instead of recording the item as unreadable."""


# What running out of descriptors, memory or buffers says as an OSError.
_EXHAUSTED_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def resources_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` says the machine ran out (memory, descriptors, threads), not the input
    is bad: Pillow importing a format plugin with no descriptor left raised EMFILE, and every
    photo of a batch was "cannot decode image"."""
    if isinstance(exc, MemoryError | OutOfResourcesError):
        return True
    if isinstance(exc, OSError) and exc.errno in _EXHAUSTED_ERRNOS:
        return True
    # C++ libraries (ONNX Runtime, torch) say it in their own exception types' text. Not in
    # the kinds that quote their input (a KeyError naming an id "out of memory").
    if isinstance(exc, ValueError | LookupError | TypeError | UserError):
        return False
    text = str(exc).lower()
    return any(sign in text for sign in _EXHAUSTED_TEXT)


_EXHAUSTED_TEXT = (
    "can't start new thread",
    "bad_alloc",  # std::bad_alloc, through ONNX Runtime's Fail
    "failed to allocate memory",  # ONNX Runtime's arena
    "defaultcpuallocator: can't allocate memory",  # torch
    "out of memory",  # CUDA, and others
)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def configure_logging(*, verbose: bool = False, quiet: bool = False) -> None:
    """Timestamped log lines on stderr: INFO by default, DEBUG with -v, warnings only with -q."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
    # faiss logs which CPU build it loaded at INFO on every start: noise for a CLI user.
    logging.getLogger("faiss.loader").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # matplotlib's font search is about 100 DEBUG lines under -v: nothing of the run's own.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.INFO if verbose else logging.WARNING)


# HDF5's own report of a failed write (h5py raises it as an OSError without errno or path):
# "Can't close file (file write failed: time = ..., filename = '...', ..., errno = 28, error
# message = 'No space left on device', buf = ...)".
_HDF5_FAILURE = re.compile(
    r"filename = '(?P<path>[^']*)'.*error message = '(?P<reason>[^']*)'", re.S
)


def message_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none (a bare
    ``assert`` in a library, for one); library messages run over many lines."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_os_error(exc: OSError) -> str:
    """``path: reason`` for a failed file operation (both paths for a rename), on one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    hdf5 = _HDF5_FAILURE.search(reason) if not paths else None
    if hdf5:
        paths, reason = [hdf5["path"]], hdf5["reason"]
    reason = " ".join(reason.split())  # one line, whatever the library wrote
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


#: What a Unix tool killed by SIGPIPE exits with (128 + 13).
SIGPIPE_EXIT = 141


def _stdout_left() -> bool:
    """Whether stdout's reader has gone (a pipe whose read end closed polls as an error), not
    some other pipe or socket. Then stdout is pointed at /dev/null, so Python's flush at exit
    does not fail a second time ("Exception ignored ... BrokenPipeError")."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture)
        return False
    if not any(flags & (select.POLLERR | select.POLLHUP) for _, flags in events):
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


def run_reporting_errors(
    prog: str,
    run: Callable[[argparse.Namespace], int | None],
    args: argparse.Namespace,
    *,
    verbose: bool = False,
    quiet: bool = False,
    interrupted: str | Callable[[], str] = "interrupted",
    own_signals: bool = False,
) -> int:
    """Run a command with logging set up; bad input and Ctrl-C become one line and an exit code.

    SIGTERM (timeout, systemd, Kubernetes) stops it as Ctrl-C does (:mod:`common.stopping`),
    so that what it half wrote is removed: it had ended `index build`, `snapshot` and
    `restore` at once, leaving full-size hidden folders. ``own_signals``: a command that
    handles its own (a server)."""
    configure_logging(verbose=verbose, quiet=quiet)
    with contextlib.nullcontext() if own_signals else stopping.signals_stop():
        return reporting_errors(prog, lambda: run(args), interrupted=interrupted)


def _store_source(message: str) -> str:
    """Where a store URL in ``message`` came from, when the environment gave it: a command
    run with ``$PHONESIM_STORE`` set works on that store unasked, and its errors named only
    the URL."""
    env = os.environ.get(STORE_ENV, "").strip()
    if not env or STORE_ENV in message:
        return ""
    # Messages name a store as postgresql://user@host:port/db, without its password or
    # options and with the default port: match on host, port and database.
    try:
        url = urlsplit(env)
        where = f"@{url.hostname or 'localhost'}:{url.port or 5432}{url.path}"
    except ValueError:  # not a URL (a conninfo string): its own text, then
        where = env
    if env in message or where in message:
        return f" (the store ${STORE_ENV} names; --store '' for none)"
    return ""


def _escape_or_pass_bytes(exc: UnicodeError) -> tuple[str | bytes, int]:
    """An encoding error handler: a byte a path could not be decoded with (surrogateescape's
    U+DC80..U+DCFF) is written back as that byte, any other character as a ``\\xe9`` escape."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    char = exc.object[exc.start]
    if "\udc80" <= char <= "\udcff":
        return bytes([ord(char) - 0xDC00]), exc.start + 1
    return char.encode("ascii", "backslashreplace").decode("ascii"), exc.start + 1


codecs.register_error("phonesim.escape", _escape_or_pass_bytes)


def _stdout_writes_any_text() -> None:
    """Under a locale without UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``, an old cron) stdout
    is ASCII: a catalog id such as "téléphone" ended ``index query`` with a UnicodeEncodeError
    traceback. Characters it cannot write come out as ``\\xe9`` escapes, as Python's stderr
    writes them; undecodable bytes of file names still go out as they came in."""
    stream = sys.stdout
    if not isinstance(stream, io.TextIOWrapper) or stream.errors not in (
        "strict",
        "surrogateescape",
    ):
        return
    try:
        "\u00e9\u4e2d".encode(stream.encoding)
    except (UnicodeEncodeError, LookupError):
        with contextlib.suppress(ValueError, OSError):  # closed, or not reconfigurable
            stream.reconfigure(errors="phonesim.escape")


def reporting_errors(
    prog: str,
    run: Callable[[], int | None],
    *,
    interrupted: str | Callable[[], str] = "interrupted",
) -> int:
    """``run()``'s exit code; bad input (:class:`UserError`: 2), a refused file operation
    (``OSError``: 1) and Ctrl-C (130) as one line on stderr instead of a traceback. For the
    scripts, whose logging is their own; commands use :func:`run_reporting_errors`."""
    _stdout_writes_any_text()
    try:
        return int(run() or 0)
    except UserError as exc:
        print(f"{prog}: error: {exc}{_store_source(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_left():
            return SIGPIPE_EXIT  # `... --json | head`: the reader left, as a Unix tool's does
        # The machine said no (disk full, read-only, permission): say which path, not a traceback.
        logging.getLogger(prog).debug("traceback", exc_info=True)
        print(f"{prog}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        said = interrupted() if callable(interrupted) else interrupted  # what is left now
        print(f"{prog}: {said}", file=sys.stderr)
        return 130
