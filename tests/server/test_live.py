"""The server as users meet it: a real gunicorn process on a free local port, and the web page
driven in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from werkzeug.test import EnvironBuilder

from tests.server.helpers import API_KEY, SMALL_UPLOAD_MB, bad_requests, build_test_index
from tests.server.live import multipart, running_server, worker_pids

CHROMIUM = os.environ.get("PHONESIM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def live_index(tiny_embedder, catalog_rows, tiny_catalog, tmp_path_factory) -> Path:
    """An index of its own: the live server writes to it."""
    out = tmp_path_factory.mktemp("live-index") / "index"
    source = {"catalog": str(tiny_catalog / "catalog.csv")}
    return build_test_index(tiny_embedder, catalog_rows, out, source=source)


@pytest.fixture(scope="module")
def live(tiny_checkpoint, live_index, tmp_path_factory):
    """``python -m server`` (the ``phonesim serve`` command) under gunicorn."""
    work = tmp_path_factory.mktemp("live")
    with running_server(
        tiny_checkpoint, live_index, work,
        "--threads", "4", "--max-upload-mb", str(SMALL_UPLOAD_MB),
        "--image-dir", str(work / "uploads"),
        env={"PHONESIM_API_KEY": API_KEY},
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def query_image(tiny_catalog) -> Path:
    return sorted(tiny_catalog.rglob("*.jpg"))[0]


def test_live_search_similar_thumbnail_and_metrics(live, query_image):
    body, headers = multipart({"image": ("phone.jpg", query_image.read_bytes())})
    status, result = live.json("POST", "/v1/search?k=3", body=body, headers=headers)
    assert status == 200 and len(result["neighbors"]) == 3
    assert result["neighbors"][0]["score"] > 0.99
    first = result["neighbors"][0]
    status, similar = live.json("GET", f"/v1/items/{first['id']}/similar?k=2")
    assert status == 200 and first["id"] not in [n["id"] for n in similar["neighbors"]]
    status, headers, data = live.request("GET", first["image_url"])
    assert status == 200 and headers["content-type"] == "image/jpeg" and data[:2] == b"\xff\xd8"
    status, _, metrics = live.request("GET", "/metrics")
    assert status == 200 and b"phonesim_model_batch_size_bucket" in metrics
    # Each worker's memory and CPU, by pid: prometheus_client's own process metrics are not
    # offered in multiprocess mode.
    for pid in worker_pids(live):
        line = next(
            x for x in metrics.decode().splitlines()
            if x.startswith(f'phonesim_worker_resident_memory_bytes{{pid="{pid}"}}')
        )  # fmt: skip
        assert float(line.split()[-1]) > 50e6  # torch or ONNX Runtime, FAISS, the model
    assert b"phonesim_worker_cpu_seconds{" in metrics and b"phonesim_worker_open_fds{" in metrics


def test_live_concurrent_requests_all_succeed(live, query_image):
    body, headers = multipart({"image": ("phone.jpg", query_image.read_bytes())})
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(3):
            status, _, _ = live.request("POST", "/v1/search?k=5", body=body, headers=headers)
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 24


def test_live_writes_need_the_key_and_persist(live, query_image):
    body, headers = multipart(
        {"image": ("new.jpg", query_image.read_bytes()), "id": "live-new", "title": "Live"}
    )
    status, err = live.json("POST", "/v1/items", body=body, headers=headers)
    assert status == 401 and err["error"]["code"] == "missing_api_key"
    status, created = live.json(
        "POST", "/v1/items", body=body, headers={**headers, "X-API-Key": API_KEY}
    )
    assert status == 201 and created["item"]["title"] == "Live"
    status, item = live.json("GET", "/v1/items/live-new")
    assert status == 200 and item["image_url"]
    status, _ = live.json("DELETE", "/v1/items/live-new", headers={"X-API-Key": API_KEY})
    assert status == 200
    assert live.json("GET", "/v1/items/live-new")[0] == 404


def test_live_bad_input_corpus_gets_4xx_json_and_server_keeps_answering(live, query_image):
    jpeg = query_image.read_bytes()
    for name, kwargs, expected in bad_requests(jpeg):
        kwargs = dict(kwargs)
        path = kwargs.pop("path")
        builder = EnvironBuilder(path=path, **kwargs)
        environ = builder.get_environ()
        body = environ["wsgi.input"].read()
        headers = {k: v for k, v in builder.headers.items() if k.lower() != "content-length"}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        try:
            status, resp_headers, data = live.request(
                builder.method, path, body=body or None, headers=headers
            )
        except (BrokenPipeError, ConnectionResetError):
            # An oversized upload may be refused before it is fully sent; that is fine as
            # long as the server goes on answering.
            assert expected == 413, name
            continue
        assert status == expected, (name, data[:300])
        assert resp_headers["content-type"].startswith("application/json"), name
        error = json.loads(data)["error"]
        assert error["code"] and error["message"], name
        assert (error["code"] == "payload_too_large") == (status == 413), name
    assert live.proc.poll() is None
    assert live.request("GET", "/healthz")[0] == 200
    body, headers = multipart({"image": ("phone.jpg", jpeg)})
    assert live.request("POST", "/v1/search", body=body, headers=headers)[0] == 200


# -- the web page in headless Chromium ----------------------------------------------------------
@contextlib.contextmanager
def headless_chromium(profile: Path) -> Iterator[Any]:
    """A playwright browser context in headless Chromium (skips the test where either is not
    installed); test_web_page.py drives the page through it too."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Python package playwright not installed"
    )
    with sync_api.sync_playwright() as pw:
        yield pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )


