"""What this process may use of the machine: its cores, and its own peak memory."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the whole machine)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(workers: int = 1) -> int:
    """Model threads for one of ``workers`` processes sharing this process's cores, so that
    together they use each core once."""
    return max(1, available_cores() // max(1, workers))


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
