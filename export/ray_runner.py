"""Ray runner: the embedding stage on a Ray cluster (or a local Ray instance) via Ray Data.

The driver turns the input list into blocks of ``{'index', 'path'}`` records, a pool of actors
each holding one :class:`~export.mapper.EmbedMapper` (checkpoint loaded once per actor) maps
them, and results stream back to the driver in input order, where the same shard writer as the
single-process path stores them. Workers read images and the checkpoint by path, so on a real
cluster both must live on storage every node mounts at the same path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

from common.errors import UserError
from common.extras import install_hint
from embedder.data import Sample
from embedder.engine_options import EngineOptions
from embedder.text_reader import TextPlan
from export.errors import RayUnavailableError
from export.mapper import TEXT_FAILED, EmbedMapper, FeatureBatch, records_to_batch
from export.reader import record_blocks

log = logging.getLogger(__name__)

#: Packages the workers import; shipped with the job to remote clusters (pure Python, small).
CODE_PACKAGES = ("common", "embedder", "export")


def import_ray() -> ModuleType:
    """Import Ray and Ray Data, or say how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the part we need)
    except ImportError as exc:
        raise RayUnavailableError(
            f"--ray needs Ray with Ray Data: {install_hint('distributed')}; import failed: {exc}"
        ) from exc
    return ray


def _code_modules() -> list[str]:
    import importlib

    return [str(Path(importlib.import_module(name).__file__).parent) for name in CODE_PACKAGES]


@dataclass
class RaySession:
    """What :func:`connect` did, for :meth:`close` to undo: nothing when Ray was already up."""

    started: bool
    # A local instance's own folder (sockets, logs, spilled objects): Ray's default, one
    # session_* folder per run in $TMPDIR/ray, is never removed and grows with every export.
    temp_dir: Path | None = None

    def close(self, failed: bool = False) -> None:
        """Disconnect (stopping a local instance) if :func:`connect` connected; a local
        instance's folder is removed, or kept for its logs when the export ``failed``."""
        if not self.started:
            return
        import_ray().shutdown()
        if self.temp_dir is None:
            return
        if failed:
            log.warning("Ray's logs of this export are kept in %s", self.temp_dir)
        else:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """``ray.init`` makes SIGTERM exit the driver at once (``sys.exit(15)``): keep the
    handler the caller had (the CLI's stops the export as Ctrl-C does, with the resume hint)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:  # None: set outside Python, cannot be put back
            signal.signal(signal.SIGTERM, previous)


def connect(address: str, ship_code: bool | None = None) -> RaySession:
    """Start a local Ray instance (``"local"``) or join a cluster.

    An already initialised Ray (a test fixture, a notebook) is reused as it is.
    """
    with _keeping_sigterm_handler():
        return _connect(address, ship_code)


def _connect(address: str, ship_code: bool | None) -> RaySession:
    ray = import_ray()
    if ray.is_initialized():
        return RaySession(started=False)
    kwargs: dict = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address == "local":
        # Short on purpose: Ray's socket paths under it must stay within 107 characters.
        temp_dir = Path(tempfile.mkdtemp(prefix="phonesim-ray-"))
        try:
            ray.init(_temp_dir=str(temp_dir), **kwargs)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        return RaySession(started=True, temp_dir=temp_dir)
    if ship_code is None or ship_code:
        kwargs["runtime_env"] = {"py_modules": _code_modules()}
    log.info("connecting to Ray at %s", address)
    ray.init(address=address, **kwargs)
    return RaySession(started=True)


def default_actors(cpus_per_actor: float) -> int:
    """One actor per ``cpus_per_actor`` CPUs the cluster has."""
    ray = import_ray()
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // cpus_per_actor))


@contextmanager
def _actor_errors_as_raised() -> Iterator[None]:
    """An actor's :class:`UserError` (out of memory or descriptors, an edited checkpoint) as
    its own exception: Ray raises it as ``RayTaskError(OutOfResourcesError)``, whose message
    is the actor's whole traceback, which the CLI printed instead of its one line."""
    try:
        yield
    except Exception as exc:
        cause = _user_error_in(exc)
        if cause is None or cause is exc:
            raise
        raise cause from None  # its message says it all; Ray's traceback is the actor's


