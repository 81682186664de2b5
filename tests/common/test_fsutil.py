"""Crash-safe writes: unique temporary files, atomic replacement of files and folders."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from common import fsutil
from common.fsutil import atomic_write, atomic_write_text, exchange, is_temporary, swap_folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_uses_a_unique_hidden_temporary_in_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    seen: list[Path] = []

    def write(tmp: Path) -> str:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.exists() and tmp.stat().st_size == 0
        tmp.write_text("new")
        return "done"

    assert atomic_write(target, write) == "done"
    assert target.read_text() == "new" and is_temporary(seen[0].name, "config.json")
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_temporary_in_another_folder_of_the_same_filesystem(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    atomic_write(tmp_path / "out.h5", lambda tmp: tmp.write_bytes(b"x"), folder=work)
    assert (tmp_path / "out.h5").read_bytes() == b"x" and not any(work.iterdir())


def test_concurrent_writers_never_share_a_temporary(tmp_path: Path) -> None:
    target = tmp_path / "shared.txt"
    barrier = threading.Barrier(8)
    names: list[str] = []

    def write(tmp: Path, text: str) -> None:
        names.append(tmp.name)
        barrier.wait()  # every writer holds its temporary at once
        tmp.write_text(text)

    threads = [
        threading.Thread(target=atomic_write, args=(target, lambda t, k=k: write(t, str(k))))
        for k in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8
    assert target.read_text() in {str(k) for k in range(8)}
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]


def test_is_temporary_knows_its_names() -> None:
    assert is_temporary(".catalog.csv.k2j3_x.tmp", "catalog.csv")
    assert not is_temporary("catalog.csv", "catalog.csv")
    assert not is_temporary(".other.csv.k2j3_x.tmp", "catalog.csv")


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "marker").write_text(text)
    return path


def _exchange_works(tmp_path: Path) -> bool:
    a, b = _folder(tmp_path / "probe-a", "a"), _folder(tmp_path / "probe-b", "b")
    return exchange(a, b) and (a / "marker").read_text() == "b"


def test_swap_folder_never_leaves_dest_missing(tmp_path: Path) -> None:
    """With renameat2(RENAME_EXCHANGE), a reader polling dest never finds it gone."""
    if not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    dest = _folder(tmp_path / "dest", "0")
    missing, stop = [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                (dest / "marker").read_text()
            except FileNotFoundError:
                missing.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(1, 300):
            swap_folder(_folder(tmp_path / f"new-{k}", str(k)), dest, tmp_path / "old")
    finally:
        stop.set()
        thread.join()
    assert not missing and (dest / "marker").read_text() == "299"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "probe-a", "probe-b"]


def test_swap_folder_without_exchange_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two-rename fallback: interrupted between its renames, dest is restored."""
    monkeypatch.setattr(fsutil, "exchange", lambda a, b: False)
    dest = _folder(tmp_path / "dest", "old")
    real_replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # moving the new folder in
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        swap_folder(_folder(tmp_path / "new", "new"), dest, tmp_path / "old")
    monkeypatch.setattr(fsutil.os, "replace", real_replace)
    assert (dest / "marker").read_text() == "old"
    swap_folder(tmp_path / "new", dest, tmp_path / "old")
    assert (dest / "marker").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_swap_folder_into_a_new_place(tmp_path: Path) -> None:
    swap_folder(_folder(tmp_path / "new", "n"), tmp_path / "dest", tmp_path / "old")
    assert (tmp_path / "dest" / "marker").read_text() == "n" and not (tmp_path / "new").exists()


def test_exchange_reports_unsupported_filesystems_as_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refusing(*args) -> int:
        ctypes.set_errno(errno.EINVAL)
        return -1

    def failing(*args) -> int:
        ctypes.set_errno(errno.EACCES)
        return -1

    a, b = _folder(tmp_path / "a", "a"), _folder(tmp_path / "b", "b")
    monkeypatch.setattr(fsutil, "_renameat2", lambda: refusing)
    assert exchange(a, b) is False and (a / "marker").read_text() == "a"
    monkeypatch.setattr(fsutil, "_renameat2", lambda: failing)
    with pytest.raises(PermissionError):
        exchange(a, b)
    monkeypatch.setattr(fsutil, "_renameat2", lambda: None)
    assert exchange(a, b) is False


