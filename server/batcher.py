"""Micro-batching: concurrent requests share one forward pass of the model.

Request threads preprocess their own image into a float32 numpy array and
:meth:`MicroBatcher.submit` it; one batcher thread takes the queued arrays (at most
``max_batch``), runs the model once on the stack and hands each request its row through a
future. While other requests are still on their way (see :class:`Arrival`), the batcher waits
up to ``max_wait_ms`` for them, so a lone request never waits and a burst is grouped. Batches
are numpy: a worker on an ONNX runtime never imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the model loads in the worker only (the gunicorn master imports this module)
    from embedder.inference import EmbeddingBatch

log = logging.getLogger(__name__)


class OverloadedError(RuntimeError):
    """The queue of requests waiting for the model is full."""


class BatcherClosedError(RuntimeError):
    """The batcher was stopped; no more requests are taken."""


class ModelTimeoutError(RuntimeError):
    """The model did not answer a request within its timeout. Its own class: the builtin
    TimeoutError also covers an OS-level ETIMEDOUT, which is no model's timeout."""


def model_result(future: Future, timeout: float | None) -> Any:
    """``future.result(timeout)``, a :class:`ModelTimeoutError` when it does not come."""
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        if future.done():  # it came just after the wait ended, or is the model's own error
            return future.result()
        raise ModelTimeoutError(f"the model did not answer within {timeout:g} s") from None


@dataclass(frozen=True)
class BatchResult:
    """One request's row of a batch, with what it cost (seconds)."""

    embedding: np.ndarray
    probabilities: np.ndarray
    queue_s: float
    model_s: float
    batch_size: int


@dataclass
class _Job:
    x: np.ndarray  # rows x 3 x H x W float32
    future: Future
    t_submit: float
    many: bool = False  # the future gives a list of results (submit_many)


BatchObserver = Callable[[int, float], None]


class Arrival:
    """A request on its way to :meth:`MicroBatcher.submit` (reading, decoding its image).

    While any is pending, a batch that is about to start waits up to ``max_wait_ms`` for it.
    Submit through :meth:`submit`: it queues the image and then stops being pending, so a
    batch never sees the request as neither arriving nor queued (leaving first and submitting
    after left a window where the batch started without it). :meth:`leave` (idempotent; also
    on leaving the ``with`` block) is for a request that will not submit.
    """

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher: MicroBatcher | None = batcher
        batcher._arrive(+1)

    def submit(self, x: np.ndarray) -> Future:
        """Queue the image (see :meth:`MicroBatcher.submit`), then stop being pending."""
        if self._batcher is None:
            raise RuntimeError("this arrival has already left; submit to the batcher instead")
        try:
            return self._batcher.submit(x)
        finally:
            self.leave()

    def leave(self) -> None:
        if self._batcher is not None:
            self._batcher._arrive(-1)
            self._batcher = None

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()


