"""The file system a path lies on, as ``/proc/self/mountinfo`` describes it (Linux only):
whether it can change at all, which a read-only *mount* does not tell."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# File systems whose files no one changes while their own (super block) options say ``ro``:
# images read-only by nature, and local ones, whose super block every mount of them on this
# machine shares. Network and FUSE file systems (NFS, CIFS, sshfs, virtiofs, 9p, Ceph) are not
# among them: other machines write them whatever this machine's mount says.
UNCHANGING_WHEN_READ_ONLY = frozenset(
    {
        "squashfs", "erofs", "iso9660", "udf", "cramfs", "romfs",
        "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "vfat", "exfat", "tmpfs",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Mount:
    point: str
    device: str  # "major:minor", as st_dev gives it
    fstype: str
    super_options: frozenset[str]


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of ``mountinfo`` text, in its order (later mounts after earlier ones); lines
    that do not parse are left out."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")  # single spaces: an empty source is an empty field
        try:
            sep = fields.index("-", 6)  # after the optional fields
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            mounts.append(
                Mount(point, fields[2], fields[sep + 1], frozenset(fields[sep + 3].split(",")))
            )
        except (ValueError, IndexError):
            continue
    return mounts


def mount_of(path: str, device: str, mounts: Iterable[Mount]) -> Mount | None:
    """The mount ``path`` (absolute, symlinks resolved) lies on: the deepest mount point above
    it, among those of its device where any is (a mount hidden by a later one over its
    parent is not the path's), the last mounted of equals."""
    above = [m for m in mounts if path == m.point or path.startswith(m.point.rstrip("/") + "/")]
    pool = [m for m in above if m.device == device] or above
    best = None
    for m in pool:
        if best is None or len(m.point) >= len(best.point):
            best = m
    return best


def unchanging_file_system(path: str | Path) -> bool:
    """Whether nothing can change the files under ``path``: its file system is one of
    :data:`UNCHANGING_WHEN_READ_ONLY` with ``ro`` among its own options. False where that
    cannot be read (not Linux). A file system remounted read-write later (by root) is not
    noticed by whoever asked before."""
    try:
        if not os.statvfs(path).f_flag & os.ST_RDONLY:
            return False  # the mount is writable: no need to read mountinfo
        st = os.stat(path)
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return False
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    return is_unchanging(mount_of(os.path.realpath(path), device, parse_mountinfo(text)))


def is_unchanging(mount: Mount | None) -> bool:
    """Whether no one can change the files of ``mount`` (see :data:`UNCHANGING_WHEN_READ_ONLY`)."""
    return (
        mount is not None
        and "ro" in mount.super_options
        and mount.fstype in UNCHANGING_WHEN_READ_ONLY
    )
