"""The app factory: loading from paths, readiness, shutdown, errors as JSON, metrics."""

from __future__ import annotations

import json
import re
import shutil
import threading

import pytest

from server.app import create_app
from server.config import ServerConfig
from tests.server.helpers import API_KEY, assert_error, make_app, upload


def test_create_app_loads_from_paths_and_checks_the_index(tiny_checkpoint, index_dir, tmp_path):
    from index import IndexMismatchError

    app = create_app({"checkpoint": str(tiny_checkpoint), "index": str(index_dir)})
    state = app.extensions["phonesim"]
    assert state.service.index.readonly  # no API key: read-only, no writer lock taken
    assert app.test_client().get("/readyz").status_code == 200
    state.close()
    bad = tmp_path / "bad"
    shutil.copytree(index_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["model_name"] = "resnet18"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatchError):
        create_app({"checkpoint": str(tiny_checkpoint), "index": str(bad)})
    with pytest.raises(ValueError, match="unknown server setting"):
        create_app({"no_such_setting": 1})


def test_app_without_model_is_alive_but_not_ready(jpeg_bytes):
    app = create_app()
    c = app.test_client()
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 503
    assert_error(c.post("/v1/search", data=upload(jpeg_bytes)), 503, "not_ready")
    assert_error(c.get("/v1/info"), 503, "not_ready")


def test_not_ready_and_503_after_shutdown(app, jpeg_bytes):
    c = app.test_client()
    app.extensions["phonesim"].close()
    r = c.get("/readyz")
    assert r.status_code == 503 and r.get_json()["checks"]["batcher"] is False
    assert_error(c.post("/v1/search", data=upload(jpeg_bytes)), 503, "shutting_down")
    assert c.get("/healthz").status_code == 200


def test_a_model_failure_is_a_json_500_and_the_server_recovers(app, jpeg_bytes, monkeypatch):
    service = app.extensions["phonesim"].service
    real = service.batcher._forward
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated model failure")
        return real(x)

    monkeypatch.setattr(service.batcher, "_forward", flaky)
    c = app.test_client()
    assert_error(c.post("/v1/search", data=upload(jpeg_bytes)), 500, "internal_error")
    assert c.post("/v1/search", data=upload(jpeg_bytes)).status_code == 200


def _held_model(service, monkeypatch) -> tuple[threading.Event, threading.Event]:  # noqa: ANN001
    """Hold every forward pass of ``service``'s model at a gate: (entered, gate)."""
    real = service.batcher._forward
    entered, gate = threading.Event(), threading.Event()

    def held(x):  # noqa: ANN001, ANN202
        entered.set()
        gate.wait(10)
        return real(x)

    monkeypatch.setattr(service.batcher, "_forward", held)
    return entered, gate


def test_a_full_model_queue_is_a_503_overloaded(
    tiny_embedder, readonly_index, jpeg_bytes, monkeypatch
):
    """The micro-batcher refuses an image once its queue is full: the client is told to
    retry (503 overloaded, Retry-After), not answered a 500."""
    config = ServerConfig(max_batch=1, max_wait_ms=0, max_queue=1)
    app = make_app(config, tiny_embedder, readonly_index)
    service = app.extensions["phonesim"].service
    entered, gate = _held_model(service, monkeypatch)
    try:
        x = tiny_embedder.preprocess_array(service.decode(jpeg_bytes))
        running = service.batcher.submit(x)
        assert entered.wait(5)  # the batcher took it and is held in the model
        queued = service.batcher.submit(x)  # the queue of one is full
        c = app.test_client()
        r = c.post("/v1/search", data=upload(jpeg_bytes))
        error = assert_error(r, 503, "overloaded")
        assert error["message"] == "1 requests are already waiting for the model"
        assert r.headers["Retry-After"] == "1"
        gate.set()
        assert running.result(5).batch_size == queued.result(5).batch_size == 1
        assert c.post("/v1/search", data=upload(jpeg_bytes)).status_code == 200
    finally:
        gate.set()
        app.extensions["phonesim"].close()


def test_a_model_that_does_not_answer_in_time_is_a_503_model_timeout(
    tiny_embedder, readonly_index, jpeg_bytes, monkeypatch
):
    """A request stops waiting for the model after request_timeout_s: a 503 saying so, not
    a 500 (the held model never answers within it, however loaded the machine)."""
    config = ServerConfig(max_wait_ms=0, request_timeout_s=0.2)
    app = make_app(config, tiny_embedder, readonly_index)
    service = app.extensions["phonesim"].service
    entered, gate = _held_model(service, monkeypatch)
    try:
        r = app.test_client().post("/v1/search", data=upload(jpeg_bytes))
        error = assert_error(r, 503, "model_timeout")
        assert error["message"] == "the model did not answer in time"
        assert entered.is_set()  # it was waiting on the model, not refused before
    finally:
        gate.set()
        app.extensions["phonesim"].close()


