"""An export stopped the hard ways, in real processes: killed, out of disk, terminated, and
what a re-run then finds (changed labels and images, half-deleted progress)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from export import ExportError
from export.shards import MANIFEST, JobIdentity, PartialDir, partial_path
from tests.export.conftest import REPO, _config, _read, _write_manifest
from tests.signals import terminate_at_marker

SCRIPT = REPO / "scripts" / "export_features.py"
RUN_TIMEOUT = 180  # seconds for one child export of the 19 demo images (torch import included)

# Child prelude: the repository on the path, then one patch that stops the run at the chosen
# moment, then the command line as `export_features.py` runs it.
CHILD = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
{patch}
from export.cli import main
sys.exit(main(sys.argv[1:]))
"""

# SIGKILL at the third shard: written to its temporary name, never renamed (8 inputs kept).
KILL_AT_THIRD_SHARD = """
import common.fsutil as fsutil
real_replace, commits = os.replace, []
def replace_then_die(src, dst):
    if os.path.basename(str(dst)).startswith("shard-"):
        commits.append(dst)
        if len(commits) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
fsutil.os.replace = replace_then_die
"""

# SIGKILL in the final cleanup, right after progress.json is deleted (the file is complete).
KILL_AFTER_DELETING_PROGRESS = """
real_unlink = os.unlink
def unlink_then_die(path, *args, **kwargs):
    real_unlink(path, *args, **kwargs)
    if os.path.basename(os.fsdecode(path)) == "progress.json":
        os.kill(os.getpid(), signal.SIGKILL)
os.unlink = unlink_then_die
"""

# After the second shard: say so in a marker file, then wait to be terminated.
WAIT_AFTER_SECOND_SHARD = """
from export.shards import PartialDir
real_commit = PartialDir.commit
def commit_then_wait(self, *args, **kwargs):
    info = real_commit(self, *args, **kwargs)
    if len(self.shards) == 2:
        open({marker!r}, "w").close()
        time.sleep(120)
    return info
PartialDir.commit = commit_then_wait
"""


def _child(tmp_path: Path, patch: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), patch=textwrap.dedent(patch)))
    return [sys.executable, str(script)]


def _export_args(ckpt: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint", str(ckpt), "--manifest", str(manifest), "--out", str(out),
        "--neighbors", "4", "--batch-size", "2", "--shard-size", "4", "--workers", "0",
        "--runtime", "torch", "-q", *extra,
    ]  # fmt: skip


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=RUN_TIMEOUT)


def _export(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, str(SCRIPT), *args], cwd)


@pytest.fixture
def data(demo, tmp_path) -> Path:
    """A private copy of the demo catalog, free to edit."""
    copy = tmp_path / "data"
    shutil.copytree(demo, copy)
    return copy


def _rows(manifest: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(manifest.open(newline="", encoding="utf-8")))


