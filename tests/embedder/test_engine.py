"""The inference engine: every runtime against torch eager on the tiny 64 px model, the ONNX
graph's life cycle in the checkpoint folder, devices, and ``phonesim optimize``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from embedder.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from embedder.data import load_catalog
from embedder.engine import OnnxEngine, TorchEngine, resolve_device
from embedder.errors import EngineError
from embedder.inference import Embedder
from embedder.onnx_export import (
    EMBEDDING,
    FEATURE_MAP,
    GRAPH_FILES,
    OPSET,
    PROBABILITIES,
    ensure_fp32_graph,
    graph_problem,
    read_graph_record,
)
from embedder.runtime import load_engine
from phonesim.cli import main

CUDA_REASON = "needs a CUDA GPU (torch.cuda.is_available() is False)"
DEVICES = ["cpu", "cuda"]


def _available(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_available()
    return device == "cpu" or torch.backends.mps.is_available()


@pytest.fixture(scope="module")
def optimized(tiny_checkpoint, tiny_catalog, tmp_path_factory):
    """A copy of the tiny checkpoint after ``phonesim optimize --quantize int8 --val``."""
    ckpt = tmp_path_factory.mktemp("optimized") / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["optimize", "--checkpoint", str(ckpt), "--quantize", "int8"]
            + ["--calibration", str(tiny_catalog), "--val", str(tiny_catalog), "--json"]
        )
    assert code == 0
    return ckpt, json.loads(out.getvalue())


@pytest.fixture
def ckpt_copy(optimized, tmp_path):
    """A private copy of the optimised checkpoint that a test may damage."""
    return shutil.copytree(optimized[0], tmp_path / "ckpt")


@pytest.fixture(scope="module")
def images(tiny_catalog):
    """The catalog's photos: a real batch, not noise."""
    from PIL import Image

    return [Image.open(s.path) for s in load_catalog(tiny_catalog).samples]


def _torch_reference(ckpt, images):
    return Embedder.from_checkpoint(ckpt, runtime="torch", device="cpu").embed_images(images)


@pytest.mark.parametrize(
    ("runtime", "min_cosine"), [("auto", 0.9999), ("onnx", 0.9999), ("onnx-int8", 0.95)]
)
def test_every_runtime_gives_torch_eager_top1_and_embeddings(
    optimized, images, runtime, min_cosine
):
    ckpt, _ = optimized
    ref = _torch_reference(ckpt, images)
    embedder = Embedder.from_checkpoint(ckpt, runtime=runtime, device="cpu", threads=1)
    got = embedder.embed_images(images)
    assert embedder.runtime == ("onnx" if runtime == "auto" else runtime)
    assert got.embeddings.dtype == np.float32 and got.embeddings.shape == ref.embeddings.shape
    assert (got.embeddings * ref.embeddings).sum(1).min() >= min_cosine
    np.testing.assert_allclose(got.probabilities.sum(1), 1.0, atol=1e-5)
    # The tiny model's classes are nearly tied (one epoch); int8 may only swap near-ties.
    top2 = np.sort(ref.probabilities, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > (0.002 if runtime == "onnx-int8" else 0.0)
    assert clear.sum() >= len(images) // 2
    np.testing.assert_array_equal(
        got.probabilities.argmax(1)[clear], ref.probabilities.argmax(1)[clear]
    )
    if runtime != "onnx-int8":
        np.testing.assert_allclose(got.embeddings, ref.embeddings, atol=1e-4)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_named_feature_maps_are_those_of_forward_intermediates(optimized, runtime):
    ckpt, _ = optimized
    model, config = load_checkpoint(ckpt)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, *config.data_config["input_size"], generator=gen)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[len(model.feature_info) - 2])
        assert torch.allclose(final, model.forward_features(x))
    engine = load_engine(ckpt, runtime=runtime, device="cpu")
    local = engine.stage_output(-2)
    out = engine.run(x, [FEATURE_MAP, local])
    assert list(out) == [FEATURE_MAP, local]
    np.testing.assert_allclose(out[FEATURE_MAP], final.numpy(), atol=1e-4)
    np.testing.assert_allclose(out[local], maps[0].numpy(), atol=1e-4)


