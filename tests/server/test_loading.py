"""``open_for_serving``: an embedder and the index built from it, checked before loading."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest

from common.errors import UserError
from embedder.errors import CheckpointError
from index.errors import IndexLockedError, IndexMismatchError, IndexNotFoundError
from server import loading


@contextlib.contextmanager
def lock_writer(path):
    """Hold the folder's lock as a build replacing it does."""
    from index.folder import lock_writer as take

    fd = take(path)
    try:
        yield
    finally:
        os.close(fd)


def test_opens_the_embedder_and_its_index_read_only_or_for_writing(
    tiny_checkpoint, index_dir, tmp_path
):
    embedder, index = loading.open_for_serving(tiny_checkpoint, index_dir)
    with index:
        assert index.readonly and index.dim == embedder.dim
        assert index.manifest.checkpoint_hash == embedder.checkpoint_hash
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    _, index = loading.open_for_serving(tiny_checkpoint, copy, writable=True)
    with index:
        assert not index.readonly
        # Any number of processes write one store (its transactions serialise them).
        loading.check_for_serving(tiny_checkpoint, copy, writable=True)
        _, second = loading.open_for_serving(tiny_checkpoint, copy, writable=True)
        with second:
            assert not second.readonly
    with lock_writer(copy), pytest.raises(IndexLockedError, match="build"):
        loading.check_for_serving(tiny_checkpoint, copy)  # a build is replacing the folder


def test_mistakes_are_one_line_errors_before_the_model_loads(
    tiny_checkpoint, index_dir, tmp_path, monkeypatch
):
    def no_loading(path):
        raise AssertionError("the model must not load before the checks pass")

    monkeypatch.setattr(loading.Embedder, "from_checkpoint", no_loading)
    other = tmp_path / "other"
    shutil.copytree(index_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model_name"] = "resnet18"
    (other / "manifest.json").write_text(json.dumps(manifest))
    cases = [
        (tiny_checkpoint, other, IndexMismatchError, "resnet18"),
        (tiny_checkpoint, tmp_path / "absent", IndexNotFoundError, "does not exist"),
        (tmp_path / "no-checkpoint", index_dir, CheckpointError, "not found"),
    ]
    for checkpoint, index, error, words in cases:
        with pytest.raises(error, match=words) as caught:
            loading.open_for_serving(checkpoint, index)
        assert "\n" not in str(caught.value)


def test_a_missing_int8_graph_is_refused_before_workers_start(tiny_checkpoint, index_dir):
    from embedder.errors import EngineError

    with pytest.raises(EngineError, match="model.int8.onnx is missing; make it with") as caught:
        loading.check_for_serving(tiny_checkpoint, index_dir, runtime="onnx-int8")
    assert "\n" not in str(caught.value)


def test_text_reading_mistakes_are_refused_before_workers_start(
    tiny_checkpoint, index_dir, tmp_path, monkeypatch
):
    from embedder.errors import DataError, EngineError

    bad = tmp_path / "cues.json"
    bad.write_text(json.dumps({"no-such-class": ["word"]}))
    loading.check_for_serving(tiny_checkpoint, index_dir, text_cues=str(bad))  # not reading
    with pytest.raises(DataError, match="no-such-class") as caught:
        loading.check_for_serving(tiny_checkpoint, index_dir, read_text=True, text_cues=str(bad))
    assert "\n" not in str(caught.value)
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EngineError, match=r"pip install 'rapidocr.*' \(phonesim's 'ocr' extra\)"):
        loading.check_for_serving(tiny_checkpoint, index_dir, read_text=True)


def test_a_gpu_this_machine_lacks_is_refused_before_the_workers(tiny_checkpoint, index_dir):
    """`serve --device cuda` on a machine without CUDA passed the preflight, and each worker
    died with a 50-line traceback (exit 3)."""
    import torch

    from embedder.errors import EngineError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(EngineError, match="no CUDA GPU"):
        loading.check_for_serving(tiny_checkpoint, index_dir, device="cuda")
    loading.check_for_serving(tiny_checkpoint, index_dir, device="cpu")


def test_the_onnx_runtime_checks_the_device_with_onnx_runtime(
    tiny_checkpoint, index_dir, monkeypatch
):
    """CPU-only torch beside onnxruntime-gpu serves `--runtime onnx --device cuda`: asking
    torch refused it."""
    import onnxruntime as ort

    from embedder.errors import EngineError

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(EngineError, match="onnxruntime has no provider for device 'cuda'"):
        loading.check_for_serving(tiny_checkpoint, index_dir, runtime="onnx", device="cuda")
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu)
    loading.check_for_serving(tiny_checkpoint, index_dir, runtime="onnx", device="cuda")


def test_a_damaged_faiss_file_is_refused_before_the_workers(tiny_checkpoint, index_dir, tmp_path):
    from index.errors import IndexCorruptError

    copy = shutil.copytree(index_dir, tmp_path / "index")
    (path,) = copy.glob("*.faiss")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IndexCorruptError, match="100 bytes, but .* were written"):
        loading.check_for_serving(tiny_checkpoint, copy)


