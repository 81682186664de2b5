"""The gunicorn worker of ``phonesim serve``: gunicorn's asyncio ``asgi`` worker, with changes.

1. Requests the HTTP parser refuses (a 10k-character URL: 414; a 100 KB header: 431; a CR in a
   header, obs-fold, Content-Length beside Transfer-Encoding, ``Content-Length: -1``, TLS bytes
   on the HTTP port: 400; an unknown transfer coding: 501) are answered with the same JSON body
   as every other error, ``{"error": {"code", "message"}}``, instead of gunicorn's text. (A TLS
   client cannot read it, but the connection ends at once instead of waiting for a line end.)
   They carry the API's security and CORS headers and are counted in ``/metrics`` as the
   bridge's own refusals are (endpoint "refused", method "other": it was not parsed).
2. A connection must finish its request headers within ``header_timeout_s`` of connecting
   (gunicorn's keep-alive timer covers later requests): a client that trickles header lines
   holds no thread here, but it must not hold a connection for ever either.
3. A request whose client closed the connection before any answer went out is logged with
   status 499 ("client closed request", as nginx logs it). gunicorn logs it as ``500 0``, so a
   flaky mobile network read as server errors on every dashboard that counts 5xx.
4. Stopping: SIGINT is graceful as SIGTERM is, a stopping worker stops listening at once,
   and a worker that fails to load while another serves is retried, not a "boot error" that
   stops the server (see the methods below).

gunicorn creates its protocol objects inside ``ASGIWorker._serve`` by the module-level name
``ASGIProtocol``; the worker process points that name at :class:`JsonErrorProtocol` when it
starts (each process after the fork, so the arbiter is untouched). gunicorn is pinned to the
major version this was written against, and tests/server/test_protocol.py checks the answers.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import signal
import sys
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol, ASGIResponseInfo
from gunicorn.workers import gasgi

from common.fsutil import atomic_write_text
from server.errors import PAYLOAD_TOO_LARGE, SECURITY_HEADERS, error_json
from server.log_throttle import ThrottledMessages

DEFAULT_HEADER_TIMEOUT_S = 10.0
#: What asyncio logs (with a traceback) each time accepting a connection finds no descriptor.
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"
#: ``booted.<pid>`` in the instance folder: that worker has loaded (removed when it exits).
BOOTED_MARK = "booted"
_LAST_FAILURE = "load-failure"
#: How long a worker that failed to load waits before it exits to be replaced.
RETRY_S = 5.0

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: PAYLOAD_TOO_LARGE,
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    501: "not_implemented",
}


def protocol_error_response(status: int, message: str, extra_headers: Any = ()) -> bytes:
    """A complete HTTP/1.1 error response with the API's JSON error body; closes the
    connection."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    code = _CODES.get(status) or reason.lower().replace(" ", "_").replace("-", "_")
    # The parser's message may quote the request: keep it short (JSON escapes the rest).
    body = error_json(code, f"{reason}: {message}"[:300])
    head = "".join(f"{name}: {value}\r\n" for name, value in (*SECURITY_HEADERS, *extra_headers))
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{head}Connection: close\r\n\r\n"
    ).encode("latin-1") + body


CLIENT_CLOSED_REQUEST = 499


class _AccessLog:
    """A protocol's gunicorn logger, whose access lines say 499 for requests whose client left
    before anything was answered (everything else is the logger's own)."""

    def __init__(self, protocol: ASGIProtocol, log: Any) -> None:
        self._protocol = protocol
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        # gunicorn's handler starts every request at status 500 and ignores what the app sends
        # once the connection is closed; the bridge's own 500s carry a JSON body.
        if resp.status == 500 and resp.sent == 0 and self._protocol._closed:
            resp.status = CLIENT_CLOSED_REQUEST
            # No answer carried an id: the one the client sent, so its report and the line meet.
            from server.request_ids import HEADER, given_id

            sent = given_id(environ.get("HTTP_X_REQUEST_ID"))
            if sent is not None:
                resp.headers.append((HEADER, sent))
        self._log.access(resp, req, loggable(environ), request_time)


