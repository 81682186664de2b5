"""How many cores this process may use: its affinity, capped by its cgroup's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common import machine
from common.machine import available_cores, cgroup_cpu_quota


def cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup mount under ``tmp_path`` holding ``files``, and a /proc/self/cgroup for it."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(membership)
    return root, proc


def test_v2_quota_is_the_tightest_of_the_cgroup_and_those_above_it(tmp_path: Path) -> None:
    root, proc = cgroups(
        tmp_path,
        "0::/pods/app\n",
        {"cpu.max": "max 100000\n", "pods/cpu.max": "300000 100000\n", "pods/app/cpu.max": "max"},
    )
    assert cgroup_cpu_quota(root, proc) == 3.0
    (root / "pods/app/cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 1.5


def test_v1_quota_is_read_from_the_cpu_controller(tmp_path: Path) -> None:
    root, proc = cgroups(
        tmp_path,
        "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_quota(root, proc) == 2.0


@pytest.mark.parametrize(
    ("membership", "files"),
    [
        ("0::/\n", {"cpu.max": "max 100000\n"}),  # no limit
        ("0::/\n", {}),  # no cpu controller enabled
        ("0::/\n", {"cpu.max": "garbage\n"}),
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}),
        ("not a cgroup line\n", {}),
    ],
)
def test_no_quota_where_none_is_set_or_readable(
    tmp_path: Path, membership: str, files: dict[str, str]
) -> None:
    root, proc = cgroups(tmp_path, membership, files)
    assert cgroup_cpu_quota(root, proc) is None


def test_no_quota_without_a_proc_file(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None


def test_cores_are_capped_by_the_quota_rounded_up(monkeypatch: pytest.MonkeyPatch) -> None:
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(machine, "cgroup_cpu_quota", lambda: 0.5)
    assert available_cores() == 1
    monkeypatch.setattr(machine, "cgroup_cpu_quota", lambda: affinity + 8.0)
    assert available_cores() == affinity
    monkeypatch.setattr(machine, "cgroup_cpu_quota", lambda: None)
    assert available_cores() == affinity