def test_web_page_in_headless_chromium(live, query_image, tmp_path):
    """First visit: a grid of catalog phones to click; then an upload; broken images and bad
    files end as placeholders and messages, never as broken boxes or page errors."""
    with headless_chromium(tmp_path / "profile") as context:
        try:
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            first, second = live.json("GET", "/v1/items?limit=2")[1]["items"]
            # One thumbnail fails as an unavailable image does: it must become a placeholder.
            page.route(
                f"**{first['image_url']}",
                lambda route: route.fulfill(status=404, body="{}", content_type="application/json"),
            )
            # Another is refused once by a rate limit: asked again, it shows (it stayed "no
            # image" for good).
            refused: list[str] = []

            def limited_once(route):  # noqa: ANN001, ANN202
                if not refused:
                    refused.append(route.request.url)
                    limited = '{"error": {"code": "rate_limited", "message": "later"}}'
                    route.fulfill(status=429, body=limited, content_type="application/json")
                else:
                    route.continue_()

            page.route(f"**{second['image_url']}", limited_once)
            page.goto(live.base + "/")
            page.wait_for_selector("#server-info:has-text('catalog phones')", timeout=20_000)

            # The drop zone shows its hint, whole, and no empty image box.
            assert not page.is_visible("#preview")
            # This server reads no text: no Read text menu (its requests would be refused).
            assert page.locator("#read-text").count() == 1
            assert not page.is_visible("#read-text-choice")
            hint, zone = page.locator("#drop-hint"), page.locator("#dropzone")
            h, z = hint.bounding_box(), zone.bounding_box()
            assert h and z and hint.is_visible()
            assert z["x"] <= h["x"] and h["x"] + h["width"] <= z["x"] + z["width"]
            assert z["y"] <= h["y"] and h["y"] + h["height"] <= z["y"] + z["height"]

            # Before any upload: catalog phones to click, the unavailable one as a placeholder.
            page.wait_for_selector("#results-title:has-text('Catalog phones')", timeout=20_000)
            page.wait_for_selector(".thumb.missing", timeout=20_000)
            size = live.json("GET", "/v1/info")[1]["index"]["size"]
            assert page.locator(".neighbor").count() == min(size, 24)
            assert page.locator(f".neighbor[data-id='{first['id']}'] .thumb.missing").count() == 1
            page.wait_for_function(  # thumbnails load, and none is left broken
                "() => { const imgs = [...document.querySelectorAll('.neighbor img')];"
                " return imgs.some(i => i.complete && i.naturalWidth > 0)"
                " && !imgs.some(i => i.complete && i.naturalWidth === 0); }",
                timeout=20_000,
            )
            page.wait_for_function(
                "id => { const i = document.querySelector(`.neighbor[data-id='${id}'] img`);"
                " return i && i.complete && i.naturalWidth > 0; }",
                arg=second["id"],
                timeout=20_000,
            )
            assert (
                refused
                and page.locator(f".neighbor[data-id='{second['id']}'] .thumb.missing").count() == 0
            )
            # A card is a control: focused, Space opens it as Enter and a click do.
            page.locator(".neighbor").nth(1).focus()
            page.keyboard.press("Space")
            page.wait_for_selector("#results-title:has-text('Similar to')", timeout=20_000)
            # A catalog phone's neighbours follow the Order menu too (re-ranked by its label).
            page.select_option("#ranking", "class")
            page.wait_for_selector(
                "#results-title:has-text('re-ranked by its label')", timeout=20_000
            )
            assert page.locator(".neighbor .score").count() >= 1
            page.click("#browse")
            page.wait_for_selector("#results-title:has-text('Catalog phones')", timeout=20_000)

            # The price range filters the catalog: only phones within it are shown.
            prices = sorted(
                {float(i["price"]) for i in live.json("GET", "/v1/items?limit=100")[1]["items"]}
            )
            page.fill("#price-max", str(prices[0]))
            page.dispatch_event("#price-max", "change")
            page.wait_for_function(
                "n => document.querySelectorAll('.neighbor').length === n",
                arg=sum(
                    1
                    for i in live.json("GET", "/v1/items?limit=100")[1]["items"]
                    if float(i["price"]) <= prices[0]
                ),
                timeout=20_000,
            )
            page.fill("#price-max", "")
            page.dispatch_event("#price-max", "change")
            page.wait_for_function(
                "n => document.querySelectorAll('.neighbor').length === n",
                arg=min(size, 24),
                timeout=20_000,
            )
            # A page the server refuses shows its message; the next page that loads clears it
            # (it stayed up, in red, over a catalog that had loaded).
            down = '{"error": {"code": "store_unavailable", "message": "store down"}}'

            def refuse(route):  # noqa: ANN001, ANN202
                route.fulfill(status=503, body=down, content_type="application/json")

            page.route("**/v1/items?*", refuse)
            page.fill("#price-min", "1")
            page.dispatch_event("#price-min", "change")
            page.wait_for_selector("#status.error:has-text('store down')", timeout=20_000)
            page.unroute("**/v1/items?*", refuse)
            page.fill("#price-min", "")
            page.dispatch_event("#price-min", "change")
            page.wait_for_selector("#status:not(.error)", timeout=20_000)
            assert page.locator("#status").inner_text() == ""

            page.set_input_files("#file", str(query_image))
            page.wait_for_selector("#results-title:has-text('Nearest')", timeout=20_000)
            page.wait_for_selector("#prediction:not([hidden])", timeout=20_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.neighbor img')]"
                ".some(i => i.complete && i.naturalWidth > 0)",
                timeout=20_000,
            )
            classes = live.json("GET", "/v1/info")[1]["classes"]
            assert (page.text_content("#prediction-label") or "").strip() in classes
            assert page.locator("#prediction-bars li").count() >= 1
            assert "classifier" in (page.text_content("#prediction-source") or "")
            assert page.locator(".neighbor").count() >= 1
            assert page.is_visible("#preview") and not page.is_visible("#drop-hint")
            # The server re-ranks a photo's neighbours by default; the page can ask otherwise.
            assert "re-ranked by predicted class" in (page.text_content("#results-title") or "")
            page.select_option("#ranking", "similarity")
            page.wait_for_function(
                "() => !document.querySelector('#results-title').textContent.includes('re-ranked')",
                timeout=20_000,
            )
            shot = os.environ.get("PHONESIM_SCREENSHOT")
            page.screenshot(path=shot or str(tmp_path / "page.png"), full_page=True)

            page.locator(".neighbor").first.click()
            page.wait_for_selector("#results-title:has-text('Similar to')", timeout=20_000)
            # A catalog phone's neighbours follow the Order menu too (re-ranked by its label).
            page.select_option("#ranking", "class")
            page.wait_for_selector(
                "#results-title:has-text('re-ranked by its label')", timeout=20_000
            )

            # A failed upload leaves nothing of the previous photo's answer beside it.
            page.set_input_files("#file", str(query_image))
            page.wait_for_selector("#prediction:not([hidden])", timeout=20_000)
            bad = tmp_path / "not-an-image.jpg"
            bad.write_text("not an image")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#status.error", timeout=20_000)
            assert "image" in (page.text_content("#status") or "")
            assert not page.is_visible("#prediction") and page.locator(".neighbor").count() == 0
            assert errors == []
        finally:
            context.close()


