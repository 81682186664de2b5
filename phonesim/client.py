"""A small Python client of the lookup server's ``/v1`` API.

::

    from phonesim.client import Client, PhonesimError

    client = Client("http://127.0.0.1:8000", api_key="...")
    hits = client.search(image="phone.heic", k=5, filter={"price": {"lt": 300}})
    vec = client.embed("phone.jpg")["embedding"]
    client.search(vector=vec, score_threshold=0.8)
    for item in client.items(filter={"brand": "apple"}):
        ...

Requests that get 429 or 503 (reads also 502 and 504, a proxy's answers while the server
restarts, and reads whose connection broke) are retried ``retries`` times with exponential
backoff and jitter, waiting at least what ``Retry-After`` asks, up to 60 s a retry (a longer
ask is answered sooner). A write (add, update, remove) whose connection broke after it was sent
is not sent again: the server may have done it. ``timeout`` bounds each attempt whole, from
connecting to the answer's last byte, so a server that trickles its headers, reads an upload
slowly or trickles its answer cannot hold an attempt longer; a call makes at most ``retries +
1`` attempts and the waits between them, and ``deadline`` (when given) bounds the call whole:
no retry starts that its wait would carry past it, and the last attempt gets only what is left.
An answer larger than ``max_answer_mb`` is refused as it arrives (``answer_too_large``), so a
broken or hostile server cannot fill the caller's memory. Redirects are not followed: the API
never sends one, and following it would hand the key to another host. Every failure of a
request is raised as :class:`PhonesimError` with the HTTP status and the server's error code
and message; arguments that cannot make a request are ``TypeError``/``ValueError`` before any
is sent.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import math
import numbers
import os
import random
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
from urllib3.exceptions import (
    ClosedPoolError,
    DecodeError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
)

from common.item_ids import is_item_address

RETRY_STATUSES = frozenset({429, 503})
# A proxy's "bad gateway" and "gateway timeout" (nginx while gunicorn restarts): reads only, as
# phonesim's own 502 (store_outcome_unknown) says a write may or may not have been done.
READ_RETRY_STATUSES = RETRY_STATUSES | {502, 504}
READ_SIZE = 64 * 1024
LAST_LOOK_S = 0.01  # the wait for bytes once the deadline has passed
MIN_ATTEMPT_S = 0.1  # no attempt is started with less time than this left of the deadline
MAY_HAVE_DONE = "; the server may have done it: check before sending it again"
ImageInput = str | os.PathLike | bytes


class PhonesimError(Exception):
    """A request failed: ``status`` (HTTP status, 0 when no answer came), ``code`` and
    ``message`` (the server's ``{"error": {"code", "message"}}``); ``retry_after`` (seconds the
    server asked to wait, or None) and ``request_id`` (the server's ``X-Request-ID``, which its
    log lines name) where an answer carried them.

    :attr:`retryable` says whether the same call may succeed later unchanged (the server was
    busy, unreachable or too slow); :attr:`may_have_done`, whether a write that failed may
    still have been done (check before sending it again)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        # Every argument: it pickles to another process whole.
        super().__init__(status, code, message, retry_after, request_id)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        if self.may_have_done or self.code == "store_outcome_unknown":
            return False  # sent again, it might be done twice: check first
        if self.status in READ_RETRY_STATUSES:
            return True
        return self.status == 0 and self.code in ("timeout", "connection_error")

    @property
    def may_have_done(self) -> bool:
        return self.message.endswith(MAY_HAVE_DONE)

    def __str__(self) -> str:
        request = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.status} {self.code}: {self.message}{request}"


