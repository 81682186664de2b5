"""Running the app under gunicorn (one model per worker process, threads for the requests).

Each worker builds its own app after the fork (no preloading: a model and its thread pools
must not be shared across ``fork``), so with several workers each loads the model. A worker
reads requests on an event loop (:mod:`server.worker`, :mod:`server.bridge`: slow clients hold
no thread) and runs each complete request on one of ``--threads`` threads; those threads share
one model through the micro-batcher.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import faiss
import torch
from gunicorn.app.base import BaseApplication

from common.errors import UserError
from server.app import create_app
from server.bridge import BufferedWSGIBridge
from server.config import GunicornSettings, ServerConfig
from server.loading import check_for_serving
from server.worker import PhonesimWorker

log = logging.getLogger(__name__)


def default_torch_threads(workers: int) -> int:
    """Intra-op threads per worker so that the workers together use each core once."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def configure_threads(torch_threads: int, faiss_threads: int = 1) -> None:
    """Thread pools of one worker: torch's for the batched forward pass; FAISS's for searches.

    A search is one query and request threads already run many at once, so FAISS gets one
    OpenMP thread by default: its spinning pool would otherwise take cores from the model.
    """
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


def _worker_exit(server: Any, worker: Any) -> None:
    """Finish the requests in hand, stop the batcher and close the index when a worker ends."""
    bridge = getattr(worker, "asgi", None)
    if isinstance(bridge, BufferedWSGIBridge):
        bridge.close()


class PhonesimGunicorn(BaseApplication):
    """gunicorn's programmatic application: no config file, no command line parsing."""

    def __init__(self, config: ServerConfig, settings: GunicornSettings) -> None:
        self.server_config = config
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options = {
            "bind": [s.bind],
            "workers": s.workers,
            # Request threads are the bridge's (see load); the worker itself is an event loop.
            "worker_class": PhonesimWorker,
            "timeout": s.timeout_s,
            "graceful_timeout": 30,
            "keepalive": 5,
            "loglevel": "debug" if log.isEnabledFor(logging.DEBUG) else "info",
            "errorlog": "-",
            "accesslog": "-" if s.access_log else None,
            "proc_name": "phonesim-serve",
            "preload_app": False,
            "worker_exit": _worker_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        threads = self.settings.torch_threads or default_torch_threads(self.settings.workers)
        configure_threads(threads, self.settings.faiss_threads)
        log.info(
            "worker %d: the model uses %d thread(s), faiss %d",
            os.getpid(),
            threads,
            self.settings.faiss_threads,
        )
        app = create_app(self.server_config.replace(model_threads=threads))
        return BufferedWSGIBridge(
            app,
            threads=self.settings.threads,
            max_body=app.config["MAX_CONTENT_LENGTH"],
            body_timeout_s=self.settings.body_timeout_s,
            on_close=app.extensions["phonesim"].close,
        )


def preflight(config: ServerConfig, settings: GunicornSettings) -> None:
    """Check the inputs before forking workers, so mistakes are one-line errors."""
    if not config.checkpoint or not config.index:
        raise UserError("serve needs --checkpoint and --index")
    if settings.workers < 1 or settings.threads < 1:
        raise UserError("--workers and --threads must be at least 1")
    if config.writes_enabled and settings.workers > 1:
        raise UserError(
            "writes (an API key) need --workers 1: only one process may write the index"
        )
    # Without loading the model or the FAISS file (each worker loads its own after the fork).
    check_for_serving(
        config.checkpoint, config.index, writable=config.writes_enabled, runtime=config.runtime
    )


def serve(config: ServerConfig, settings: GunicornSettings | None = None) -> int:
    """Serve ``config`` under gunicorn until stopped (Ctrl-C / SIGTERM); returns the exit code."""
    settings = settings or GunicornSettings()
    preflight(config, settings)
    log.info(
        "starting gunicorn on http://%s with %d worker(s) x %d thread(s); writes %s",
        settings.bind,
        settings.workers,
        settings.threads,
        "enabled" if config.writes_enabled else "disabled (no API key)",
    )
    try:
        PhonesimGunicorn(config, settings).run()
    except SystemExit as exc:  # gunicorn's arbiter exits through sys.exit
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
