"""The int8 graph's options: layers kept float, calibration methods, and their flags."""

from __future__ import annotations

import argparse
import shutil

import onnx
import pytest

from embedder.errors import DataError
from embedder.graphs import GRAPH_FILES, INPUT, read_graph_record
from embedder.optimize_cli import float_layers
from embedder.quantize import quantize_int8


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


@pytest.mark.parametrize("keep", [(), ("stem",)])
def test_layers_kept_float_are_left_unquantised(int8_checkpoint, tiny_catalog, tmp_path, keep):
    ckpt = shutil.copytree(int8_checkpoint, tmp_path / "ckpt")
    quantize_int8(ckpt, tiny_catalog, max_images=8, keep_float=keep)
    assert _stem_weight_is_quantised(ckpt) == (keep == ())
    q = read_graph_record(ckpt, "int8").quantization
    assert q["float_layers"] == list(keep) and q["calibration"] == "minmax"


def test_unknown_method_or_layer_is_a_one_line_error(int8_checkpoint, tiny_catalog):
    with pytest.raises(DataError, match="unknown calibration method 'kl'"):
        quantize_int8(int8_checkpoint, tiny_catalog, method="kl")
    with pytest.raises(DataError, match="unknown float layer"):
        quantize_int8(int8_checkpoint, tiny_catalog, keep_float=["head"])


def test_float_layers_flag():
    assert float_layers("stem,last") == ("stem", "last")
    assert float_layers("none") == ()
    for bad in ("", "stem,head", "none,stem"):
        with pytest.raises(argparse.ArgumentTypeError):
            float_layers(bad)