def _image_bytes(image: ImageInput) -> bytes:
    """The bytes of an image given as bytes or a path: TypeError for anything else, and a
    PhonesimError (``invalid_image``) for a file that cannot be read."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if not isinstance(image, str | os.PathLike):
        raise TypeError(
            f"give an image as a file path or bytes, not {type(image).__name__} "
            "(a PIL image: save it to a BytesIO and pass .getvalue())"
        )
    try:
        return Path(image).read_bytes()
    except OSError as exc:
        raise PhonesimError(0, "invalid_image", f"cannot read {image}: {exc.strerror}") from exc


def _item_id(item_id: Any) -> str:
    """``item_id`` where an item can have it: ValueError otherwise. An id whose segments would
    be read as another path is refused: HTTP clients resolve "a/../b" to "b" before sending (a
    remove of "x/../y" deleted y), and the server reads "x/similar" as x's neighbours. No
    item can have such an id: the server refuses it, by the same rule, when one is added."""
    if not isinstance(item_id, str) or not item_id:
        raise ValueError(f"an item id is a non-empty string, got {item_id!r}")
    if not is_item_address(item_id):
        raise ValueError(f"no catalog item can have the id {item_id!r}")
    return item_id


def _item_path(item_id: str) -> str:
    """The URL path of a catalog item, its '/' escaped."""
    return "/v1/items/" + requests.utils.quote(_item_id(item_id), safe="")


def _b64(image: ImageInput) -> str:
    return base64.b64encode(_image_bytes(image)).decode()


def _options(
    k: int | None,
    filter: Mapping[str, Any] | None,
    score_threshold: float | None,
    offset: int | None,
    ranking: str | None = None,
    read_text: str | None = None,
) -> dict[str, Any]:
    given = {
        "k": k,
        "filter": filter,
        "score_threshold": score_threshold,
        "offset": offset,
        "ranking": ranking,
        "read_text": read_text,
    }
    # JSON bodies are checked as they are encoded; the query string of /similar is not JSON.
    if isinstance(score_threshold, float) and not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold}")
    return {key: value for key, value in given.items() if value is not None}


def _query(image: Any, vector: Any, item_id: Any) -> dict[str, Any]:
    pairs = (("image", image), ("vector", vector), ("id", item_id))
    given = [(k, v) for k, v in pairs if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of image=, vector= or item_id=")
    kind, value = given[0]
    if kind == "image":
        return {"image": _b64(value)}
    if kind == "vector":
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise TypeError(f"a vector is a sequence of numbers, not {type(value).__name__}")
        try:
            vector = [float(v) for v in value]
        except (TypeError, ValueError) as exc:
            raise TypeError(f"a vector is a sequence of numbers: {exc}") from exc
        if not all(math.isfinite(v) for v in vector):  # JSON has no NaN: say so here
            raise ValueError("the vector holds NaN or infinite values")
        return {"vector": vector}
    if not isinstance(value, str) or not is_item_address(value):  # as get() and remove() do
        raise ValueError(f"no catalog item can have the id {value!r}")
    return {"id": value}


def _metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata is a mapping of field to value, got {metadata!r:.40}")
    return dict(metadata)


def _json_bytes(body: Any) -> bytes:
    """``body`` as JSON, or a Python error naming what JSON cannot carry (requests' own
    message, "Out of range float values are not JSON compliant", named no field)."""
    try:
        return json.dumps(body, allow_nan=False, default=_numpy_scalar).encode()
    except ValueError as exc:
        raise ValueError(
            "the request holds NaN or infinity (in score_threshold, a filter or metadata), "
            "which JSON cannot carry"
        ) from exc
    except TypeError as exc:
        raise TypeError(f"the request holds a value JSON cannot carry: {exc}") from exc


def _numpy_scalar(value: Any) -> Any:
    """A numpy number (``np.int64(5)`` from an array) as the Python number JSON carries;
    vectors take numpy arrays already."""
    if isinstance(value, numbers.Number) and hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _field(answer: dict[str, Any], key: str) -> Any:
    """``answer[key]``, or a PhonesimError for an answer that is not the API's."""
    if key not in answer:
        raise PhonesimError(200, "invalid_response", f"the answer has no {key!r}: not phonesim's")
    return answer[key]