def test_folder_write_problem(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert fsutil.folder_write_problem(tmp_path) is None
    assert fsutil.folder_write_problem(tmp_path / "missing") == "folder does not exist"
    assert fsutil.folder_write_problem(tmp_path / "f") == "is a file, not a folder"
    # not the kernel's "No such file or directory", which reads as if /proc were missing
    assert fsutil.folder_write_problem("/proc") == "folder is not writable (it takes no new files)"
    assert fsutil.folder_write_problem(tmp_path / "a" / "b", created=True) is None
    assert fsutil.folder_write_problem(tmp_path / "f" / "b", created=True) == (
        f"{tmp_path / 'f'} is a file, not a folder"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "f"]  # the probe leaves nothing behind


def test_temporary_folders_are_shared_and_leftovers_are_named(tmp_path: Path, caplog) -> None:
    old = os.umask(0o022)
    try:
        first = fsutil.temporary_folder(tmp_path / "idx", "building-")
    finally:
        os.umask(old)
    assert first.parent == tmp_path and first.name.startswith(f".idx.building-{os.getpid()}-")
    assert first.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    assert "left by an interrupted run" not in caplog.text
    # A live run's folder (this process's) is not a leftover: a concurrent build's had been
    # named as an interrupted run's.
    second = fsutil.temporary_folder(tmp_path / "idx", "building-")
    assert second != first and "left by an interrupted run" not in caplog.text
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a PID no process holds now (the kernel reuses them only much later)
    killed = tmp_path / f".idx.building-{dead.pid}-abc"
    killed.mkdir()
    (tmp_path / ".idx.building-old1234").mkdir()  # named before PIDs were
    fsutil.temporary_folder(tmp_path / "idx", "building-")
    assert killed.name in caplog.text and ".idx.building-old1234" in caplog.text
    assert first.name not in caplog.text and second.name not in caplog.text
    caplog.clear()
    odd = tmp_path / f".[a].building-{dead.pid}-x"  # glob characters in a name
    odd.mkdir()
    fsutil.temporary_folder(tmp_path / "[a]", "building-")
    assert odd.name in caplog.text


def test_exclusive_lock_is_one_holder_and_refuses_odd_files(tmp_path):
    """A link at the lock path was followed (its target made, locked and left behind); a
    folder there was a raw IsADirectoryError."""
    import os

    import pytest

    from common.errors import UserError
    from common.fsutil import exclusive_lock

    lock = tmp_path / ".out.lock"
    with exclusive_lock(lock, "busy"):
        assert lock.exists()
        with pytest.raises(UserError, match="busy"), exclusive_lock(lock, "busy"):
            pass
    assert not lock.exists()  # removed after
    (tmp_path / "target").write_text("x")
    os.symlink(tmp_path / "target", lock)
    with pytest.raises(UserError, match="cannot make this lock file"), exclusive_lock(lock, "b"):
        pass
    assert (tmp_path / "target").read_text() == "x"
    lock.unlink()
    lock.mkdir()
    with pytest.raises(UserError, match="cannot make this lock file"), exclusive_lock(lock, "b"):
        pass


def test_a_refused_lock_names_the_process_holding_it(tmp_path):
    """Only the training lock named its holder: an export refused by another said which
    file, not which process, so the operator could not tell a live run from a stuck one."""
    import os
    import subprocess
    import sys

    import pytest

    from common.fsutil import LockBusyError, exclusive_lock
    from tests.conftest import REPO

    lock = tmp_path / ".out.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
         "from common.fsutil import exclusive_lock\n"
         "with exclusive_lock(sys.argv[2], 'busy'):\n print('held', flush=True); time.sleep(60)",
         str(REPO), str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusyError) as refused, exclusive_lock(lock, "a run{holder} is on"):
            pass
        assert str(refused.value) == f"a run (pid {holder.pid}) is on"
        plain = rf"^busy \(pid {holder.pid}\)$"
        with pytest.raises(LockBusyError, match=plain), exclusive_lock(lock, "busy"):
            pass
    finally:
        holder.kill()
        holder.wait(10)
    with exclusive_lock(lock, "busy"):  # a killed holder's lock is free again
        assert lock.read_text() == f"{os.getpid()}\n"


