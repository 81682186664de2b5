"""A real ``python -m server`` (the ``phonesim serve`` command) on a free local port, for the
tests that need the whole HTTP stack: started by :func:`running_server`, stopped by its PID."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from urllib3 import encode_multipart_formdata

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """A running server: base address plus a small HTTP helper (one connection per call)."""

    def __init__(self, port: int, proc: subprocess.Popen, log: Path) -> None:
        self.port, self.proc, self.log = port, proc, log
        self.base = f"http://127.0.0.1:{port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, **kw) -> tuple[int, dict]:
        status, headers, data = self.request(method, path, **kw)
        assert headers["content-type"].startswith("application/json"), data[:200]
        return status, json.loads(data)


def multipart(fields: dict[str, tuple[str, bytes] | str]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body and its headers: ``(filename, bytes)`` values are files."""
    body, content_type = encode_multipart_formdata(fields)
    return body, {"Content-Type": content_type}


@contextlib.contextmanager
def running_server(
    checkpoint: Path,
    index: Path | None,
    work: Path,
    *args: str,
    env: dict[str, str] | None = None,
    name: str = "server",
) -> Iterator[Live]:
    """Serve ``index`` until the block ends; then SIGTERM (and a clean exit) is required,
    unless the test stopped it already (:func:`stop`)."""
    port = free_port()
    log = work / f"{name}.log"
    where = ["--index", str(index)] if index is not None else []
    cmd = [
        sys.executable, "-m", "server", "--checkpoint", str(checkpoint), *where,
        "--port", str(port), *args,
    ]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=fh, stderr=subprocess.STDOUT)
    server = Live(port, proc, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if server.request("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            assert stop(server) == 0, log.read_text()[-3000:]


def stop(server: Live) -> int:
    """SIGTERM the server's master by PID and wait for it (SIGKILL after 30 s: a failure)."""
    proc = server.proc
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("server did not stop within 30 s of SIGTERM")


def worker_pids(server: Live) -> list[int]:
    """The gunicorn worker processes of a running server."""
    pid = server.proc.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def wait_for(what: str, check, timeout: float = 60.0, every: float = 0.05):
    """Poll ``check()`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(every)


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")
