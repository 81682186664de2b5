"""Running the app under gunicorn (one model per worker process, threads for the requests).

Each worker builds its own app after the fork (no preloading: a model and its thread pools
must not be shared across ``fork``), so with several workers each loads the model. A worker
reads requests on an event loop (:mod:`server.worker`, :mod:`server.bridge`: slow clients hold
no thread) and runs each complete request on one of ``--threads`` threads; those threads share
one model through the micro-batcher. Every worker follows the catalog store on its own
(:mod:`server.follower`) and may write to it, so any number of workers, and of servers on one
store, answer alike.

The master process (the gunicorn arbiter) never imports torch, FAISS or the app: it checks
the inputs in a child process (:mod:`server.preflight`) and forks. Each server instance has a
folder of its own (removed at exit) for its control socket and the metrics its workers share.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from common.errors import MachineError, UserError, message_line
from common.machine import default_threads
from server.bridge import BufferedWSGIBridge
from server.config import GunicornSettings, ServerConfig
from server.json_logs import JsonAccessLogger, use_json_logs
from server.metrics import MULTIPROC_ENV, mark_process_dead
from server.preflight import check_in_child, preflight
from server.worker import PhonesimWorker, booted_mark, loaded, process_alive

log = logging.getLogger(__name__)


def gunicorn_log_level() -> str:
    """gunicorn's own level, as phonesim's: -q (warnings and errors only) had left its ten
    start and stop lines ("Booting worker", "Handling signal") on, -v adds its debug lines."""
    if log.isEnabledFor(logging.DEBUG):
        return "debug"
    return "info" if log.isEnabledFor(logging.INFO) else "warning"


def configure_threads(torch_threads: int, faiss_threads: int = 1, runtime: str = "torch") -> None:
    """Thread pools of one worker: torch's for the batched forward pass (only where torch
    runs: see :func:`~embedder.engine.set_torch_threads`); FAISS's for searches.

    A search is one query and request threads already run many at once, so FAISS gets one
    OpenMP thread by default: its spinning pool would otherwise take cores from the model.
    """
    import faiss  # the workers' libraries: never loaded in the master

    from embedder.engine import set_torch_threads

    set_torch_threads(torch_threads, runtime)
    faiss.omp_set_num_threads(faiss_threads)


def import_lazy_modules() -> None:
    """Import now what libraries import on a request's first use of them: out of file
    descriptors, numpy's lazy ``numpy.ma`` (``np.unique`` in every filtered search) failed
    on every request, 2,087 tracebacks in 10 s in a resource-limits review."""
    import numpy.ma  # noqa: F401
    from PIL import Image

    Image.init()  # every image format plugin


def faiss_threads_here(faiss_threads: int) -> None:
    """Give this thread's FAISS calls ``faiss_threads`` OpenMP threads. OpenMP's setting is
    per thread: set in the loading thread alone, each request thread searched with a team the
    size of every core (20 threads per worker where 12 were meant, on 2 cores), and under a
    thread limit libgomp's failed thread creation aborted the worker."""
    import faiss

    faiss.omp_set_num_threads(faiss_threads)


def _worker_exit(server: Any, worker: Any) -> None:
    """Finish the requests in hand, stop the batcher and close the index when a worker ends."""
    bridge = getattr(worker, "asgi", None)
    if isinstance(bridge, BufferedWSGIBridge):
        bridge.close()


def _child_exit(server: Any, worker: Any) -> None:
    """In the master, once a worker is gone (even killed): drop its live metric gauges and
    its mark of having loaded."""
    mark_process_dead(worker.pid)
    folder = getattr(server.app, "folder", None)
    if folder is not None:
        booted_mark(folder, worker.pid).unlink(missing_ok=True)


INSTANCE_PREFIX = "phonesim-serve-"
MASTER_PID_FILE = "master.pid"


