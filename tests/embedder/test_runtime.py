"""Choosing the runtime: the ONNX runtimes run without torch over a graph that fits, and
runtime auto trusts a recorded check only for the very graph, device kind and ONNX Runtime
version it was made on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from embedder import runtime
from embedder.checkpoint import CONFIG_FILE
from embedder.graphs import recorded_check
from embedder.runtime import load_engine

# Run in a fresh interpreter: this test process has torch loaded already.
EMBED_WITHOUT_TORCH = textwrap.dedent(
    """
    import json, sys
    from embedder.batch import embed_samples
    from embedder.data import load_catalog
    from embedder.inference import Embedder

    ckpt, catalog, rt = sys.argv[1:4]
    embedder = Embedder.from_checkpoint(ckpt, runtime=rt, device="cpu", threads=1)
    samples = load_catalog(catalog).samples
    idx, batch, failures = embed_samples(embedder, samples, 4, workers=1, progress=False)
    heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
    print(json.dumps({"runtime": embedder.runtime, "rows": len(batch), "heavy": heavy}))
    """
)


@pytest.fixture
def ckpt(int8_checkpoint, tmp_path):
    """A private copy of the checkpoint with its fp32 and int8 graphs, and no recorded check
    (tests elsewhere that load the shared checkpoint with ``auto`` record one in it)."""
    path = shutil.copytree(int8_checkpoint, tmp_path / "ckpt")
    data = json.loads((path / CONFIG_FILE).read_text())
    data["onnx"]["fp32"].pop("check", None)
    (path / CONFIG_FILE).write_text(json.dumps(data))
    return path


def _embed_in_fresh_process(ckpt, catalog, rt: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", EMBED_WITHOUT_TORCH, str(ckpt), str(catalog), rt],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("rt", ["onnx", "onnx-int8", "auto"])
def test_onnx_runtimes_embed_without_importing_torch(ckpt, tiny_catalog, rt):
    if rt == "auto":
        load_engine(ckpt, runtime="auto", device="cpu")  # checks once, records the result
    got = _embed_in_fresh_process(ckpt, tiny_catalog, rt)
    assert got == {"runtime": "onnx" if rt == "auto" else rt, "rows": 18, "heavy": []}


def _count_checks(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = runtime.check_against_torch

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "check_against_torch", counted)
    return calls


def _edit_check(ckpt, **changes) -> None:
    data = json.loads((ckpt / CONFIG_FILE).read_text())
    data["onnx"]["fp32"]["check"].update(changes)
    (ckpt / CONFIG_FILE).write_text(json.dumps(data))


def test_auto_checks_once_then_trusts_the_record(ckpt, monkeypatch):
    calls = _count_checks(monkeypatch)
    assert load_engine(ckpt, runtime="auto", device="cpu").runtime == "onnx"
    check = recorded_check(ckpt)
    assert check["min_cosine"] >= 0.9999 and check["device_type"] == "cpu"
    assert load_engine(ckpt, runtime="auto", device="cpu").runtime == "onnx"
    assert len(calls) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"graph_sha256": "0" * 64},  # a check of another file
        {"onnxruntime": "0.0.1"},  # another ONNX Runtime may compute otherwise
        {"device_type": "cuda"},  # made on another kind of device
        {"min_cosine": 0.99},  # recorded as failing today's threshold
    ],
)
def test_auto_checks_again_when_the_record_does_not_vouch(ckpt, monkeypatch, changes):
    load_engine(ckpt, runtime="auto", device="cpu")
    _edit_check(ckpt, **changes)
    calls = _count_checks(monkeypatch)
    assert load_engine(ckpt, runtime="auto", device="cpu").runtime == "onnx"
    assert len(calls) == 1
    assert recorded_check(ckpt)["min_cosine"] >= 0.9999  # the fresh result replaced it


def test_a_rebuilt_graph_drops_the_old_check(ckpt):
    from embedder.graphs import ensure_fp32_graph

    load_engine(ckpt, runtime="auto", device="cpu")
    ensure_fp32_graph(ckpt, rebuild_because="test")
    assert recorded_check(ckpt) is None


def test_threads_set_the_torch_runtimes_threads_too(ckpt):
    """`evaluate`, `duplicates find` and `index query --runtime torch --threads 1` ran torch on
    every core: only the ONNX runtimes read the value."""
    import torch

    from embedder.errors import EngineError

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        load_engine(ckpt, "torch", "cpu", threads=1)
        assert torch.get_num_threads() == 1
        with pytest.raises(EngineError, match="threads must be 1 to"):
            load_engine(ckpt, "onnx", "cpu", threads=100_000)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1.0, 2.5, True])
def test_a_thread_count_that_is_no_whole_number_is_refused_before_any_graph(ckpt, threads):
    """threads=os.cpu_count() / 2 passed the range check; ONNX Runtime refused the float,
    which read as a graph that does not load: a good model.onnx was exported again (12 s),
    and the error blamed the graph."""
    from embedder.errors import EngineError

    graph = ckpt / "model.onnx"
    before = graph.stat().st_mtime_ns
    with pytest.raises(EngineError, match="threads must be a whole number"):
        load_engine(ckpt, "auto", "cpu", threads=threads)
    assert graph.stat().st_mtime_ns == before


def test_a_check_whose_cosine_is_nan_fails():
    """A model whose outputs are NaN passed the check (NaN < 0.9999 is false; the top-1 of
    NaN rows agreed at 0) and was trusted from then on."""
    assert runtime.CheckResult(float("nan"), 8, 8).problem is not None
    assert runtime.CheckResult(0.99999, 8, 8).problem is None


@pytest.mark.parametrize(
    "onnx",
    [
        "garbage",
        {"fp32": {"check": "garbage"}},
        {"fp32": 3},
        {"fp32": {"model": "x"}},  # was an AttributeError on every ONNX runtime, for good
        {"fp32": {"model": ["a"], "quantization": 7}},
    ],
)
def test_a_damaged_graph_record_is_no_record(ckpt, onnx):
    """A hand-edited or damaged "onnx" section crashed with an AttributeError traceback; a
    record that cannot be read is treated as none (the graph is checked, or rebuilt, again)."""
    config = json.loads((ckpt / CONFIG_FILE).read_text())
    if isinstance(onnx, dict) and isinstance(onnx["fp32"], dict):
        onnx = {"fp32": {**config["onnx"]["fp32"], **onnx["fp32"]}}
    (ckpt / CONFIG_FILE).write_text(json.dumps({**config, "onnx": onnx}))
    assert recorded_check(ckpt) is None
    assert load_engine(ckpt, "auto", "cpu", threads=1).runtime in ("onnx", "torch")


def test_a_device_missing_here_is_one_line_naming_the_device(ckpt, caplog):
    """onnx-int8 told a valid int8 graph to be made again with `phonesim optimize`, and auto
    warned that it fell back to torch, loaded the model, then failed on the device."""
    import onnxruntime
    import torch

    cuda_onnx = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if torch.cuda.is_available() or cuda_onnx:
        pytest.skip("this machine has CUDA")
    from embedder.errors import EngineError

    with pytest.raises(EngineError, match="no provider for device 'cuda'") as err:
        load_engine(ckpt, "onnx-int8", device="cuda")
    assert "optimize" not in str(err.value)
    with pytest.raises(EngineError, match="torch sees no CUDA GPU"):
        load_engine(ckpt, "auto", device="cuda")
    assert "falls back" not in caplog.text


def test_a_graph_made_for_another_model_than_config_describes_is_not_used(ckpt):
    """config.json edited to another architecture: torch refused the checkpoint, while the
    ONNX runtimes served the old graph and wrote the new model name into their outputs."""
    from common.errors import UserError
    from embedder.graphs import graph_problem

    data = json.loads((ckpt / CONFIG_FILE).read_text())
    data["architecture"] = "mobilenetv3_small_100"
    (ckpt / CONFIG_FILE).write_text(json.dumps(data))
    for kind in ("fp32", "int8"):
        assert "not the mobilenetv3_small_100" in (graph_problem(ckpt, kind) or "")
    for rt in ("onnx", "onnx-int8"):
        with pytest.raises(UserError):
            load_engine(ckpt, rt, device="cpu")


def _replace_weights(ckpt, scale: float = 1.5) -> None:
    """Other weights, written as a training run into the folder would (a new file)."""
    import os

    from safetensors.torch import load_file, save_file

    from embedder.checkpoint import WEIGHTS_FILE

    state = {
        k: v * scale if v.is_floating_point() else v
        for k, v in load_file(ckpt / WEIGHTS_FILE).items()
    }
    save_file(state, str(ckpt / "new.safetensors"))
    os.replace(ckpt / "new.safetensors", ckpt / WEIGHTS_FILE)


def _retrain_after(monkeypatch, module, name: str, ckpt, scale: float = 1.5) -> None:  # noqa: ANN001
    """``module.name`` replaced by one that writes other weights into ``ckpt`` once done."""
    original = getattr(module, name)

    def then_retrain(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = original(*args, **kwargs)
        _replace_weights(ckpt, scale)
        return result

    monkeypatch.setattr(module, name, then_retrain)


@pytest.mark.parametrize("given_model", [True, False])
def test_a_graph_records_the_weights_it_was_made_from(ckpt, monkeypatch, given_model):
    """The weights' hash was taken after the export: weights replaced during it (a retrain into
    the folder) were recorded for the old graph, and runtime onnx and auto served the old
    model (cosine 0.13 to torch, 0 of 8 top-1 alike)."""
    from embedder import onnx_export
    from embedder.checkpoint import checkpoint_hash, load_checkpoint, loaded_weights_hash
    from embedder.graphs import graph_problem, read_graph_record

    before = checkpoint_hash(ckpt)
    model = None
    if given_model:  # optimize and auto load the model first, then export it
        model, _ = load_checkpoint(ckpt)
        assert loaded_weights_hash(model) == before
        _replace_weights(ckpt)
    else:  # replaced while the exporter runs
        _retrain_after(monkeypatch, onnx_export, "export_graph", ckpt)
    onnx_export.build_fp32_graph(ckpt, model)
    assert read_graph_record(ckpt, "fp32").weights_sha256 == before != checkpoint_hash(ckpt)
    assert graph_problem(ckpt, "fp32") == "model.onnx was made from other weights"
    monkeypatch.undo()
    load_engine(ckpt, "onnx", "cpu", threads=1)  # made again, from the weights there now
    assert read_graph_record(ckpt, "fp32").weights_sha256 == checkpoint_hash(ckpt)
    assert graph_problem(ckpt, "fp32") is None


def test_onnx_in_a_read_only_folder_without_a_fitting_graph_is_refused_before_workers(
    ckpt, monkeypatch
):
    """serve's preflight passed it, then every worker failed to boot with a traceback."""
    from embedder import graphs
    from embedder.errors import EngineError

    monkeypatch.setattr(graphs.os, "access", lambda path, mode: False)  # as on a read-only mount
    runtime.check_runtime(ckpt, "onnx")  # its graph fits: nothing to write
    (ckpt / "model.onnx").unlink()
    said = "model.onnx is missing and the folder is not writable; run 'phonesim optimize "
    with pytest.raises(EngineError, match=said):
        runtime.check_runtime(ckpt, "onnx")
    runtime.check_runtime(ckpt, "torch")  # torch writes nothing
    # The int8 graph is never made here: its advice had named a command that must write.
    monkeypatch.setattr(runtime, "folder_write_problem", lambda folder: "read-only file system")
    (ckpt / "model.int8.onnx").unlink(missing_ok=True)
    with pytest.raises(EngineError, match="make it where the folder is writable \\(not here\\)"):
        runtime.check_runtime(ckpt, "onnx-int8")


