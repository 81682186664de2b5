"""phonesim.client against a live server (``python -m server`` on a local port), no mocks."""

from __future__ import annotations

import io
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from phonesim.client import Client, PhonesimError
from tests.server.conftest import catalog_rows, index_dir, tiny_embedder  # noqa: F401 (fixtures)
from tests.server.helpers import API_KEY
from tests.server.live import running_server

RATE = 20  # requests per second per client: high enough for the tests, low enough to hit


@pytest.fixture(scope="module")
def live(tiny_checkpoint, index_dir, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("client")
    index = work / "index"
    shutil.copytree(index_dir, index)
    args = ("--image-dir", str(work / "uploads"), "--rate-limit", str(RATE))
    with running_server(
        tiny_checkpoint, index, work, *args, env={"PHONESIM_API_KEY": API_KEY}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def photo(catalog_rows) -> bytes:  # noqa: F811
    first = next(iter(catalog_rows.values()))
    buf = io.BytesIO()
    Image.open(first["image"]).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_search_by_image_vector_and_id_agree(live, photo, tmp_path, catalog_rows):  # noqa: F811
    client = Client(live.base)
    path = tmp_path / "phone.jpg"
    path.write_bytes(photo)
    by_path = client.search(path, k=4)
    assert by_path["prediction"]["label"] and len(by_path["neighbors"]) == 4
    assert client.search(photo, k=4)["neighbors"] == by_path["neighbors"]
    vector = client.embed(photo)["embedding"]
    by_vector = client.search(vector=vector, k=4)
    assert (by_path["ranking"], by_vector["ranking"]) == ("class", "similarity")
    # A vector has no class to rank by: it agrees with the photo ranked by similarity (the
    # photo's default, ranked with its class, may order them otherwise).
    cosine = client.search(photo, k=4, ranking="similarity")
    assert cosine["ranking"] == "similarity"
    assert [n["id"] for n in by_vector["neighbors"]] == [n["id"] for n in cosine["neighbors"]]
    assert cosine["neighbors"] == by_vector["neighbors"]
    with pytest.raises(PhonesimError) as bad:
        client.search(photo, ranking="best")
    assert (bad.value.status, bad.value.code) == (400, "invalid_ranking")
    top = by_path["neighbors"][0]["id"]
    similar = client.search(item_id=top, k=3, score_threshold=-1.0)
    assert top not in [n["id"] for n in similar["neighbors"]]
    prices = sorted({float(r["price"]) for r in catalog_rows.values()})
    cheap = client.search(photo, k=50, filter={"price": {"lt": prices[1]}})["neighbors"]
    assert {float(n["price"]) for n in cheap} == {prices[0]}
    with pytest.raises(ValueError):
        client.search(photo, vector=vector)


def test_the_text_reading_is_passed_on(live, photo):
    """This server reads no text: "never" is answered, "always" is refused by the server, and
    a catalog item's search takes no mode at all."""
    client = Client(live.base)
    assert client.search(photo, k=2, read_text="never")["prediction"]["label"]
    assert client.embed(photo, read_text="auto")["prediction"]["label"]
    for call in (
        lambda: client.search(photo, read_text="always"),
        lambda: client.embed(photo, read_text="always"),
        lambda: client.search_batch([{"image": photo}], read_text="always"),
    ):
        with pytest.raises(PhonesimError) as refused:
            call()
        assert (refused.value.status, refused.value.code) == (400, "text_reading_off")
    answers = client.search_batch([{"image": photo, "read_text": "always"}, {"image": photo}])
    assert [a["status"] for a in answers] == [400, 200]
    with pytest.raises(ValueError, match="read_text"):
        client.search(item_id="any", read_text="never")


def test_search_batch_and_items_pages(live, photo, catalog_rows):  # noqa: F811
    client = Client(live.base)
    results = client.search_batch(
        [{"image": photo}, {"item_id": "no-such-phone"}, {"image": photo, "k": 2}], k=3
    )
    assert [r["status"] for r in results] == [200, 404, 200]
    assert results[1]["error"]["code"] == "unknown_item"
    assert len(results[0]["neighbors"]) == 3 and len(results[2]["neighbors"]) == 2
    ordered = client.search_batch(
        [{"image": photo}, {"image": photo, "ranking": "class"}], ranking="similarity"
    )
    assert [r["ranking"] for r in ordered] == ["similarity", "class"]
    ids = [item["id"] for item in client.items(page_size=5)]
    assert ids == sorted(catalog_rows)  # the writes come in a later test
    label = sorted({r["label"] for r in catalog_rows.values()})[0]
    got = [i["id"] for i in client.items(filter={"label": label}, page_size=2)]
    assert got == sorted(i for i, r in catalog_rows.items() if r["label"] == label)


def test_writes_and_errors(live, photo):
    client = Client(live.base, api_key=API_KEY)
    added = client.add("client-1", photo, {"price": 99, "label": "x"})
    assert added["item"]["id"] == "client-1"
    acks = client.add_batch(
        [
            {"id": "client-2", "image": photo, "metadata": {"price": 5}},
            {"id": "client-1", "image": photo},
            {"id": "client-3", "image": b"not an image"},
        ]
    )
    assert [a["status"] for a in acks] == [201, 409, 400]
    item = client.update("client-2", {"price": 7, "colour": "red"})
    assert item["price"] == 7 and item["colour"] == "red"
    assert client.get("client-2")["price"] == 7
    client.remove("client-2")
    with pytest.raises(PhonesimError) as err:
        client.get("client-2")
    assert (err.value.status, err.value.code) == (404, "unknown_item")
    with pytest.raises(PhonesimError) as err:
        Client(live.base).update("client-1", {"price": 1})
    assert (err.value.status, err.value.code) == (401, "missing_api_key")
    with pytest.raises(PhonesimError) as err:
        client.search(vector=[0.0] * 3)
    assert err.value.status == 400 and err.value.code == "invalid_vector"
    assert "dimensions" in err.value.message
    with pytest.raises(PhonesimError) as err:
        Client("http://127.0.0.1:9", retries=1, backoff=0.01).info()
    assert err.value.status == 0 and err.value.code == "connection_error"
    assert "Watched" not in err.value.message  # the client's own wrapper, not the caller's


def test_ids_reach_their_own_item_and_never_another(live, photo):
    """quote(id, safe="/") left "x/../y" for urllib3 to resolve: remove("x/../y") deleted y."""
    client = Client(live.base, api_key=API_KEY)
    client.add("keep-me", photo, {"price": 1})
    client.add("a/b", photo, {"price": 2})  # a '/' in an id is allowed, and escaped
    assert client.get("a/b")["price"] == 2
    assert client.search(item_id="a/b", k=1)["neighbors"]
    by_id = client.search_batch([{"id": "a/b", "k": 1}])[0]  # "id", as the server names it
    assert by_id["neighbors"] == client.search(item_id="a/b", k=1)["neighbors"]
    bad_ids = ("x/../keep-me", "../keep-me", "./keep-me", "keep-me/similar", "a//b", "..", "batch")
    for bad in bad_ids:
        for call in (client.get, client.remove, lambda i: client.update(i, {"price": 9})):
            with pytest.raises(ValueError, match="no catalog item can have"):
                call(bad)
    assert client.get("keep-me")["price"] == 1
    client.remove("a/b")
    with pytest.raises(PhonesimError):
        client.get("a/b")


def test_bad_arguments_are_clear_python_errors_before_any_request():
    """They were "dictionary update sequence element #0...", a KeyError 'id', or a
    PhonesimError(0) for a NaN that JSON cannot carry."""
    client = Client("http://127.0.0.1:9", retries=0)  # nothing listens: nothing is sent
    with pytest.raises(TypeError, match="query 0: a dict"):
        client.search_batch(["abc"])
    with pytest.raises(ValueError, match="item_id or id, not both"):
        client.search_batch([{"id": "a", "item_id": "b"}])
    with pytest.raises(ValueError, match="item 0: a dict with 'id'"):
        client.add_batch([{"image": b"x"}])
    with pytest.raises(TypeError, match="metadata is a mapping"):
        client.update("a", [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN or infinite"):
        client.search(vector=[float("nan"), 1.0])


def test_429_is_retried_after_retry_after(live):
    time.sleep(1.5)  # refill the bucket after the other tests
    impatient = Client(live.base, retries=0)

    def info_or_error(_: int) -> PhonesimError | None:
        try:
            impatient.info()
        except PhonesimError as exc:
            return exc
        return None

    # Concurrent, so the bucket empties however slowly a loaded machine answers each request.
    with ThreadPoolExecutor(max_workers=8) as pool:
        errors = [e for e in pool.map(info_or_error, range(RATE * 4)) if e is not None]
    assert errors and all(e.status == 429 and e.code for e in errors)
    patient = Client(live.base, retries=4, backoff=0.05)
    t0 = time.monotonic()
    for _ in range(RATE * 2):
        assert patient.info()["index"]["size"] > 0
    assert time.monotonic() - t0 >= 0.9  # it waited (Retry-After is whole seconds)


def test_an_image_the_client_cannot_send_is_a_type_error_or_a_phonesim_error(tmp_path):
    """A PIL image is an argument that cannot make a request (a TypeError, as the docs say;
    it had been a PhonesimError); a file that cannot be read is a PhonesimError, which names
    its query or item in a batch."""
    client = Client("http://127.0.0.1:9", retries=0)
    with pytest.raises(TypeError, match="a file path or bytes, not Image"):
        client.embed(Image.new("RGB", (8, 8)))
    with pytest.raises(PhonesimError, match="cannot read"):
        client.embed(tmp_path / "missing.jpg")
    with pytest.raises(PhonesimError, match="query 1: cannot read"):
        client.search_batch([{"image": b"x"}, {"image": tmp_path / "missing.jpg"}])
    with pytest.raises(PhonesimError, match="item 1: cannot read"):
        client.add_batch([{"id": "a", "image": b"x"}, {"id": "b", "image": tmp_path / "no"}])


@pytest.mark.parametrize("item_id", ["a/../b", 5, "", "x/similar"])
def test_adding_an_id_no_item_can_have_is_refused_before_sending(item_id):
    """get, update, remove and search refused these locally; add and add_batch sent them."""
    client = Client("http://127.0.0.1:9", retries=0)  # nothing listens: nothing is sent
    with pytest.raises(ValueError, match="item id|can have the id"):
        client.add(item_id, b"x")
    with pytest.raises(ValueError, match="item 0: .*(item id|can have the id)"):
        client.add_batch([{"id": item_id, "image": b"x"}])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": None}, "timeout is a number of seconds above 0"),
        ({"timeout": 0}, "timeout is a number of seconds above 0"),
        ({"timeout": float("inf")}, "timeout is a number of seconds above 0"),
        ({"api_key": "ключ"}, "api_key must be a string of Latin-1 characters"),
        ({"api_key": 5}, "api_key must be a string"),
        ({"retries": -1}, "retries is a whole number of 0 or more"),
        ({"retries": 2.7}, "retries is a whole number of 0 or more"),
        ({"backoff": -1}, "backoff is a number of seconds of 0 or more"),
    ],
)
def test_client_settings_that_cannot_work_are_refused_when_it_is_made(kwargs, match):
    """A Cyrillic key failed every call, reads too, with a UnicodeEncodeError naming no
    setting; timeout=None a TypeError of float + None at the first call."""
    with pytest.raises(ValueError, match=match):
        Client("http://127.0.0.1:9", **kwargs)


def test_a_base_url_without_a_scheme_is_refused_when_the_client_is_made():
    """It failed only at the first call, as a "request_error"."""
    with pytest.raises(ValueError, match="base_url starts with http:// or https://"):
        Client("127.0.0.1:8000")


def test_a_write_whose_connection_broke_after_sending_is_not_sent_again(photo):
    """A server that reads each request and hangs up without an answer may have done the
    write: sending it again would add twice (or answer 409 for an add that succeeded)."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def read_and_hang_up() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:  # no client this time round
                continue
            with conn:
                conn.settimeout(5)
                received.append(conn.recv(65536).split(b" ", 1)[0])

    thread = threading.Thread(target=read_and_hang_up, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        client = Client(base, api_key=API_KEY, retries=2, backoff=0.01)
        with pytest.raises(PhonesimError, match="may have done it") as err:
            client.add("once", photo)
        assert err.value.status == 0 and received == [b"POST"]
        with pytest.raises(PhonesimError, match="may have done it"):
            client.remove("once")
        assert received == [b"POST", b"DELETE"]
        with pytest.raises(PhonesimError) as err:  # a read is safe to send again
            client.info()
        assert err.value.code == "connection_error" and received[2:] == [b"GET"] * 3
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
    # A refused connection never reached a server: even a write is tried again.
    with socket.socket() as unused:  # a port that nothing listens on
        unused.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{unused.getsockname()[1]}"
    refused = Client(closed, api_key=API_KEY, retries=2, backoff=0.2)
    t0 = time.monotonic()
    with pytest.raises(PhonesimError, match="connection_error") as err:
        refused.add("never", photo)
    assert "may have done it" not in err.value.message
    assert time.monotonic() - t0 >= 0.3  # two backoffs, 0.2 + 0.4, each jittered to half at least


# -- against a scripted server: answers phonesim never gives -------------------------------------
class _Scripted:
    """A local HTTP/1.1 server whose answer to each path is set by the test; it records the
    path, the client's port (its connection) and the API key of every request."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.trickle: dict[str, float] = {}  # path -> seconds between the body's bytes
        self.delay: dict[str, float] = {}  # path -> seconds before the answer begins
        self.header_gap: dict[str, float] = {}  # path -> seconds between its header lines
        self.read_gap: dict[str, float] = {}  # path -> seconds between 64 KiB of the upload
        self.seen: list[tuple[str, int, str | None]] = []
        self.bodies: list[bytes] = []
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                gap = scripted.read_gap.get(self.path.split("?")[0])
                if gap is None:
                    scripted.bodies.append(self.rfile.read(length))
                else:  # a slow reader of the upload
                    got = b""
                    while len(got) < length:
                        chunk = self.rfile.read(min(65536, length - len(got)))
                        if not chunk:
                            return
                        got += chunk
                        time.sleep(gap)
                    scripted.bodies.append(got)
                path = self.path.split("?")[0]
                scripted.seen.append((path, self.client_address[1], self.headers.get("X-API-Key")))
                status, headers, body = scripted.answers.get(path, (404, {}, b"{}"))
                time.sleep(scripted.delay.get(path, 0))
                self.send_response(status)
                header_gap = scripted.header_gap.get(path)
                if header_gap is not None:  # a header line now and then, for a long while
                    self.flush_headers()
                    for n in range(200):
                        self.wfile.write(f"X-Slow-{n}: 1\r\n".encode())
                        self.wfile.flush()
                        time.sleep(header_gap)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                gap = scripted.trickle.get(path)
                for i in range(len(body)):
                    if gap is None:
                        self.wfile.write(body)
                        break
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(gap)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client hanging up mid-answer, as the tests make it do

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def scripted():
    server = _Scripted()
    yield server
    server.close()


def test_a_redirect_is_an_error_and_the_key_never_follows_it(scripted):
    """requests strips Authorization on a redirect to another host, not X-API-Key: the key
    went on to whatever host the redirect named."""
    scripted.answers["/v1/info"] = (307, {"Location": scripted.base + "/elsewhere"}, b"")
    with pytest.raises(PhonesimError, match="redirects to .*/elsewhere") as err:
        Client(scripted.base, api_key="SECRET", retries=0).info()
    assert err.value.code == "redirect" and err.value.status == 307
    assert [path for path, _, _ in scripted.seen] == ["/v1/info"]  # not followed


def test_the_timeout_bounds_a_trickling_answer(scripted):
    """requests' timeout is per read: an answer of one byte every 0.2 s held the call for as
    long as the server liked."""
    scripted.answers["/v1/info"] = (200, {}, b'{"index": {"size": 1}}' + b" " * 200)
    scripted.trickle["/v1/info"] = 0.02
    t0 = time.monotonic()
    with pytest.raises(PhonesimError, match="took longer than 1 s") as err:
        Client(scripted.base, timeout=1, retries=0).info()
    assert err.value.code == "timeout" and time.monotonic() - t0 < 3
    scripted.trickle.clear()  # the same answer at once is read whole
    assert Client(scripted.base, timeout=1).info() == {"index": {"size": 1}}


def test_the_timeout_counts_the_wait_for_the_answer_to_begin(scripted):
    """The deadline was checked only after each chunk: headers at 0.9 s and a byte every
    0.9 s after them made a 1 s call take 1.8 s."""
    scripted.answers["/v1/info"] = (200, {}, b'{"index": {"size": 1}}')
    scripted.delay["/v1/info"] = 0.9
    scripted.trickle["/v1/info"] = 0.9
    t0 = time.monotonic()
    with pytest.raises(PhonesimError, match="took longer than 1 s"):
        Client(scripted.base, timeout=1, retries=0).info()
    assert time.monotonic() - t0 < 1.4


def test_the_timeout_bounds_headers_sent_a_line_at_a_time(scripted):
    """requests' timeout is per wait for bytes: a header line every 0.3 s held a call of
    ``timeout=1`` for a minute."""
    scripted.answers["/v1/info"] = (200, {}, b"{}")
    scripted.header_gap["/v1/info"] = 0.3
    t0 = time.monotonic()
    with pytest.raises(PhonesimError, match="took longer than 1 s") as err:
        Client(scripted.base, timeout=1, retries=0).info()
    assert err.value.code == "timeout" and err.value.retryable
    assert time.monotonic() - t0 < 2.5


def test_the_timeout_bounds_an_upload_the_server_reads_slowly(scripted):
    """A server reading an upload slowly held ``embed`` past its timeout, and then failed as
    a connection error."""
    scripted.answers["/v1/search"] = (200, {}, b'{"neighbors": []}')
    scripted.read_gap["/v1/search"] = 0.1  # 64 KiB a tenth of a second: 12 MB in 20 s
    t0 = time.monotonic()
    with pytest.raises(PhonesimError, match="took longer than 1 s") as err:
        Client(scripted.base, timeout=1, retries=0).search(image=b"\xff" * 9_000_000)
    assert err.value.code == "timeout" and time.monotonic() - t0 < 3


def test_errors_say_whether_to_retry_and_carry_what_the_server_said(scripted):
    """A caller had to parse codes to tell "try later" from "bad input", and the server's
    Retry-After and request id were dropped."""
    client = Client(scripted.base, api_key="k", retries=0)
    scripted.answers["/v1/info"] = (
        503, {"Retry-After": "7", "X-Request-ID": "req-1"},
        b'{"error": {"code": "overloaded", "message": "busy"}}',
    )  # fmt: skip
    with pytest.raises(PhonesimError) as err:
        client.info()
    assert err.value.retryable and err.value.retry_after == 7.0
    assert err.value.request_id == "req-1" and str(err.value).endswith("(request req-1)")
    scripted.answers["/v1/items/a"] = (
        400,
        {},
        b'{"error": {"code": "invalid_id", "message": "x"}}',
    )
    with pytest.raises(PhonesimError) as err:
        client.get("a")
    assert not err.value.retryable and err.value.retry_after is None
    assert not err.value.may_have_done
    # A write the server may have done is not to be sent again blindly.
    assert not PhonesimError(502, "store_outcome_unknown", "x").retryable
    unsure = PhonesimError(
        0,
        "timeout",
        "no answer within 1 s; the server may have done it: check before sending it again",
    )
    assert unsure.may_have_done and not unsure.retryable


def test_a_proxys_502_and_504_are_retried_for_reads_not_writes(scripted):
    """nginx answers 502/504 while gunicorn restarts: reads failed at once with its HTML. A
    write is not sent again (phonesim's own 502 says it may have been done)."""
    scripted.answers["/v1/info"] = (502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>")
    scripted.answers["/v1/items/a"] = (504, {"Content-Type": "text/html"}, b"<html>Timeout</html>")
    client = Client(scripted.base, api_key="k", retries=2, backoff=0.01)
    with pytest.raises(PhonesimError) as err:
        client.info()
    assert err.value.status == 502 and err.value.retryable
    with pytest.raises(PhonesimError):
        client.remove("a")
    paths = [path for path, _, _ in scripted.seen]
    assert paths.count("/v1/info") == 3 and paths.count("/v1/items/a") == 1


def test_an_http_date_retry_after_is_waited_for(scripted):
    """An HTTP-date Retry-After was ignored: the client came back after its 0.01 s backoff."""
    import email.utils

    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    scripted.answers["/v1/info"] = (429, {"Retry-After": when}, b"{}")
    client = Client(scripted.base, retries=1, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(PhonesimError):
        client.info()
    assert time.monotonic() - t0 >= 0.9  # the date has whole seconds


def test_a_write_with_no_answer_in_time_may_have_been_done(scripted):
    """A timeout before the answer began was a "request_error" with no word of the write."""
    scripted.answers["/v1/items/a"] = (200, {}, b'{"id": "a", "deleted": true}')
    scripted.delay["/v1/items/a"] = 1.5
    with pytest.raises(PhonesimError, match="may have done it") as err:
        Client(scripted.base, api_key="k", timeout=0.5, retries=0).remove("a")
    assert err.value.code == "timeout"
    with pytest.raises(PhonesimError, match="(no answer within|took longer than) 0.5 s") as err:
        Client(scripted.base, timeout=0.5, retries=0).get("a")
    assert "may have done it" not in err.value.message


def test_an_answer_that_cannot_be_decoded_is_a_phonesim_error(scripted):
    """urllib3's DecodeError escaped as it was."""
    scripted.answers["/v1/info"] = (200, {"Content-Encoding": "gzip"}, b"not gzip at all")
    with pytest.raises(PhonesimError, match="cannot be decoded") as err:
        Client(scripted.base, retries=0).info()
    assert err.value.code == "invalid_response"


def test_answers_that_are_not_the_apis_are_phonesim_errors(scripted):
    """They were a KeyError 'results', a TypeError, "not JSON" for JSON null, or a message
    "None"."""
    client = Client(scripted.base, api_key="k", retries=0)
    scripted.answers["/v1/search/batch"] = (200, {}, b"{}")
    scripted.answers["/v1/items"] = (200, {}, b"[1, 2]")
    scripted.answers["/v1/info"] = (200, {}, b"null")
    scripted.answers["/v1/items/a"] = (409, {}, b'{"error": {"code": "x"}}')
    with pytest.raises(PhonesimError, match="no 'results'"):
        client.search_batch([{"vector": [1.0]}])
    with pytest.raises(PhonesimError, match="not a JSON object"):
        next(client.items())
    with pytest.raises(PhonesimError, match="not a JSON object"):
        client.info()
    with pytest.raises(PhonesimError) as err:
        client.update("a", {"p": 1})
    assert (err.value.status, err.value.code, err.value.message) == (409, "x", "Conflict")


def test_every_write_goes_on_a_new_connection(scripted):
    """A server closes idle connections (phonesim's after 5 s): a write reusing one just as
    it closed failed, "the server may have done it", though nothing had received it. Which
    pooled connection a write takes, and how long it sat, is not known (another thread may
    have kept the client busy on another one), so no write reuses one."""
    scripted.answers["/v1/info"] = (200, {}, b"{}")
    scripted.answers["/v1/items/a"] = (200, {}, b'{"id": "a", "deleted": true}')
    client = Client(scripted.base, api_key="k")
    client.info()
    client.info()
    client.remove("a")
    client.remove("a")
    client.info()  # reads reuse what the last write opened
    ports = [port for _, port, _ in scripted.seen]
    assert ports[0] == ports[1] and len({ports[1], ports[2], ports[3]}) == 3
    assert ports[4] == ports[3]


def test_an_error_crosses_to_another_process_whole():
    """It could not be unpickled: a worker of a process pool raised BrokenProcessPool."""
    import copy
    import pickle

    err = PhonesimError(404, "unknown_item", "no item 'x'")
    for back in (pickle.loads(pickle.dumps(err)), copy.copy(err)):
        assert (back.status, back.code, back.message) == (404, "unknown_item", "no item 'x'")
        assert str(back) == "404 unknown_item: no item 'x'"
    busy = PhonesimError(503, "overloaded", "busy", 2.0, "req-9")
    back = pickle.loads(pickle.dumps(busy))
    assert (back.retry_after, back.request_id, back.retryable) == (2.0, "req-9", True)


def test_more_bad_arguments_are_python_errors_before_any_request():
    client = Client("http://127.0.0.1:9", retries=0)  # nothing listens: nothing is sent
    with pytest.raises(ValueError, match="score_threshold must be a finite number"):
        client.search(b"x", score_threshold=float("nan"))
    # The GET paths too: their filter and threshold go in the query string, not a JSON body.
    with pytest.raises(ValueError, match="NaN or infinity"):
        client.search(item_id="a", filter={"p": float("nan")})
    with pytest.raises(ValueError, match="finite number"):
        client.search(item_id="a", score_threshold=float("inf"))
    with pytest.raises(ValueError, match="NaN or infinity"):
        next(client.items(filter={"p": float("inf")}))
    with pytest.raises(ValueError, match="NaN or infinity"):
        client.add("a", b"x", {"p": float("inf")})
    with pytest.raises(TypeError, match="metadata is a mapping"):
        client.add("a", b"x", "abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON cannot carry"):
        client.add("a", b"x", {"p": object()})
    with pytest.raises(TypeError, match="sequence of numbers"):
        client.search(vector="abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of numbers"):
        client.search(vector=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no catalog item can have the id 5"):
        client.search(item_id=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query 1: the vector holds NaN"):
        client.search_batch([{"vector": [1.0]}, {"vector": [float("nan")]}])
    with pytest.raises(TypeError, match="item 0: metadata is a mapping"):
        client.add_batch([{"id": "a", "image": b"x", "metadata": [1]}])


def test_an_id_stored_before_the_invisible_character_rule_stays_addressable():
    """Ids with a zero-width space or a bidirectional mark were allowed until 2026-12: the
    client refused to get, search by or remove such stored items ("no catalog item can have
    the id"), though searches returned them."""
    from phonesim.client import _item_path

    assert _item_path("old\u200bid") == "/v1/items/old%E2%80%8Bid"
    assert _item_path("\u200eold") == "/v1/items/%E2%80%8Eold"
    with pytest.raises(ValueError, match="no catalog item can have"):
        _item_path("x/../old")


def test_numpy_numbers_are_sent_as_numbers(scripted):
    """k or a filter bound taken from an array (np.int64) had been "not JSON serializable"."""
    import json

    import numpy as np

    scripted.answers["/v1/search"] = (200, {}, b'{"results": []}')
    Client(scripted.base, retries=0).search(
        b"x", k=np.int64(3), filter={"price": {"lt": np.float32(300.5)}}
    )
    body = json.loads(scripted.bodies[-1])
    assert body["k"] == 3 and body["filter"] == {"price": {"lt": 300.5}}


def test_a_deadline_bounds_the_call_with_its_retries(scripted):
    """A call took ``retries + 1`` attempts and every wait between them, whatever the caller
    could afford: a server answering 503 "retry in 1 s" held ``retries=10`` for 13.4 s."""
    scripted.answers["/v1/info"] = (503, {"Retry-After": "1"}, b'{"error": {"code": "busy"}}')
    t0 = time.monotonic()
    with pytest.raises(PhonesimError) as err:
        Client(scripted.base, retries=10, backoff=0.01, deadline=2.5).info()
    took = time.monotonic() - t0
    assert err.value.status == 503 and err.value.code == "busy" and took < 3.0
    assert len(scripted.seen) in (2, 3)  # at 0, 1 and 2 s (later on a busy machine), not 11
    # The last attempt gets what is left, not a whole timeout.
    scripted.answers["/v1/items/a"] = (200, {}, b'{"id": "a"}')
    scripted.delay["/v1/items/a"] = 3
    t0 = time.monotonic()
    with pytest.raises(PhonesimError, match="(no answer within|took longer than) the call's dea"):
        Client(scripted.base, timeout=30, deadline=1).get("a")
    assert time.monotonic() - t0 < 1.6
    for wrong in (0, True, float("nan")):
        with pytest.raises(ValueError, match="deadline is a number of seconds"):
            Client(scripted.base, deadline=wrong)


@pytest.mark.parametrize("how", ["announced", "compressed"])
def test_an_answer_past_max_answer_mb_is_refused_not_read(scripted, how):
    """Any answer was read whole into memory: a 300 MB one took 629 MB of the caller's."""
    import gzip

    big = b'{"neighbors": [' + b" " * 3_000_000 + b"]}"
    said = {"X-Request-ID": "req-big"}
    if how == "announced":
        scripted.answers["/v1/info"] = (200, said, big)
    else:  # 3 MB that arrive as 3 KB: a cap on the bytes received would not see it
        scripted.answers["/v1/info"] = (
            200,
            {**said, "Content-Encoding": "gzip"},
            gzip.compress(big),
        )
    with pytest.raises(PhonesimError, match="larger than max_answer_mb=1 \\(1,048,576 b") as err:
        Client(scripted.base, retries=0, max_answer_mb=1).info()
    assert err.value.code == "answer_too_large" and not err.value.retryable
    assert err.value.request_id == "req-big"  # to quote to the server's log
    assert Client(scripted.base, retries=0, max_answer_mb=4).info() == {"neighbors": []}
    for wrong in (-1, True, float("inf")):
        with pytest.raises(ValueError, match="max_answer_mb"):
            Client(scripted.base, max_answer_mb=wrong)
    with pytest.raises(ValueError, match="backoff"):
        Client(scripted.base, backoff=True)
    # A write whose answer is refused was done all the same: not to be sent again blindly.
    scripted.answers["/v1/items/a"] = scripted.answers["/v1/info"]
    with pytest.raises(PhonesimError, match="may have done it") as err:
        Client(scripted.base, api_key="k", retries=0, max_answer_mb=1).remove("a")
    assert err.value.may_have_done and err.value.request_id == "req-big"
