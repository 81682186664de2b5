"""Crash-safe writes for every stage: temporary name, fsync, rename, fsync of the folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or folder's) contents and metadata to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make renames and unlinks inside ``path`` durable."""
    fsync_path(path)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to produce a file, then move it onto ``path`` atomically.

    Readers see either the old file or the complete new one, also after a crash: the temporary
    file is fsynced before the rename and the folder is fsynced after it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def swap_folder(new: Path, dest: Path, old: Path) -> None:
    """Move the finished folder ``new`` to ``dest``, replacing what is there.

    An existing ``dest`` is first moved aside to ``old``; if moving ``new`` in fails (or is
    interrupted), ``old`` is put back, so ``dest`` never goes missing. ``old`` is deleted after.
    """
    replaced = dest.exists()
    if replaced:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if replaced and not dest.exists():
            os.replace(old, dest)
        raise
    fsync_dir(dest.parent)
    if replaced:
        shutil.rmtree(old, ignore_errors=True)


def folder_size(path: str | Path) -> int:
    """Total size in bytes of the regular files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while we walked (a checkpoint in progress)
                continue
    return total