def test_a_large_upload_waits_for_a_decode_slot_no_longer_than_for_the_model(
    tiny_embedder, readonly_index
):
    """Two large images decode at a time; a third waited for a slot without bound (58 s on
    a starved CPU, every timeout passed). It waits request_timeout_s, then a 503."""
    import io
    import time

    from PIL import Image

    from server.config import ServerConfig
    from server.service import LARGE_DECODES

    app = make_app(ServerConfig(request_timeout_s=0.3), tiny_embedder, readonly_index)
    service = app.extensions["phonesim"].service
    buf = io.BytesIO()
    Image.new("RGB", (2100, 2000), "gray").save(buf, "PNG")  # 4.2 MP: a large decode
    try:
        for _ in range(LARGE_DECODES):  # every slot taken by uploads decoding meanwhile
            service._large_decodes.acquire()
        t0 = time.monotonic()
        r = app.test_client().post("/v1/search", data=upload(buf.getvalue()))
        assert assert_error(r, 503, "overloaded") and time.monotonic() - t0 < 5
        assert r.headers["Retry-After"] == "1"
        for _ in range(LARGE_DECODES):
            service._large_decodes.release()
        assert app.test_client().post("/v1/search", data=upload(buf.getvalue())).status_code == 200
    finally:
        app.extensions["phonesim"].close()


def test_an_os_timeout_is_no_model_timeout(app, jpeg_bytes, monkeypatch, caplog):
    """Every TimeoutError was answered "the model did not answer in time", unlogged: on
    Python 3.11 that class is also an OS-level ETIMEDOUT (a network file system, a socket)."""
    import errno
    import logging

    service = app.extensions["phonesim"].service

    def timed_out(data: bytes) -> None:
        raise OSError(errno.ETIMEDOUT, "Connection timed out")

    monkeypatch.setattr(service, "decode", timed_out)
    with caplog.at_level(logging.ERROR, logger="server.errors"):
        r = app.test_client().post("/v1/search", data=upload(jpeg_bytes))
    assert_error(r, 500, "internal_error")
    assert any("unhandled error" in rec.message and rec.exc_info for rec in caplog.records)


def test_running_out_of_descriptors_or_memory_is_a_503_not_a_bad_image(
    app, jpeg_bytes, monkeypatch, caplog
):
    """With no file descriptor left, Pillow could not import a format plugin and a valid
    photo was answered 400 invalid_image, naming the server's install path; under a memory
    limit a 40 MP PNG was "image too large to decode". Clients do not retry a 4xx."""
    import errno
    import logging

    from embedder import images
    from server import errors
    from server.log_throttle import LogThrottle

    monkeypatch.setattr(errors, "_resource_log", LogThrottle(10.0))  # not an earlier test's

    failures = iter(
        [
            OSError(errno.EMFILE, "Too many open files", "/srv/venv/PIL/GifImagePlugin.py"),
            MemoryError(),
        ]
        * 3
    )

    def exhausted(fp, name, min_side):  # noqa: ANN001, ANN202
        raise next(failures)

    monkeypatch.setattr(images, "_decode", exhausted)
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="server.errors"):
        answers = [client.post("/v1/search", data=upload(jpeg_bytes)) for _ in range(4)]
    for r in answers:
        error = assert_error(r, 503, "out_of_resources")
        assert r.headers["Retry-After"] == "1" and "/srv" not in error["message"]
    lines = [rec.message for rec in caplog.records if "out of resources" in rec.message]
    assert len(lines) == 1 and "Too many open files" in lines[0]  # throttled, said once
    monkeypatch.undo()
    assert client.post("/v1/search", data=upload(jpeg_bytes)).status_code == 200


def test_metrics_count_requests_model_batches_and_index(client, jpeg_bytes):
    client.post("/v1/search", data=upload(jpeg_bytes))
    client.get("/v1/items/missing-id")
    metrics = client.get("/metrics")
    # One charset parameter: a media type that repeats one is invalid (RFC 9110, § 8.3.1).
    content_type = metrics.headers["Content-Type"]
    assert content_type.startswith("text/plain;") and content_type.count("charset=") == 1
    text = metrics.get_data(as_text=True)
    assert 'phonesim_http_requests_total{endpoint="/v1/search",method="POST",status="200"} 1.0' in (
        text
    )
    assert 'endpoint="/v1/items/<item_id:item_id>",method="GET",status="404"' in text
    assert "phonesim_http_request_duration_seconds_bucket" in text
    assert re.search(r"phonesim_model_forward_seconds_count \d", text)
    assert re.search(r"phonesim_model_batch_size_count [1-9]", text)
    assert "phonesim_index_items 18.0" in text


