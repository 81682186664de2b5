"""The micro-batcher on a fake model: grouping, bounds, waiting policy, failures, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from embedder.inference import EmbeddingBatch
from server.batcher import BatcherClosedError, MicroBatcher, OverloadedError


class FakeModel:
    """Embedding = the input's first pixel; records batch sizes; can be slowed or gated."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a forward pass has started

    def __call__(self, x: np.ndarray) -> EmbeddingBatch:
        assert isinstance(x, np.ndarray) and x.dtype == np.float32  # numpy batches, no torch
        self.entered.set()
        self.gate.wait(10)
        time.sleep(self.delay)
        self.sizes.append(len(x))
        flat = x.reshape(len(x), -1)[:, :2].copy()
        return EmbeddingBatch(flat, flat * 2)


def pixel(v: float) -> np.ndarray:
    return np.full((3, 2, 2), v, np.float32)


@pytest.fixture
def make():
    made: list[MicroBatcher] = []

    def factory(model, **kw) -> MicroBatcher:
        b = MicroBatcher(model, **kw)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def test_each_request_gets_its_own_row(make):
    model = FakeModel()
    b = make(model, max_batch=4, max_wait_ms=0)
    model.gate.clear()
    futures = [b.submit(pixel(i)) for i in range(10)]
    model.gate.set()
    for i, f in enumerate(futures):
        r = f.result(5)
        assert r.embedding.tolist() == [i, i] and r.probabilities.tolist() == [2 * i, 2 * i]
    assert max(model.sizes) <= 4 and sum(model.sizes) == 10
    assert len(model.sizes) < 10  # queued requests were grouped


def test_a_lone_request_does_not_wait(make):
    b = make(FakeModel(), max_batch=16, max_wait_ms=500)
    t0 = time.perf_counter()
    r = b.run(pixel(1), timeout=5)
    assert time.perf_counter() - t0 < 0.25
    assert r.batch_size == 1


def test_waits_briefly_for_requests_being_decoded(make):
    model = FakeModel()
    b = make(model, max_batch=16, max_wait_ms=300)
    started = threading.Event()

    def late() -> None:
        with b.arrival() as arrival:
            started.set()
            time.sleep(0.05)  # "decoding"
            fut = arrival.submit(pixel(2))
        results.append(fut.result(5))

    results: list = []
    t = threading.Thread(target=late)
    t.start()
    started.wait(5)
    first = b.run(pixel(1), timeout=5)
    t.join(5)
    assert first.batch_size == 2 and results[0].batch_size == 2
    assert model.sizes == [2]


def test_submitting_through_an_arrival_queues_before_leaving(make):
    b = make(FakeModel(), max_batch=4, max_wait_ms=50)
    with b.arrival() as arrival:
        assert b._arriving == 1
        r = arrival.submit(pixel(3)).result(5)
        assert b._arriving == 0 and r.embedding.tolist() == [3, 3]
        with pytest.raises(RuntimeError, match="already left"):
            arrival.submit(pixel(4))
    assert b._arriving == 0  # leaving the block after submitting does not count twice


def test_a_model_error_reaches_every_request_of_the_batch_and_the_next_batch_works(make):
    calls = {"n": 0}
    model = FakeModel()

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return model(x)

    b = make(flaky, max_batch=8, max_wait_ms=0)
    model.gate.clear()
    with pytest.raises(RuntimeError, match="boom"):
        b.run(pixel(0), timeout=5)
    model.gate.set()
    assert b.run(pixel(3), timeout=5).embedding.tolist() == [3, 3]


def test_a_full_queue_is_refused(make):
    model = FakeModel()
    model.gate.clear()
    b = make(model, max_batch=1, max_wait_ms=0, max_queue=2)
    first = b.submit(pixel(0))
    assert model.entered.wait(5)  # the batcher took it and is blocked in the model
    b.submit(pixel(1))
    b.submit(pixel(2))
    with pytest.raises(OverloadedError):
        b.submit(pixel(3))
    model.gate.set()
    assert first.result(5).batch_size == 1


def test_close_finishes_queued_work_then_refuses(make):
    model = FakeModel(delay=0.01)
    b = make(model, max_batch=2, max_wait_ms=0)
    futures = [b.submit(pixel(i)) for i in range(5)]
    b.close()
    assert [f.result(5).embedding[0] for f in futures] == [0, 1, 2, 3, 4]
    assert not b.alive
    with pytest.raises(BatcherClosedError):
        b.submit(pixel(9))


def test_observer_sees_every_batch(make):
    """One call per forward pass, in order, with its size and the time the model took."""
    model = FakeModel(delay=0.02)
    seen: list[tuple[int, float]] = []
    b = make(model, max_batch=4, max_wait_ms=0, observer=lambda n, s: seen.append((n, s)))
    model.gate.clear()
    first = b.submit(pixel(0))
    assert model.entered.wait(5)  # the batcher runs the first one alone, held at the gate
    rest = [b.submit(pixel(i)) for i in range(1, 6)]  # queued meanwhile: then 4 + 1
    model.gate.set()
    results = [f.result(5) for f in [first, *rest]]
    assert [n for n, _ in seen] == model.sizes == [1, 4, 1]
    by_batch = [results[0].model_s, results[1].model_s, results[5].model_s]
    assert [s for _, s in seen] == by_batch  # the very time the requests of each batch got
    assert all(0.02 <= s < 5 for _, s in seen)
    assert {r.batch_size for r in results[1:5]} == {4}


