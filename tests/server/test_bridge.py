"""The HTTP layer's own answers (before the Flask app), driven as gunicorn's ASGI worker would."""

from __future__ import annotations

import asyncio
import json

from server.bridge import BufferedWSGIBridge


def _app(environ, start_response):  # noqa: ANN001, ANN202
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _post(bridge: BufferedWSGIBridge, headers: list[tuple[bytes, bytes]]) -> list[dict]:
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": b"x" * 100, "more_body": False}]

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/v1/search", "headers": headers}
    asyncio.run(bridge(scope, receive, send))
    return sent


def test_a_refusal_carries_the_app_headers_and_is_counted_once():
    counted: list[tuple[str, int]] = []
    bridge = BufferedWSGIBridge(
        _app,
        threads=1,
        max_body=10,
        cors_origins=["https://shop.example/"],
        on_refused=lambda method, status: counted.append((method, status)),
    )
    try:
        origin = (b"origin", b"https://shop.example")
        sent = _post(bridge, [origin, (b"content-length", b"100")])
        start = sent[0]
        headers = dict(start["headers"])
        assert start["status"] == 413 and b"payload_too_large" in sent[1]["body"]
        assert headers[b"access-control-allow-origin"] == b"https://shop.example"
        assert headers[b"x-content-type-options"] == b"nosniff" and headers[b"vary"] == b"Origin"
        assert counted == [("POST", 413)]
        other = dict(_post(bridge, [(b"origin", b"https://evil.example")])[0]["headers"])
        assert b"access-control-allow-origin" not in other  # chunked past the limit: 413 too
        assert counted == [("POST", 413), ("POST", 413)]
    finally:
        bridge.close()


def test_a_failing_counter_does_not_turn_a_refusal_into_an_error():
    def broken(method: str, status: int) -> None:
        raise RuntimeError("metrics broke")

    bridge = BufferedWSGIBridge(_app, threads=1, max_body=10, on_refused=broken)
    try:
        sent = _post(bridge, [(b"content-length", b"100")])  # raised through before
        assert sent[0]["status"] == 413 and [m["type"] for m in sent][-1] == "http.response.body"
    finally:
        bridge.close()


def _upload(bridge: BufferedWSGIBridge, client: str, size: int) -> int:
    """The status a POST of ``size`` body bytes from ``client`` gets, sent in two chunks
    (the first still held when the second arrives)."""
    sent: list[dict] = []
    half = size // 2
    messages = [
        {"type": "http.request", "body": b"x" * half, "more_body": True},
        {"type": "http.request", "body": b"x" * (size - half), "more_body": False},
    ]

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return messages.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/search",
        "headers": [],
        "client": (client, 50000),
    }
    asyncio.run(bridge(scope, receive, send))
    return sent[0]["status"]


def test_one_client_holds_at_most_its_share_of_the_upload_buffer():
    """20 slow uploads from one address filled the whole buffer, and every other client's
    upload was refused 503 for as long as they trickled."""
    from server.bridge import PEER_SHARES

    bridge = BufferedWSGIBridge(_app, threads=1, max_body=100, max_buffered=400)
    try:
        assert bridge.peer_share == 400 // PEER_SHARES
        assert _upload(bridge, "10.0.0.1", bridge.peer_share) == 200
        bridge.buffered_by_peer["10.0.0.1"] = bridge.peer_share  # its slow uploads in flight
        bridge.buffered += bridge.peer_share
        assert _upload(bridge, "10.0.0.1", 10) == 503
        assert _upload(bridge, "10.0.0.2", 80) == 200  # another client still uploads
        assert bridge.buffered_by_peer == {"10.0.0.1": bridge.peer_share}  # nothing leaked
    finally:
        bridge.close()
    # The share holds one whole upload at least, whatever the buffer: a 70 MB upload under
    # a 100 MB limit was refused for good ("retry shortly").
    big = BufferedWSGIBridge(_app, threads=1, max_body=1_000, max_buffered=2_000)
    try:
        assert big.peer_share == 1_000 and _upload(big, "10.0.0.1", 1_000) == 200
        assert _upload(big, "", 1_000) == 200 and big.buffered_by_peer == {}  # no address
    finally:
        big.close()


