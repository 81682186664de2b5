"""Stopping a child process at a chosen moment: the tests of SIGTERM handling share it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def terminate_at_marker(
    command: list[str],
    marker: Path,
    *,
    timeout: float,
    at_marker: Callable[[], None] = lambda: None,
    **popen: object,
) -> tuple[int, str]:
    """Run ``command`` until it creates ``marker`` (within ``timeout`` seconds), call
    ``at_marker()``, send SIGTERM and return its exit code and stderr. The child is killed
    by its PID on the way out, whatever happened."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not marker.exists():
            _, stderr = child.communicate(timeout=5) if child.poll() is not None else (b"", b"")
            raise AssertionError(f"{marker.name} never appeared: {stderr.decode()[-2000:]}")
        at_marker()
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    return child.returncode, stderr.decode()