def test_sigterm_refuses_an_upload_still_arriving_and_stops_promptly(
    tiny_checkpoint, live_index, tmp_path
):
    """A client sending its body slowly held the worker for gunicorn's whole 30 s grace: the
    master then killed it, without closing its index. The body is refused at once (503,
    "shutting_down"), and the server is gone in seconds, its workers exited cleanly."""
    import socket
    import time

    from tests.server.live import stop

    with (
        running_server(tiny_checkpoint, live_index, tmp_path, "--workers", "1") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock,
    ):
        sock.sendall(
            b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n" + b"\xff" * 1000
        )
        time.sleep(0.5)  # the worker is reading the body
        started = time.monotonic()
        server.proc.send_signal(15)
        answer = sock.recv(4096)
        assert stop(server) == 0
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 503") and b"shutting_down" in answer
    assert took < 10, f"stopped in {took:.1f} s"
    log = server.log.read_text()
    assert "Forcing close" not in log and "Worker exiting" in log


def test_a_reload_answers_every_request(tiny_checkpoint, live_index, query_image, tmp_path):
    """SIGHUP (gunicorn's reload) answered 9 of 60 searches 503 "shutting_down": the old
    worker took new connections for up to a second after its signal only to refuse them, and
    refused a whole request on a kept-alive connection too."""
    import http.client
    import signal
    import threading
    import time

    from tests.server.live import wait_for, worker_pids

    body, headers = multipart({"image": ("phone.jpg", query_image.read_bytes())})
    statuses: list[int | str] = []
    done = threading.Event()

    def client(server) -> None:  # noqa: ANN001
        kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        # A bound on the traffic, far above what the reload needs: 400 had been reached before
        # the new worker was up on a quiet machine, and the client stopped short.
        while not done.is_set() and len(statuses) < 20_000:
            try:
                for attempt in range(2):
                    kept.request("GET", "/v1/info")  # kept alive (reopened if it was closed)
                    try:
                        reply = kept.getresponse()
                        break
                    except http.client.RemoteDisconnected:
                        # The stopping worker closed it idle as the request went out: HTTP's
                        # keep-alive race, which clients and proxies retry on a new one.
                        kept.close()
                        if attempt:
                            raise
                reply.read()
                statuses.append(reply.status)
                statuses.append(server.request("POST", "/v1/search", body, headers)[0])  # new
                time.sleep(0.01)  # steady traffic, not a flood
            except (OSError, http.client.HTTPException) as exc:
                statuses.append(repr(exc))
                kept.close()
        kept.close()

    with running_server(tiny_checkpoint, live_index, tmp_path, "--workers", "1") as server:
        (old,) = worker_pids(server)
        thread = threading.Thread(target=client, args=(server,))
        thread.start()
        try:
            wait_for("requests before the reload", lambda: len(statuses) >= 6, timeout=60)
            server.proc.send_signal(signal.SIGHUP)
            wait_for("the new worker", lambda: old not in worker_pids(server), timeout=60)
            now = len(statuses)
            wait_for("requests after the reload", lambda: len(statuses) >= now + 6, timeout=60)
        finally:
            done.set()
            thread.join(60)
        time.sleep(0.1)
    assert statuses and set(statuses) == {200}, statuses


