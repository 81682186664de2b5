"""A real PostgreSQL server for the tests: Debian's binaries on a temporary folder and a free
port on 127.0.0.1, started once per session and stopped at its end (``pg_ctl``, then the PID).

Use the ``pg_url`` fixture: each test gets a fresh database. ``tests/conftest.py`` loads this
module as a plugin, so one server serves the whole session (a module importing the fixture
had started a server of its own: eleven ran at once). The tests skip, saying why, only where
the binaries are absent (``.ci/run`` installs Debian's ``postgresql`` package).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    """The newest installed ``/usr/lib/postgresql/<v>/bin`` holding initdb and pg_ctl."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs. An exited postmaster stays a zombie until the container's
    init reaps it (about 2 s here), which had made every stop wait that long."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: signal 0 still tells whether the PID exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PgServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.tmp = Path(tempfile.mkdtemp(prefix="phonesim-pg-"))
        self.data = self.tmp / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")

    def start(self) -> None:
        """initdb (the first time), then start the server and wait until it accepts."""
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres", "postgres")
        if not (self.data / "PG_VERSION").is_file():
            self._initdb()
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmp} -c fsync=off"
        subprocess.run(
            _as_postgres(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                 "-l", str(self.tmp / "log"), "-w", "-t", "60", "start"]
            ),
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip

    def _initdb(self) -> None:
        subprocess.run(
            _as_postgres(
                [str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                 "--auth=trust", "-E", "UTF8", "--no-sync"]
            ),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_db(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, remove: bool = True) -> None:
        """Stop the server (and wait for its PID to go); ``remove`` also deletes its data."""
        pid = self.pid()
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                          "-w", "-t", "30", "stop"]),
            capture_output=True, timeout=60,
        )  # fmt: skip
        if pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if remove:
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (Debian package 'postgresql') are not installed")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
    server = PgServer(bindir)
    try:
        server.start()
    except (subprocess.SubprocessError, OSError) as exc:
        server.stop()
        pytest.fail(f"could not start PostgreSQL from {bindir}: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.create_db()
