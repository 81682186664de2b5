"""Predictions that use the text on the photo (``serve --read-text``): the classes a photo's
text names are added to its prediction on every endpoint that predicts."""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from common.errors import UserError
from embedder.errors import DataError
from phonesim.cli import build_parser
from server import cli
from server.config import ServerConfig
from tests.server.helpers import API_KEY, b64, make_app, upload

pytest.importorskip("rapidocr", reason="phonesim[ocr] not installed")

WORD = "Zephyrphone"  # a product line no class is called, named by the cue file only


def banner(text: str) -> bytes:
    img = Image.new("RGB", (360, 120), (250, 250, 250))
    ImageDraw.Draw(img).text((12, 35), text, fill=(20, 20, 20), font=ImageFont.load_default(44))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def outsider(tiny_embedder, readonly_index) -> str:
    """The class the fused prediction finds least likely for the banner, so that only its
    text can make it the answer."""
    app = make_app(ServerConfig(), tiny_embedder, readonly_index)
    try:
        found = app.test_client().post("/v1/search", data=upload(banner(WORD)))
        return found.get_json()["prediction"]["top"][-1]["label"]
    finally:
        app.extensions["phonesim"].close()


@pytest.fixture(scope="module")
def reading(tiny_embedder, readonly_index, outsider, tmp_path_factory):
    cues = tmp_path_factory.mktemp("cues") / "cues.json"
    cues.write_text(json.dumps({outsider: [WORD]}))
    # Gate 1: every photo is read, however sure the tiny model is.
    config = ServerConfig(read_text=True, text_cues=str(cues), text_rotations=(0,), text_gate=1.0)
    app = make_app(config, tiny_embedder, readonly_index)
    yield app.test_client()
    app.extensions["phonesim"].close()


def test_a_named_class_wins_on_every_endpoint_that_predicts(reading, outsider) -> None:
    searched = reading.post("/v1/search", data=upload(banner(WORD))).get_json()
    embedded = reading.post("/v1/embed", data=upload(banner(WORD))).get_json()
    batch = reading.post("/v1/search/batch", json={"queries": [{"image": b64(banner(WORD))}]})
    batched = batch.get_json()["results"][0]
    for body in (searched, embedded, batched):
        prediction = body["prediction"]
        assert prediction["label"] == outsider
        assert prediction["text_cues"] == [outsider] and prediction["text_read"] is True
        assert prediction["source"].endswith("+text")
    assert searched["timing_ms"]["read_text"] > 0


def test_a_photo_without_a_named_class_keeps_its_prediction(reading, jpeg_bytes) -> None:
    prediction = reading.post("/v1/search", data=upload(jpeg_bytes)).get_json()["prediction"]
    assert prediction["text_cues"] == []
    assert not prediction["source"].endswith("+text")


def test_a_server_that_does_not_read_says_nothing_about_text(client, jpeg_bytes) -> None:
    body = client.post("/v1/search", data=upload(banner(WORD))).get_json()
    assert "text_cues" not in body["prediction"] and "text_read" not in body["prediction"]
    assert "read_text" not in body["timing_ms"]
    assert client.get("/v1/info").get_json()["prediction"]["read_text"] is False


def test_info_shows_the_text_setting(reading) -> None:
    shown = reading.get("/v1/info").get_json()["prediction"]
    assert shown["read_text"] is True
    assert shown["text_rotations"] == [0]
    assert shown["text_weight"] == 1.0
    assert shown["text_gate"] == 1.0