def remove_stale_instance_folders(parent: Path | None = None) -> list[Path]:
    """Remove the instance folders of servers whose master is gone without cleaning up (a
    SIGKILL or a power cut runs no ``finally``). A folder without a readable pid, or written
    on another host (a container sharing /tmp sees other pids), is kept."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in parent.glob(f"{INSTANCE_PREFIX}*"):
        try:
            host, pid_text = (folder / MASTER_PID_FILE).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if host == socket.gethostname() and pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d folder(s) of servers that were killed", len(removed))
    return removed


@contextlib.contextmanager
def instance_folder(parent: Path | None = None) -> Iterator[Path]:
    """A folder of this server instance's own: control socket and shared metrics (the
    workers find the latter through ``PROMETHEUS_MULTIPROC_DIR``). Removed at exit; the
    master's pid in it lets a later server remove it if this one is killed."""
    try:
        remove_stale_instance_folders(parent)
        folder = Path(tempfile.mkdtemp(prefix=INSTANCE_PREFIX, dir=parent))
    except OSError as exc:  # a read-only root file system: "No usable temporary directory"
        raise UserError(
            f"serve needs a writable temporary folder for its control socket and shared "
            f"metrics ({exc.strerror or exc}); set TMPDIR to one (in a container, an emptyDir "
            "or tmpfs volume)"
        ) from exc
    master = os.getpid()
    (folder / MASTER_PID_FILE).write_text(f"{socket.gethostname()} {master}")
    (folder / "metrics").mkdir()
    before = os.environ.get(MULTIPROC_ENV)
    # A platform's setting is said, not replaced silently; a re-executed server (gunicorn's
    # USR2 upgrade) inherits its old instance's folder, which is no one's setting.
    if before and not Path(before).parent.name.startswith(INSTANCE_PREFIX):
        log.warning(
            "%s=%s is not used: serve keeps its workers' metrics in a folder of its own (%s), "
            "emptied at each start, which /metrics reads",
            MULTIPROC_ENV, before, folder / "metrics",
        )  # fmt: skip
    os.environ[MULTIPROC_ENV] = str(folder / "metrics")  # inherited by the forked workers
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
        # gunicorn's workers are forked inside this block and leave through it (SystemExit):
        # only the master may remove the folder, or one worker's exit takes the control
        # socket and the other workers' metrics with it.
        if os.getpid() == master:
            shutil.rmtree(folder, ignore_errors=True)


TEXT_CUES_COPY = "text-cues.json"


def keep_text_cues(config: ServerConfig, folder: Path) -> ServerConfig:
    """``config`` reading its cue file from a copy in the instance ``folder``, taken once the
    preflight has checked it: every worker, one gunicorn starts again later too, reads the
    words checked at the start. A restarted worker read the file again: an edit that broke it
    stopped the whole server, and a valid edit made workers answer one photo differently."""
    if config.text_cues is None:
        return config
    copy = folder / TEXT_CUES_COPY
    shutil.copyfile(config.text_cues, copy)
    log.info("text cues: %s, as it was at the start (a copy in %s)", config.text_cues, folder)
    return config.replace(text_cues=str(copy))


def pinned(config: ServerConfig) -> ServerConfig:
    """``config`` with its checkpoint and index folders named by their real paths (symbolic
    links resolved), as they are now."""
    return config.replace(
        checkpoint=config.checkpoint and os.path.realpath(config.checkpoint),
        index=config.index and os.path.realpath(config.index),
    )


#: gunicorn's default access line plus the time taken and the request's id (the
#: ``X-Request-ID`` the answer carries: see :mod:`server.request_ids`).
ACCESS_LOG_FORMAT = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms id=%({x-request-id}o)s'
)


class GracefulArbiter(Arbiter):
    """gunicorn's arbiter, whose first SIGINT (Ctrl-C) stops gracefully as SIGTERM does:
    gunicorn's own quick stop dropped every request in flight. A second Ctrl-C while it
    waits for them still forces the stop (gunicorn's ``stop`` looks for one). A reload
    (SIGHUP) happens only once the checkpoint and index it would load are checked."""

    def __init__(self, app: PhonesimGunicorn) -> None:
        super().__init__(app)
        self._checking: threading.Thread | None = None  # a reload's check, while it runs
        self._check_child: subprocess.Popen | None = None
        self._checked: queue.SimpleQueue[tuple[ServerConfig, str | None]] = queue.SimpleQueue()

    def handle_int(self) -> None:
        self.handle_term()

    def handle_hup(self) -> None:
        """A reload (SIGHUP) starts new workers, which read the checkpoint and index again,
        and stops the old ones at once, before the new ones have loaded: a checkpoint and
        index that no longer fit (one of two symlinks moved, a checkpoint retrained in place)
        stopped the whole server (a model-upgrade review: exit 3, nothing listening). They are
        checked first, as at the start (the preflight, in a child process, on a thread: the
        master goes on reaping and replacing workers meanwhile); where that fails the reload is
        refused, saying why, and the workers go on serving what they loaded."""
        if self._checking is not None and self._checking.is_alive():
            self.log.warning("reload: the last SIGHUP's check still runs; this one is ignored")
            return
        fresh = pinned(self.app.given_config)
        self._checking = threading.Thread(
            target=self._check, args=(fresh,), name="reload-check", daemon=True
        )
        self._checking.start()

    def _check(self, fresh: ServerConfig) -> None:
        problem = None
        try:
            check_in_child(fresh, started=self._started_check)
        except (UserError, MachineError) as exc:
            problem = message_line(exc)
        except Exception as exc:  # a check that cannot run refuses, it never reloads
            problem = f"{type(exc).__name__}: {message_line(exc)}"
        self._checked.put((fresh, problem))
        self.wakeup()

    def _started_check(self, child: subprocess.Popen) -> None:
        self._check_child = child

    def maybe_promote_master(self) -> None:
        """(Called at each turn of the master's loop.) Reload once a SIGHUP's check passed."""
        super().maybe_promote_master()
        try:
            fresh, problem = self._checked.get_nowait()
        except queue.Empty:
            return
        if problem is not None:
            self.log.error(
                "reload refused: %s; the workers go on serving what they loaded (a worker "
                "started meanwhile loads that too): mend it, then send SIGHUP again",
                problem,
            )
            return
        self.app.server_config = fresh  # what every worker from now on loads
        super().handle_hup()

    def stop(self, graceful: bool = True) -> None:
        child = self._check_child
        if child is not None and child.poll() is None:
            child.kill()  # a reload's check left running would outlive the server
        super().stop(graceful)