def _never_sent(exc: requests.ConnectionError) -> bool:
    """Whether the connection failed before the request went out (refused, unresolvable, or
    a pool another thread closed before this request took a connection from it)."""
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", None)
    return (
        isinstance(exc, requests.ConnectTimeout)
        or isinstance(reason, NewConnectionError)
        or isinstance(cause, ClosedPoolError)
    )


_in_flight = threading.local()  # the calling thread's attempt: which connection it is on


class _Attempt:
    """One attempt's connection, for the watchdog that ends it at its deadline. requests'
    timeout is per wait for bytes: a server sending a header line a second, or reading an
    upload slowly, held a call of ``timeout=2`` for a minute."""

    def __init__(self, timeout: float, bound: str) -> None:
        self.timeout = timeout
        self.bound = bound  # what ends it, for messages: "1 s", "the call's deadline (2 s)"
        self.lock = threading.Lock()
        self.connection: Any = None
        self.done = False
        self.fired = False

    def too_slow(self) -> PhonesimError:
        return PhonesimError(0, "timeout", f"the answer took longer than {self.bound}")

    def expire(self) -> None:
        """The deadline passed: shut the connection's socket, which ends any wait on it."""
        with self.lock:
            if self.done:
                return
            self.fired = True
            sock = getattr(self.connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _watched(connection_cls: type) -> type:
    """``connection_cls`` telling the calling thread's :class:`_Attempt` which connection
    its request goes out on."""

    class Watched(connection_cls):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            self._watch()
            super().connect()

        def request(self, *args: Any, **kwargs: Any) -> Any:
            self._watch()
            return super().request(*args, **kwargs)

        def _watch(self) -> None:
            attempt = getattr(_in_flight, "attempt", None)
            if attempt is not None:
                with attempt.lock:
                    attempt.connection = self

    # Its errors name the connection by class ("HTTPConnection(host=...)"), as without it.
    Watched.__name__ = Watched.__qualname__ = connection_cls.__name__
    return Watched


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections report to the attempt using them."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        pools = dict(self.poolmanager.pool_classes_by_scheme)
        for scheme, pool in pools.items():
            pools[scheme] = type(
                pool.__name__, (pool,), {"ConnectionCls": _watched(pool.ConnectionCls)}
            )
        self.poolmanager.pool_classes_by_scheme = pools


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date (RFC 9110); None if neither."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _check_number(name: str, value: Any, what: str, zero: bool = False) -> None:
    """ValueError unless ``value`` is a finite int or float above 0 (or 0 with ``zero``); a
    bool is refused, not read as 0 or 1."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not (value >= 0 if zero else value > 0)
    ):
        raise ValueError(f"{name} is {what}, got {value!r}")


def _limit_wait(r: requests.Response, seconds: float) -> None:
    """Let the next read of ``r``'s socket wait at most ``seconds``."""
    sock = getattr(getattr(r.raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


class Client:
    """The lookup API at ``base_url``; ``api_key`` is needed by the writes."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
        verify: bool | str | None = None,
        deadline: float | None = None,
        max_answer_mb: float = 512.0,
    ) -> None:
        """``timeout``: seconds an attempt may take whole, from connecting to the answer's last
        byte (``session``'s own connections are bounded per wait for bytes only: requests'
        timeout). ``retries``: attempts after the first, for what may succeed later (see the
        module's notes); ``backoff``: the first wait between them, doubling. ``verify``: as
        requests takes it, False or a CA bundle's path for a server with a private
        certificate (given here, it wins over ``REQUESTS_CA_BUNDLE``, which a session's own
        ``verify`` does not). ``deadline``: seconds a call may take whole, its attempts and
        the waits between them (None: as many attempts as ``retries`` allows); on a caller's
        ``session`` only the start of each attempt and each wait for bytes are bounded.
        ``max_answer_mb``: the largest answer read, decompressed (phonesim's own largest, a
        full batch of vectors, stays below 200 MB)."""
        _check_number("timeout", timeout, "a number of seconds above 0")
        if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
            raise ValueError(f"retries is a whole number of 0 or more, got {retries!r}")
        _check_number("backoff", backoff, "a number of seconds of 0 or more", zero=True)
        if deadline is not None:
            _check_number("deadline", deadline, "a number of seconds above 0 or None")
        _check_number("max_answer_mb", max_answer_mb, "a number above 0")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url starts with http:// or https://, got {base_url!r}")
        if api_key is not None:
            try:  # HTTP headers are Latin-1: else every call failed in http.client, reads too
                api_key.encode("latin-1")
            except (AttributeError, UnicodeEncodeError):
                raise ValueError("api_key must be a string of Latin-1 characters") from None
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.verify = verify
        self.deadline = None if deadline is None else float(deadline)
        self.max_answer_mb = float(max_answer_mb)
        self.max_answer_bytes = max(1, int(max_answer_mb * 2**20))
        if session is None:
            session = requests.Session()
            for prefix in ("http://", "https://"):
                session.mount(prefix, _WatchedAdapter())
        self._session = session

    # -- transport -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, write: bool = False, **kw: Any) -> Any:
        """``write``: the request changes the catalog, so it is sent again only when it never
        reached the server (a refused connection), not when the connection broke after."""
        headers = dict(kw.pop("headers", None) or {})
        if "json" in kw:
            kw["data"] = _json_bytes(kw.pop("json"))
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        url = self.base_url + path
        ends = None if self.deadline is None else time.monotonic() + self.deadline
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            timeout, bound = self.timeout, f"{self.timeout:g} s"
            if ends is not None and ends - time.monotonic() < timeout:
                timeout, bound = (
                    ends - time.monotonic(),
                    f"the call's deadline ({self.deadline:g} s)",
                )
            if write:
                # A new connection: servers close idle ones (phonesim's after 5 s), and one
                # closing just as a write reuses it fails a write nobody received. Which pooled
                # connection a write would take, and how long it sat, is not known here.
                self._session.close()  # the idle connections; the session stays usable
            try:
                r, body = self._send(method, url, headers, kw, _Attempt(timeout, bound))
            except PhonesimError as exc:  # the deadline passed, or too large an answer came
                if not write or exc.code not in ("timeout", "answer_too_large"):
                    raise
                raise PhonesimError(
                    exc.status,
                    exc.code,
                    exc.message + MAY_HAVE_DONE,
                    exc.retry_after,
                    exc.request_id,
                ) from exc
            except requests.exceptions.SSLError as exc:  # no retry mends a certificate
                raise PhonesimError(0, "ssl_error", str(exc)) from exc
            except requests.ConnectionError as exc:
                if write and not _never_sent(exc):
                    broke = f"{exc}; the connection broke after the request was sent"
                    raise PhonesimError(0, "connection_error", broke + MAY_HAVE_DONE) from exc
                wait = self._wait(None, attempt)
                if last or self._past(ends, wait):
                    raise PhonesimError(0, "connection_error", str(exc)) from exc
                time.sleep(wait)
                continue
            except requests.Timeout as exc:  # no answer began (a connect timeout is above)
                message = f"no answer within {bound}"
                raise PhonesimError(
                    0, "timeout", message + (MAY_HAVE_DONE if write else "")
                ) from exc
            except requests.RequestException as exc:
                raise PhonesimError(0, "request_error", str(exc)) from exc
            again = RETRY_STATUSES if write else READ_RETRY_STATUSES
            if r.status_code in again and not last:
                wait = self._wait(r, attempt)
                if not self._past(ends, wait):
                    time.sleep(wait)
                    continue
            return self._decode(r, body)
        raise AssertionError("unreachable")

    @staticmethod
    def _past(ends: float | None, wait: float) -> bool:
        """Whether waiting ``wait`` s leaves no time before ``ends`` for another attempt."""
        return ends is not None and time.monotonic() + wait + MIN_ATTEMPT_S > ends

    def _send(
        self, method: str, url: str, headers: dict[str, str], kw: dict[str, Any], attempt: _Attempt
    ) -> tuple[requests.Response, bytes]:
        """One attempt: the response and its whole body, in ``timeout`` from the start: a
        watchdog shuts the connection's socket at the deadline (requests' own timeout is per
        wait for bytes), and each read of the body waits only for what is left."""
        attempt.timeout = max(attempt.timeout, MIN_ATTEMPT_S)
        deadline = time.monotonic() + attempt.timeout
        watchdog = threading.Timer(attempt.timeout, attempt.expire)
        watchdog.daemon = True
        _in_flight.attempt = attempt
        watchdog.start()
        try:
            return self._send_watched(method, url, headers, kw, deadline, attempt)
        except (requests.RequestException, HTTPError) as exc:
            if attempt.fired:  # the watchdog ended it: a slow server, not a broken one
                raise attempt.too_slow() from exc
            raise
        finally:
            with attempt.lock:
                attempt.done = True
            watchdog.cancel()
            _in_flight.attempt = None

    def _send_watched(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        kw: dict[str, Any],
        deadline: float,
        attempt: _Attempt,
    ) -> tuple[requests.Response, bytes]:
        if self.verify is not None:
            kw = {**kw, "verify": self.verify}
        r = self._session.request(
            method,
            url,
            headers=headers,
            timeout=attempt.timeout,  # requests' own: connecting, and each wait for bytes
            allow_redirects=False,
            stream=True,
            **kw,
        )
        chunks, size = [], 0
        try:
            self._check_size(r, r.headers.get("Content-Length"))
            while True:
                # Each read waits only for what is left; with none left, a last look takes
                # what has already arrived (a whole answer is not thrown away for lateness).
                _limit_wait(r, max(deadline - time.monotonic(), LAST_LOOK_S))
                chunk = r.raw.read1(READ_SIZE, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                self._check_size(r, size)
        except ReadTimeoutError as exc:
            r.close()  # a half-read answer: its connection cannot be reused
            raise attempt.too_slow() from exc
        except DecodeError as exc:
            r.close()
            if attempt.fired:  # cut short by the watchdog, not sent broken
                raise attempt.too_slow() from exc
            raise PhonesimError(
                r.status_code, "invalid_response", f"the answer cannot be decoded: {exc}"
            ) from exc
        except HTTPError as exc:  # urllib3's own: the connection broke during the answer
            r.close()
            if attempt.fired:
                raise attempt.too_slow() from exc
            raise requests.ConnectionError(exc) from exc
        except BaseException:
            r.close()
            raise
        with attempt.lock:  # from here the watchdog leaves the connection alone
            attempt.done = True
            cut_short = attempt.fired
        if cut_short:  # its end may be where the watchdog shut the socket (headers too)
            r.close()
            raise attempt.too_slow()
        return r, b"".join(chunks)

    def _check_size(self, r: requests.Response, size: int | str | None) -> None:
        """Refuse an answer past ``max_answer_mb`` (announced, or read so far). Its holding
        the answer's chunks and then joining them takes up to twice that at its peak."""
        try:
            size = int(size or 0)
        except ValueError:
            return  # a malformed length: urllib3 reads to the end, counted as it comes
        if size > self.max_answer_bytes:
            r.close()
            raise PhonesimError(
                r.status_code,
                "answer_too_large",
                f"the answer is larger than max_answer_mb={self.max_answer_mb:g} "
                f"({self.max_answer_bytes:,} bytes); it was not read",
                request_id=r.headers.get("X-Request-ID"),
            )

    def _wait(self, r: requests.Response | None, attempt: int) -> float:
        """The backoff for ``attempt``, with jitter (clients that failed together do not all
        come back together), and at least what the answer's ``Retry-After`` asks; 60 s at
        most."""
        wait = self.backoff * 2**attempt * random.uniform(0.5, 1.0)
        asked = _retry_after(r.headers.get("Retry-After")) if r is not None else None
        return min(max(wait, asked or 0.0), 60.0)

    @staticmethod
    def _decode(r: requests.Response, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        status = r.status_code
        if 300 <= status < 400:
            where = r.headers.get("Location", "?")
            raise PhonesimError(
                status,
                "redirect",
                f"the server redirects to {where}; the API never does, so give the address "
                "it should be reached at as base_url",
            )
        if r.ok:
            if not isinstance(body, dict):
                raise PhonesimError(status, "invalid_response", "the answer is not a JSON object")
            return body
        error = body.get("error") if isinstance(body, dict) else None
        asked = _retry_after(r.headers.get("Retry-After"))
        request_id = r.headers.get("X-Request-ID")
        if isinstance(error, dict):
            code = str(error.get("code") or "http_error")
            message = str(error.get("message") or r.reason)
            raise PhonesimError(status, code, message, asked, request_id)
        text = raw[:200].decode("utf-8", errors="replace")
        raise PhonesimError(status, "http_error", text or r.reason, asked, request_id)

    # -- search ----------------------------------------------------------------------------------
    def search(
        self,
        image: ImageInput | None = None,
        *,
        vector: Iterable[float] | None = None,
        item_id: str | None = None,
        k: int | None = None,
        filter: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
        offset: int | None = None,
        ranking: str | None = None,
        read_text: str | None = None,
    ) -> dict[str, Any]:
        """Neighbours of an image (path or bytes), a vector or a catalog item (itself
        excluded): the server's answer (``neighbors``, and ``prediction`` for an image).
        ``ranking``: "similarity" for cosine order; "class" (the server's default, where it
        re-ranks) reorders the most similar few by an image's class or an item's label.
        ``read_text``, on a server that reads text: "always" reads the image's text whatever
        the server's gate, "never" skips it, "auto" (the default) reads it when the prediction
        is unsure."""
        opts = _options(k, filter, score_threshold, offset, ranking, read_text)
        query = _query(image, vector, item_id)
        if "id" in query:
            if read_text is not None:
                raise ValueError("read_text applies to an image, not to a catalog item")
            params: dict[str, Any] = {key: v for key, v in opts.items() if key != "filter"}
            if filter is not None:
                params["filter"] = _json_bytes(filter).decode()
            path = _item_path(query["id"]) + "/similar"
            return self._request("GET", path, params=params)
        return self._request("POST", "/v1/search", json={**query, **opts})

    def search_batch(
        self,
        queries: Sequence[Mapping[str, Any]],
        *,
        k: int | None = None,
        filter: Mapping[str, Any] | None = None,
        score_threshold: float | None = None,
        offset: int | None = None,
        ranking: str | None = None,
        read_text: str | None = None,
    ) -> list[dict[str, Any]]:
        """One answer per query, in order: each query a dict with one of ``image`` (path or
        bytes), ``vector`` or ``item_id``, and optionally its own options. A failed query's
        answer holds ``status`` and ``error`` (nothing is raised for it)."""
        entries = []
        for n, q in enumerate(queries):
            if not isinstance(q, Mapping):
                raise TypeError(f"query {n}: a dict with image, vector or item_id, got {q!r:.40}")
            q = dict(q)
            item_id = q.pop("item_id", None)
            if "id" in q:  # the server's own name for it
                if item_id is not None:
                    raise ValueError(f"query {n}: give item_id or id, not both")
                item_id = q.pop("id")
            try:
                entry = _query(q.pop("image", None), q.pop("vector", None), item_id)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"query {n}: {exc}") from exc
            except PhonesimError as exc:  # a file that cannot be read
                raise PhonesimError(exc.status, exc.code, f"query {n}: {exc.message}") from exc
            entries.append({**entry, **q})
        options = _options(k, filter, score_threshold, offset, ranking, read_text)
        body = {"queries": entries, **options}
        return _field(self._request("POST", "/v1/search/batch", json=body), "results")

    def embed(self, image: ImageInput, *, read_text: str | None = None) -> dict[str, Any]:
        """The embedding (``embedding``, ``dim``) and predicted class of an image;
        ``read_text`` as in :meth:`search`."""
        body = {"image": _b64(image), **_options(None, None, None, None, read_text=read_text)}
        return self._request("POST", "/v1/embed", json=body)

    # -- catalog ---------------------------------------------------------------------------------
    def get(self, item_id: str) -> dict[str, Any]:
        """The catalog item ``item_id`` (``id``, ``metadata``, ``image_url``); a 404
        ``unknown_item`` PhonesimError where there is none."""
        return self._request("GET", _item_path(item_id))

    def items(
        self, *, filter: Mapping[str, Any] | None = None, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every catalog item (matching ``filter``) in id order, fetched a page at a time."""
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if filter is not None:
                params["filter"] = _json_bytes(filter).decode()
            if cursor is not None:
                params["cursor"] = cursor
            page = self._request("GET", "/v1/items", params=params)
            yield from _field(page, "items")
            cursor = page.get("next_cursor")
            if cursor is None:
                return

    def add(
        self, item_id: str, image: ImageInput, metadata: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Embed an image and add it as ``item_id`` (durable); the answer holds ``item``."""
        body = {"id": _item_id(item_id), "image": _b64(image), "metadata": _metadata(metadata)}
        return self._request("POST", "/v1/items", write=True, json=body)

    def add_batch(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Add many items (dicts of ``id``, ``image`` path or bytes, ``metadata``) in one
        request, sent as NDJSON; one acknowledgement per item (``status`` 201 or ``error``)."""
        lines = []
        for n, item in enumerate(items):
            if not isinstance(item, Mapping) or "id" not in item or "image" not in item:
                raise ValueError(f"item {n}: a dict with 'id', 'image' and maybe 'metadata'")
            try:
                entry = {"id": _item_id(item["id"]), "image": _b64(item["image"])}
                if item.get("metadata") is not None:
                    entry["metadata"] = _metadata(item["metadata"])
                lines.append(_json_bytes(entry).decode())
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"item {n}: {exc}") from exc
            except PhonesimError as exc:  # a file that cannot be read
                raise PhonesimError(exc.status, exc.code, f"item {n}: {exc.message}") from exc
        data = ("\n".join(lines) + "\n").encode()
        headers = {"Content-Type": "application/x-ndjson"}
        answer = self._request("POST", "/v1/items/batch", write=True, data=data, headers=headers)
        return _field(answer, "results")

    def update(
        self, item_id: str, metadata: Mapping[str, Any], *, merge: bool = True
    ) -> dict[str, Any]:
        """Change an item's metadata (merged, or replacing it all); returns the item."""
        path = _item_path(item_id)
        if metadata is None:
            raise TypeError("metadata is a mapping of field to value, got None")
        body = {"metadata": _metadata(metadata), "merge": merge}
        return _field(self._request("PATCH", path, write=True, json=body), "item")

    def remove(self, item_id: str) -> None:
        """Delete the catalog item ``item_id`` (needs the API key); a write: not sent again
        once its connection broke after it was sent (see :attr:`PhonesimError.may_have_done`)."""
        path = _item_path(item_id)
        self._request("DELETE", path, write=True)

    def info(self) -> dict[str, Any]:
        """The server's ``/v1/info``: model, classes, index, limits, version."""
        return self._request("GET", "/v1/info")

    def close(self) -> None:
        """Close the connections this client keeps (``with Client(...)`` does it at the end)."""
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
