"""The HTTP layer against a live server: protocol errors are JSON, slow clients cannot stop good
ones, timeouts answer 408, the worst images stay within a memory bound, and the API key never
shows in a process's arguments."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.server.helpers import API_KEY, _png_header, build_test_index
from tests.server.live import multipart, peak_rss_mb, running_server, wait_for, worker_pids

HEADER_TIMEOUT_S = 3
BODY_TIMEOUT_S = 4
ORIGIN = "https://shop.example"


@pytest.fixture(scope="module")
def proto_index(tiny_embedder, catalog_rows, tiny_catalog, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proto-index") / "index"
    source = {"catalog": str(tiny_catalog / "catalog.csv")}
    return build_test_index(tiny_embedder, catalog_rows, out, source=source)


@pytest.fixture(scope="module")
def server(tiny_checkpoint, proto_index, tmp_path_factory):
    work = tmp_path_factory.mktemp("proto")
    key_file = work / "key.txt"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    with running_server(
        tiny_checkpoint, proto_index, work,
        "--threads", "8", "--header-timeout", str(HEADER_TIMEOUT_S),
        "--body-timeout", str(BODY_TIMEOUT_S), "--api-key-file", str(key_file), "--access-log",
        "--cors-origin", ORIGIN,
    ) as live:  # fmt: skip
        yield live


@pytest.fixture(scope="module")
def jpeg(tiny_catalog) -> bytes:
    return sorted(tiny_catalog.rglob("*.jpg"))[0].read_bytes()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def json_answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), raw[:300]
    return status, json.loads(body)


PROTOCOL_ERRORS = {
    "10k-url": (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "100kb-header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    "cr-in-header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    "cl-and-te": (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "cl-minus-one": (b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "tls-client-hello": (bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64, 400),
    "nul-in-header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "bad-method-token": (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "http-9.9": (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    "bad-chunk-size": (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    ),
    "body-over-limit": (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 999999999\r\n\r\n",
        413,
    ),
    # gunicorn takes these codings but hands the body on still coded ("invalid JSON").
    "gzip-transfer-coding": (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        501,
    ),
}


@pytest.mark.parametrize("name", PROTOCOL_ERRORS)
def test_protocol_errors_are_answered_as_json(server, name):
    data, expected = PROTOCOL_ERRORS[name]
    status, body = json_answer(raw_exchange(server.port, data))
    assert status == expected
    assert set(body["error"]) == {"code", "message"} and body["error"]["code"]
    assert (body["error"]["code"] == "payload_too_large") == (status == 413)


def test_a_websocket_handshake_is_served_as_the_http_request_it_is(server):
    """gunicorn took it as an upgrade and refused it with a bare 403: no JSON, no headers."""
    raw = raw_exchange(
        server.port,
        b"GET /v1/info HTTP/1.1\r\nHost: x\r\nConnection: close, Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
    )
    status, body = json_answer(raw)
    assert status == 200 and "index" in body, raw[:600]


def _refused(port: int, status: int, method: str = "POST") -> float:
    # Connection: close, or the read waits out the keep-alive timeout (4 s a call).
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    text = raw_exchange(port, request).decode()
    prefix = (
        f'phonesim_http_requests_total{{endpoint="refused",method="{method}",status="{status}"}}'
    )
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def test_answers_before_the_app_carry_its_headers_and_are_counted(server):
    """A 413 given before the app had no CORS header (a web page saw a network error, not
    the JSON), none of the security headers, and was missing from /metrics."""
    before = _refused(server.port, 413)
    raw = raw_exchange(
        server.port,
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nOrigin: " + ORIGIN.encode() + b"\r\n"
        b"Content-Type: image/jpeg\r\nContent-Length: 999999999\r\n\r\n",
    )
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert json_answer(raw)[0] == 413
    assert b"access-control-allow-origin: " + ORIGIN.encode() in head
    assert b"x-content-type-options: nosniff" in head and b"vary: origin" in head
    assert _refused(server.port, 413) == before + 1
    # The parser's own answers: its headers unread, the one allowed origin may read it, and
    # it is counted (it was in no metric and a web page saw a network error).
    before = _refused(server.port, 414, "other")
    raw = raw_exchange(server.port, PROTOCOL_ERRORS["10k-url"][0])
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert b"x-content-type-options: nosniff" in head
    assert b"access-control-allow-origin: " + ORIGIN.encode() in head
    assert _refused(server.port, 414, "other") == before + 1
    # ... and in the access log, its request line unread: it had been in no log at all.
    wait_for("the 414 in the access log", lambda: '"- - -" 414 ' in server.log.read_text())


def test_slow_headers_and_bodies_are_answered_408(server):
    counted = _refused(server.port, 408, "other")
    body_head = (
        b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 99\r\n\r\n"
    )

    def timed(data: bytes) -> tuple[bytes, float]:
        t0 = time.monotonic()
        return raw_exchange(server.port, data), time.monotonic() - t0

    # The three wait out their timeouts side by side (one after another had taken 10 s).
    with ThreadPoolExecutor(3) as pool:
        slow_headers, preconnect, slow_body = pool.map(
            timed, [b"GET /healthz HTTP/1.1\r\nX-A: 1\r\n", b"", body_head + b"x"]
        )
    status, body = json_answer(slow_headers[0])
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert HEADER_TIMEOUT_S - 0.5 < slow_headers[1] < HEADER_TIMEOUT_S + 5
    # A connection that sends nothing (a preconnect) is answered too, but made no request:
    # only the slow headers are counted.
    assert json_answer(preconnect[0])[0] == 408
    assert _refused(server.port, 408, "other") == counted + 1
    status, body = json_answer(slow_body[0])
    assert status == 408 and "body" in body["error"]["message"]
    assert BODY_TIMEOUT_S - 0.5 < slow_body[1] < BODY_TIMEOUT_S + 5


def test_a_client_that_leaves_is_logged_499_not_500(server, jpeg):
    """gunicorn logs a request whose client left as ``500 0``: a flaky network read as server
    errors. Each request below is told apart in the access log by its User-Agent."""
    body, headers = multipart({"image": ("a.jpg", jpeg)})

    def head(agent: str) -> bytes:
        return (
            f"POST /v1/search HTTP/1.1\r\nHost: x\r\nUser-Agent: {agent}\r\nConnection: close\r\n"
            f"X-Request-ID: id-{agent}\r\n"
            f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()

    for agent, sent in (("left-mid-body", body[: len(body) // 2]), ("left-after-body", body)):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head(agent) + sent)
        time.sleep(0.5)  # the next request is not the one left
    answer = raw_exchange(server.port, head("stayed") + body)
    assert json_answer(answer)[0] == 200

    def lines() -> dict[str, str]:
        text = server.log.read_text()
        found = {a: ln for ln in text.splitlines() for a in AGENTS if f'"{a}"' in ln}
        return found if len(found) == len(AGENTS) else {}

    AGENTS = ("left-mid-body", "left-after-body", "stayed")
    logged = wait_for("three access log lines", lines, timeout=20)
    assert '" 499 0 ' in logged["left-mid-body"], logged
    assert '" 499 0 ' in logged["left-after-body"], logged
    # The id the client sent, though no answer carried it back (it had been "id=-").
    assert logged["left-mid-body"].endswith("id=id-left-mid-body"), logged
    assert '" 200 ' in logged["stayed"], logged


class SlowClients:
    """``n`` connections that send a request a few bytes at a time (half the headers, half the
    body), reconnecting whenever the server closes one, until :meth:`stop`."""

    def __init__(self, port: int, n: int, interval: float = 0.5) -> None:
        self.port, self.interval = port, interval
        self.open = 0
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i % 2,)) for i in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, body: int) -> None:
        head = b"POST /v1/search HTTP/1.1\r\nHost: x\r\n"
        if body:
            head += b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
        while not self.done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(head)
                    with self.lock:
                        self.open += 1
                    try:
                        while not self.done.wait(self.interval):
                            sock.sendall(b"xxxx" if body else b"X-Slow: 1\r\n")
                    finally:
                        with self.lock:
                            self.open -= 1
            except OSError:
                continue  # answered 408 and closed: come back

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join(10)


def test_64_slow_clients_do_not_stop_8_good_ones(server, jpeg):
    body, headers = multipart({"image": ("phone.jpg", jpeg)})
    slow = SlowClients(server.port, 64)
    try:
        deadline = time.monotonic() + 10
        while slow.open < 64 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slow.open >= 60
        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def good() -> None:
            for _ in range(3):
                t0 = time.monotonic()
                status = server.request("POST", "/v1/search?k=3", body=body, headers=headers)[0]
                with lock:
                    results.append((status, time.monotonic() - t0))

        threads = [threading.Thread(target=good) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        still_open = slow.open
    finally:
        slow.stop()
    assert [s for s, _ in results] == [200] * 24
    assert max(t for _, t in results) < 10, results
    assert still_open >= 48  # the slow clients were there all along


def _png16(width: int, height: int) -> bytes:
    arr = (np.arange(width * height, dtype=np.uint32) % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr.reshape(height, width)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def test_worst_images_stay_within_the_worker_memory_bound(server):
    """Every upload is decoded under the pixel budget; print the worker's peak for the worst."""
    pid = worker_pids(server)[0]
    worst = {
        "16-bit PNG 6000x6000": _png16(6000, 6000),
        "8-bit RGB JPEG 7000x5700 (39.9 MP)": _jpeg(7000, 5700),
        "PNG declaring 20000x20000": _png_header(20_000, 20_000),
    }
    start = peak_rss_mb(pid)
    lines = [f"worker peak RSS before: {start:.0f} MB"]
    for name, data in worst.items():
        status, _, _ = server.request(
            "POST", "/v1/search", body=data, headers={"Content-Type": "image/png"}
        )
        assert status in (200, 400, 413), name
        size = f"{len(data) // 1024} KB"
        lines.append(f"  after {name} ({size}, {status}): {peak_rss_mb(pid):.0f} MB")
    print("\n" + "\n".join(lines))
    assert peak_rss_mb(pid) - start < 700


def test_the_api_key_is_in_no_process_arguments(server, tiny_checkpoint, proto_index, tmp_path):
    pids = [server.proc.pid, *worker_pids(server)]
    for pid in pids:
        assert API_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    # --api-key on the command line still works: the command starts again without it.
    copy = tmp_path / "index"
    shutil.copytree(proto_index, copy)  # the module's server holds the writer lock
    with running_server(tiny_checkpoint, copy, tmp_path, "--api-key", "cmdline-secret-123") as live:
        for pid in [live.proc.pid, *worker_pids(live)]:
            assert b"cmdline-secret-123" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert "visible to other users" in live.log.read_text()
        status, _, _ = live.request(
            "DELETE", "/v1/items/nope", headers={"X-API-Key": "cmdline-secret-123"}
        )
        assert status == 404  # the key was taken: 404, not 401/403