def test_made_up_methods_add_no_metric_series(client):
    """Each method name a client invents would be new series kept for the worker's life."""
    for i in range(5):
        assert client.open("/v1/info", method=f"ZZ{i}").status_code == 405
    client.open("/v1/info", method="PATCH")
    text = client.get("/metrics").get_data(as_text=True)
    assert "ZZ" not in text
    row = r'phonesim_http_requests_total\{[^}]*method="(\w+)",status="405"\} (\S+)'
    counted = re.findall(row, text)
    assert sorted(counted) == [("PATCH", "1.0"), ("other", "5.0")]


def test_a_doubled_slash_is_a_json_404_not_a_redirect(writable, first_id):
    """werkzeug would answer an HTML 308 to the merged path, which can be another resource
    ("/v1/items//similar" is the item "similar"), and a client following it repeats a write."""
    app, _ = writable
    c = app.test_client()
    key = {"X-API-Key": API_KEY}
    cases = [
        ("GET", "/v1//info"),
        ("GET", "/v1/items//similar"),
        ("POST", "/v1//search"),
        ("DELETE", f"/v1/items//{first_id}"),
    ]
    for method, path in cases:
        assert_error(c.open(path, method=method, headers=key), 404)
    assert c.get(f"/v1/items/{first_id}").status_code == 200  # the DELETE removed nothing


def test_every_answer_carries_a_request_id_that_its_log_lines_name(app, jpeg_bytes, caplog):
    """A 500 logged "unhandled error" with a traceback and nothing else: three at once could
    only be told apart by the second they happened in, and the client had nothing to quote."""
    import logging
    import re

    c = app.test_client()
    r = c.get("/healthz")
    made = r.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert c.get("/healthz").headers["X-Request-ID"] != made  # one per request
    given = "edge-7f3a.42"  # a proxy's id is kept
    assert c.get("/v1/items/nope", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given
    for odd in ("two words", "x" * 200, 'quote"d'):  # not written into a log line as sent
        assert c.get("/healthz", headers={"X-Request-ID": odd}).headers["X-Request-ID"] != odd
    service = app.extensions["phonesim"].service

    def broken(data: bytes) -> None:
        raise RuntimeError("a bug")

    service.decode, real = broken, service.decode
    try:
        with caplog.at_level(logging.ERROR, logger="server.errors"):
            r = c.post("/v1/search", data=upload(jpeg_bytes), headers={"X-Request-ID": given})
    finally:
        service.decode = real
    assert_error(r, 500, "internal_error")
    assert r.headers["X-Request-ID"] == given
    (record,) = [rec for rec in caplog.records if "unhandled error" in rec.message]
    assert record.message == f"unhandled error in POST /v1/search (request {given})"


def test_running_out_anywhere_in_a_request_is_a_503(app, jpeg_bytes, monkeypatch, caplog):
    """numpy imports numpy.ma on first use inside np.unique: with no descriptor left every
    filtered search was an unhandled 500 with a traceback (2,087 in 10 s)."""
    import errno
    import logging

    service = app.extensions["phonesim"].service

    def no_descriptor(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.EMFILE, "Too many open files", "/srv/numpy/ma/__init__.py")

    monkeypatch.setattr(service, "search_many", no_descriptor)
    with caplog.at_level(logging.ERROR, logger="server.errors"):
        r = app.test_client().post("/v1/search", data=upload(jpeg_bytes))
    assert_error(r, 503, "out_of_resources")
    assert not any("unhandled error" in rec.message for rec in caplog.records)


def test_a_worker_imports_on_load_what_libraries_import_on_first_use():
    import subprocess
    import sys

    code = (
        "import sys; from server.serve import import_lazy_modules; import_lazy_modules(); "
        "from PIL import Image; "
        "print('numpy.ma' in sys.modules, Image._initialized == 2)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_a_metric_that_cannot_be_recorded_does_not_fail_the_request(
    app, jpeg_bytes, monkeypatch, caplog
):
    """Out of descriptors, recording a request's metrics (a file per worker in multiprocess
    mode) raised in Flask's after_request: answered searches became Flask's own 500s."""
    import errno
    import logging

    metrics = app.extensions["phonesim"].metrics

    class Broken:
        def labels(self, *args):  # noqa: ANN002, ANN202
            raise OSError(errno.EMFILE, "Too many open files", "/tmp/metrics/counter_1.db")

        def inc(self, *args):  # noqa: ANN002, ANN202
            self.labels()

        dec = inc

    for name in ("requests", "latency", "in_flight"):
        monkeypatch.setattr(metrics, name, Broken())
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="server.metrics"):
        answers = [client.post("/v1/search", data=upload(jpeg_bytes)) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    lines = [r.message for r in caplog.records if "metrics could not be recorded" in r.message]
    assert len(lines) == 1 and "Too many open files" in lines[0]