def test_a_fifo_is_named_for_what_it_is(tmp_path, caplog):
    """`index query --image FIFO` said "does not exist"; a FIFO with a photo's name in a
    folder was passed over without a word (reading it would wait for ever)."""
    import os

    from common.fsutil import missing_file_reason
    from embedder.data import image_files

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "dir").mkdir()
    assert missing_file_reason(tmp_path / "pipe.jpg") == "is not a regular file"
    assert missing_file_reason(tmp_path / "dir") == "is a folder, not a file"
    assert missing_file_reason(tmp_path / "none.jpg") == "does not exist"
    assert image_files(tmp_path) == []
    assert "1 photo name(s) that are not regular files" in caplog.text
    assert "'pipe.jpg'" in caplog.text


def test_links_to_nothing_and_link_loops_are_named_as_links(tmp_path):
    """`index query --image` said "image file does not exist" of both."""
    from common.fsutil import missing_file_reason

    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone" / "x.jpg")
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    assert missing_file_reason(tmp_path / "broken.jpg") == (
        f"is a link to {tmp_path / 'gone' / 'x.jpg'}, which does not exist"
    )
    assert missing_file_reason(tmp_path / "a.jpg") == "is a link that loops"


def test_a_killed_runs_folder_is_removed_when_its_run_surely_ended(tmp_path: Path, caplog) -> None:
    """Each kill -9 of `index snapshot`, `build --overwrite` or `restore` left a full copy
    (3 x 402 MB after three), only named in a warning. A folder whose process ran on this
    machine, in this PID namespace, and has ended is now removed; one that may be another
    machine's (another tag) or is named the old way is still only named."""
    import logging

    caplog.set_level(logging.INFO, logger="common.fsutil")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = fsutil._process_tag()
    ours = tmp_path / f".idx.building-{dead.pid}-{tag}-abc"
    elsewhere = tmp_path / f".idx.building-{dead.pid}-0000beef-abc"
    old_style = tmp_path / f".idx.building-{dead.pid}-abc"
    live = tmp_path / f".idx.building-{os.getpid()}-{tag}-abc"
    for folder in (ours, elsewhere, old_style, live):
        folder.mkdir()
        (folder / "store.sqlite").write_bytes(b"x" * 1000)
    made = fsutil.temporary_folder(tmp_path / "idx", "building-")
    assert made.name.startswith(f".idx.building-{os.getpid()}-{tag}-")
    assert not ours.exists() and f"removing {ours.name}, left by a run that was killed" in (
        caplog.text
    )
    assert elsewhere.exists() and old_style.exists() and live.exists()
    assert "2 folder(s) left by an interrupted run" in caplog.text
    assert elsewhere.name in caplog.text and old_style.name in caplog.text
    assert f"{live.name}" not in caplog.text


def test_without_proc_no_folder_is_taken_for_an_ended_runs(tmp_path, monkeypatch) -> None:
    """Every host without a readable /proc had had the same tag: another machine's live
    folder on a shared disk would have been removed as an ended run's."""
    real_readlink = os.readlink

    def no_proc(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).startswith("/proc/"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_readlink(path, *args, **kwargs)

    fsutil._process_tag.cache_clear()
    monkeypatch.setattr(os, "readlink", no_proc)
    try:
        tag = fsutil._process_tag()
        assert tag.startswith("x") and len(tag) == 8
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        assert fsutil._owner_state(f"{dead.pid}-{tag}-abc") == "unknown"
    finally:
        fsutil._process_tag.cache_clear()


def test_a_link_that_cannot_be_followed_is_not_called_a_loop(tmp_path) -> None:
    from common.fsutil import missing_file_reason

    (tmp_path / "file").write_text("x")
    (tmp_path / "odd.jpg").symlink_to(tmp_path / "file" / "x.jpg")  # under a file: ENOTDIR
    assert missing_file_reason(tmp_path / "odd.jpg") == (
        f"is a link to {tmp_path / 'file' / 'x.jpg'}, which cannot be followed (Not a directory)"
    )


def test_a_failed_atomic_write_names_the_file_it_was_writing(tmp_path):
    """A full disk said only "No space left on device" (Python's file writes name no path)."""
    import errno

    from common.fsutil import atomic_write

    def full(tmp):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "report.json", full)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(
        tmp_path / "report.json"
    )
    assert list(tmp_path.iterdir()) == []