def _killed_after_two_shards(ckpt: Path, manifest: Path, out: Path, tmp_path: Path) -> None:
    command = _child(tmp_path, KILL_AT_THIRD_SHARD) + _export_args(ckpt, manifest, out)
    first = _run(command, tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert len(list(partial_path(out).glob("shard-*.h5"))) == 2


def test_a_resume_writes_the_labels_the_inputs_give_now(ckpt, data, tmp_path):
    """Labels changed in the CSV after a kill stayed as they were in the shards."""
    manifest, out = data / "with_bad.csv", tmp_path / "features.h5"
    _killed_after_two_shards(ckpt, manifest, out, tmp_path)
    rows = _rows(manifest)
    rows[1]["label"] = "relabelled"  # in the first shard, committed before the kill
    rows[5]["label"] = ""  # in the second
    _write_manifest(manifest, rows)

    second = _export(_export_args(ckpt, manifest, out), tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resumed after 8 inputs" in second.stdout
    written = dict(zip(_read(out)["ids"], _read(out)["labels"], strict=True))
    given = {r["id"]: r["label"] for r in rows if r["image"] != "broken.jpg"}
    assert written == given


def test_a_resume_refuses_an_image_replaced_since_it_was_embedded(ckpt, data, tmp_path):
    """An image overwritten with another photo after a kill kept the old photo's embedding."""
    manifest, out = data / "with_bad.csv", tmp_path / "features.h5"
    _killed_after_two_shards(ckpt, manifest, out, tmp_path)
    rows = _rows(manifest)
    replaced, source = rows[2], rows[12]  # a committed row; a photo of another class
    (data / replaced["image"]).write_bytes((data / source["image"]).read_bytes())

    second = _export(_export_args(ckpt, manifest, out), tmp_path)
    assert second.returncode == 2, second.stdout
    err = second.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert "1 image file(s) changed since the export that embedded them read them" in err[0]
    assert repr(replaced["id"]) in err[0] and "--restart" in err[0]
    assert not out.exists() and partial_path(out).is_dir()  # the progress is kept

    third = _export(_export_args(ckpt, manifest, out, "--restart"), tmp_path)
    assert third.returncode == 0, third.stderr
    data_now = _read(out)
    emb = dict(zip(data_now["ids"], data_now["emb"], strict=True))
    assert float(emb[replaced["id"]] @ emb[source["id"]]) == pytest.approx(1.0, abs=1e-5)


def _mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs, which only root can mount")
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _pages(n_bytes: int) -> int:
    return -(-n_bytes // 4096)


def _free_bytes(where: Path) -> int:
    stat = os.statvfs(where)
    return stat.f_bavail * stat.f_frsize


def _fill_leaving(where: Path, free: int) -> Path:
    """A filler file that leaves exactly ``free`` bytes (whole pages) on the tmpfs."""
    filler = where / "filler"
    filler.write_bytes(b"\0" * (_free_bytes(where) - free))
    assert _free_bytes(where) == free
    return filler


def test_a_full_disk_at_a_shard_commit_is_one_line_and_keeps_the_progress(
    ckpt, demo, tmp_path, monkeypatch
):
    """h5py raised three RuntimeErrors, printed as tracebacks, and the process segfaulted."""
    from export import export_features

    # The sizes of progress.json and of the shards, from a run that keeps its progress folder.
    sizes = tmp_path / "sizes.h5"
    monkeypatch.setattr(PartialDir, "remove", lambda self: None)
    catalog = demo / "catalog.csv"  # 18 readable images: no warning besides the error
    export_features(_config(ckpt, catalog, sizes, batch_size=2, shard_size=4))
    kept = partial_path(sizes)
    shard_pages = [_pages(p.stat().st_size) for p in sorted(kept.glob("shard-*.h5"))]
    assert len(shard_pages) == 5
    # Room for progress.json and the first shard, and for half of the second: it fails there.
    room = _pages((kept / MANIFEST).stat().st_size) + shard_pages[0] + shard_pages[1] // 2
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "2m")
    try:
        filler = _fill_leaving(disk, room * 4096)
        out = disk / "features.h5"
        args = _export_args(ckpt, catalog, out)
        full = _export(args, tmp_path)
        err = full.stderr.strip().splitlines()
        assert full.returncode == 1 and len(err) == 1, (full.returncode, full.stderr[-3000:])
        shard = partial_path(out) / "shard-000000000004.h5"
        assert err[0] == f"export_features: error: {shard}: No space left on device"
        left = sorted(p.name for p in partial_path(out).iterdir())
        assert left == [MANIFEST, "shard-000000000000.h5"]  # no torn temporary file
        filler.unlink()
        again = _export(args, tmp_path)
        assert again.returncode == 0, again.stderr
        assert "resumed after 4 inputs" in again.stdout
        assert _read(out)["ids"] == _read(sizes)["ids"]
    finally:
        _unmount(disk)


def test_a_kill_while_the_progress_is_deleted_blocks_no_rerun(ckpt, demo, tmp_path):
    """Killed after progress.json was deleted but before the shards: every re-run was refused,
    --overwrite and --restart too ("not an export in progress; move it away first")."""
    out = tmp_path / "features.h5"
    args = _export_args(ckpt, demo / "with_bad.csv", out)
    first = _run(_child(tmp_path, KILL_AFTER_DELETING_PROGRESS) + args, tmp_path)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert out.is_file() and not partial_path(out).exists()  # complete, its progress gone

    again = _export(args, tmp_path)
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    replaced = _export([*args, "--overwrite"], tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert len(_read(out)["ids"]) == 18
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _identity() -> JobIdentity:
    return JobIdentity("hash", "model", 8, 3, "inputs", 10)


def test_restart_clears_progress_files_without_a_manifest_but_no_one_elses(tmp_path):
    """Shards without progress.json (older runs killed while deleting them) blocked --restart;
    a folder holding anything an export does not write is still never deleted."""
    out = tmp_path / "features.h5"
    partial = partial_path(out)
    partial.mkdir()
    for name in (
        "shard-000000000000.h5",
        ".shard-000000000004.h5.k2j4l1.tmp",
        ".features.h5.x8f2a0.tmp",
        ".progress.json.ab12cd.tmp",
    ):
        (partial / name).write_bytes(b"left")
    with pytest.raises(ExportError, match="pass --restart to clear it"):
        PartialDir.open(out, _identity())
    assert PartialDir.open(out, _identity(), restart=True).cursor == 0
    assert sorted(p.name for p in partial.iterdir()) == [MANIFEST]
    assert [p.name for p in tmp_path.iterdir()] == [partial.name]  # nothing left beside it

    for foreign in ("notes.txt", "shard-1.h5", "sub/"):
        other = tmp_path / "other.h5"
        folder = partial_path(other)
        folder.mkdir()
        (folder / "shard-000000000000.h5").write_bytes(b"left")
        if foreign.endswith("/"):
            (folder / foreign).mkdir()
        else:
            (folder / foreign).write_text("someone's")
        with pytest.raises(ExportError, match="move it away first"):
            PartialDir.open(other, _identity(), restart=True)
        assert (folder / foreign.rstrip("/")).exists()
        shutil.rmtree(folder)


def test_a_folder_left_by_a_kill_while_discarding_is_cleared_by_the_next_run(tmp_path):
    out = tmp_path / "features.h5"
    left = tmp_path / ".features.h5.partial.removing-ab12cd"
    left.mkdir()
    (left / "shard-000000000000.h5").write_bytes(b"left")
    PartialDir.open(out, _identity())
    assert not left.exists() and partial_path(out).is_dir()


def test_sigterm_stops_like_ctrl_c_and_says_how_to_resume(ckpt, demo, tmp_path):
    """SIGTERM ended the process at once (143) without the hint that Ctrl-C gives."""
    out, marker = tmp_path / "features.h5", tmp_path / "two-shards"
    args = _export_args(ckpt, demo / "with_bad.csv", out)
    command = _child(tmp_path, WAIT_AFTER_SECOND_SHARD.format(marker=str(marker))) + args
    code, stderr = terminate_at_marker(command, marker, timeout=RUN_TIMEOUT, cwd=tmp_path)
    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"export_features: terminated; progress is kept in {out}.partial/, "
        "run the same command again to resume"
    )
    assert not (tmp_path / ".features.h5.lock").exists()  # released and removed on the way out
    again = _export(args, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed after 8 inputs" in again.stdout


# After the assembly: SIGTERM arrives while a weakref callback runs (as h5py's do when its
# objects close), where Python drops what a signal handler raises.
TERM_INSIDE_A_WEAKREF_CALLBACK = """
import weakref
import export.job as job
real_assemble = job.assemble
def assemble_then_term_in_callback(*args, **kwargs):
    assembled = real_assemble(*args, **kwargs)
    def callback():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(200):
            time.sleep(0.001)  # the handler runs here, inside the callback
    class Closed:
        pass
    obj = Closed()
    weakref.finalize(obj, callback)
    del obj
    return assembled
job.assemble = assemble_then_term_in_callback
"""


def test_a_stop_raised_where_python_drops_it_still_stops_the_export(ckpt, demo, tmp_path):
    """SIGTERM (or Ctrl-C) during the assembly was printed as "Exception ignored in ..." and
    lost: the export wrote its file and exited 0."""
    out = tmp_path / "features.h5"
    args = _export_args(ckpt, demo / "with_bad.csv", out)
    command = _child(tmp_path, TERM_INSIDE_A_WEAKREF_CALLBACK) + args
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=RUN_TIMEOUT)
    stderr = done.stderr.decode()
    assert done.returncode == 130, stderr
    assert not out.exists() and partial_path(out).is_dir()
    assert "terminated; progress is kept" in stderr and "Exception ignored" not in stderr


def test_a_first_write_failing_on_a_full_disk_leaves_no_folder_to_block_the_rerun(
    tmp_path, monkeypatch
):
    """With no room for progress.json, the run failed and left an empty progress folder;
    the same command, run again once there was room, was refused ("not an export in
    progress ... pass --restart"), where the docs say to run it again."""
    import errno

    from export import shards

    out = tmp_path / "features.h5"
    real_write = shards._write_json

    def full(path, data):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(shards, "_write_json", full)
    with pytest.raises(OSError, match="No space left"):
        PartialDir.open(out, _identity())
    assert list(tmp_path.iterdir()) == []
    partial_path(out).mkdir()  # one left by an older version, or a run killed right there
    monkeypatch.setattr(shards, "_write_json", real_write)
    assert PartialDir.open(out, _identity()).cursor == 0
