"""The serve preflight: mistakes a worker would only report as a gunicorn boot traceback are
one-line errors before any worker starts (no test here starts gunicorn: see test_live.py and
test_replicas.py), and the master process that runs it never loads torch."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common.errors import UserError
from server.config import GunicornSettings, ServerConfig
from server.preflight import preflight
from server.serve import serve
from tests.server.live import REPO


def config(checkpoint, index, **kw) -> ServerConfig:
    return ServerConfig(checkpoint=str(checkpoint), index=str(index), **kw)


def test_serve_refuses_missing_inputs_before_starting(tiny_checkpoint, index_dir):
    with pytest.raises(UserError, match="not found|missing|does not exist"):
        serve(config(tiny_checkpoint, index_dir.parent / "missing"))
    with pytest.raises(UserError, match="--checkpoint and --index"):
        serve(ServerConfig())


def test_the_master_preflight_never_imports_torch(tiny_checkpoint, index_dir, tmp_path):
    """The gunicorn master runs this before forking: the checks that need torch run in a child
    process, so the master stays small (it held 969 MB when it imported torch itself)."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from common.errors import UserError
        from server.config import GunicornSettings, ServerConfig
        from server.serve import PhonesimGunicorn, serve  # what the master imports
        from server.preflight import preflight
        cfg = ServerConfig(checkpoint={str(tiny_checkpoint)!r}, index={str(index_dir)!r})
        preflight(cfg, GunicornSettings(workers=2, port=0))  # port 0: whatever listens on 8000
        try:
            preflight(cfg.replace(index={str(tmp_path / "nope")!r}), GunicornSettings(port=0))
            error = None
        except UserError as exc:
            error = str(exc)
        heavy = ("torch", "timm", "faiss", "server.app", "embedder.inference")
        print(json.dumps({{"loaded": [m for m in heavy if m in sys.modules], "error": error}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["error"] and "\n" not in result["error"]  # one line, from the child


def test_serve_checks_the_index_before_starting_workers(tiny_checkpoint, index_dir, tmp_path):
    from index import CatalogIndex
    from index.folder import lock_writer

    other = tmp_path / "other-checkpoint"
    shutil.copytree(index_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["checkpoint_hash"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="checkpoint hash"):
        serve(config(tiny_checkpoint, other))

    damaged = tmp_path / "damaged"
    shutil.copytree(index_dir, damaged)
    for leftover in damaged.glob("catalog.sqlite-*"):  # a WAL left beside it would mask it
        leftover.unlink()
    (damaged / "catalog.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="catalog store"):
        serve(config(tiny_checkpoint, damaged))

    building = tmp_path / "building"
    shutil.copytree(index_dir, building)
    fd = lock_writer(building)  # as a build replacing the folder holds it
    try:
        with pytest.raises(UserError, match="build"):
            serve(config(tiny_checkpoint, building, api_key="k"))
    finally:
        os.close(fd)
    with CatalogIndex.open(building):  # another writer is fine: this one becomes a replica
        preflight(
            config(tiny_checkpoint, building, api_key="k"), GunicornSettings(workers=2, port=0)
        )


def test_folders_of_killed_servers_are_removed_at_the_next_start(tmp_path):
    """A SIGKILLed master cannot remove its instance folder: the next server does, and leaves
    the folders of running servers, of other hosts and those it cannot attribute alone."""
    from server.serve import INSTANCE_PREFIX, MASTER_PID_FILE, instance_folder

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folders = {}
        host = socket.gethostname()
        for name, owner in (
            ("killed", f"{host} {gone.pid}"),
            ("running", f"{host} {running.pid}"),
            ("other-host", f"{host}-container {gone.pid}"),
            ("unknown", None),
        ):
            folders[name] = tmp_path / f"{INSTANCE_PREFIX}{name}"
            (folders[name] / "metrics").mkdir(parents=True)
            if owner is not None:
                (folders[name] / MASTER_PID_FILE).write_text(owner)
        with instance_folder(tmp_path) as mine:
            assert (mine / MASTER_PID_FILE).read_text() == f"{host} {os.getpid()}"
            assert not folders["killed"].exists()
            assert all(folders[k].exists() for k in ("running", "other-host", "unknown"))
        assert not mine.exists()
    finally:
        running.kill()
        running.wait()


def test_a_worker_leaving_the_block_does_not_remove_the_masters_folder(tmp_path):
    """gunicorn forks its workers inside ``instance_folder`` and a worker that stops (a graceful
    restart, fewer workers) exits through it: the folder must outlive it."""
    from server.serve import instance_folder

    try:
        with instance_folder(tmp_path) as folder:
            child = os.fork()
            if child == 0:
                sys.exit(0)  # the worker: SystemExit unwinds through the master's stack
            _, status = os.waitpid(child, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert (folder / "metrics").is_dir()
    except SystemExit:
        os._exit(0)  # only the forked child gets here
    assert not folder.exists()  # the master's own exit removes it


def test_a_preset_metrics_folder_is_said_to_be_replaced(tmp_path, monkeypatch, caplog):
    """A platform's PROMETHEUS_MULTIPROC_DIR was replaced without a word, and put back after."""
    from server.serve import instance_folder

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/platform/metrics")
    with caplog.at_level("WARNING", logger="server.serve"), instance_folder(tmp_path) as folder:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(folder / "metrics")
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == "/platform/metrics"
    assert "PROMETHEUS_MULTIPROC_DIR=/platform/metrics is not used" in caplog.text
    assert str(folder / "metrics") in caplog.text
    # A server re-executed for an upgrade (gunicorn's USR2) inherits its old instance's folder.
    caplog.clear()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder / "metrics"))
    with caplog.at_level("WARNING", logger="server.serve"), instance_folder(tmp_path):
        pass
    assert "is not used" not in caplog.text


def test_a_working_directory_gone_or_closed_is_one_line(tmp_path, tiny_checkpoint, index_dir):
    """gunicorn reads the current directory when imported: one deleted since said only "error:
    No such file or directory"; one the user may not enter failed in gunicorn's chdir."""
    gone = tmp_path / "gone"
    gone.mkdir()
    serve = [sys.executable, "-m", "phonesim.cli", "serve", "--checkpoint", str(tiny_checkpoint)]
    script = f'cd "{gone}" && rmdir "{gone}" && exec "$@"'
    done = subprocess.run(
        ["sh", "-c", script, "sh", *serve, "--index", str(index_dir), "--port", "1"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "phonesim: error: the current directory no longer exists; cd to one that does before "
        "serving (gunicorn runs its processes there)"
    ]


def test_a_working_directory_the_user_may_not_enter_is_named(monkeypatch):
    from server.cli import check_working_directory

    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may enter any
    with pytest.raises(UserError, match=rf"may not enter the current directory \({os.getcwd()}\)"):
        check_working_directory()


def test_an_unexpected_preflight_error_is_reported_whole():
    """A database error's traceback ends with a caret line: the message was just '^'."""
    from server.preflight import _exception_text

    stderr = [
        "Traceback (most recent call last):",
        '  File "/x/pg.py", line 3, in manifest',
        "    row = c.execute(q)",
        "          ^^^^^^^^^^^^",
        'psycopg.errors.UndefinedColumn: column "value" does not exist',
        "LINE 1: SELECT value FROM state WHERE key='manifest'",
        "               ^",
    ]
    text = _exception_text(stderr)
    assert text.startswith('psycopg.errors.UndefinedColumn: column "value" does not exist')
    assert "LINE 1" in text and _exception_text(["no traceback"]) == ""


def test_a_preflight_killed_by_a_signal_is_a_machine_failure():
    """Under a memory limit the preflight child died of SIGSEGV: "the serve preflight failed:
    exit status -11", exit 2 (the code for bad input), with no hint of memory."""
    import signal

    from common.errors import MachineError
    from server import preflight

    def segfault(child):  # noqa: ANN001, ANN202  (the child as it starts)
        child.send_signal(signal.SIGSEGV)

    with pytest.raises(MachineError, match="killed by SIGSEGV.*short of memory") as caught:
        preflight.check_in_child(ServerConfig(), started=segfault)
    assert caught.value.exit_code == 1
    assert preflight.signal_name(99) == "signal 99"


def test_workers_read_the_cue_file_as_it_was_at_the_start(tmp_path):
    """A worker gunicorn started again read the file again: an edit that broke it stopped the
    whole server, and a valid edit made workers answer one photo differently."""
    from server.serve import keep_text_cues

    assert keep_text_cues(ServerConfig(), tmp_path) == ServerConfig()  # no cue file: as it is
    cues = tmp_path / "cues.json"
    cues.write_text('{"prime-x2": ["samsung"]}')
    folder = tmp_path / "instance"
    folder.mkdir()
    config = ServerConfig(read_text=True, text_cues=str(cues))
    kept = keep_text_cues(config, folder)
    cues.write_text('{"prime-x2": ["samsung"')  # edited while serving, broken
    assert kept.text_cues != config.text_cues and kept.text_cues.startswith(str(folder))
    assert json.loads(Path(kept.text_cues).read_text()) == {"prime-x2": ["samsung"]}


@pytest.mark.parametrize(
    "level,expected",
    [(logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warning")],
)
def test_gunicorns_own_lines_follow_phonesims_level(level, expected):
    """Under -q gunicorn still printed its ten start and stop INFO lines."""
    from server.serve import gunicorn_log_level

    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        assert gunicorn_log_level() == expected
    finally:
        root.setLevel(before)


def test_the_preflight_ignores_modules_in_the_working_directory(
    tiny_checkpoint, index_dir, tmp_path, monkeypatch
):
    """From a folder holding the user's own server.py (a common name), `phonesim serve`
    failed: its preflight child ran `python -m server.preflight`, which put the working
    directory first on its path and imported that file as the server package."""
    for name in ("server", "index", "common", "embedder"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the user file was imported')\n")
    monkeypatch.chdir(tmp_path)
    preflight(config(tiny_checkpoint, index_dir), GunicornSettings(workers=1, port=0))
    with pytest.raises(UserError, match="does not exist|not found|missing"):
        preflight(config(tiny_checkpoint, tmp_path / "nope"), GunicornSettings(port=0))


def test_no_writable_temporary_folder_is_said_with_what_to_do(monkeypatch):
    """On a read-only root file system serve ended with Python's "No usable temporary
    directory found in [...]", naming neither what it needs the folder for nor the fix."""
    import errno
    import tempfile

    from server.serve import instance_folder

    def none_usable(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise FileNotFoundError(errno.ENOENT, "No usable temporary directory found in ['/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", none_usable)
    monkeypatch.setattr(tempfile, "mkdtemp", none_usable)
    with pytest.raises(UserError, match="control socket.*set TMPDIR"), instance_folder():
        pass