def test_a_learned_cue_files_examples_lean_the_prediction(
    tiny_embedder, readonly_index, outsider, tmp_path
) -> None:
    """A cue file from ``phonesim learn-text``: text that names no class but reads like an
    example of one (here a misreading) leans the prediction to that class."""
    learned = tmp_path / "learned.json"
    learned.write_text(json.dumps({outsider: {"words": [], "examples": ["zephyrphome"]}}))
    config = ServerConfig(
        read_text=True, text_cues=str(learned), text_rotations=(0,), text_gate=1.0
    )
    app = make_app(config, tiny_embedder, readonly_index)
    plain = make_app(ServerConfig(), tiny_embedder, readonly_index)
    try:
        client = app.test_client()
        leaned = client.post("/v1/search", data=upload(banner(WORD))).get_json()["prediction"]
        before = plain.test_client().post("/v1/search", data=upload(banner(WORD))).get_json()

        def score(prediction: dict) -> float:
            return next(t["score"] for t in prediction["top"] if t["label"] == outsider)

        assert leaned["text_cues"] == [outsider] and leaned["source"].endswith("+text")
        assert score(leaned) > score(before["prediction"]) + 0.2
        assert sum(t["score"] for t in leaned["top"]) == pytest.approx(1.0, abs=1e-3)
        assert client.get("/v1/info").get_json()["prediction"]["text_examples"] == 1
        assert plain.test_client().get("/v1/info").get_json()["prediction"]["text_examples"] is None
    finally:
        app.extensions["phonesim"].close()
        plain.extensions["phonesim"].close()


def test_a_sure_prediction_leaves_the_text_unread(
    tiny_embedder, readonly_index, outsider, tmp_path, monkeypatch
) -> None:
    """Below the gate only: at a gate under every prediction's top probability nothing is
    read, on the single and the batch endpoints, and the prediction is the one without text."""
    cues = tmp_path / "cues.json"
    cues.write_text(json.dumps({outsider: [WORD]}))
    config = ServerConfig(read_text=True, text_cues=str(cues), text_rotations=(0,), text_gate=0.01)
    app = make_app(config, tiny_embedder, readonly_index)
    plain = make_app(ServerConfig(), tiny_embedder, readonly_index)
    try:
        svc = app.extensions["phonesim"].service
        calls = []
        monkeypatch.setattr(svc.text.reader, "read", lambda image, **_: calls.append(1) or [])
        client = app.test_client()
        searched = client.post("/v1/search", data=upload(banner(WORD))).get_json()
        batch = client.post("/v1/search/batch", json={"queries": [{"image": b64(banner(WORD))}]})
        expected = plain.test_client().post("/v1/search", data=upload(banner(WORD))).get_json()
        for prediction in (searched["prediction"], batch.get_json()["results"][0]["prediction"]):
            assert prediction["text_read"] is False and prediction["text_cues"] == []
            assert prediction["label"] == expected["prediction"]["label"] != outsider
        assert calls == []
        assert searched["timing_ms"]["read_text"] < 50  # no OCR ran
        assert client.get("/v1/info").get_json()["prediction"]["text_gate"] == 0.01
        metrics = client.get("/metrics").get_data(as_text=True)
        left = re.search(r'phonesim_text_photos_total\{read="no"\} (\S+)', metrics)
        assert left and float(left[1]) >= 2, metrics
    finally:
        app.extensions["phonesim"].close()
        plain.extensions["phonesim"].close()