class PhonesimGunicorn(BaseApplication):
    """gunicorn's programmatic application: no config file, no command line parsing.

    ``server_config`` is what workers load: ``given_config`` with the checkpoint and index
    paths resolved (:func:`pinned`) when the server started or last reloaded, so that a worker
    restarted after a symlink moved loads what the others serve, not what the link names now.
    """

    def __init__(self, config: ServerConfig, settings: GunicornSettings, folder: Path) -> None:
        self.given_config = config
        self.server_config = pinned(config)
        self.settings = settings
        self.folder = folder
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            "bind": [s.bind],
            "workers": s.workers,
            # Request threads are the bridge's (see load); the worker itself is an event loop.
            "worker_class": PhonesimWorker,
            "timeout": s.timeout_s,
            "graceful_timeout": s.graceful_timeout_s,
            "keepalive": 5,
            "loglevel": gunicorn_log_level(),
            "errorlog": "-",
            "accesslog": "-" if s.access_log else None,
            "access_log_format": ACCESS_LOG_FORMAT,
            **({"logger_class": JsonAccessLogger} if s.log_format == "json" else {}),
            "proc_name": "phonesim-serve",
            "preload_app": False,
            "worker_exit": _worker_exit,
            "child_exit": _child_exit,
            # One control socket per instance (gunicorn's default is one per user, and a
            # server that stopped deleted the socket of another still running).
            "control_socket": str(self.folder / "gunicorn.ctl"),
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def run(self) -> None:
        try:
            GracefulArbiter(self).run()
        except RuntimeError as exc:  # as BaseApplication.run: gunicorn's own config errors
            print(f"\nError: {exc}\n", file=sys.stderr)
            sys.exit(1)

    def load(self) -> Any:
        from server.app import create_app  # in the worker, after the fork

        import_lazy_modules()
        threads = self.settings.torch_threads or default_threads(self.settings.workers)
        configure_threads(threads, self.settings.faiss_threads, self.server_config.runtime)
        log.info(
            "worker %d: the model uses %d thread(s), faiss %d",
            os.getpid(),
            threads,
            self.settings.faiss_threads,
        )
        # Its model loads with these threads (load_engine sets torch's too, after an "auto"
        # runtime's check or fallback as well).
        app = create_app(self.server_config.replace(model_threads=threads))
        try:
            bridge = BufferedWSGIBridge(
                app,
                threads=self.settings.threads,
                max_body=app.config["MAX_CONTENT_LENGTH"],
                body_timeout_s=self.settings.body_timeout_s,
                on_close=app.extensions["phonesim"].close,
                cors_origins=self.server_config.cors_origins,
                on_refused=app.extensions["phonesim"].metrics.count_refused,
                thread_init=functools.partial(faiss_threads_here, self.settings.faiss_threads),
            )
        except BaseException:  # no threads (a process limit): the app's own threads stop too
            try:
                app.extensions["phonesim"].close()
            except Exception:  # the load's own error is the one to report
                log.exception("closing the app after its load failed")
            raise
        loaded(self.folder)  # only now: while it serves, a worker failing to load is retried
        return bridge


def serve(config: ServerConfig, settings: GunicornSettings | None = None) -> int:
    """Serve ``config`` under gunicorn until stopped (Ctrl-C / SIGTERM); returns the exit code."""
    settings = settings or GunicornSettings()
    if settings.log_format == "json":
        use_json_logs()
    preflight(config, settings)
    with instance_folder() as folder:
        config = keep_text_cues(config, folder)
        log.info(
            "starting gunicorn on http://%s with %d worker(s) x %d thread(s); writes %s; "
            "control socket %s",
            settings.bind,
            settings.workers,
            settings.threads,
            "enabled" if config.writes_enabled else "disabled (no API key)",
            folder / "gunicorn.ctl",
        )
        try:
            PhonesimGunicorn(config, settings, folder).run()
        except SystemExit as exc:  # gunicorn's arbiter exits through sys.exit
            code = exc.code
            return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