def test_a_faiss_file_compacted_away_meanwhile_is_looked_up_again(
    tiny_checkpoint, index_dir, tmp_path, monkeypatch
):
    """A replica's compaction deletes the file the store named a moment before: the check
    follows the store to its successor instead of calling a healthy index damaged."""
    copy = shutil.copytree(index_dir, tmp_path / "index")
    from index import folder

    real = folder.describe
    answers = iter([{**real(copy), "faiss_file": "faiss-compacted-away.faiss"}])
    monkeypatch.setattr(folder, "describe", lambda path: next(answers, None) or real(path))
    loading.check_for_serving(tiny_checkpoint, copy)


def _naming_classes(checkpoint, copy, names):  # noqa: ANN001, ANN202
    """A copy of ``checkpoint`` whose config.json names its classes ``names``."""
    from embedder.checkpoint import CONFIG_FILE

    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    config["label_names"] = names
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    return copy


def test_class_names_edited_since_the_index_was_built_are_warned_about(
    tiny_checkpoint, index_dir, tmp_path, caplog
):
    """The same weights with their class names reversed in config.json predicted the other
    names without a word (the hash covers the weights only)."""
    from embedder.checkpoint import read_config

    names = read_config(tiny_checkpoint).label_names
    index = tmp_path / "index"
    shutil.copytree(index_dir, index)
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["source"]["label_names"] = names
    (index / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        loading.open_for_serving(tiny_checkpoint, index)[1].close()
    assert "named its classes otherwise" not in caplog.text
    edited = _naming_classes(tiny_checkpoint, tmp_path / "ckpt", names[::-1])
    with caplog.at_level("WARNING"):
        loading.open_for_serving(edited, index)[1].close()
    assert "named its classes otherwise" in caplog.text
    assert f"{names[0]!r} -> {names[-1]!r}" in caplog.text
    assert "does not know" not in caplog.text  # the same classes, in another order


def test_catalog_labels_the_checkpoint_does_not_know_are_warned_about_and_listed(
    tiny_checkpoint, index_dir, tiny_embedder, tmp_path, caplog
):
    """A class renamed since training: served without a word, its items' photos voted for no
    class and the farther photos of other classes decided the prediction."""
    from embedder.checkpoint import read_config
    from server.config import ServerConfig
    from tests.server.helpers import make_app

    names = read_config(tiny_checkpoint).label_names
    with caplog.at_level("WARNING"):
        loading.open_for_serving(tiny_checkpoint, index_dir)[1].close()
    assert "does not know" not in caplog.text
    renamed = _naming_classes(tiny_checkpoint, tmp_path / "ckpt", ["kestrel", *names[1:]])
    with caplog.at_level("WARNING"):
        embedder, index = loading.open_for_serving(renamed, index_dir)
    try:
        assert f"1 class(es) the checkpoint does not know ({names[0]!r})" in caplog.text
        app = make_app(ServerConfig(), embedder, index)
        info = app.test_client().get("/v1/info").get_json()
        assert info["index"]["labels_unknown_to_model"] == [names[0]]
        app.extensions["phonesim"].close()
    finally:
        index.close()


def test_writes_enabled_on_a_store_this_user_may_not_write_is_refused_at_start(
    tiny_checkpoint, index_dir, monkeypatch
):
    """The server said "writes enabled" and ready, then answered every write 503 "cannot be
    reached ... try again" (SQLite: attempt to write a readonly database), for good."""
    import os

    real = os.access

    def store_read_only(path, mode, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).endswith("catalog.sqlite") and mode == os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(loading.os, "access", store_read_only)
    loading.check_for_serving(tiny_checkpoint, index_dir)  # read-only serving needs no write
    with pytest.raises(UserError, match="writes are enabled.*may not write it.*mode"):
        loading.check_for_serving(tiny_checkpoint, index_dir, writable=True)


def test_an_index_on_read_only_media_is_served_read_only(
    tiny_checkpoint, index_dir, tiny_catalog, read_only_mount
):
    """A catalog shipped on read-only media (a squashfs image) had refused to open at all; a
    read-only bind mount of a writable volume is refused still: others may change it."""
    from index.errors import ReadOnlyFolderError
    from server.config import ServerConfig
    from tests.server.helpers import API_KEY, assert_error, make_app, upload

    with pytest.raises(ReadOnlyFolderError, match="read-only mount of a file system that"):
        loading.check_for_serving(tiny_checkpoint, read_only_mount(index_dir, media=False))
    ro = read_only_mount(index_dir)
    with pytest.raises(UserError, match="read-only media; serve it without an API key"):
        loading.check_for_serving(tiny_checkpoint, ro, writable=True)
    loading.check_for_serving(tiny_checkpoint, ro)
    embedder, index = loading.open_for_serving(tiny_checkpoint, ro)
    app = make_app(ServerConfig(api_key=API_KEY), embedder, index)
    try:
        client = app.test_client()
        photo = next(tiny_catalog.rglob("*.jpg")).read_bytes()
        found = client.post("/v1/search", data=upload(photo))
        assert found.status_code == 200, found.get_json()
        assert len(found.get_json()["neighbors"]) > 0
        assert client.get("/readyz").status_code == 200
        info = client.get("/v1/info").get_json()
        assert info["writes_enabled"] is False and info["index"]["read_only_media"] is True
        added = client.post(
            "/v1/items", data={**upload(photo), "id": "new"}, headers={"X-API-Key": API_KEY}
        )
        assert_error(added, 403, "writes_disabled")
    finally:
        app.extensions["phonesim"].close()
        index.close()