# Query parameters whose value is a secret wherever a client puts one by mistake.
_SECRET_PARAMS = re.compile(
    r"(?i)(^|[?&])((?:api[_-]?key|key|token|access[_-]?token|password|secret|sig|signature)=)"
    r"[^&#]*"
)
_C1_CONTROLS = re.compile("[\x80-\x9f]")


def loggable(environ: dict[str, Any]) -> dict[str, Any]:
    """What an access line may show of a request. Without ``Authorization``: gunicorn logs a
    Basic user name, and ``curl -u KEY:`` put the API key in the log (refused 401, but
    written in plain text). With secret-looking query values (``?api_key=``) masked, and C1
    control characters (U+0080-U+009F, such as the one-character terminal escape U+009B,
    which the header parser lets through) escaped: someone reads the log in a terminal."""
    out = {k: v for k, v in environ.items() if k != "HTTP_AUTHORIZATION"}
    if isinstance(out.get("RAW_URI"), str):
        out["RAW_URI"] = _SECRET_PARAMS.sub(r"\1\2***", out["RAW_URI"])
    for key in ("RAW_URI", "HTTP_USER_AGENT", "HTTP_REFERER"):
        if isinstance(out.get(key), str):
            out[key] = _C1_CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", out[key])
    return out


class JsonErrorProtocol(ASGIProtocol):
    """gunicorn's HTTP/1 protocol with JSON error answers, a deadline for the headers and 499
    in the access log for clients that left."""

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        self.log = _AccessLog(self, self.log)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._opened_at = time.monotonic()
        self._got_headers = False
        self._got_bytes = False
        timeout = getattr(self.worker, "header_timeout_s", DEFAULT_HEADER_TIMEOUT_S)
        self._header_timer = self.worker.loop.call_later(timeout, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if not self._got_bytes:
            self._got_bytes = True
            if data[:1] == b"\x16":  # a TLS handshake record: an https:// client on this port
                self._send_error_response(400, "this port speaks plain HTTP, not TLS (https)")
                self._close_transport()
                return
        super().data_received(data)

    def _is_websocket_upgrade(self, request: Any) -> bool:
        # The API speaks no WebSocket: a handshake is served as the plain HTTP request it
        # also is (RFC 9110 lets a server ignore Upgrade). Taken as an upgrade, it was
        # refused with gunicorn's bare 403, no JSON and none of the API's headers.
        return False

    def _on_headers_complete(self) -> Any:
        self._got_headers = True
        self._cancel_header_timer()
        return super()._on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._got_headers or self._closed:
            return
        self._send_error_response(408, "the request headers did not arrive in time")
        self._close_transport()
        if self._request_ready is not None:
            self._request_ready.set()  # let the connection's task see it closed

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        # The bridge counts the answer in /metrics and gives its CORS headers, so a web page
        # reads the JSON (not a network error) and dashboards see the refusals.
        note = getattr(self.app, "answered_by_parser", None)
        # A connection that sent nothing (a browser's preconnect, an idle balancer socket)
        # made no request: its 408 is not counted.
        count = status != 408 or getattr(self, "_got_bytes", True)
        more = note(status, count) if note is not None else []
        answer = protocol_error_response(status, message, (*extra_headers, *more))
        self._safe_write(answer)
        if count:
            self._log_refusal(status, len(answer))

    def _log_refusal(self, status: int, size: int) -> None:
        """An access line for a request the HTTP layer refused before the app (its line
        unread: method and path "-"): such refusals were in /metrics but in no log."""
        try:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            environ = {
                "REMOTE_ADDR": peer[0] if peer else "-",
                "REQUEST_METHOD": "-",
                "RAW_URI": "-",
                "SERVER_PROTOCOL": "-",
            }
            took = datetime.timedelta(seconds=time.monotonic() - self._opened_at)
            self.log.access(ASGIResponseInfo(status, [], size), [], environ, took)
        except Exception:  # a log line never stops the answer
            log.debug("could not log a refused request", exc_info=True)


def booted_mark(folder: Path, pid: int) -> Path:
    """The file saying worker ``pid`` has loaded."""
    return folder / f"{BOOTED_MARK}.{pid}"


def serving_siblings(folder: Path) -> list[int]:
    """The other live workers of this server that have loaded."""
    pids = []
    for mark in folder.glob(f"{BOOTED_MARK}.*"):
        pid = mark.name.rpartition(".")[2]
        if pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid)):
            pids.append(int(pid))
    return pids


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _note_failure(folder: Path, said: str) -> bool:
    """Record ``said`` as the last load failure; whether it differs from the one before."""
    path = folder / _LAST_FAILURE
    try:
        if path.read_text(encoding="utf-8") == said:
            return False
    except OSError:
        pass
    with contextlib.suppress(OSError):
        atomic_write_text(path, said)  # whole: another worker may read it meanwhile
    return True


