"""The int8 graph's options: layers kept float, calibration methods, and their flags."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from embedder.errors import DataError
from embedder.graphs import GRAPH_FILES, INPUT, read_graph_record
from embedder.optimize_cli import float_layers
from embedder.quantize import float_layer_nodes, quantize_int8, upstream_nodes


def _stem_weight_is_quantised(ckpt) -> bool:
    graph = onnx.load(str(ckpt / GRAPH_FILES["int8"])).graph
    producers = {o: n for n in graph.node for o in n.output}
    (stem,) = [n for n in graph.node if n.op_type == "Conv" and _reaches_input(n, producers)]
    weight = producers.get(stem.input[1])
    return weight is not None and weight.op_type == "DequantizeLinear"


def _reaches_input(node, producers) -> bool:
    """The first convolution: fed by the input, through a QDQ pair at most."""
    source = node.input[0]
    for _ in range(3):
        if source == INPUT:
            return True
        parent = producers.get(source)
        if parent is None or parent.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            return False
        source = parent.input[0]
    return source == INPUT


def _conv_weights_quantised(ckpt) -> dict[str, bool]:
    """For each convolution of the int8 graph: is its weight fed through DequantizeLinear."""
    graph = onnx.load(str(ckpt / GRAPH_FILES["int8"])).graph
    producers = {o: n for n in graph.node for o in n.output}
    return {
        n.name: getattr(producers.get(n.input[1]), "op_type", None) == "DequantizeLinear"
        for n in graph.node
        if n.op_type == "Conv"
    }


@pytest.mark.parametrize("keep", [(), ("stem",), ("stage0",), ("stage2",)])
def test_layers_kept_float_are_left_unquantised(int8_checkpoint, tiny_catalog, tmp_path, keep):
    ckpt = shutil.copytree(int8_checkpoint, tmp_path / "ckpt")
    quantize_int8(ckpt, tiny_catalog, max_images=8, keep_float=keep)
    assert _stem_weight_is_quantised(ckpt) == (keep == ())
    q = read_graph_record(ckpt, "int8").quantization
    assert q["float_layers"] == list(keep) and q["calibration"] == "minmax"
    quantised = _conv_weights_quantised(ckpt)
    floats = len(quantised) - sum(quantised.values())
    assert sum(quantised.values()) > 1  # the body is int8 whatever stays float
    if keep == ():
        assert floats == 0
    elif keep == ("stem",):
        assert floats == 1
    else:  # the stem and every convolution up to the stage's output
        fp32 = onnx.load(str(ckpt / GRAPH_FILES["fp32"])).graph
        before = set(upstream_nodes(fp32, keep[0]))
        convs_before = sum(n.op_type == "Conv" for n in fp32.node if n.name in before)
        assert floats == convs_before > 1


def test_upstream_nodes_follow_inputs_back_to_the_graph_input():
    a = onnx.helper.make_node("Relu", ["input"], ["a"], name="a")
    b = onnx.helper.make_node("Relu", ["a"], ["b"], name="b")
    c = onnx.helper.make_node("Add", ["a", "b"], ["c"], name="c")
    side = onnx.helper.make_node("Relu", ["input"], ["d"], name="side")
    graph = onnx.helper.make_graph([a, b, c, side], "g", [], [])
    assert sorted(upstream_nodes(graph, "c")) == ["a", "b", "c"]
    assert upstream_nodes(graph, "input") == []


def test_stage0_without_stage_outputs_keeps_the_stem(tmp_path, caplog):
    weight = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    stem = onnx.helper.make_node("Conv", [INPUT, "w"], ["s"], name="stem")
    body = onnx.helper.make_node("Conv", ["s", "w2"], ["out"], name="body")
    graph = onnx.helper.make_graph([stem, body], "g", [], [], initializer=[weight])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "g.onnx")
    assert float_layer_nodes(tmp_path / "g.onnx", ["stage0"]) == ["stem"]
    assert "no 'stage0' output" in caplog.text


def test_unknown_method_or_layer_is_a_one_line_error(int8_checkpoint, tiny_catalog):
    with pytest.raises(DataError, match="unknown calibration method 'kl'"):
        quantize_int8(int8_checkpoint, tiny_catalog, method="kl")
    with pytest.raises(DataError, match="unknown float layer"):
        quantize_int8(int8_checkpoint, tiny_catalog, keep_float=["head"])


def test_float_layers_flag():
    assert float_layers("stem,last") == ("stem", "last")
    assert float_layers("stage0,stage2") == ("stage0", "stage2")
    assert float_layers("none") == ()
    for bad in ("", "stem,head", "none,stem"):
        with pytest.raises(argparse.ArgumentTypeError):
            float_layers(bad)


def test_scratch_files_stay_in_the_checkpoint_and_a_killed_runs_are_removed(
    int8_checkpoint, tiny_catalog, tmp_path, monkeypatch
):
    """A quantisation killed outright had left its prepared graph and onnxruntime's
    augmented one in the system's temporary folder for good (about 30 MB for Lite0)."""
    import tempfile

    import onnxruntime.quantization as ort_quantization

    from embedder.checkpoint import check_checkpoint_target

    ckpt = shutil.copytree(int8_checkpoint, tmp_path / "ckpt")
    killed = ckpt / ".model.int8.onnx.quantizing-abcd1234"
    killed.mkdir()
    (killed / "prepared.onnx").write_bytes(b"left by kill -9")
    check_checkpoint_target(ckpt)  # a scratch folder does not stop a training saving here

    seen = []
    real = ort_quantization.quantize_static

    def spy(*args, **kwargs):
        seen.append(tempfile.gettempdir())
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_quantization, "quantize_static", spy)
    system_tmp = tempfile.gettempdir()
    quantize_int8(ckpt, tiny_catalog, max_images=8)
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".")] == []
    assert len(seen) == 1 and seen[0].startswith(str(ckpt / ".model.int8.onnx.quantizing-"))
    assert tempfile.gettempdir() == system_tmp


def test_quantizing_into_a_folder_that_cannot_be_written_fails_first(
    tiny_checkpoint, tiny_catalog, monkeypatch, capsys
):
    """It failed after the model and the calibration images had loaded, naming an internal
    scratch file ("r5/.model.int8.onnx.quantizing-...: Permission denied"). Root writes
    anywhere, so the folder's check is made to say what a read-only folder says."""
    import embedder.checkpoint
    import embedder.optimize_cli as optimize_cli
    from phonesim.cli import main

    monkeypatch.setattr(
        optimize_cli, "folder_write_problem", lambda path: "folder is not writable (Read-only)"
    )

    def never(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the folder was checked")

    monkeypatch.setattr(embedder.checkpoint, "load_checkpoint", never)
    argv = ["optimize", "--checkpoint", str(tiny_checkpoint), "--quantize", "int8"]
    assert main([*argv, "--calibration", str(tiny_catalog)]) == 2
    err = capsys.readouterr().err
    assert "cannot write model.int8.onnx there (folder is not writable (Read-only))" in err
