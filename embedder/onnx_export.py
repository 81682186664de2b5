"""Exporting a checkpoint's ONNX graph (needs torch); the files and their records in
config.json are :mod:`embedder.graphs`, whose names are importable from here too.

Exporter: torch's ``torch.export``-based exporter (``dynamo=True``, needs ``onnxscript``). It
works offline and folds the TF-style "same" padding of EfficientNets into constants; the legacy
TorchScript exporter kept shape arithmetic in the graph and ran about 2x slower in ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from common.fsutil import atomic_write
from embedder.checkpoint import (
    checkpoint_hash,
    file_sha256,
    load_checkpoint,
    loaded_weights_hash,
    read_config,
)
from embedder.errors import EngineError, first_line
from embedder.graphs import (
    EMBEDDING,
    FEATURE_MAP,
    GRAPH_FILES,
    INPUT,
    ONNX_SECTION,
    OPSET,
    PROBABILITIES,
    GraphRecord,
    checkpoint_lock,
    ensure_fp32_graph,
    graph_problem,
    model_identity,
    read_graph_record,
    stage_name,
    write_graph_record,
)

# Names that moved to embedder.graphs and are still imported from here.
__all__ = [
    "EMBEDDING",
    "FEATURE_MAP",
    "GRAPH_FILES",
    "INPUT",
    "ONNX_SECTION",
    "OPSET",
    "PROBABILITIES",
    "GraphModule",
    "GraphRecord",
    "build_fp32_graph",
    "checkpoint_lock",
    "ensure_fp32_graph",
    "export_graph",
    "exporter_version",
    "forward_outputs",
    "graph_problem",
    "output_names",
    "read_graph_record",
    "stage_count",
    "stage_name",
    "write_graph_record",
]

log = logging.getLogger(__name__)


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


def build_fp32_graph(ckpt: str | Path, model: nn.Module | None = None) -> GraphRecord:
    """Export the checkpoint's fp32 graph into its folder and record it (call under the lock)."""
    ckpt = Path(ckpt)
    config = read_config(ckpt)
    if model is None:
        model, _ = load_checkpoint(ckpt)
    # The hash of the weights the model was loaded from (read with them), not of the file as
    # it is after the export: a file replaced meanwhile (a retrain into the folder) passed for
    # the graph's weights, and runtime onnx/auto served the old model.
    weights = loaded_weights_hash(model) or checkpoint_hash(ckpt)
    path = ckpt / GRAPH_FILES["fp32"]
    input_size = [int(v) for v in config.data_config["input_size"]]
    start = time.perf_counter()
    names: list[str] = []

    def write(tmp: Path) -> None:
        names.extend(export_graph(model, input_size, tmp))

    try:
        atomic_write(path, write)
    except Exception as exc:  # permissions, disk, and the many kinds the exporter raises
        raise EngineError(f"{path}: cannot export the ONNX graph ({first_line(exc)})") from exc
    record = GraphRecord(
        file=path.name,
        sha256=file_sha256(path),
        weights_sha256=weights,
        opset=OPSET,
        exporter=exporter_version(),
        outputs=names,
        input_shape=input_size,
        model=model_identity(config),
    )
    write_graph_record(ckpt, "fp32", record)
    log.info("exported %s in %.1f s (%s)", path, time.perf_counter() - start, record.exporter)
    return record
