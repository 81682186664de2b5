"""Crash-safe writes for every stage: temporary name, fsync, rename, fsync of the folder.

Every temporary file comes from ``tempfile.mkstemp`` in the folder it is renamed within, named
``.<target name>.<random>.tmp``: unique, so two processes or threads writing the same target
never share one (a process id is not unique across machines sharing a folder, nor across
threads), and on the same filesystem, so the final rename is atomic.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import glob
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from common.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")

TMP_SUFFIX = ".tmp"


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


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def folder_write_problem(folder: str | Path, *, created: bool = False) -> str | None:
    """Why nothing can be written in ``folder`` (missing, a file, read-only), or None.

    ``created``: the caller makes missing folders, so the nearest existing one is probed.
    A real write, not permission bits: those say nothing for root or on a read-only mount."""
    folder = Path(os.path.abspath(folder))
    if created:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.exists():
        return "folder does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder" if created else "is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".phonesim-", suffix=".probe"):
            pass
    except OSError as exc:
        where = f"{folder} is" if created else "folder is"
        # ENOENT on a folder that exists: a virtual file system such as /proc, where the
        # kernel's "No such file or directory" would read as if the folder were missing.
        why = "it takes no new files" if exc.errno == errno.ENOENT else exc.strerror
        return f"{where} not writable ({why})"
    return None


def missing_file_reason(path: str | Path) -> str:
    """Why ``path`` is not a readable file: a folder in its place, something that is not a
    regular file (a FIFO, which a read would wait on for ever; a device), a link to nothing
    or one that loops (both had been "does not exist"), or nothing there."""
    path = Path(path)
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists():
        return "is not a regular file"
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except FileNotFoundError:
            return f"is a link to {os.readlink(path)}, which does not exist"
        except RuntimeError:  # a loop, before Python 3.13
            return "is a link that loops"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a link that loops"
            return f"is a link to {os.readlink(path)}, which cannot be followed ({exc.strerror})"
    return "does not exist"


def replaced_path(path: Path) -> Path:
    """What a write that replaces ``path`` (by a rename) must replace: where ``path`` is a
    link, the file or folder it names (the link stays; a rename onto the link would replace
    the link itself). Make the new content beside what this returns, so the rename stays on
    its filesystem."""
    return path.resolve() if path.is_symlink() else path


def temporary_file(path: str | Path, folder: str | Path | None = None) -> Path:
    """A new, empty, uniquely named file to write ``path``'s next content into.

    It is made in ``folder`` (default: ``path``'s own), which must be on the same filesystem
    as ``path``, and gets the permissions a plain ``open(path, "w")`` would give, not
    mkstemp's owner-only ones: checkpoints and indexes are shared.
    """
    path = Path(path)
    where = path.parent if folder is None else Path(folder)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=where)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


def temporary_folder(path: str | Path, kind: str = "") -> Path:
    """A new hidden sibling folder (``.NAME.<kind>XXXX``) to build ``path``'s next content in,
    on its filesystem (the swap is a rename), with the permissions a plain ``mkdir`` would
    give, not mkdtemp's owner-only ones: checkpoints and indexes are shared."""
    path = Path(path)
    if kind:  # a run killed outright (kill -9, the OOM killer, power loss) leaves its folder
        # Each a full copy (a 400 MB index): those whose run surely ended (this machine, since
        # its last restart) are removed, as repeated kills had piled them up; what may be
        # another machine's, or is from before a restart, is only named.
        for left in leftover_folders(path, kind, surely_ended=True):
            log.info("removing %s, left by a run that was killed", left.name)
            shutil.rmtree(left, ignore_errors=True)
        left = [p.name for p in leftover_folders(path, kind)]
        if left:
            log.warning(
                "%s: %d folder(s) left by an interrupted run (%s); remove them once no other "
                "run is using them",
                path.parent,
                len(left),
                ", ".join(left[:3]) + (", ..." if len(left) > 3 else ""),
            )
    # The PID and process tag in the name tell a live run's folder from a killed one's.
    owner = f"{os.getpid()}-{_process_tag()}-" if kind else ""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}{owner}", dir=path.parent))
    # A group-shared parent's setgid bit carries on, as with mkdir (chmod had cleared it, and
    # files inside took their maker's primary group instead of the shared one).
    setgid = path.parent.stat().st_mode & stat.S_ISGID if path.parent.exists() else 0
    os.chmod(tmp, (0o777 & ~_umask()) | setgid)
    return tmp