def test_a_reload_onto_a_checkpoint_that_cannot_load_is_refused_and_the_workers_go_on(
    tiny_checkpoint, live_index, query_image, tmp_path
):
    """A reload stops the old workers as soon as the new ones start: with the checkpoint's
    symlink moved to one that did not fit, the new worker failed, and the whole server
    stopped (exit 3) with nothing left listening. A worker restarted after a refused reload
    loads what the others serve, and a check that hangs holds neither the master's care of
    its workers nor its stop."""
    import signal

    from tests.server.live import stop, wait_for

    def workers() -> list[int]:  # the master's children, less a reload's check
        pid = server.proc.pid
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(k) for k in kids if b"server.preflight" not in _cmdline(k)]

    def checks() -> list[int]:  # started by the master's check thread: its task's children
        kids = []
        for task in Path(f"/proc/{server.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids += (task / "children").read_text().split()
        return [int(k) for k in kids if b"server.preflight" in _cmdline(k)]

    def point(target: Path) -> None:
        link.unlink()
        link.symlink_to(target)

    link, broken = tmp_path / "current", tmp_path / "broken"
    broken.mkdir()
    link.symlink_to(tiny_checkpoint)
    body, headers = multipart({"image": ("phone.jpg", query_image.read_bytes())})
    with running_server(link, live_index, tmp_path, "--workers", "1") as server:
        (old,) = workers()
        point(broken)
        server.proc.send_signal(signal.SIGHUP)
        wait_for("the refusal", lambda: "reload refused" in server.log.read_text(), timeout=120)
        assert server.proc.poll() is None and workers() == [old]
        assert server.request("POST", "/v1/search", body, headers)[0] == 200
        refusal = server.log.read_text().split("reload refused", 1)[1].splitlines()[0]
        assert "not a checkpoint" in refusal
        # Killed after the refusal, the worker comes back with the checkpoint it served.
        os.kill(old, signal.SIGKILL)
        wait_for("a new worker", lambda: workers() not in ([], [old]), timeout=120)
        wait_for("readiness", lambda: server.request("GET", "/readyz")[0] == 200, timeout=120)
        assert server.request("POST", "/v1/search", body, headers)[0] == 200
        # A check that hangs (stopped here, as a stuck disk or database would hold it): the
        # master still replaces a killed worker meanwhile.
        for _ in range(5):
            before = server.log.read_text().count("reload refused")
            server.proc.send_signal(signal.SIGHUP)
            child = wait_for(
                "the check",
                lambda n=before: checks() or server.log.read_text().count("reload refused") > n,
                timeout=60,
                every=0.005,
            )
            if child is not True:
                os.kill(child[0], signal.SIGSTOP)
                break
        else:
            pytest.fail("the check ended each time before it could be stopped")
        (second,) = workers()
        os.kill(second, signal.SIGKILL)
        wait_for("a worker again", lambda: workers() not in ([], [second]), timeout=120)
        wait_for("ready again", lambda: server.request("GET", "/readyz")[0] == 200, timeout=120)
        hung = checks()
        assert hung, "the check no longer runs"
        server.proc.send_signal(signal.SIGHUP)
        wait_for("the second SIGHUP", lambda: "still runs" in server.log.read_text(), timeout=30)
        # A stop while the check hangs: the check goes with the server.
        assert stop(server) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in hung)


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def test_ctrl_c_finishes_the_requests_in_flight(tiny_checkpoint, live_index, tmp_path):
    """Ctrl-C (SIGINT to the master and, from a terminal, to every worker) was gunicorn's
    quick stop: 10 of 10 batch searches in flight got no answer, where the README promised
    a graceful stop as on SIGTERM."""
    import base64
    import io
    import signal
    import socket
    import time

    from PIL import Image

    from tests.server.live import stop, worker_pids

    # 16 of 6000 x 6000 pixels in 140 KB each: they arrive at once and take seconds to decode
    # (8 took 1.49 s on a quiet machine, too close to the bound below),
    # longer than the second a quick-stopping worker still runs.
    blocks = np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(blocks).resize((6000, 6000), Image.NEAREST).save(png, "PNG")
    entry = {"image": base64.b64encode(png.getvalue()).decode()}
    body = json.dumps({"queries": [entry] * 16, "k": 1}).encode()
    with (
        running_server(tiny_checkpoint, live_index, tmp_path, "--workers", "1") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock,
    ):
        sock.sendall(
            b"POST /v1/search/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        started = time.monotonic()
        time.sleep(0.3)  # read whole; decoding
        for pid in [server.proc.pid, *worker_pids(server)]:  # as a terminal's Ctrl-C does
            os.kill(pid, signal.SIGINT)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        took = time.monotonic() - started
        assert stop(server) == 0
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert took > 1.5, f"answered in {took:.1f} s: too soon to tell a quick stop"


def test_a_worker_that_cannot_load_is_retried_while_the_others_serve(
    tiny_checkpoint, tiny_embedder, catalog_rows, query_image, tmp_path
):
    """A worker restarted while the index's FAISS file was missing (or the catalog's
    database down) failed to boot, and gunicorn stopped the whole server (exit 3), healthy
    workers and all. It is retried while another worker serves, and the server recovers
    once it can load; with none serving it stops (exit 3) instead of holding its port
    answering nothing."""
    import shutil
    import signal

    from tests.server.live import wait_for, worker_pids

    index = build_test_index(tiny_embedder, catalog_rows, tmp_path / "index")
    (faiss_file,) = index.glob("vectors-*.faiss")
    body, headers = multipart({"image": ("phone.jpg", query_image.read_bytes())})

    def loaded(server) -> int:  # noqa: ANN001
        return server.log.read_text().count("ASGI server listening")

    with running_server(tiny_checkpoint, index, tmp_path, "--workers", "2") as server:
        # Ready is one worker loaded: both must be, or the second fails its load too.
        wait_for("both workers loaded", lambda: loaded(server) >= 2)
        first, second = worker_pids(server)
        shutil.move(faiss_file, tmp_path / "held.faiss")
        os.kill(first, signal.SIGKILL)
        wait_for("a failed load", lambda: "could not load (" in server.log.read_text())
        assert server.proc.poll() is None, server.log.read_text()[-2000:]
        assert server.request("POST", "/v1/search", body, headers)[0] == 200  # the other one
        shutil.move(tmp_path / "held.faiss", faiss_file)
        wait_for("a worker loaded again", lambda: loaded(server) >= 3, timeout=60)
        os.kill(second, signal.SIGKILL)  # only the worker loaded since answers now
        assert server.request("POST", "/v1/search", body, headers)[0] == 200
        assert server.proc.poll() is None
    log = server.log.read_text()
    assert "Worker failed to boot" not in log
    assert log.count("Traceback") <= 1  # the failure's traceback once, then one line each

    # One worker, and it cannot load again: no worker serves, so the server stops.
    with running_server(tiny_checkpoint, index, tmp_path, "--workers", "1", name="alone") as server:
        (only,) = worker_pids(server)
        shutil.move(faiss_file, tmp_path / "held.faiss")
        os.kill(only, signal.SIGKILL)
        assert server.proc.wait(60) == 3
    assert "Worker failed to boot" in server.log.read_text()


def test_the_access_log_keeps_keys_and_terminal_escapes_out(tiny_checkpoint, live_index, tmp_path):
    """`curl -u KEY:` put the API key in the log as the Basic user (the request was refused,
    the key written in plain text), so did `?api_key=`, and a raw U+009B (a terminal's
    one-character escape) in a User-Agent went into the log as it came."""
    import http.client

    with running_server(tiny_checkpoint, live_index, tmp_path, "--access-log") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.putrequest("DELETE", "/v1/items/x?api_key=s3cretQUERY&k=5", skip_accept_encoding=True)
        conn.putheader("Authorization", "Basic czNjcmV0S0VZMTIzOg==")  # "s3cretKEY123:"
        conn.putheader("User-Agent", "agent\x9b31mRED".encode("latin-1"))
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status in (401, 403)
        request_id = answer.getheader("X-Request-ID")
        conn.close()
    log = server.log.read_text(encoding="utf-8", errors="replace")
    line = next(x for x in log.splitlines() if "DELETE /v1/items/x" in x)
    assert "s3cretKEY123" not in log and "s3cretQUERY" not in log
    assert "api_key=***&k=5" in line and "agent\\x9b31mRED" in line and "\x9b" not in log
    # The id the client got is on the line (an error report and the log meet), and the time.
    assert request_id and line.endswith(f"ms id={request_id}"), line


def test_json_logs_are_one_object_a_line_with_the_request_id(tiny_checkpoint, live_index, tmp_path):
    """A log collector had to parse text lines whose layout differs between gunicorn's own,
    the access log and phonesim's."""
    import http.client
    import socket

    env = {"PHONESIM_API_KEY": "short-key"}  # its warning is logged before the server starts
    with running_server(
        tiny_checkpoint, live_index, tmp_path, "--access-log", "--log-format", "json", env=env
    ) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request(
            "DELETE",
            "/v1/items/x?api_key=s3cretQUERY&k=5&signature=SIGsecret",
            headers={"X-Request-ID": "trace-42", "User-Agent": 'agent "quoted"'},
        )
        assert conn.getresponse().status in (401, 403)
        conn.close()
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n")  # refused by the parser
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
    lines = server.log.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line: nothing else was written
    assert {"time", "level", "logger", "pid", "message"} <= set(records[0])
    access = next(r for r in records if r["message"] == "request" and r.get("method") == "DELETE")
    assert access["path"] == "/v1/items/x"
    assert access["query"] == "api_key=***&k=5&signature=***"  # a signed URL's too
    assert access["status"] in (401, 403) and access["request_id"] == "trace-42"
    assert access["user_agent"] == 'agent "quoted"' and access["duration_ms"] >= 0
    assert "s3cretQUERY" not in "\n".join(lines) and "SIGsecret" not in "\n".join(lines)
    refused = [r for r in records if r["message"] == "request" and r.get("status") == 400]
    assert refused and refused[0]["method"] == "-" and refused[0]["remote_addr"] == "127.0.0.1"
    assert any(r["logger"].startswith("gunicorn") for r in records)  # gunicorn's own lines
    assert any(r["logger"].startswith("server") for r in records)  # phonesim's, in workers
    assert any("the API key has 9 characters" in r["message"] for r in records)
