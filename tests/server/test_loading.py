"""``open_for_serving``: an embedder and the index built from it, checked before loading."""

from __future__ import annotations

import json
import shutil

import pytest

from embedder.errors import CheckpointError
from index.errors import IndexMismatchError, IndexNotFoundError
from server import loading


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
        # Several writers share one store: a second writable server is one more replica.
        loading.check_for_serving(tiny_checkpoint, copy, writable=True)
        loading.check_for_serving(tiny_checkpoint, copy)


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