def test_a_graph_left_half_written_by_a_killed_export_is_removed_by_the_next_lock_holder(ckpt):
    """kill -9 (or SIGTERM) during 'optimize' left .model.onnx.XXXX.tmp files for good."""
    import os
    import time

    from common.fsutil import temporary_file
    from embedder.graphs import UNFINISHED_GRAPH_AGE_S, checkpoint_lock

    left = [temporary_file(ckpt / "model.onnx"), temporary_file(ckpt / "model.int8.onnx")]
    old = time.time() - UNFINISHED_GRAPH_AGE_S - 60
    for path in left:
        os.utime(path, (old, old))
    # A young one may be written now by a process that locked the folder before it was swapped.
    young = temporary_file(ckpt / "model.onnx")
    other = ckpt / "notes.tmp"  # not a graph's: kept
    other.write_text("x")
    os.utime(other, (old, old))
    with checkpoint_lock(ckpt):
        assert not any(p.exists() for p in left)
    assert young.exists() and other.exists() and (ckpt / "model.onnx").exists()


def test_the_checkpoint_lock_holds_when_the_weights_file_is_replaced(ckpt):
    """It was taken on the weights file: after a retrain wrote a new one, a second process
    locked the new file while the first still held the old one."""
    import subprocess

    from embedder.graphs import checkpoint_lock

    # Another process (not forked: a fork would inherit this one's locked descriptor).
    code = "import sys; from embedder.graphs import checkpoint_lock\n"
    code += "with checkpoint_lock(sys.argv[1]): print('locked')"
    with checkpoint_lock(ckpt):
        _replace_weights(ckpt)
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(ckpt)], stdout=subprocess.PIPE, text=True
        )
        with pytest.raises(subprocess.TimeoutExpired):  # it waits for this holder
            child.wait(timeout=3)
    assert child.communicate(timeout=60)[0].strip() == "locked"


