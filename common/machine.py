"""What this process may use of the machine: its cores, and its own peak memory."""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by its cgroup's CPU quota (a
    container started with ``--cpus 2`` on a 64-core host sees 64 cores but runs on 2; a
    thread per seen core would crowd the 2)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPU quota, in cores, of this process's cgroup and those above it (the tightest),
    from cgroup v2's ``cpu.max`` or v1's ``cpu.cfs_quota_us``; None where there is none or
    it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2: one hierarchy
            quotas += [_v2_quota(d) for d in _folders(root, path)]
        elif "cpu" in controllers.split(","):
            v1 = root / controllers if (root / controllers).is_dir() else root / "cpu"
            quotas += [_v1_quota(d) for d in _folders(v1, path)]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _folders(mount: Path, path: str) -> list[Path]:
    """The cgroup folder of ``path`` under ``mount`` and each above it up to the mount."""
    parts = [p for p in path.strip("/").split("/") if p and p != ".."]
    return [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


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


def run_context() -> dict[str, object]:
    """Where and with what a benchmark ran, for its closing JSON line: two runs' figures could
    not be compared without the versions, the machine and its load (reproducibility review)."""
    import platform

    from common.stamps import package_versions, utc_now

    versions = package_versions(("phonesim", "torch", "onnxruntime", "faiss-cpu", "numpy"))
    cpu = platform.processor()
    try:  # Linux names the CPU model here; platform.processor() is often empty
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "when": utc_now(),
        "host": platform.node(),
        "cpu": cpu,
        "cores": available_cores(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "versions": versions,
    }
