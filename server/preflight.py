"""The ``serve`` preflight: mistakes are one-line errors before any worker starts.

The checks that read the checkpoint (:func:`server.loading.check_for_serving`) need the
model libraries (torch, timm: about 1 GB resident). The gunicorn master only forks and watches
workers, so it must not hold them: it runs those checks in a short child process
(``python -m server.preflight``) and reads back one line. This module imports neither.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

from common.child import python_child_env
from common.errors import MachineError, UserError, message_line
from server.config import GunicornSettings, ServerConfig

USER_ERROR_EXIT = 2
MACHINE_ERROR_EXIT = 3  # the child's own code for a MachineError (1 is Python's own failure)
CHILD_TIMEOUT_S = 300.0  # the checks read two small files and hash the checkpoint


def preflight(config: ServerConfig, settings: GunicornSettings) -> None:
    """Check the inputs before forking workers; raise :class:`UserError` on the first problem."""
    if not config.checkpoint or not (config.index or config.store):
        raise UserError("serve needs --checkpoint and --index (or a PostgreSQL --store)")
    if settings.workers < 1 or settings.threads < 1:
        raise UserError("--workers and --threads must be at least 1")
    # A socket handed down (gunicorn's USR2 re-exec, systemd's socket activation) is held by
    # design: the port is taken, and this process is meant to serve it.
    if not (os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS")):
        check_address(settings.host, settings.port)
    check_in_child(config)


def check_address(host: str, port: int) -> None:
    """Refuse an address this process cannot listen on (a port another server holds, an
    address of no interface here): gunicorn would retry for 5 s, print a dozen lines and
    exit 1. Bound and closed at once; SO_REUSEADDR, as gunicorn binds, so a port whose last
    connections are closing still passes."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host {host}: not an address here ({exc})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            hint = (
                ": another process listens there; stop it or pick another --port"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None


def check_in_child(
    config: ServerConfig, started: Callable[[subprocess.Popen], None] | None = None
) -> None:
    """Run :func:`~server.loading.check_for_serving` in a child process (see the module doc);
    ``started`` is given the child as it starts (a reload's check is stopped with the server)."""
    request = {
        "checkpoint": config.checkpoint,
        "index": config.index,
        "writable": config.writes_enabled,
        "runtime": config.runtime,
        "store": config.store,
        "read_text": config.read_text,
        "text_cues": config.text_cues,
        "device": config.device,
    }
    with subprocess.Popen(
        [sys.executable, "-m", "server.preflight", json.dumps(request)],
        env=python_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        if started is not None:
            started(child)
        try:
            _, stderr = child.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise UserError(f"the serve preflight took over {CHILD_TIMEOUT_S:.0f} s") from None
    code = child.returncode
    if code == 0:
        return
    if code < 0:  # killed by a signal: "exit status -11" had said nothing, exit 2
        raise MachineError(
            f"the serve preflight (loading the model and index in a child process) was "
            f"killed by {signal_name(-code)}: the machine may be short of memory "
            "(an address-space or container limit, or the kernel's OOM killer)"
        )
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {code}"
    if code == USER_ERROR_EXIT:
        raise UserError(last)
    if code == MACHINE_ERROR_EXIT:
        raise MachineError(last)
    raise UserError(f"the serve preflight failed: {_exception_text(lines) or last}")


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11; ``signal 99`` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _exception_text(lines: list[str]) -> str:
    """The exception a traceback ends with, all its lines (a database error's last line is a
    caret under the statement), joined and cut to 500 characters."""
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if not frames:
        return ""
    rest = lines[frames[-1] + 1 :]
    while rest and rest[0].startswith(" "):  # the frame's source line(s)
        rest = rest[1:]
    return " ".join(line.strip() for line in rest)[:500]


def main(argv: list[str] | None = None) -> int:
    """Child side: check, print a :class:`UserError` as one line on stderr (exit 2)."""
    request = json.loads((argv or sys.argv[1:])[0])
    from server.loading import check_for_serving  # the model libraries: this process only

    try:
        check_for_serving(
            request["checkpoint"],
            request["index"],
            writable=request["writable"],
            runtime=request["runtime"],
            store=request["store"],
            read_text=request["read_text"],
            text_cues=request["text_cues"],
            device=request.get("device"),
        )
    except MachineError as exc:  # a full disk under the index: the parent exits 1, not 2
        print(message_line(exc), file=sys.stderr)
        return MACHINE_ERROR_EXIT
    except UserError as exc:
        print(message_line(exc), file=sys.stderr)
        return USER_ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