def test_weights_replaced_while_loading_or_quantising_are_refused(ckpt, tiny_catalog, monkeypatch):
    """The index check and the int8 record must name the weights that run, not the file as it
    is after loading (a retrain into the folder meanwhile)."""
    from embedder import inference, quantize
    from embedder.errors import CheckpointError, EngineError

    _retrain_after(monkeypatch, inference, "load_engine", ckpt)
    with pytest.raises(CheckpointError, match="weights changed while loading"):
        inference.Embedder.from_checkpoint(ckpt, runtime="torch", device="cpu")
    monkeypatch.undo()
    _retrain_after(monkeypatch, quantize, "ensure_fp32_graph", ckpt, 0.5)
    with pytest.raises(EngineError, match="changed while quantising"):
        quantize.quantize_int8(ckpt, tiny_catalog, max_images=4)


def test_optimize_fails_when_the_weights_change_during_its_export(ckpt, monkeypatch, capsys):
    """It printed 'min cosine 1.000000 ... runtime auto uses it' for a graph of the old weights
    (its check compares with the model it loaded, the old one)."""
    from embedder import onnx_export
    from phonesim.cli import main

    (ckpt / "model.onnx").unlink()
    _retrain_after(monkeypatch, onnx_export, "export_graph", ckpt)
    assert main(["optimize", "--checkpoint", str(ckpt)]) == 2
    assert "the checkpoint changed meanwhile; run again" in capsys.readouterr().err