def test_a_failing_observer_never_fails_a_request(make):
    def observer(n: int, s: float) -> None:
        raise RuntimeError("metrics broke")

    b = make(FakeModel(), max_batch=4, max_wait_ms=0, observer=observer)
    assert b.run(pixel(5), timeout=5).embedding.tolist() == [5, 5]


def test_submit_many_runs_a_requests_images_in_one_turn(make):
    """The images of one request run back to back, in passes of max_batch, each row answered
    in order; a request queued behind them runs in the next turn."""
    model = FakeModel()
    seen: list[int] = []
    b = make(model, max_batch=4, max_wait_ms=0, observer=lambda n, s: seen.append(n))
    model.gate.clear()
    blocker = b.submit(pixel(-1))
    assert model.entered.wait(5)
    many = b.submit_many(np.stack([pixel(i) for i in range(10)]))
    single = b.submit(pixel(99))
    model.gate.set()
    results = many.result(5)
    assert [float(r.embedding[0]) for r in results] == [float(i) for i in range(10)]
    assert float(single.result(5).embedding[0]) == 99.0
    assert blocker.result(5).batch_size == 1
    assert model.sizes == seen == [1, 4, 4, 2, 1]  # passes of at most 4, then the single
    with pytest.raises(ValueError):
        b.submit_many(np.zeros((0, 3, 2, 2), np.float32))


def test_a_model_returning_too_few_rows_fails_the_batch_and_the_thread_goes_on(make):
    """Handing out rows had been outside the error handling: an IndexError there ended the
    batcher thread, and every later request waited for its timeout."""
    model = FakeModel()
    short = {"on": True}

    def forward(x):
        out = model(x)
        if short["on"]:
            return EmbeddingBatch(out.embeddings[:-1], out.probabilities[:-1])
        return out

    b = make(forward, max_batch=4, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="returned 0 embeddings and 0 probability rows for 1"):
        b.run(pixel(1), timeout=5)
    short["on"] = False
    assert b.alive
    assert b.run(pixel(2), timeout=5).embedding.tolist() == [2, 2]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_interpreter_exit_in_the_model_answers_the_batch_and_refuses_what_follows(make):
    def forward(x):
        raise SystemExit(3)

    b = make(forward, max_batch=4, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="model stopped: SystemExit"):
        b.run(pixel(1), timeout=5)
    b._thread.join(5)
    assert not b.alive
    with pytest.raises(BatcherClosedError):
        b.submit(pixel(2))  # it had been queued, for no thread to answer


def test_each_image_of_a_many_request_reports_the_pass_it_ran_in(make):
    b = make(FakeModel(), max_batch=4, max_wait_ms=0)
    results = b.submit_many(np.stack([pixel(i) for i in range(10)])).result(5)
    assert [r.batch_size for r in results] == [4] * 8 + [2, 2]  # had been 4 for every one


def test_close_on_a_full_queue_still_finishes_the_queued_work_and_ends(make):
    """The stop sentinel finds no room in the queue: the queued work still runs, and the
    thread ends when the queue is empty."""
    model = FakeModel()
    model.gate.clear()
    b = make(model, max_batch=1, max_wait_ms=0, max_queue=2)
    first = b.submit(pixel(0))
    assert model.entered.wait(5)
    queued = [b.submit(pixel(1)), b.submit(pixel(2))]  # the queue is full
    closer = threading.Thread(target=b.close, kwargs={"timeout": 5})
    closer.start()
    assert b._closed.wait(5)  # the closer marked it closed, and waits for room for the stop
    with pytest.raises(BatcherClosedError):
        b.submit(pixel(3))
    model.gate.set()
    assert [f.result(5).embedding[0] for f in [first, *queued]] == [0, 1, 2]
    t = time.perf_counter()
    closer.join(5)
    assert not b._thread.is_alive() and time.perf_counter() - t < 1.0


def test_a_result_that_comes_as_the_wait_ends_is_returned_not_a_500():
    """The wait timed out, the result came before the check: the wait's own TimeoutError
    was raised, a logged 500 instead of the answer (or a 503 model_timeout)."""
    from concurrent.futures import Future

    from server.batcher import ModelTimeoutError, model_result

    class LateFuture(Future):
        def result(self, timeout=None):  # noqa: ANN001, ANN202
            if not self.done():
                super().set_result("row")  # arrives just as the wait gives up
                raise TimeoutError
            return super().result(timeout)

    assert model_result(LateFuture(), 0.01) == "row"
    with pytest.raises(ModelTimeoutError, match="within 0.01 s"):
        model_result(Future(), 0.01)
    failed = Future()
    failed.set_exception(TimeoutError("the model's own"))
    with pytest.raises(TimeoutError, match="the model's own"):
        model_result(failed, 0.01)