def _user_error_in(exc: BaseException) -> UserError | None:
    """The :class:`UserError` ``exc`` carries: Ray's ``cause`` (the actor's own exception),
    else ``exc`` itself or one it was raised from."""
    for _ in range(8):  # a chain that loops ends here
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
            continue
        if isinstance(exc, UserError):
            return exc
        if not isinstance(exc.__cause__, BaseException):
            return None
        exc = exc.__cause__
    return None


def ray_batches(
    checkpoint: str,
    checkpoint_hash: str,
    samples: list[Sample],
    start: int,
    batch_size: int,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    progress: bool = True,
    engine: EngineOptions | None = None,
    text: TextPlan | None = None,
) -> Iterator[FeatureBatch]:
    """Embed ``samples[start:]`` on the connected Ray cluster, yielding batches in input order.

    ``engine``: runtime and device of every actor (decide "auto" before, once: see
    :func:`embedder.runtime.resolve_runtime`); each actor's model uses as many threads as the
    CPUs it reserves, and a GPU device reserves one GPU per actor. ``text``: each actor also
    reads the text on the unsure images it decoded, with as many OCR threads as its CPUs, and
    adds the classes it names to their probabilities (the batches' ``text`` says what it did).
    """
    ray = import_ray()
    engine = engine or EngineOptions()
    gpus = 1 if (engine.device or "").startswith("cuda") else 0
    import pyarrow as pa

    actors = actors or default_actors(cpus_per_actor)
    pending = len(samples) - start
    if text is not None:
        # Reading costs far more than the model and falls unevenly on the images: at least four
        # batches per actor, so that one actor does not read while the others wait.
        batch_size = max(1, min(batch_size, -(-pending // (4 * actors))))
    # Blocks are the unit actors pick up: several per actor keeps them all busy to the end.
    block_rows = max(batch_size, min(16 * batch_size, -(-pending // (4 * actors))))
    tables = [pa.table(block) for block in record_blocks(samples, start, block_rows)]
    ctx = ray.data.DataContext.get_current()
    saved = (
        ctx.execution_options.preserve_order,
        ctx.enable_progress_bars,
        ctx.raise_original_map_exception,
    )
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # the tqdm bar below counts images in input order
    # An actor's exception arrives as itself (under RayTaskError), not as "UDF failed to
    # process a data block", whose pickled cause is lost: see _actor_errors_as_raised.
    ctx.raise_original_map_exception = True
    # Ray Data warns once that its bars are off: they are, on purpose; mark it as said.
    ray.util.debug.log_once("ray_data_progress_manager_disabled")
    ray_data_log = logging.getLogger("ray.data")
    saved_level = ray_data_log.level
    if log.getEffectiveLevel() > logging.INFO:  # -q: Ray Data's plan and timing lines too
        ray_data_log.setLevel(logging.WARNING)
    try:
        ds = ray.data.from_arrow(tables).map_batches(
            EmbedMapper,
            fn_constructor_kwargs={
                "checkpoint": str(Path(checkpoint).resolve()),
                "expected_hash": checkpoint_hash,
                "threads": max(1, round(cpus_per_actor)),
                "runtime": engine.runtime,
                "device": engine.device,
                "text": text,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus,
        )
        log.info("embedding %d inputs on Ray with %d actor(s)", pending, actors)
        with (
            tqdm(total=pending, desc="embedding (ray)", unit="img", disable=not progress) as bar,
            _actor_errors_as_raised(),
        ):
            for records in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
                batch = records_to_batch(records)
                # Workers read absolute paths (they may run elsewhere); the reasons name each
                # file as the input did, as the single-process run's do.
                failures = [(pos, _as_given(why, samples[pos].path)) for pos, why in batch.failures]
                batch = dataclasses.replace(batch, failures=failures)
                for pos, reason in batch.failures:
                    log.warning("skipping %s: %s", samples[pos].id, reason)
                if batch.text is not None:
                    for pos in batch.indices[batch.text == TEXT_FAILED]:
                        log.warning(
                            "%s: reading its text failed on a worker (the reason is in its log); "
                            "written without it",
                            samples[pos].id,
                        )
                yield batch
                bar.update(batch.end - batch.start)
    finally:
        (
            ctx.execution_options.preserve_order,
            ctx.enable_progress_bars,
            ctx.raise_original_map_exception,
        ) = saved
        ray_data_log.setLevel(saved_level)


def _as_given(reason: str, path: str | Path) -> str:
    """``reason`` naming ``path`` as the input gave it, where a worker named it absolute."""
    return reason.replace(os.path.abspath(path), str(path))
