"""ONNX graphs of a checkpoint, kept inside the checkpoint folder and recorded in config.json.

One graph per checkpoint (``model.onnx``, fp32; ``model.int8.onnx`` once quantised) with a
dynamic batch and named outputs: ``embedding`` (unit norm), ``probabilities``, ``feature_map``
(the last feature map) and ``stage0``.. (each feature stage's map, for the duplicate finder).
The config's ``onnx`` section records each graph's SHA-256, the SHA-256 of the weights it was
made from, the opset and the exporter, so a missing, corrupt or foreign file (made from other
weights) is noticed and never used: the fp32 graph is exported again, the int8 one refused.

Exporter: torch's ``torch.export``-based exporter (``dynamo=True``, needs ``onnxscript``). It
works offline and folds the TF-style "same" padding of EfficientNets into constants; the legacy
TorchScript exporter kept shape arithmetic in the graph and ran about 2x slower in ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.fsutil import atomic_write, atomic_write_text
from embedder.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    checkpoint_hash,
    file_sha256,
    load_checkpoint,
    read_config,
)
from embedder.errors import EngineError

log = logging.getLogger(__name__)

OPSET = 18
INPUT = "input"
EMBEDDING = "embedding"
PROBABILITIES = "probabilities"
FEATURE_MAP = "feature_map"
GRAPH_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
ONNX_SECTION = "onnx"


def stage_name(index: int) -> str:
    """Output name of feature stage ``index`` (timm's ``feature_info`` order, from 0)."""
    return f"stage{index}"


def stage_count(model: nn.Module) -> int:
    """Feature stages a model can expose as maps (0 without ``forward_intermediates``)."""
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
        return 0
    return len(model.feature_info)


def output_names(model: nn.Module) -> list[str]:
    """Every named output the engine offers for ``model``, in graph order."""
    stages = [stage_name(i) for i in range(stage_count(model))]
    return [EMBEDDING, PROBABILITIES, FEATURE_MAP, *stages]


def forward_outputs(
    model: nn.Module, x: torch.Tensor, names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The requested named outputs from one backbone pass.

    The penultimate feature is timm's ``forward_head(..., pre_logits=True)`` and the classifier
    runs on that same tensor; stage maps come from ``forward_intermediates`` on the same pass.
    """
    stages = sorted(int(n.removeprefix("stage")) for n in names if n.startswith("stage"))
    if stages:
        final, maps = model.forward_intermediates(x, indices=stages)
        out = {stage_name(i): m for i, m in zip(stages, maps, strict=True)}
    else:
        final, out = model.forward_features(x), {}
    out[FEATURE_MAP] = final
    if EMBEDDING in names or PROBABILITIES in names:
        pre = model.forward_head(final, pre_logits=True)
        logits = model.get_classifier()(pre)
        out[EMBEDDING] = nn.functional.normalize(pre.float(), dim=1)
        out[PROBABILITIES] = logits.float().softmax(dim=1)
    return {n: out[n] for n in names}


class GraphModule(nn.Module):
    """``model`` with every named output as a tuple, the shape the ONNX exporter takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = output_names(model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(forward_outputs(self.model, x, self.names).values())


def exporter_version() -> str:
    """Recorded with each graph: the same weights give another graph under another exporter."""
    try:
        import onnxscript

        script = f", onnxscript {onnxscript.__version__}"
    except ImportError:
        script = ""
    return f"torch.onnx dynamo (torch {torch.__version__}{script})"


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The exporter's optimiser logs each pass at INFO; a user wants one line per export."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_graph(model: nn.Module, input_size: Sequence[int], path: Path) -> list[str]:
    """Export ``model`` (CPU, fp32) to ``path``: batch dimension dynamic, spatial size fixed.

    Returns the output names. Raises whatever the exporter raises.
    """
    graph = GraphModule(model).eval()
    example = torch.zeros(2, *input_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad(), _quiet_exporter_logs():
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=graph.names,
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return graph.names


@dataclass(frozen=True)
class GraphRecord:
    """What config.json says about one graph file: enough to notice it no longer fits."""

    file: str
    sha256: str
    weights_sha256: str
    opset: int
    exporter: str
    outputs: list[str]
    input_shape: list[int]
    quantization: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GraphRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _read_raw_config(ckpt: Path) -> dict[str, Any]:
    read_config(ckpt)  # a checkpoint, readable: its own errors say what is wrong
    return json.loads((ckpt / CONFIG_FILE).read_text())


def read_graph_record(ckpt: str | Path, kind: str) -> GraphRecord | None:
    """The record of graph ``kind`` ("fp32" or "int8") in config.json, if any."""
    data = _read_raw_config(Path(ckpt)).get(ONNX_SECTION, {}).get(kind)
    try:
        return GraphRecord.from_json(data) if isinstance(data, dict) else None
    except TypeError:  # an incomplete record is as good as none
        return None


def write_graph_record(ckpt: str | Path, kind: str, record: GraphRecord) -> None:
    """Set the record of graph ``kind`` in config.json (atomically; call under the lock)."""
    ckpt = Path(ckpt)
    data = _read_raw_config(ckpt)
    section = data.get(ONNX_SECTION) if isinstance(data.get(ONNX_SECTION), dict) else {}
    data[ONNX_SECTION] = {**section, kind: asdict(record)}
    atomic_write_text(ckpt / CONFIG_FILE, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def checkpoint_lock(ckpt: str | Path) -> Iterator[None]:
    """Exclusive lock over a checkpoint's graphs, so workers starting together export once.

    The lock is taken on the weights file, which is never rewritten in place, so no lock file
    is left in the folder.
    """
    fd = os.open(Path(ckpt) / WEIGHTS_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def graph_problem(ckpt: str | Path, kind: str) -> str | None:
    """Why the stored graph ``kind`` cannot be used as it is, or None when it fits."""
    ckpt = Path(ckpt)
    path = ckpt / GRAPH_FILES[kind]
    if not path.is_file():
        return f"{path.name} is missing"
    record = read_graph_record(ckpt, kind)
    if record is None or record.file != path.name:
        return f"{path.name} is not recorded in {CONFIG_FILE}"
    if record.weights_sha256 != checkpoint_hash(ckpt):
        return f"{path.name} was made from other weights"
    if file_sha256(path) != record.sha256:
        return f"{path.name} is corrupt or replaced (its SHA-256 differs from {CONFIG_FILE})"
    return None


def build_fp32_graph(ckpt: str | Path, model: nn.Module | None = None) -> GraphRecord:
    """Export the checkpoint's fp32 graph into its folder and record it (call under the lock)."""
    ckpt = Path(ckpt)
    config = read_config(ckpt)
    if model is None:
        model, _ = load_checkpoint(ckpt)
    path = ckpt / GRAPH_FILES["fp32"]
    input_size = [int(v) for v in config.data_config["input_size"]]
    start = time.perf_counter()
    names: list[str] = []

    def write(tmp: Path) -> None:
        names.extend(export_graph(model, input_size, tmp))

    try:
        atomic_write(path, write)
    except Exception as exc:  # permissions, disk, and the many kinds the exporter raises
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EngineError(
            f"{path}: cannot export the ONNX graph ({type(exc).__name__}: {first})"
        ) from exc
    record = GraphRecord(
        file=path.name,
        sha256=file_sha256(path),
        weights_sha256=checkpoint_hash(ckpt),
        opset=OPSET,
        exporter=exporter_version(),
        outputs=names,
        input_shape=input_size,
    )
    write_graph_record(ckpt, "fp32", record)
    log.info("exported %s in %.1f s (%s)", path, time.perf_counter() - start, record.exporter)
    return record


def ensure_fp32_graph(
    ckpt: str | Path, model: nn.Module | None = None, rebuild_because: str | None = None
) -> Path:
    """The checkpoint's fp32 graph, exported first where it is missing or does not fit.

    ``rebuild_because`` forces an export (the file fit its record but would not load).
    Raises EngineError when it cannot be written.
    """
    ckpt = Path(ckpt)
    path = ckpt / GRAPH_FILES["fp32"]
    if rebuild_because is None and graph_problem(ckpt, "fp32") is None:
        return path
    if not os.access(ckpt, os.W_OK):
        problem = rebuild_because or graph_problem(ckpt, "fp32")
        raise EngineError(f"{ckpt}: {problem} and the folder is not writable")
    with checkpoint_lock(ckpt):
        problem = rebuild_because or graph_problem(ckpt, "fp32")  # another worker may be done
        if problem is None:
            return path
        if path.exists():
            log.warning("%s: %s; exporting it again", ckpt, problem)
        build_fp32_graph(ckpt, model)
    return path