def test_uploads_from_several_clients_together_hold_at_most_the_worker_buffer():
    """Each client within its share, four slow uploads fill the worker's buffer between
    them: a fifth client's body is refused 503 until one of them is done."""
    bridge = BufferedWSGIBridge(_app, threads=1, max_body=100, max_buffered=400)
    held = 90  # each client's body: under its share (100); four hold 360 of the 400

    async def post(client: str, receive) -> list[dict]:  # noqa: ANN001
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/search", "headers": []}
        await bridge({**scope, "client": (client, 50000)}, receive, send)
        return sent

    def whole(body: bytes):  # noqa: ANN202
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        return receive

    async def main() -> tuple[list[list[dict]], list[dict], list[dict]]:
        release = asyncio.Event()
        waiting = [asyncio.Event() for _ in range(4)]

        def slow(waits: asyncio.Event):  # noqa: ANN202
            chunks = [b"x" * held]

            async def receive() -> dict:
                if chunks:
                    return {"type": "http.request", "body": chunks.pop(), "more_body": True}
                waits.set()  # its first chunk is held; the rest is still on its way
                await release.wait()
                return {"type": "http.request", "body": b"", "more_body": False}

            return receive

        slow_ones = [
            asyncio.create_task(post(f"10.0.0.{i + 1}", slow(w))) for i, w in enumerate(waiting)
        ]
        for w in waiting:
            await w.wait()
        assert bridge.buffered == 4 * held
        refused = await post("10.0.0.9", whole(b"x" * held))  # 360 + 90 > 400
        release.set()
        done = await asyncio.gather(*slow_ones)
        after = await post("10.0.0.9", whole(b"x" * held))
        return done, refused, after

    try:
        done, refused, after = asyncio.run(main())
        assert refused[0]["status"] == 503
        assert dict(refused[0]["headers"])[b"retry-after"] == b"1"
        error = json.loads(refused[1]["body"])["error"]
        assert error["code"] == "overloaded"
        # The worker's bound, not the client's share ("... from this client").
        assert error["message"] == "too many uploads in progress; retry shortly"
        assert [sent[0]["status"] for sent in done] == [200] * 4
        assert after[0]["status"] == 200  # the buffer was given back
        assert bridge.buffered == 0 and bridge.buffered_by_peer == {}
    finally:
        bridge.close()


def test_once_stopping_a_body_gets_one_short_window_not_one_per_chunk():
    """The stop's grace was given to each chunk: a client sending 1 KB every 50 ms was read
    whole (60 chunks, 3 s, up to the 60 s body timeout, past gunicorn's 30 s grace). A
    request that arrives whole after the stop is still served."""

    async def scenario() -> tuple[int, int, float, int]:
        bridge = BufferedWSGIBridge(_app, threads=1, max_body=1_000_000)
        loop = asyncio.get_running_loop()
        received = 0
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def trickle() -> dict:
            nonlocal received
            await asyncio.sleep(0.05)
            received += 1
            return {"type": "http.request", "body": b"x" * 1024, "more_body": received < 60}

        scope = {"type": "http", "method": "POST", "path": "/v1/search", "headers": []}
        started = loop.time()
        loop.call_later(0.2, bridge.begin_shutdown)
        await bridge(scope, trickle, send)
        took = loop.time() - started

        whole: list[dict] = []

        async def at_once() -> dict:
            return {"type": "http.request", "body": b"x" * 10, "more_body": False}

        async def send_whole(message: dict) -> None:
            whole.append(message)

        await bridge(scope, at_once, send_whole)  # after the stop, arrived whole
        bridge.close()
        return sent[0]["status"], received, took, whole[0]["status"]

    status, received, took, after = asyncio.run(scenario())
    assert status == 503 and received < 10 and took < 1.0, (status, received, took)
    assert after == 200


def test_once_stopping_a_body_fed_faster_than_the_buffer_wait_is_cut_off_too():
    """A chunk every 5 ms passes each chunk's short wait for buffered data: the body is still
    refused within seconds of the stop, not read up to the 60 s body timeout."""

    async def scenario() -> tuple[int, float]:
        bridge = BufferedWSGIBridge(_app, threads=1, max_body=100_000_000)
        loop = asyncio.get_running_loop()
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def quick_trickle() -> dict:
            await asyncio.sleep(0.005)
            return {"type": "http.request", "body": b"x", "more_body": True}

        scope = {"type": "http", "method": "POST", "path": "/v1/search", "headers": []}
        started = loop.time()
        loop.call_later(0.1, bridge.begin_shutdown)
        await bridge(scope, quick_trickle, send)
        bridge.close()
        return sent[0]["status"], loop.time() - started

    status, took = asyncio.run(scenario())
    assert status == 503 and took < 5, (status, took)