def leftover_folders(path: str | Path, kind: str, *, surely_ended: bool = False) -> list[Path]:
    """The hidden sibling folders ``.NAME.<kind>XXXX`` of ``path`` (:func:`temporary_folder`,
    :func:`discard_folder`) that runs killed outright left behind, sorted; links excluded,
    and so are those named by a process still running on this machine: a concurrent build's
    working folder had been reported as an interrupted run's. ``surely_ended``: only those
    whose run is known to have ended (made by a process of this machine and PID namespace,
    see :func:`_process_tag`, that no longer runs), which nothing else can be using."""
    path = Path(path)
    prefix = f".{path.name}.{kind}"
    pattern = glob.escape(prefix) + "*"
    wanted = ("ended",) if surely_ended else ("ended", "unknown")
    return sorted(
        p
        for p in path.parent.glob(pattern)
        if p.is_dir() and not p.is_symlink() and _owner_state(p.name[len(prefix) :]) in wanted
    )


@functools.cache
def _process_tag() -> str:
    """Eight hex digits naming this kernel boot and PID namespace: a PID in a folder name is
    only checked (``kill -0``) where the tag is ours. Another machine sharing the folder, or
    a container with its own PIDs, has another tag. Where either cannot be read (no /proc),
    a random tag: no other process shares it, so no folder is ever taken for an ended run's
    (every such host would otherwise have had the same tag)."""
    try:
        parts = [
            Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            os.readlink("/proc/self/ns/pid"),
        ]
    except OSError:
        return "x" + os.urandom(4).hex()[1:]  # "x": never a tag read from /proc
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def _owner_state(rest: str) -> str:
    """``alive``, ``ended`` or ``unknown``: the run that made a temporary folder, from its
    name after the prefix (``<pid>-<tag>-XXXX``; ``<pid>-XXXX`` before tags were)."""
    parts = rest.split("-")
    if len(parts) < 2 or not parts[0].isdigit():
        return "unknown"  # named before PIDs were, or by discard_folder
    if len(parts) == 3 and (parts[1] != _process_tag() or parts[1].startswith("x")):
        return "unknown"  # another machine's or container's process: its PID means nothing here
    try:
        os.kill(int(parts[0]), 0)
    except ProcessLookupError:
        return "ended" if len(parts) == 3 else "unknown"
    except (PermissionError, OverflowError, ValueError):
        return "alive"  # another user's process (or a number no PID can be): leave it
    return "alive"


def stream_sha256(fh: BinaryIO) -> str:
    """The SHA-256 (hex) of what is left to read in ``fh``, a megabyte at a time (never the
    whole file in memory; ``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of the file at ``path``, read as a stream."""
    with open(path, "rb") as fh:
        return stream_sha256(fh)


def share_file(path: str | Path) -> None:
    """Give a file the permissions a plain ``open(path, "w")`` would: for files that a library
    writes owner-only (safetensors does)."""
    os.chmod(path, 0o666 & ~_umask())