def test_a_bad_cue_file_stops_the_start(tiny_embedder, readonly_index, tmp_path) -> None:
    bad = tmp_path / "cues.json"
    bad.write_text(json.dumps({"no-such-class": ["word"]}))
    with pytest.raises(DataError, match="no-such-class"):
        make_app(ServerConfig(read_text=True, text_cues=str(bad)), tiny_embedder, readonly_index)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"text_cues": "cues.json"}, "needs read_text"),
        ({"read_text": True, "text_weight": -1.0}, "text_weight"),
        ({"read_text": True, "text_weight": True}, "text_weight"),
        ({"read_text": True, "text_rotations": (45,)}, "text_rotations"),
        ({"read_text": True, "text_rotations": ()}, "text_rotations"),
        ({"read_text": True, "text_gate": 0.0}, "text_gate"),
        ({"read_text": True, "text_gate": 1.5}, "text_gate"),
        ({"read_text": True, "text_gate": True}, "text_gate"),
    ],
)
def test_text_settings_are_checked(settings: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        ServerConfig(**settings).validate()


def test_serve_flags(tmp_path) -> None:
    parser = build_parser()
    base = ["serve", "--checkpoint", "c", "--index", "i"]
    config, _ = cli.settings_from_args(parser.parse_args(base))
    assert config.read_text is False
    args = parser.parse_args([*base, "--text-cues", "cues.json", "--text-rotations", "0,90"])
    config, _ = cli.settings_from_args(args)
    assert (config.read_text, config.text_cues, config.text_rotations) == (
        True,
        "cues.json",
        (0, 90),
    )
    assert config.text_gate == 0.8  # the default, measured in bench_quality
    gated, _ = cli.settings_from_args(parser.parse_args([*base, "--read-text", "--text-gate", "1"]))
    assert gated.text_gate == 1.0
    with pytest.raises(UserError, match="need --read-text"):
        cli.settings_from_args(parser.parse_args([*base, "--text-weight", "0.5"]))
    with pytest.raises(UserError, match="need --read-text"):
        cli.settings_from_args(parser.parse_args([*base, "--text-gate", "0.5"]))
    # An empty name said "text_cues needs read_text", though --text-cues implies it.
    with pytest.raises(UserError, match="--text-cues needs a file name"):
        cli.settings_from_args(parser.parse_args([*base, "--text-cues", ""]))
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--read-text", "--text-rotations", "45"])


def test_a_reader_failure_costs_the_cue_not_the_search(reading, monkeypatch) -> None:
    svc = reading.application.extensions["phonesim"].service

    def broken(image, **_):
        raise RuntimeError("OCR fell over")

    monkeypatch.setattr(svc.text.reader, "read", broken)
    response = reading.post("/v1/search", data=upload(banner(WORD)))
    assert response.status_code == 200
    prediction = response.get_json()["prediction"]
    assert prediction["text_cues"] == []
    # Nothing was read: it said text_read true, as if the photo held no words.
    assert prediction["text_read"] is False and not prediction["source"].endswith("+text")
    assert prediction["text_unread"] == "failed"


def test_the_class_rerank_believes_the_text_too(
    tiny_embedder, readonly_index, outsider, tmp_path
) -> None:
    """With text read, the re-rank's belief is the classifier with the text cues: among the
    photo's five most similar items, one filed under the class its text names comes first."""
    cues = tmp_path / "cues.json"
    cues.write_text(json.dumps({outsider: [WORD]}))
    firsts = {}
    for read in (False, True):
        settings = {
            "read_text": True,
            "text_cues": str(cues),
            "text_rotations": (0,),
            "text_gate": 1.0,
        }
        config = ServerConfig(class_rerank=5.0, **(settings if read else {}))
        app = make_app(config, tiny_embedder, readonly_index)
        try:
            client = app.test_client()
            query = {"k": "5"}
            similar = client.post(
                "/v1/search", data={**upload(banner(WORD)), **query, "ranking": "similarity"}
            )
            pool = [h["label"] for h in similar.get_json()["neighbors"]]
            ranked = client.post("/v1/search", data={**upload(banner(WORD)), **query})
            firsts[read] = ranked.get_json()["neighbors"][0]["label"]
            # The batch endpoint ranks after its prediction has read the text, as well.
            batch = client.post(
                "/v1/search/batch", json={"queries": [{"image": b64(banner(WORD))}], "k": 5}
            )
            assert batch.get_json()["results"][0]["neighbors"][0]["label"] == firsts[read]
        finally:
            app.extensions["phonesim"].close()
    assert outsider in pool and pool[0] != outsider, pool  # the text has something to move
    assert firsts[True] == outsider
    assert firsts[False] != outsider  # the classifier alone finds it least likely


def photos(catalog_rows) -> list[bytes]:
    """Uploads the tiny model is sure of to varying degrees: banners, catalog photos, a blank."""
    out = [banner(WORD), banner("Hello there")]
    for row in list(catalog_rows.values())[:6]:
        out.append(Path(row["image"]).read_bytes())
    blank = io.BytesIO()
    Image.new("RGB", (200, 200), (120, 130, 140)).save(blank, format="PNG")
    return [*out, blank.getvalue()]


def test_the_gate_looks_at_the_fused_prediction_of_each_photo(
    tiny_embedder, readonly_index, catalog_rows, tmp_path, monkeypatch
) -> None:
    """In one batch, exactly the photos whose fused prediction (the plain server's score) is
    below the gate are read, each its own."""
    uploads = photos(catalog_rows)
    queries = {"queries": [{"image": b64(data)} for data in uploads]}
    plain = make_app(ServerConfig(), tiny_embedder, readonly_index)
    try:
        found = plain.test_client().post("/v1/search/batch", json=queries).get_json()
    finally:
        plain.extensions["phonesim"].close()
    assert all(r["prediction"]["source"] == "classifier+knn" for r in found["results"])
    scores = [r["prediction"]["score"] for r in found["results"]]
    # The gate in the widest gap between two scores, far from both.
    ordered = sorted(set(scores))
    low, high = max(zip(ordered, ordered[1:], strict=False), key=lambda pair: pair[1] - pair[0])
    gate = (low + high) / 2
    config = ServerConfig(read_text=True, text_rotations=(0,), text_gate=gate)
    app = make_app(config, tiny_embedder, readonly_index)
    try:
        svc = app.extensions["phonesim"].service
        read = []
        real = svc.text.reader.read
        monkeypatch.setattr(
            svc.text.reader,
            "read",
            lambda image, enough=None, **kw: read.append(1) or real(image, enough, **kw),
        )
        answered = app.test_client().post("/v1/search/batch", json=queries).get_json()
    finally:
        app.extensions["phonesim"].close()
    flags = [r["prediction"]["text_read"] for r in answered["results"]]
    assert flags == [score < gate for score in scores]
    assert 0 < sum(flags) == len(read) < len(uploads)


def test_the_reading_is_timed_apart_from_the_prediction(reading, monkeypatch) -> None:
    svc = reading.application.extensions["phonesim"].service

    def slow(image, **_):
        time.sleep(0.3)
        return []

    monkeypatch.setattr(svc.text.reader, "read", slow)
    timing = reading.post("/v1/search", data=upload(banner(WORD))).get_json()["timing_ms"]
    assert timing["read_text"] >= 300
    assert timing["predict"] < 300
    assert timing["total"] >= timing["read_text"] + timing["predict"]


def test_an_added_item_is_read_and_a_batch_add_is_not(
    tiny_embedder, index_dir, outsider, tmp_path, monkeypatch
) -> None:
    """POST /v1/items predicts the new item's class, so it reads its text; a batch add
    predicts nothing, so it reads nothing and keeps no decoded photo."""
    from index import CatalogIndex
    from server import bulk

    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    ix = CatalogIndex.open(copy)
    cues = tmp_path / "cues.json"
    cues.write_text(json.dumps({outsider: [WORD]}))
    config = ServerConfig(
        api_key=API_KEY, read_text=True, text_cues=str(cues), text_rotations=(0,), text_gate=1.0
    )
    app = make_app(config, tiny_embedder, ix)
    try:
        client = app.test_client()
        key = {"X-API-Key": API_KEY}
        added = client.post("/v1/items", data={**upload(banner(WORD)), "id": "new-1"}, headers=key)
        assert added.status_code == 201, added.get_json()
        prediction = added.get_json()["prediction"]
        assert prediction["text_read"] is True and prediction["text_cues"] == [outsider]
        svc = app.extensions["phonesim"].service
        kept = []
        real = bulk.embed_many

        def watched(*args, **kwargs):
            out = real(*args, **kwargs)
            kept.extend(e.image for e in out if hasattr(e, "image"))
            return out

        monkeypatch.setattr(bulk, "embed_many", watched)
        monkeypatch.setattr(svc.text.reader, "read", lambda image, **_: pytest.fail("read on add"))
        rows = [{"id": f"batch-{i}", "image": b64(banner(WORD))} for i in range(2)]
        batch = client.post("/v1/items/batch", json={"items": rows}, headers=key)
        assert [r["status"] for r in batch.get_json()["results"]] == [201, 201]
        assert kept == [None, None]
    finally:
        app.extensions["phonesim"].close()
        ix.close()


def test_a_request_can_skip_the_reading(
    reading, outsider, tiny_embedder, readonly_index, monkeypatch
) -> None:
    """``read_text=never`` on a server that reads every photo (gate 1): nothing is read, no
    photo is kept for it, and the prediction is the one without text."""
    svc = reading.application.extensions["phonesim"].service
    plain = make_app(ServerConfig(), tiny_embedder, readonly_index)
    try:
        expected = plain.test_client().post("/v1/search", data=upload(banner(WORD))).get_json()
    finally:
        plain.extensions["phonesim"].close()
    calls, kept = [], []
    real_read, real_unsure = svc.text.reader.read, svc.read_where_unsure
    monkeypatch.setattr(
        svc.text.reader, "read", lambda image, **_: calls.append(1) or real_read(image)
    )

    def watched(embedded, probabilities):
        kept.extend(photo.image for photo in embedded)
        return real_unsure(embedded, probabilities)

    monkeypatch.setattr(svc, "read_where_unsure", watched)
    searched = reading.post("/v1/search?read_text=never", data=upload(banner(WORD)))
    embedded = reading.post("/v1/embed", data={**upload(banner(WORD)), "read_text": "never"})
    assert calls == [] and kept == [None, None]
    for response in (searched, embedded):
        prediction = response.get_json()["prediction"]
        assert prediction["text_read"] is False and prediction["text_cues"] == []
        assert prediction["label"] == expected["prediction"]["label"] != outsider
    assert searched.get_json()["timing_ms"]["read_text"] == 0
    # The same server still reads when the request leaves it the choice.
    assert reading.post("/v1/search", data=upload(banner(WORD))).get_json()["prediction"][
        "text_read"
    ]
    assert len(calls) == 1


def test_a_request_can_have_a_sure_photo_read(
    tiny_embedder, readonly_index, outsider, tmp_path
) -> None:
    """``read_text=always`` reads a photo the gate would leave unread; the batch's own mode is
    every entry's default, and an entry's replaces it."""
    cues = tmp_path / "cues.json"
    cues.write_text(json.dumps({outsider: [WORD]}))
    config = ServerConfig(read_text=True, text_cues=str(cues), text_rotations=(0,), text_gate=0.01)
    app = make_app(config, tiny_embedder, readonly_index)
    try:
        client = app.test_client()
        spec = client.get("/openapi.json").get_json()
        entry_schema = spec["components"]["schemas"]["SearchQuery"]["properties"]
        assert entry_schema["read_text"]["enum"] == ["auto", "always", "never"]
        auto = client.post("/v1/search", data=upload(banner(WORD))).get_json()["prediction"]
        assert auto["text_read"] is False and auto["label"] != outsider  # below the gate: sure
        always = client.post("/v1/search?read_text=always", data=upload(banner(WORD)))
        prediction = always.get_json()["prediction"]
        assert prediction["text_read"] is True and prediction["label"] == outsider
        image = b64(banner(WORD))
        queries = [{"image": image}, {"image": image, "read_text": "never"}]
        queries.append({"image": image, "read_text": "auto"})
        batch = client.post("/v1/search/batch", json={"queries": queries, "read_text": "always"})
        read = [r["prediction"]["text_read"] for r in batch.get_json()["results"]]
        assert read == [True, False, False]
        labels = [r["prediction"]["label"] for r in batch.get_json()["results"]]
        assert labels[0] == outsider and outsider not in labels[1:]
    finally:
        app.extensions["phonesim"].close()


def test_a_reading_batch_holds_its_photos_no_larger_than_the_reader_takes(
    reading, monkeypatch
) -> None:
    from embedder.text_reader import MAX_SIDE
    from tests.server.helpers import large_png, watch_batch_held_images

    svc = reading.application.extensions["phonesim"].service
    held = watch_batch_held_images(svc, (3000, 2000), monkeypatch)
    small = watch_batch_held_images(svc, (MAX_SIDE, round(2000 * MAX_SIDE / 3000)), monkeypatch)
    queries = [{"image": b64(large_png())} for _ in range(2)]
    answered = reading.post("/v1/search/batch", json={"queries": queries})
    assert answered.status_code == 200, answered.get_json()
    assert held == [0] and small == [2]  # the reader's copies, not the photos


def test_a_request_reads_text_for_a_bounded_time(reading, monkeypatch) -> None:
    """The reader reads one photo at a time for the whole worker: a batch of six text walls
    with read_text=always held it 22 s while other clients' uploads waited."""
    from server import service

    monkeypatch.setattr(service, "REQUEST_READ_BUDGET_S", 1e-9)  # spent by the first photo
    queries = [{"image": b64(banner(WORD)), "read_text": "always"} for _ in range(3)]
    results = reading.post("/v1/search/batch", json={"queries": queries}).get_json()["results"]
    assert [r["prediction"]["text_read"] for r in results] == [True, False, False]
    assert [r["prediction"].get("text_unread") for r in results] == [None, "budget", "budget"]


def test_a_request_waits_for_a_busy_reader_no_longer_than_its_budget(reading, monkeypatch) -> None:
    """The budget had been checked only before each photo: six uploads with read_text=always
    from other clients kept an ordinary request's first photo waiting 26 s for the reader."""
    from server import service

    monkeypatch.setattr(service, "REQUEST_READ_BUDGET_S", 0.5)
    reader = reading.application.extensions["phonesim"].service.text.reader
    queries = [{"image": b64(banner(WORD))} for _ in range(2)]
    answered: list = []
    request = threading.Thread(
        target=lambda: answered.append(reading.post("/v1/search/batch", json={"queries": queries}))
    )
    assert reader._lock.acquire(timeout=5)  # another request's photo is being read
    try:
        t0 = time.perf_counter()
        request.start()
        request.join(timeout=10)  # without the bound it waits as long as the lock is held
        took = time.perf_counter() - t0
    finally:
        reader._lock.release()
        request.join()
    predictions = [r["prediction"] for r in answered[0].get_json()["results"]]
    assert [p["text_unread"] for p in predictions] == ["budget", "budget"]
    assert [p["text_read"] for p in predictions] == [False, False]
    assert 0.5 <= took < 5
    # The reader free again, the next request is read.
    searched = reading.post("/v1/search", data=upload(banner(WORD))).get_json()["prediction"]
    assert searched["text_read"] is True


def test_requests_beyond_the_waiting_ones_are_answered_at_once(reading, monkeypatch) -> None:
    """Waiting, a request holds one of the worker's 8 threads: 24 uploads with
    read_text=always tied them all up, and an ordinary request queued 15 s for a thread."""
    from embedder import text_reader

    monkeypatch.setattr(text_reader, "MAX_WAITING", 0)  # as if 2 others waited already
    reader = reading.application.extensions["phonesim"].service.text.reader
    assert reader._lock.acquire(timeout=5)  # another request's photo is being read
    try:
        t0 = time.perf_counter()
        answered = reading.post("/v1/search", data=upload(banner(WORD)))
        took = time.perf_counter() - t0
    finally:
        reader._lock.release()
    prediction = answered.get_json()["prediction"]
    assert prediction["text_read"] is False and prediction["text_unread"] == "busy"
    assert took < 5  # not the 10 s budget
    assert reading.post("/v1/search", data=upload(banner(WORD))).get_json()["prediction"][
        "text_read"
    ]  # free again: read


def test_a_photo_not_read_says_why(reading, monkeypatch) -> None:
    """text_read false meant any of four things, which a client could not tell apart."""
    from dataclasses import replace

    from server.inputs import TEXT_UNREAD

    never = reading.post("/v1/search?read_text=never", data=upload(banner(WORD))).get_json()
    assert never["prediction"]["text_unread"] == "never"
    read = reading.post("/v1/search", data=upload(banner(WORD))).get_json()["prediction"]
    assert read["text_read"] is True and "text_unread" not in read
    svc = reading.application.extensions["phonesim"].service
    monkeypatch.setattr(svc, "text", replace(svc.text, gate=1e-9))  # every prediction is sure
    sure = reading.post("/v1/search", data=upload(banner(WORD))).get_json()["prediction"]
    assert sure["text_read"] is False and sure["text_unread"] == "sure"
    spec = reading.get("/openapi.json").get_json()
    found = json.dumps(spec)
    assert "text_unread" in found and all(f'"{why}"' in found for why in TEXT_UNREAD)
