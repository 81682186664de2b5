"""Serving the Flask (WSGI) app from an event loop: whole requests in, threads only for work.

Why: with gunicorn's threaded worker a request thread reads its own request, so 8 clients that
send one header line every 2 s hold all 8 threads and every other client waits. Here the event
loop of gunicorn's ``asgi`` worker reads headers and :class:`BufferedWSGIBridge` reads the body
(both without a thread, for any number of connections); only a complete request is handed to
the thread pool that runs the app. The model stays off the loop: app threads submit images to
the micro-batcher's own thread and wait there.

A body is bounded three ways: its size (``max_body``: larger is answered 413 before reading
it), its time (``body_timeout_s`` from the end of the headers: slower is 408), and the bytes
all connections of the worker may hold at once (``max_buffered``: beyond it 503), so slow
uploads cannot fill the memory either.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

from common.errors import resources_exhausted
from server.cors_headers import allowed_origins, answer_headers, unread_origin_headers
from server.errors import (
    OUT_OF_RESOURCES,
    PAYLOAD_TOO_LARGE,
    SECURITY_HEADERS,
    error_json,
    too_large_body,
)
from server.log_throttle import LogThrottle

log = logging.getLogger(__name__)
_resource_log = LogThrottle(10.0)
#: Paths answered by threads of their own (liveness and readiness probes).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
PROBE_THREADS = 2
THREAD_START_TIMEOUT_S = 30.0

# One client address may hold 1/PEER_SHARES of the body buffer (64 of 256 MB by default).
PEER_SHARES = 4

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _start_every_thread(executor: ThreadPoolExecutor, threads: int) -> None:
    """Make ``executor`` start all its ``threads`` (it starts them as work comes): each task
    waits until all are running. RuntimeError where the machine refuses a thread."""
    everyone = threading.Barrier(threads + 1, timeout=THREAD_START_TIMEOUT_S)
    try:
        for _ in range(threads):
            executor.submit(everyone.wait)
        everyone.wait()
    except threading.BrokenBarrierError:
        raise RuntimeError(f"could not start {threads} request threads") from None
    except BaseException:
        everyone.abort()  # the threads that did start stop waiting (they held the exit 30 s)
        raise


class BufferedWSGIBridge:
    """An ASGI application that reads each request whole, then runs ``wsgi_app`` on a thread.

    ``threads`` app threads (gunicorn's ``--threads``). ``on_close`` runs once when the worker
    stops (stopping the app's batcher and closing its index). An answer given here, before
    the app (413, 408, 503, 500), carries the app's security headers and ``cors_origins``'
    CORS headers, so a web page can read it, and the refusals (not the 500) are passed to
    ``on_refused(method, status)`` (the app's metrics count them).
    """

    def __init__(
        self,
        wsgi_app: WSGIApp,
        *,
        threads: int,
        max_body: int,
        body_timeout_s: float = 60.0,
        max_buffered: int = 256 * 2**20,
        on_close: Callable[[], None] | None = None,
        cors_origins: Iterable[str] = (),
        on_refused: Callable[[str, int], None] | None = None,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        self.max_buffered = max_buffered
        self.buffered = 0  # body bytes held by requests still being read (loop thread only)
        # The same, by client address: one client may hold a share of max_buffered, so a few
        # slow uploads from one address cannot refuse every other client's (loop thread only).
        # (at least one whole upload: a single body up to --max-upload-mb must always fit)
        self.peer_share = max(max_buffered // PEER_SHARES, max_body)
        self.buffered_by_peer: dict[str, int] = {}
        self._on_close = on_close
        self._cors = allowed_origins(cors_origins)
        self._on_refused = on_refused
        # thread_init runs in each request thread as it starts (per-thread settings such as
        # FAISS's OpenMP thread count).
        self._executor = ThreadPoolExecutor(
            threads, thread_name_prefix="phonesim-request", initializer=thread_init
        )
        # Probes have threads of their own: behind uploads waiting for the model on a starved
        # CPU, /healthz had taken 33 s, and an orchestrator restarts a pod whose probe times
        # out. They still go through the app, so a stuck app still fails them.
        self._probe_executor = ThreadPoolExecutor(
            PROBE_THREADS, thread_name_prefix="phonesim-probe", initializer=thread_init
        )
        # Every thread now, not on the first busy second: under a thread limit the worker had
        # loaded, said it was ready, and then answered 500s ("can't start new thread").
        try:
            _start_every_thread(self._executor, threads)
            _start_every_thread(self._probe_executor, PROBE_THREADS)
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._probe_executor.shutdown(wait=False, cancel_futures=True)
            raise
        self._stopped_at: float | None = None  # the loop's time at begin_shutdown
        self._body_reads: set[asyncio.Future] = set()  # one per body being read (loop thread)

    def begin_shutdown(self) -> None:
        """The worker stops (SIGTERM): bodies still arriving are refused at once (503, retry
        elsewhere; what arrives within :data:`ARRIVED_S` of now is read), so a slow upload
        cannot hold the worker past gunicorn's 30 s grace, after which it was killed without
        closing its index. Call on the event loop's thread."""
        if self._stopped_at is None:
            self._stopped_at = asyncio.get_running_loop().time()
        for read in self._body_reads:
            if not read.done():
                read.set_result(self._stopped_at)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    def close(self) -> None:
        """Finish the requests in the pool, then close the app (idempotent)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._probe_executor.shutdown(wait=True, cancel_futures=True)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    async def _error(
        self,
        scope: Scope,
        send: Send,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer ``status`` with the API's JSON error and close the connection."""
        body = error_json(code, message)
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
        extra = [*SECURITY_HEADERS, *answer_headers(self._cors, origin)]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *(headers or []),
                    *((k.lower().encode(), v.encode("latin-1")) for k, v in extra),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        # A 500 here follows an app that had already answered (and counted the request).
        if self._on_refused is not None and status != 500:
            try:
                self._on_refused(scope["method"], status)
            except Exception:  # the answer is out: a counting failure is only logged
                log.exception("counting a refused request failed")

    def answered_by_parser(self, status: int, count: bool = True) -> list[tuple[str, str]]:
        """Count an answer gunicorn's HTTP parser gave before this bridge saw a request (414,
        431, 400, 501, 408: method unknown, counted as "other") unless not ``count``; returns
        its CORS headers."""
        # A 500 follows the app's answer, which counted it.
        if count and self._on_refused is not None and status != 500:
            try:
                self._on_refused("", status)
            except Exception:
                log.exception("counting a refused request failed")
        return unread_origin_headers(self._cors)

    # -- one request --------------------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        coding = _transfer_coding(headers)
        if coding not in ("", "chunked"):
            # gunicorn takes gzip, deflate and compress but passes the body on still coded.
            message = f"Transfer-Encoding {coding!r} is not supported; send the body uncoded"
            await self._error(scope, send, 501, "not_implemented", message)
            return
        declared = _content_length(headers)
        if declared is not None and declared > self.max_body:
            await self._too_large(scope, send)
            return
        body = await self._read_body(scope, receive, send)
        if body is None:
            return
        environ = wsgi_environ(scope, body)
        loop = asyncio.get_running_loop()
        probe = scope.get("method") in ("GET", "HEAD") and scope.get("path") in PROBE_PATHS
        try:
            status, response_headers, data = await loop.run_in_executor(
                self._probe_executor if probe else self._executor, run_wsgi, self.wsgi_app, environ
            )
        except Exception as exc:
            if resources_exhausted(exc):  # no thread could be started for it
                skipped = _resource_log.due()
                if skipped is not None:
                    log.warning("out of resources (%d more since the last line): %s", skipped, exc)
                await self._error(scope, send, 503, *OUT_OF_RESOURCES, [(b"retry-after", b"1")])
                return
            log.exception("unhandled error in the WSGI app")
            await self._error(scope, send, 500, "internal_error", "internal server error (logged)")
            return
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": data})

    async def _too_large(self, scope: Scope, send: Send) -> None:
        """The 413 of a body over the limit, naming it for this path (batches or not)."""
        said = too_large_body(self.max_body, scope.get("path", ""))
        await self._error(scope, send, 413, PAYLOAD_TOO_LARGE, said)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once an error was answered (or the client left)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        # None for a client without an address (a unix socket): no share, only the total.
        peer = (scope.get("client") or (None, 0))[0]
        stopping = loop.create_future()  # done once the worker stops: when its grace began
        if self._stopped_at is not None:
            stopping.set_result(loop.time())  # a request begun after the stop: from now
        self._body_reads.add(stopping)
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError
                message = await _next_or_stop(receive, stopping, left)
                if message is None:
                    await self._error(
                        scope,
                        send,
                        503,
                        "shutting_down",
                        "the server is stopping; send the request again",
                        [(b"retry-after", b"1")],
                    )
                    return None
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    await self._too_large(scope, send)
                    return None
                if chunk:
                    held = self.buffered_by_peer.get(peer, 0) if peer else 0
                    mine = bool(peer) and held + len(chunk) > self.peer_share
                    if self.buffered + len(chunk) > self.max_buffered or mine:
                        await self._error(
                            scope,
                            send,
                            503,
                            "overloaded",
                            "too many uploads in progress"
                            + (" from this client" if mine else "")
                            + "; retry shortly",
                            [(b"retry-after", b"1")],
                        )
                        return None
                    self.buffered += len(chunk)
                    if peer:
                        self.buffered_by_peer[peer] = held + len(chunk)
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        except TimeoutError:
            await self._error(
                scope,
                send,
                408,
                "request_timeout",
                f"the request body did not arrive within {self.body_timeout_s:g} s",
            )
            return None
        finally:
            self._body_reads.discard(stopping)
            held = sum(len(c) for c in chunks)
            self.buffered -= held
            if peer:
                left = self.buffered_by_peer.get(peer, 0) - held
                if left > 0:
                    self.buffered_by_peer[peer] = left
                else:
                    self.buffered_by_peer.pop(peer, None)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return


#: Once the worker stops, how long a request's next body message may take and still count
#: as arrived (a bodiless GET's comes at once): slower bodies are refused.
ARRIVED_S = 0.1
# After that, what the connection has buffered already is still read (a fast upload whole;
# gunicorn reads on after each chunk is taken, an event loop turn or two).
_BUFFERED_S = 0.01
_BUFFERED_FOR_S = 2.0  # ... for at most this long after the grace began


async def _next_or_stop(
    receive: Receive, stopping: asyncio.Future, timeout: float
) -> dict[str, Any] | None:
    """The next ASGI message, or None once ``stopping`` is done (its result: when the
    grace began, the stop or the request's own start after it) and the message has not come
    within :data:`ARRIVED_S` of that (TimeoutError after ``timeout`` seconds). A request that
    arrived whole on a kept-alive connection is served while the worker stops: refused, every
    request in the second before a reload's old worker saw its signal was a 503. The grace
    is one window, not one per message: a body trickling a chunk every 50 ms was read whole."""
    loop = asyncio.get_running_loop()
    receiving = asyncio.ensure_future(receive())
    if not stopping.done():
        done, _ = await asyncio.wait(
            {receiving, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if receiving in done:
            return receiving.result()
        if stopping not in done:
            receiving.cancel()
            raise TimeoutError
    since = loop.time() - stopping.result()
    if since > _BUFFERED_FOR_S:  # a client feeding chunks faster than _BUFFERED_S holds no more
        receiving.cancel()
        return None
    left = ARRIVED_S - since
    done, _ = await asyncio.wait({receiving}, timeout=min(timeout, max(left, _BUFFERED_S)))
    if receiving in done:
        return receiving.result()
    receiving.cancel()
    return None


def run_wsgi(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list, bytes]:
    """Call a WSGI app and collect its whole response: (status, ASGI headers, body)."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                written.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return int(status.split(" ", 1)[0]), encoded, b"".join(written)


def wsgi_environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """The PEP 3333 environ of an ASGI HTTP request whose body was read whole."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", ""),
        # WSGI carries the path as bytes decoded as latin-1; the app decodes it as UTF-8.
        "PATH_INFO": unquote_to_bytes(raw_path).decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = text
            continue
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is whole now: its length is what was read
        if key == "UPGRADE":
            # No upgrade happens here (see server.worker): werkzeug would route a WebSocket
            # handshake to WebSocket rules only, and answer a bare 400 for lack of one.
            continue
        key = "HTTP_" + key
        if key in environ:
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + text
        environ[key] = text
    return environ


def _transfer_coding(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's transfer codings, lower case, "" for none."""
    codings = [v.decode("latin-1") for k, v in headers if k == b"transfer-encoding"]
    return ", ".join(c.strip() for c in ",".join(codings).lower().split(",") if c.strip())


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