class MicroBatcher:
    """Groups single-image arrays into batches for ``forward`` (a thread-safe callable)."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], EmbeddingBatch],
        *,
        max_batch: int = 16,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        observer: BatchObserver | None = None,
        name: str = "phonesim-batcher",
    ) -> None:
        self._forward = forward
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, int(max_queue)))
        self._observer = observer
        self._arriving = 0
        self._arriving_lock = threading.Lock()
        self._closed = threading.Event()
        self._put_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- client side --------------------------------------------------------------------------
    def arrival(self) -> Arrival:
        """Mark a request that will submit soon (a batching hint); see :class:`Arrival`."""
        return Arrival(self)

    def _arrive(self, delta: int) -> None:
        with self._arriving_lock:
            self._arriving += delta

    def submit(self, x: np.ndarray) -> Future:
        """Queue one preprocessed image (3 x H x W); the future gives a :class:`BatchResult`."""
        return self._put(_Job(x[None], Future(), time.perf_counter()))

    def submit_many(self, xs: np.ndarray) -> Future:
        """Queue the images of one request (n x 3 x H x W) as one job: they run together, in
        one turn of the batcher, in passes of at most ``max_batch`` images; the future gives a
        list of n :class:`BatchResult`."""
        if len(xs) == 0:
            raise ValueError("submit_many needs at least one image")
        return self._put(_Job(xs, Future(), time.perf_counter(), many=True))

    def _put(self, job: _Job) -> Future:
        # Under the lock close() takes: no job is queued behind the stop sentinel, where no
        # one would ever answer it.
        with self._put_lock:
            if self._closed.is_set() or not self._thread.is_alive():
                raise BatcherClosedError("the model batcher is stopped")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise OverloadedError(
                    f"{self._queue.maxsize} requests are already waiting for the model"
                ) from None
        return job.future

    def run(self, x: np.ndarray, timeout: float | None = None) -> BatchResult:
        """Submit and wait for the result (re-raising the model's exception)."""
        return model_result(self.submit(x), timeout)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed.is_set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking requests, finish the queued ones and end the thread."""
        with self._put_lock:
            if self._closed.is_set():
                return
            self._closed.set()  # from now on no job is queued: the stop signal comes last
        with contextlib.suppress(queue.Full):  # a full queue has room as soon as a job is taken
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    # -- batcher thread -----------------------------------------------------------------------
    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The batch that starts with ``first``, and whether the stop sentinel ended it."""
        jobs = [first]
        rows = len(first.x)
        deadline = time.perf_counter() + self.max_wait_s
        while rows < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0 or self._arriving == 0:
                    break
                try:  # someone is decoding: give them a moment to join this batch
                    job = self._queue.get(timeout=min(remaining, 0.0005))
                except queue.Empty:
                    continue
            if job is None:  # close(): nothing was queued after it (see _put)
                return jobs, True
            jobs.append(job)
            rows += len(job.x)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            collected, stop = self._collect(first)
            jobs = [j for j in collected if j.future.set_running_or_notify_cancel()]
            if jobs:
                self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        """Run the jobs' images and answer each job. Whatever fails on the way (the model, or
        rows it did not return) is every unanswered job's exception, and the thread goes on:
        a request must never be left waiting for an answer that will not come."""
        try:
            self._answer(jobs)
        except BaseException as exc:
            log.exception("model forward failed for a batch of %d", len(jobs))
            failure = exc if isinstance(exc, Exception) else RuntimeError(f"model stopped: {exc!r}")
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise  # an interpreter exit: _put refuses new requests once the thread ends

    def _answer(self, jobs: list[_Job]) -> None:
        t0 = time.perf_counter()
        passes: list[tuple[int, float]] = []  # (images, seconds) of each forward pass
        # One job (a lone request, or one request's images) is already its batch: no copy.
        x = jobs[0].x if len(jobs) == 1 else np.concatenate([j.x for j in jobs])
        # A request's many images run in this one turn, in passes of at most max_batch.
        parts = []
        for i in range(0, len(x), self.max_batch):
            t = time.perf_counter()
            parts.append(self._forward(x[i : i + self.max_batch]))
            passes.append((len(parts[-1]), time.perf_counter() - t))
        out = parts[0] if len(parts) == 1 else _concat(parts)
        if not len(out.embeddings) == len(out.probabilities) == len(x):
            raise RuntimeError(
                f"the model returned {len(out.embeddings)} embeddings and "
                f"{len(out.probabilities)} probability rows for {len(x)} images"
            )
        model_s = sum(seconds for _, seconds in passes)
        if self._observer is not None:
            try:
                for images, seconds in passes:
                    self._observer(images, seconds)
            except Exception:  # metrics must never break serving
                log.exception("batch observer failed")
        row = 0
        for j in jobs:
            results = [
                BatchResult(
                    out.embeddings[r],
                    out.probabilities[r],
                    queue_s=t0 - j.t_submit,
                    model_s=model_s,
                    batch_size=passes[r // self.max_batch][0],  # the pass this image ran in
                )
                for r in range(row, row + len(j.x))
            ]
            row += len(j.x)
            j.future.set_result(results if j.many else results[0])


def _concat(parts: list[EmbeddingBatch]) -> EmbeddingBatch:
    from embedder.inference import EmbeddingBatch  # worker path only: not in the master

    return EmbeddingBatch(
        np.concatenate([p.embeddings for p in parts]),
        np.concatenate([p.probabilities for p in parts]),
    )
