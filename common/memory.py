"""This process's own peak memory, for benchmarks that run each measurement in a child."""

from __future__ import annotations

import resource
from pathlib import Path


def own_peak_rss_mb() -> float:
    """This process's peak RSS in MB: Linux's VmHWM, which starts afresh at exec. ``ru_maxrss``
    carries the parent's peak into a child across exec, so a child started by a 900 MB parent
    reports 900 MB whatever it used itself."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