def test_onnx_engine_takes_any_batch_and_refuses_other_sizes(optimized):
    ckpt, _ = optimized
    engine = load_engine(ckpt, runtime="onnx", device="cpu")
    for n in (0, 1, 5):
        out = engine.run(np.zeros((n, 3, 64, 64), np.float32))
        assert out[EMBEDDING].shape[0] == out[PROBABILITIES].shape[0] == n
    with pytest.raises(EngineError, match="takes N x 3 x 64 x 64 input"):
        engine.run(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(EngineError, match="unknown output"):
        engine.run(np.zeros((1, 3, 64, 64), np.float32), ["logits"])


def test_config_records_each_graph_with_hashes_opset_and_exporter(optimized):
    ckpt, summary = optimized
    data = json.loads((ckpt / CONFIG_FILE).read_text())
    assert set(data["onnx"]) == {"fp32", "int8"}
    for kind in ("fp32", "int8"):
        record = read_graph_record(ckpt, kind)
        assert record.file == GRAPH_FILES[kind] and record.opset == OPSET
        assert "torch.onnx dynamo" in record.exporter and len(record.sha256) == 64
        assert graph_problem(ckpt, kind) is None
    assert read_graph_record(ckpt, "int8").quantization["format"] == "QDQ"
    assert summary["check"]["problem"] is None and summary["check"]["min_cosine"] >= 0.9999
    val = summary["val"]
    assert val["images"] == 18 and 0.9 <= val["mean_cosine_to_fp32"] <= 1.0
    assert {"accuracy", "macro_f1", "recall_at_1", "img_per_s"} <= set(val["int8"])
    assert val["speed_ratio"] > 0


def test_optimize_prints_the_check_and_the_int8_table(optimized):
    from embedder.optimize_cli import format_summary

    text = format_summary(optimized[1])
    assert "model.onnx: opset 18" in text and "runtime auto uses it" in text
    assert "onnx int8" in text and "speed ratio" in text


def test_optimize_flags_that_need_quantize_are_refused(optimized, capsys):
    assert main(["optimize", "--checkpoint", str(optimized[0]), "--val", "x"]) == 2
    assert "--val goes with --quantize int8" in capsys.readouterr().err
    # These had been ignored without a word (only the fp32 graph was made).
    argv = ["--float-layers", "none", "--calibration-method", "entropy"]
    assert main(["optimize", "--checkpoint", str(optimized[0]), *argv]) == 2
    err = capsys.readouterr().err
    assert "--calibration-method, --float-layers go with --quantize int8" in err
    assert main(["optimize", "--checkpoint", str(optimized[0]), "--quantize", "int8"]) == 2


@pytest.mark.parametrize("val", ["missing", "unreadable"])
def test_optimize_checks_val_before_quantising(
    tiny_checkpoint, tiny_catalog, tmp_path, capsys, val
):
    """A --val of unreadable images failed after the int8 graph had been replaced."""
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    label = json.loads((ckpt / "config.json").read_text())["label_names"][0]
    (tmp_path / "unreadable" / label).mkdir(parents=True)
    (tmp_path / "unreadable" / label / "b.jpg").write_bytes(b"not a jpeg")
    argv = ["optimize", "--checkpoint", str(ckpt), "--quantize", "int8"]
    argv += ["--calibration", str(tiny_catalog), "--val", str(tmp_path / val)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert val in err and (val == "missing" or "none of the images could be read" in err)
    assert not (ckpt / GRAPH_FILES["int8"]).exists()  # no int8 graph from a failed run


OPENS_A_GRAPH = """
import os, sys
from embedder.engine import OnnxEngine
OnnxEngine(sys.argv[1])
print(os.environ.get("ORT_DISABLE_TELEMETRY"))
"""


@pytest.mark.parametrize("preset", [None, "0"])
def test_onnx_runtime_telemetry_is_off_unless_the_operator_turns_it_on(optimized, tmp_path, preset):
    """ONNX Runtime 1.29+ sends usage events to Microsoft from Linux and writes a device id in
    ~/.cache, warning "Failed to persist telemetry device ID" where HOME is not writable."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("XDG_CACHE_HOME", None)
    env.pop("ORT_DISABLE_TELEMETRY", None)
    if preset is not None:
        env["ORT_DISABLE_TELEMETRY"] = preset
    graph = str(optimized[0] / "model.onnx")
    done = subprocess.run(
        [sys.executable, "-c", OPENS_A_GRAPH, graph],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [preset or "1"]  # the operator's own setting is kept
    if preset is None:
        assert not any(home.rglob("*")), sorted(home.rglob("*"))
        assert "telemetry" not in done.stderr


def test_graph_is_exported_again_after_the_weights_change(ckpt_copy, images, caplog):
    model, _ = load_checkpoint(ckpt_copy)
    state = {k: (v * 1.5 if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt_copy / WEIGHTS_FILE))
    assert graph_problem(ckpt_copy, "fp32") == "model.onnx was made from other weights"
    with caplog.at_level(logging.WARNING):
        got = Embedder.from_checkpoint(ckpt_copy, runtime="onnx").embed_images(images)
    assert "made from other weights; exporting it again" in caplog.text
    assert graph_problem(ckpt_copy, "fp32") is None
    np.testing.assert_allclose(
        got.embeddings, _torch_reference(ckpt_copy, images).embeddings, atol=1e-4
    )
    with pytest.raises(EngineError, match="made from other weights; make it with: phonesim"):
        Embedder.from_checkpoint(ckpt_copy, runtime="onnx-int8")


def test_saving_a_checkpoint_drops_its_graphs(ckpt_copy):
    model, config = load_checkpoint(ckpt_copy)
    save_checkpoint(model, config, ckpt_copy)
    assert sorted(p.name for p in ckpt_copy.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert "onnx" not in json.loads((ckpt_copy / CONFIG_FILE).read_text())


@pytest.mark.parametrize("damage", ["corrupt", "foreign", "unloadable", "unrecorded"])
def test_damaged_fp32_graph_is_rebuilt_never_used(ckpt_copy, tiny_catalog, tmp_path, damage):
    graph = ckpt_copy / GRAPH_FILES["fp32"]
    config_path = ckpt_copy / CONFIG_FILE
    data = json.loads(config_path.read_text())
    if damage == "corrupt":
        graph.write_bytes(graph.read_bytes()[:1000])
    elif damage == "foreign":  # a graph and its record from a checkpoint with other weights
        other = tmp_path / "other"
        model, config = load_checkpoint(ckpt_copy)
        torch.nn.init.normal_(model.get_classifier().weight)
        save_checkpoint(model, config, other)
        ensure_fp32_graph(other)
        shutil.copy(other / graph.name, graph)
        data["onnx"]["fp32"] = json.loads((other / CONFIG_FILE).read_text())["onnx"]["fp32"]
    elif damage == "unloadable":  # its record fits, ONNX Runtime cannot read it
        import hashlib

        graph.write_bytes(b"not an onnx graph")
        data["onnx"]["fp32"]["sha256"] = hashlib.sha256(b"not an onnx graph").hexdigest()
    else:
        del data["onnx"]["fp32"]
    config_path.write_text(json.dumps(data))
    engine = load_engine(ckpt_copy, runtime="onnx", device="cpu")
    assert graph_problem(ckpt_copy, "fp32") is None and isinstance(engine, OnnxEngine)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    ref = load_engine(ckpt_copy, runtime="torch", device="cpu").run(x)
    np.testing.assert_allclose(engine.run(x)[EMBEDDING], ref[EMBEDDING], atol=1e-4)


def test_damaged_or_missing_int8_graph_is_refused_in_one_line(ckpt_copy, tiny_checkpoint):
    graph = ckpt_copy / GRAPH_FILES["int8"]
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(EngineError, match="corrupt or replaced") as err:
        load_engine(ckpt_copy, runtime="onnx-int8")
    assert "\n" not in str(err.value)
    graph.unlink()
    with pytest.raises(EngineError, match="model.int8.onnx is missing; make it with"):
        load_engine(ckpt_copy, runtime="onnx-int8")


def test_auto_falls_back_to_torch_with_a_one_line_warning(ckpt_copy, monkeypatch, caplog):
    from embedder import runtime

    monkeypatch.setattr(runtime, "CHECK_MIN_COSINE", 1.5)  # no graph can pass
    with caplog.at_level(logging.WARNING):
        engine = load_engine(ckpt_copy, runtime="auto", device="cpu")
    assert isinstance(engine, TorchEngine)
    (line,) = [r.getMessage() for r in caplog.records if "falls back to torch" in r.getMessage()]
    assert "embeddings differ from torch" in line and "\n" not in line


def test_workers_starting_together_export_the_graph_once(optimized, tmp_path):
    model, config = load_checkpoint(optimized[0])
    ckpt = save_checkpoint(model, config, tmp_path / "fresh")
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_engine(ckpt, runtime="onnx", device="cpu", threads=1)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and graph_problem(ckpt, "fp32") is None
    assert [p.name for p in ckpt.iterdir() if p.name.startswith(".")] == []


def test_unknown_runtime_or_device_is_a_one_line_error(optimized):
    ckpt, _ = optimized
    with pytest.raises(EngineError, match="unknown runtime 'tensorrt'"):
        Embedder.from_checkpoint(ckpt, runtime="tensorrt")
    with pytest.raises(EngineError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(EngineError, match="unsupported device 'meta'"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="torch sees no CUDA GPU"):
            Embedder.from_checkpoint(ckpt, runtime="torch", device="cuda")


@pytest.mark.parametrize("load_on", DEVICES)
@pytest.mark.parametrize("train_on", DEVICES)
def test_checkpoint_from_one_device_loads_on_another(
    tiny_checkpoint, images, tmp_path, train_on, load_on
):
    for device in (train_on, load_on):
        if not _available(device):
            pytest.skip(CUDA_REASON if device == "cuda" else f"{device} is not available here")
    model, config = load_checkpoint(tiny_checkpoint)
    ckpt = save_checkpoint(model.to(train_on), config, tmp_path / "ckpt")
    ref = _torch_reference(tiny_checkpoint, images)
    got = Embedder.from_checkpoint(ckpt, runtime="torch", device=load_on).embed_images(images)
    np.testing.assert_array_equal(got.probabilities.argmax(1), ref.probabilities.argmax(1))
    assert (got.embeddings * ref.embeddings).sum(1).min() >= 0.99  # autocast on a GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
def test_cuda_runtimes_follow_cpu_torch(optimized, images):
    ckpt, _ = optimized
    ref = _torch_reference(ckpt, images)
    for runtime in ("torch", "auto"):
        embedder = Embedder.from_checkpoint(ckpt, runtime=runtime, device="cuda")
        assert embedder.engine.device.startswith("cuda")
        got = embedder.embed_images(images)
        np.testing.assert_array_equal(got.probabilities.argmax(1), ref.probabilities.argmax(1))
        assert (got.embeddings * ref.embeddings).sum(1).min() >= 0.99