def test_without_onnxruntime_auto_runs_torch_and_the_onnx_runtimes_say_what_to_do(
    ckpt, monkeypatch, caplog
):
    """A broken install (the package gone, its library not loading) had been a 30-line
    ModuleNotFoundError traceback in every runtime but torch, and serve's workers failed to
    boot; "auto" promises torch with a warning."""
    from embedder.errors import EngineError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    engine = load_engine(ckpt, "auto")
    assert engine.runtime == "torch"
    assert "runtime auto falls back to torch: onnxruntime cannot be imported" in caplog.text
    for rt in ("onnx", "onnx-int8"):
        with pytest.raises(EngineError, match="onnxruntime cannot be imported .*pip install"):
            load_engine(ckpt, rt)


def test_out_of_memory_loading_the_graph_does_not_export_it_again(ckpt, monkeypatch):
    """Under a memory limit ONNX Runtime's std::bad_alloc read as a graph that does not load:
    every serving worker imported torch and exported model.onnx again, which cannot help."""
    from common.errors import OutOfResourcesError

    load_engine(ckpt, runtime="onnx", device="cpu")
    graph = ckpt / "model.onnx"
    before = graph.stat().st_mtime_ns

    def bad_alloc(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : std::bad_alloc")

    monkeypatch.setattr(runtime, "OnnxEngine", bad_alloc)
    with pytest.raises(OutOfResourcesError, match="ran out of memory loading it") as caught:
        load_engine(ckpt, runtime="onnx", device="cpu")
    assert caught.value.exit_code == 1 and graph.stat().st_mtime_ns == before


def test_out_of_memory_in_a_batch_says_to_use_smaller_batches(ckpt, monkeypatch):
    """ONNX Runtime's arena failing mid-export ended in a traceback (BFCArena::Allocate...)."""
    import numpy as np

    from common.errors import OutOfResourcesError
    from embedder.inference import Embedder

    embedder = Embedder.from_checkpoint(ckpt, runtime="onnx")

    def arena(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("Fail: BFCArena::AllocateRawInternal Failed to allocate memory")

    monkeypatch.setattr(embedder.engine, "run", arena)
    batch = np.zeros((3, *embedder.transform.shape), np.float32)
    with pytest.raises(OutOfResourcesError, match="batch of 3 images.*--batch-size.*--max-batch"):
        embedder.embed_tensors(batch)


def test_onnxruntime_not_loading_for_want_of_memory_is_not_told_to_reinstall(monkeypatch):
    """Under an address-space limit the loader could not map ONNX Runtime's library; the error
    said "pip install onnxruntime", which cannot help."""
    import builtins

    from common.errors import OutOfResourcesError
    from embedder.engine import import_onnxruntime
    from embedder.errors import EngineError

    real = builtins.__import__

    message = ["libonnxruntime.so.1: failed to map segment from shared object"]

    def unmappable(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "onnxruntime":
            raise ImportError(message[0])
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", unmappable)
    with pytest.raises(EngineError, match="short of memory.*noexec") as caught:
        import_onnxruntime()
    assert "pip install" not in str(caught.value)
    message[0] += ": Cannot allocate memory"  # glibc names the errno
    with pytest.raises(OutOfResourcesError, match="short of memory"):
        import_onnxruntime()
    message[0] = "libgomp.so.1: cannot allocate memory in static TLS block"  # not a limit
    with pytest.raises(EngineError) as caught:
        import_onnxruntime()
    assert not isinstance(caught.value, OutOfResourcesError)