def test_request_threads_search_with_the_faiss_threads_asked_for():
    """`--faiss-threads` (default 1) was set in the loading thread only, and OpenMP's setting
    is per thread: every request thread searched with a team the size of all cores."""
    import functools

    import faiss

    from server.serve import faiss_threads_here

    seen: list[int] = []

    def app(environ, start_response):  # noqa: ANN001, ANN202
        seen.append(faiss.omp_get_max_threads())
        return _app(environ, start_response)

    bridge = BufferedWSGIBridge(
        app, threads=2, max_body=1000, thread_init=functools.partial(faiss_threads_here, 1)
    )
    try:
        assert _post(bridge, [(b"content-length", b"100")])[0]["status"] == 200
    finally:
        bridge.close()
    assert seen == [1]


def test_probes_are_answered_while_every_request_thread_is_busy():
    """Probes queued behind uploads in the request threads: on a starved CPU /healthz took
    33 s and /readyz 25 s, and an orchestrator restarts a pod whose probe times out."""
    import threading

    held = threading.Event()
    entered = threading.Event()

    def app(environ, start_response):  # noqa: ANN001, ANN202
        if environ["PATH_INFO"] == "/v1/search":
            entered.set()
            held.wait(10)
        return _app(environ, start_response)

    bridge = BufferedWSGIBridge(app, threads=1, max_body=1000)

    async def ask(method: str, path: str, body: bytes = b"") -> int:
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(b"content-length", str(len(body)).encode())]
        await bridge({"type": "http", "method": method, "path": path, "headers": headers},
                     receive, send)  # fmt: skip
        return sent[0]["status"]

    async def scenario() -> tuple[int, int, bool]:
        search = asyncio.create_task(ask("POST", "/v1/search", b"x"))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        probes = await asyncio.wait_for(
            asyncio.gather(ask("GET", "/healthz"), ask("GET", "/readyz")), 5
        )
        still_held = not search.done()
        held.set()
        await search
        return *probes, still_held

    try:
        assert asyncio.run(scenario()) == (200, 200, True)
    finally:
        held.set()
        bridge.close()


def test_no_thread_left_for_a_request_is_a_503_not_a_500(monkeypatch):
    """Under a process limit the request pool could not start a thread: RuntimeError "can't
    start new thread", answered 500 internal_error with a traceback per request."""
    bridge = BufferedWSGIBridge(_app, threads=1, max_body=1000)

    def no_thread(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(bridge._executor, "submit", no_thread)
    try:
        sent = _post(bridge, [(b"content-length", b"100")])
        headers = dict(sent[0]["headers"])
        assert sent[0]["status"] == 503 and b"out_of_resources" in sent[1]["body"]
        assert headers[b"retry-after"] == b"1"
    finally:
        monkeypatch.undo()
        bridge.close()


def test_every_request_thread_starts_with_the_bridge():
    """Threads were started as requests came: under a thread limit a worker loaded, said it
    was ready, and then answered 500s. Now a worker that cannot start them fails to load."""
    import threading

    bridge = BufferedWSGIBridge(_app, threads=5, max_body=10)
    try:
        names = [t.name for t in threading.enumerate()]
        assert sum(n.startswith("phonesim-request") for n in names) == 5
        assert sum(n.startswith("phonesim-probe") for n in names) == 2
    finally:
        bridge.close()


def test_a_bridge_that_cannot_start_its_threads_lets_the_started_ones_go(monkeypatch):
    """Under a thread limit the started threads waited out the 30 s start barrier: a failing
    worker lived on that long, its boot mark telling siblings it served."""
    import threading
    import time

    import pytest

    real = threading.Thread.start
    started = []

    def limited(self):  # noqa: ANN001, ANN202
        if len(started) >= 3:
            raise RuntimeError("can't start new thread")
        started.append(self)
        return real(self)

    monkeypatch.setattr(threading.Thread, "start", limited)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        BufferedWSGIBridge(_app, threads=8, max_body=10)
    monkeypatch.undo()
    for thread in started:
        thread.join(5)
    assert not any(t.is_alive() for t in started) and time.monotonic() - t0 < 5