def is_temporary(name: str, target: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`temporary_file` for a file ``target``."""
    return name.startswith(f".{target}.") and name.endswith(TMP_SUFFIX)


def atomic_write(
    path: str | Path, write: Callable[[Path], T], folder: str | Path | None = None
) -> T:
    """Call ``write(tmp)`` to produce a file, then move it onto ``path`` atomically.

    Readers see either the old file or the complete new one, also after a crash: the temporary
    file is fsynced before the rename and the folder is fsynced after it. ``tmp`` exists
    (empty) when ``write`` is called; it is made in ``folder`` (default: ``path``'s own; see
    :func:`temporary_file`) and removed if ``write`` fails. Returns what ``write`` returns.
    """
    path = Path(path)
    tmp = temporary_file(path, folder)
    try:
        result = write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:  # "No space left on device": where?
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    if tmp.parent.resolve() != path.parent.resolve():
        fsync_dir(tmp.parent)
    return result


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
#: What renameat2 answers where the kernel or the filesystem cannot exchange.
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+, musl 1.2.5+
    except (OSError, AttributeError, TypeError):  # not Linux, or an older C library
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the system or the filesystem cannot.
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


#: The name part of a folder being deleted by :func:`discard_folder`.
_DISCARDED = "removing-"


def _discarded_prefix(path: Path) -> str:
    return f".{path.name}.{_DISCARDED}"


def discard_folder(path: str | Path) -> None:
    """Delete the folder ``path`` so that a kill at any moment leaves it whole or gone: it is
    first renamed to a unique hidden sibling (``.NAME.removing-XXXX``, one atomic step), then
    deleted there. A run killed while deleting leaves only that sibling, which
    :func:`remove_discarded` clears; deleting in place left a half-emptied folder behind."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return
    # mkdtemp gives a unique name; rename replaces the empty folder it made.
    try:
        trash = Path(tempfile.mkdtemp(prefix=_discarded_prefix(path), dir=path.parent))
    except OSError:  # no room for the name: delete in place, as before
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        os.rename(path, trash)
    except OSError:
        trash.rmdir()
        shutil.rmtree(path, ignore_errors=True)
        return
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(
    path: str | Path, kind: str, left_by: str, logger: logging.Logger = log
) -> None:
    """Delete the :func:`leftover_folders` of ``kind`` beside ``path``, each logged (on the
    caller's ``logger``) as left by ``left_by``. Only for a caller that no other run can be
    writing them beside (one holding ``path``'s lock)."""
    for left in leftover_folders(path, kind):
        logger.info("removing %s, left by %s", left.name, left_by)
        shutil.rmtree(left, ignore_errors=True)


def remove_discarded(path: str | Path) -> None:
    """Finish deleting what :func:`discard_folder` left of ``path`` in a run killed meanwhile
    (under ``path``'s lock)."""
    remove_leftovers(path, _DISCARDED, "a run stopped while deleting it")


def swap_folder(new: Path, dest: Path, old: Path) -> None:
    """Move the finished folder ``new`` to ``dest``, replacing what is there.

    Where the system can (Linux 3.15+ on ext4, xfs, btrfs, tmpfs and most local
    filesystems), ``new`` and an existing ``dest`` are exchanged in one atomic step: whoever
    opens ``dest`` at any moment, also after a crash, finds the previous folder or the new
    one. The previous folder, now at ``new``, is deleted after; ``old`` is not used.

    Elsewhere it takes two renames: ``dest`` to ``old``, then ``new`` to ``dest``. Between
    the two (one system call apart) ``dest`` does not exist, so a reader opening it then fails
    as if there were none, and after a crash at exactly that point the previous folder is at
    ``old`` (rename it back). If moving ``new`` in fails or is interrupted, ``old`` is put
    back; ``old`` is deleted after.
    """
    if dest.is_dir() and exchange(new, dest):
        fsync_dir(dest.parent)
        _remove(new)
        return
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


def names_open_file(path: str | Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not one removed or swapped
    out since it was opened): what a lock taken on a file another process may replace must
    check before it is trusted."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def flock_holders(fd: int) -> list[int]:
    """The other processes holding an ``flock`` on the file open as ``fd``, as Linux's
    ``/proc/locks`` names them (the process that took each lock; none where that file cannot
    be read or the holders live in another PID namespace): for a refusal to name them."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    pids = set()
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2778722 0 EOF"; "->" marks a waiter
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key and parts[4].isdigit():
            pids.add(int(parts[4]))
    pids.discard(os.getpid())
    pids.discard(0)
    return sorted(pids)


def holders_note(fd: int, most: int = 5) -> str:
    """ " (pid 12, 34)" of :func:`flock_holders`, "" when none is known."""
    pids = flock_holders(fd)
    if not pids:
        return ""
    more = f" and {len(pids) - most} more" if len(pids) > most else ""
    return f" (pid {', '.join(map(str, pids[:most]))}{more})"


class LockBusyError(UserError):
    """Another process holds a lock of :func:`exclusive_lock`; ``holder``: " (pid N)" of the
    process its file names, or "" when it names none (yet)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def _lock_holder(lock: Path) -> str:
    """The holder's " (pid N)", as its lock file names it; "" when it names none yet."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        pid = os.read(fd, 32).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return f" (pid {pid})" if pid.isdigit() else ""


@contextmanager
def exclusive_lock(path: str | Path, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` for the block, or raise
    :class:`LockBusyError` at once when another process holds it: ``busy`` with
    ``{holder}`` replaced by " (pid N)", the process the lock file names (appended when
    ``busy`` has no ``{holder}``). The file is made for the block, names this process, and
    is removed after it; a lock taken is checked to be the file the path names now (one
    removed meanwhile is taken again, made anew)."""
    path = Path(path)

    def refused() -> LockBusyError:
        holder = _lock_holder(path)
        if "{holder}" in busy:
            return LockBusyError(busy.replace("{holder}", holder), holder)
        return LockBusyError(busy + holder, holder)

    for _ in range(5):
        try:  # never through a link: its target would be made, locked and left behind
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:  # a folder or a link there, a folder that is gone
            raise UserError(f"{path}: cannot make this lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if names_open_file(path, fd):
                break
        except BlockingIOError:
            os.close(fd)
            raise refused() from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed by the holder that just let go: take the new one
    else:
        raise refused()
    try:
        os.ftruncate(fd, 0)  # for the message of a process this lock refuses
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the lock holds without it; the refusal names no process then
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # still locked: one who opened it meanwhile retries
        os.close(fd)


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
