"""Running the app under gunicorn (threads per worker, one model per worker process).

Each worker builds its own app after the fork (no preloading: a model and its thread pools
must not be shared across ``fork``), so with several workers each loads the model. Within a
worker, request threads share one model through the micro-batcher.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from common.errors import UserError
from server.config import ServerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GunicornSettings:
    """Process settings of the WSGI server."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 8
    timeout_s: int = 60
    torch_threads: int | None = None  # default: CPU cores / workers
    faiss_threads: int = 1
    access_log: bool = False
    log_level: str = "info"

    @property
    def bind(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


def default_torch_threads(workers: int) -> int:
    """Intra-op threads per worker so that the workers together use each core once."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def configure_threads(torch_threads: int, faiss_threads: int = 1) -> None:
    """Thread pools of one worker: torch's for the batched forward pass; FAISS's for searches.

    A search is one query and request threads already run many at once, so FAISS gets one
    OpenMP thread by default: its spinning pool would otherwise take cores from the model.
    """
    import faiss
    import torch

    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


def _worker_exit(server: Any, worker: Any) -> None:
    """Stop the batcher and close the index when a worker ends."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("phonesim") if app is not None else None
    if state is not None:
        state.close()


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
            "threads": s.threads,
            "worker_class": "gthread",
            "timeout": s.timeout_s,
            "graceful_timeout": 30,
            "keepalive": 5,
            "loglevel": s.log_level,
            "errorlog": "-",
            "accesslog": "-" if s.access_log else None,
            "proc_name": "phonesim-serve",
            "preload_app": False,
            "worker_exit": _worker_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from server.app import create_app

        threads = self.settings.torch_threads or default_torch_threads(self.settings.workers)
        configure_threads(threads, self.settings.faiss_threads)
        log.info(
            "worker %d: torch uses %d thread(s), faiss %d",
            os.getpid(),
            threads,
            self.settings.faiss_threads,
        )
        return create_app(self.server_config)


def preflight(config: ServerConfig, settings: GunicornSettings) -> None:
    """Check the inputs before forking workers, so mistakes are one-line errors."""
    from embedder.checkpoint import checkpoint_hash, read_config
    from index.folder import describe, lock_writer
    from index.manifest import read_manifest

    if not config.checkpoint or not config.index:
        raise UserError("serve needs --checkpoint and --index")
    if settings.workers < 1 or settings.threads < 1:
        raise UserError("--workers and --threads must be at least 1")
    if config.writes_enabled and settings.workers > 1:
        raise UserError(
            "writes (an API key) need --workers 1: only one process may write the index"
        )
    ckpt = read_config(config.checkpoint)
    # What a worker would otherwise report as a gunicorn boot traceback, checked here without
    # loading the FAISS file (each worker loads it): the embedder the index was built with,
    # a readable catalog store, and, for writes, a free writer lock.
    read_manifest(Path(config.index)).check(
        expect_model=ckpt.architecture,
        expect_checkpoint_hash=checkpoint_hash(config.checkpoint),
        expect_dim=int(ckpt.feature_dim),
        where=f"index {config.index}",
    )
    describe(config.index)
    if config.writes_enabled:
        os.close(lock_writer(Path(config.index)))


def serve(
    checkpoint: str | Path,
    index_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    threads: int = 8,
    api_key: str | None = None,
    max_upload_mb: float = 10.0,
    torch_threads: int | None = None,
    faiss_threads: int = 1,
    access_log: bool = False,
    **config: Any,
) -> int:
    """Serve until stopped (Ctrl-C / SIGTERM); returns the exit code.

    Extra keyword arguments are :class:`~server.config.ServerConfig` fields.
    """
    try:
        server_config = ServerConfig.from_mapping(
            config,
            checkpoint=str(checkpoint),
            index=str(index_dir),
            api_key=api_key or None,
            max_upload_mb=max_upload_mb,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    settings = GunicornSettings(
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        torch_threads=torch_threads,
        faiss_threads=faiss_threads,
        access_log=access_log,
        log_level="debug" if log.isEnabledFor(logging.DEBUG) else "info",
    )
    preflight(server_config, settings)
    log.info(
        "starting gunicorn on http://%s with %d worker(s) x %d thread(s); writes %s",
        settings.bind,
        workers,
        threads,
        "enabled" if server_config.writes_enabled else "disabled (no API key)",
    )
    try:
        PhonesimGunicorn(server_config, settings).run()
    except SystemExit as exc:  # gunicorn's arbiter exits through sys.exit
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
