"""The server on every inference runtime: the same predictions, neighbours and embeddings as
torch eager, the engine named in /v1/info, and a warning when int8 queries meet fp32 vectors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from server.app import create_app
from server.config import ServerConfig
from tests.server.helpers import upload

RUNTIMES = ["torch", "auto", "onnx", "onnx-int8"]


def _answers(checkpoint, index_dir, rows, runtime: str) -> dict:
    """Search and embed every catalog photo through the app on ``runtime``."""
    config = ServerConfig(
        checkpoint=str(checkpoint), index=str(index_dir), runtime=runtime, model_threads=1
    )
    app = create_app(config)
    client = app.test_client()
    out: dict = {"info": client.get("/v1/info").get_json()["model"], "photos": {}}
    try:
        for item_id, row in rows.items():
            data = Path(row["image"]).read_bytes()
            found = client.post("/v1/search?k=3", data=upload(data)).get_json()
            embedded = client.post("/v1/embed", data=upload(data)).get_json()
            out["photos"][item_id] = {
                "label": found["prediction"]["label"],
                "top": found["prediction"]["top"],
                "nearest": found["neighbors"][0]["id"],
                "embedding": np.asarray(embedded["embedding"], np.float32),
            }
    finally:
        app.extensions["phonesim"].close()
    return out


@pytest.fixture(scope="module")
def torch_answers(int8_checkpoint, index_dir, catalog_rows):
    return _answers(int8_checkpoint, index_dir, catalog_rows, "torch")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_search_on_every_runtime_answers_as_torch_eager(
    runtime, int8_checkpoint, index_dir, catalog_rows, torch_answers, caplog
):
    with caplog.at_level(logging.WARNING):
        got = _answers(int8_checkpoint, index_dir, catalog_rows, runtime)
    assert got["info"]["runtime"] == ("onnx" if runtime == "auto" else runtime)
    int8 = runtime == "onnx-int8"
    assert ("holds fp32 embeddings" in caplog.text) == int8  # the index is fp32
    min_cosine, margin = (0.95, 0.002) if int8 else (0.9999, 0.0)
    clear = 0
    for item_id, ref in torch_answers["photos"].items():
        mine = got["photos"][item_id]
        assert mine["nearest"] == ref["nearest"] == item_id
        assert float(mine["embedding"] @ ref["embedding"]) >= min_cosine
        first, second = (t["score"] for t in ref["top"][:2])
        if first - second > margin:  # the tiny model's classes are nearly tied (one epoch)
            assert mine["label"] == ref["label"]
            clear += 1
    assert clear >= len(torch_answers["photos"]) // 2


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc, Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == pid:  # field 4, after "(comm)"
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_live_server_on_onnx_answers_without_torch_in_its_worker(
    int8_checkpoint, index_dir, catalog_rows, tmp_path
):
    """``--runtime onnx`` under gunicorn: a search answers, and the worker that ran it has no
    torch library mapped (preprocessing, batching and the engine are numpy and ONNX Runtime)."""
    from tests.server.live import multipart, running_server

    item_id, row = next(iter(catalog_rows.items()))
    body, headers = multipart({"image": ("phone.jpg", Path(row["image"]).read_bytes())})
    with running_server(
        int8_checkpoint, index_dir, tmp_path, "--runtime", "onnx", "--workers", "1",
        "--threads", "2", "--model-threads", "1",
    ) as live:  # fmt: skip
        status, found = live.json("POST", "/v1/search?k=3", body=body, headers=headers)
        assert status == 200, found
        assert found["neighbors"][0]["id"] == item_id
        status, info = live.json("GET", "/v1/info")
        assert status == 200 and info["model"]["runtime"] == "onnx"
        workers = _children(live.proc.pid)
        assert len(workers) == 1, workers
        maps = Path(f"/proc/{workers[0]}/maps").read_text()
    assert "onnxruntime" in maps  # the worker does run the model (the check is not vacuous)
    assert "libtorch" not in maps