def loaded(folder: Path) -> None:
    """Mark this worker loaded, and forget the last load failure (one coming back later logs
    its traceback again)."""
    booted_mark(folder, os.getpid()).touch()
    (folder / _LAST_FAILURE).unlink(missing_ok=True)


class PhonesimWorker(gasgi.ASGIWorker):
    """gunicorn's ``asgi`` worker serving through :class:`JsonErrorProtocol`."""

    def init_process(self) -> None:
        if getattr(gasgi, "ASGIProtocol", None) is not ASGIProtocol:
            raise RuntimeError("this gunicorn's asgi worker no longer names ASGIProtocol")
        gasgi.ASGIProtocol = JsonErrorProtocol  # type: ignore[misc]
        settings = getattr(self.app, "settings", None)
        self.header_timeout_s = getattr(settings, "header_timeout_s", DEFAULT_HEADER_TIMEOUT_S)
        logging.getLogger("asyncio").addFilter(ThrottledMessages(ACCEPT_OUT_OF_RESOURCES))
        super().init_process()

    def load_wsgi(self) -> None:
        """As gunicorn's, but a worker that fails to load while another worker of this server
        serves (one restarted, or a reload's) exits with an ordinary failure after
        :data:`RETRY_S`, which gunicorn answers by starting another, instead of its "boot
        error", which stops the whole server: one worker killed while the catalog's database
        was down, or its FAISS file missing, took every healthy worker down with it. With no
        other worker serving, it is the boot error (exit 3, saying why): a server that
        cannot load must not sit on its port answering nothing."""
        try:
            super().load_wsgi()
        except Exception as exc:
            folder = getattr(self.app, "folder", None)
            if folder is None or not serving_siblings(folder):
                raise
            said = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            # The traceback once per distinct failure (a bug shows where), then one line.
            first = _note_failure(folder, said)
            log.error(
                "worker %d could not load (%s); the other workers go on, and another starts "
                "in %g s",
                os.getpid(),
                said,
                RETRY_S,
                exc_info=first,
            )
            time.sleep(RETRY_S)
            sys.exit(1)

    def init_signals(self) -> None:
        """As gunicorn's, but SIGINT stops gracefully, as SIGTERM does: Ctrl-C in a terminal
        reaches every worker too, and gunicorn's quick stop dropped the requests in flight
        (10 of 10 batch searches got no answer). The arbiter's second Ctrl-C still forces it."""
        super().init_signals()
        self.loop.remove_signal_handler(signal.SIGINT)
        self.loop.add_signal_handler(signal.SIGINT, self.handle_exit_signal)

    def handle_exit_signal(self) -> None:
        """SIGTERM (a stop, or the old workers of a reload): as gunicorn's, but this worker
        stops listening at once, and bodies still arriving slowly are refused (see
        :meth:`BufferedWSGIBridge.begin_shutdown`). gunicorn's loop sees the signal up to a
        second later, and until then this worker took new connections only to refuse them:
        a reload (SIGHUP) answered 9 of 60 searches 503 while its new worker listened."""
        if not self.alive:
            return  # stopping already (a second signal)
        super().handle_exit_signal()
        for server in getattr(self, "servers", ()):
            server.close()
        begin = getattr(getattr(self, "asgi", None), "begin_shutdown", None)
        if begin is not None:
            begin()
