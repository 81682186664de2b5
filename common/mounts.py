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
    id: str  # mountinfo's first field, as /proc/self/fdinfo's mnt_id names it
    point: str
    device: str  # "major:minor", as st_dev gives it (not on btrfs: a subvolume's own)
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
            options = frozenset(fields[sep + 3].split(","))
            mounts.append(Mount(fields[0], point, fields[2], fields[sep + 1], options))
        except (ValueError, IndexError):
            continue
    return mounts


def mount_of(
    path: str, device: str, mounts: Iterable[Mount], mount_id: str | None = None
) -> Mount | None:
    """The mount ``path`` (absolute, symlinks resolved) lies on: the one of ``mount_id`` (the
    kernel's own answer) where given and listed; else the deepest mount point above it among
    those of its device where any is (a mount hidden by a later one over its parent is not
    the path's), the last mounted of equals."""
    mounts = list(mounts)
    named = next((m for m in mounts if m.id == mount_id), None) if mount_id is not None else None
    if named is not None:
        return named
    above = [m for m in mounts if path == m.point or path.startswith(m.point.rstrip("/") + "/")]
    pool = [m for m in above if m.device == device] or above
    best = None
    for m in pool:
        if best is None or len(m.point) >= len(best.point):
            best = m
    return best


def _mount_id(path: str | Path) -> str | None:
    """The id of the mount ``path`` lies on, as the kernel says it (Linux 3.15 and later)."""
    fd = os.open(path, os.O_PATH)
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
            for line in info:
                if line.startswith("mnt_id:"):
                    return line.split()[1]
    finally:
        os.close(fd)
    return None


def find_mount(path: str | Path) -> Mount | None:
    """The mount ``path`` lies on, from ``/proc/self/mountinfo``; None where it cannot be read
    (not Linux)."""
    try:
        st = os.stat(path)
        mount_id = _mount_id(path)
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    return mount_of(os.path.realpath(path), device, parse_mountinfo(text), mount_id)


def mounted_read_only(path: str | Path) -> bool:
    """Whether the mount ``path`` lies on is read-only (False where it cannot be asked): a read-
    only bind mount of a writable file system too, which :func:`unchanging_file_system` tells
    apart."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def unchanging_file_system(path: str | Path) -> bool:
    """Whether nothing can change the file or folder ``path`` (symlinks followed): its file
    system is one of :data:`UNCHANGING_WHEN_READ_ONLY` with ``ro`` among its own options.
    False where that cannot be read (not Linux). A file system remounted read-write later (by
    root) is not noticed by whoever asked before."""
    # A writable mount needs no look at mountinfo.
    return mounted_read_only(path) and is_unchanging(find_mount(path))


def is_unchanging(mount: Mount | None) -> bool:
    """Whether no one can change the files of ``mount`` (see :data:`UNCHANGING_WHEN_READ_ONLY`)."""
    return (
        mount is not None
        and "ro" in mount.super_options
        and mount.fstype in UNCHANGING_WHEN_READ_ONLY
    )
