"""A checkpoint's ONNX graph files and their records in config.json, without torch.

One graph per checkpoint (``model.onnx``, fp32; ``model.int8.onnx`` once quantised) with a
dynamic batch and named outputs: ``embedding`` (unit norm), ``probabilities``, ``feature_map``
(the last feature map) and ``stage0``.. (each feature stage's map, for the duplicate finder).
The config's ``onnx`` section records each graph's SHA-256, the SHA-256 of the weights it was
made from, the opset and the exporter, so a missing, corrupt or foreign file (made from other
weights) is noticed and never used: the fp32 graph is exported again, the int8 one refused.

Everything here reads and writes files only, so ONNX Runtime inference over a graph that fits
never imports torch; exporting (:mod:`embedder.onnx_export`) does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.fsutil import atomic_write_text, is_temporary
from embedder.checkpoint import (
    CONFIG_FILE,
    CheckpointConfig,
    checkpoint_hash,
    file_sha256,
    read_config,
)
from embedder.errors import EngineError

if TYPE_CHECKING:
    from torch import nn

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


@dataclass(frozen=True)
class GraphRecord:
    """What config.json says about one graph file: enough to notice it no longer fits.

    ``check``: the last comparison of this very file with torch eager (see
    :mod:`embedder.runtime`), so runtime auto can trust a graph that passed without loading
    torch again.
    """

    file: str
    sha256: str
    weights_sha256: str
    opset: int
    exporter: str
    outputs: list[str]
    input_shape: list[int]
    quantization: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    #: The model config.json described at export (:func:`model_identity`); {} in records of
    #: older versions, which are not checked for it.
    model: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GraphRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _read_raw_config(ckpt: Path) -> dict[str, Any]:
    read_config(ckpt)  # a checkpoint, readable: its own errors say what is wrong
    return json.loads((ckpt / CONFIG_FILE).read_text())


def read_graph_record(ckpt: str | Path, kind: str) -> GraphRecord | None:
    """The record of graph ``kind`` ("fp32" or "int8") in config.json, if any."""
    section = _read_raw_config(Path(ckpt)).get(ONNX_SECTION)
    data = section.get(kind) if isinstance(section, dict) else None
    try:
        record = GraphRecord.from_json(data) if isinstance(data, dict) else None
    except TypeError:  # an incomplete record is as good as none
        return None
    if record is None or not isinstance(record.model, dict):
        return None  # the model it was made for is unknown: no record (the graph is made again)
    # A damaged check is no check; damaged quantization settings are none to report.
    damaged = {
        name: {}
        for name in ("check", "quantization")
        if not isinstance(getattr(record, name), dict)
    }
    return replace(record, **damaged) if damaged else record


def write_graph_record(ckpt: str | Path, kind: str, record: GraphRecord) -> None:
    """Set the record of graph ``kind`` in config.json (atomically; call under the lock)."""
    ckpt = Path(ckpt)
    data = _read_raw_config(ckpt)
    section = data.get(ONNX_SECTION) if isinstance(data.get(ONNX_SECTION), dict) else {}
    data[ONNX_SECTION] = {**section, kind: asdict(record)}
    atomic_write_text(ckpt / CONFIG_FILE, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def checkpoint_lock(ckpt: str | Path) -> Iterator[None]:
    """Exclusive lock over a checkpoint's graphs and config.json records, so workers starting
    together export once and no writer loses another's record.

    The lock is taken on the folder itself, so no lock file is left in it. (It was taken on
    the weights file, and weights replaced by a new file, a retrain into the folder, let a
    second process lock the new file while the first still wrote.)
    """
    fd = os.open(Path(ckpt), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _remove_unfinished_graphs(Path(ckpt))
        yield
    finally:
        os.close(fd)  # closing releases the lock


# A temporary graph file older than this was left by an export that was killed: no export of
# a model this project serves takes it (Lite0: 10 s), and a younger one may still be written
# by a process that locked the folder before it was swapped for a new checkpoint.
UNFINISHED_GRAPH_AGE_S = 3600.0


def _remove_unfinished_graphs(ckpt: Path) -> None:
    """Remove temporary graph files left by writers that were killed (kill -9, SIGTERM);
    they stayed for good."""
    now = time.time()
    for tmp in ckpt.iterdir():
        if not any(is_temporary(tmp.name, name) for name in GRAPH_FILES.values()):
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or a read-only folder
            if now - tmp.stat().st_mtime > UNFINISHED_GRAPH_AGE_S:
                tmp.unlink()
                log.info("removed %s, left by an export that did not finish", tmp)


def model_identity(config: CheckpointConfig) -> dict[str, Any]:
    """What config.json says the model is, as a graph record keeps it (JSON types)."""
    identity = {
        "architecture": config.architecture,
        "num_classes": config.num_classes,
        "model_kwargs": config.model_kwargs,
    }
    return json.loads(json.dumps(identity))


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
    described = model_identity(read_config(ckpt))
    if record.model and record.model != described:  # config.json edited since the export
        return (
            f"{path.name} was made for {record.model.get('architecture')} "
            f"({record.model.get('num_classes')} classes), not the "
            f"{described['architecture']} ({described['num_classes']} classes) {CONFIG_FILE} "
            "describes"
        )
    if file_sha256(path) != record.sha256:
        return f"{path.name} is corrupt or replaced (its SHA-256 differs from {CONFIG_FILE})"
    return None


def check_fp32_graph_can_be_made(ckpt: str | Path, problem: str | None = None) -> None:
    """EngineError where the fp32 graph does not fit (``problem``, else graph_problem's) and
    the folder cannot take a new one; a graph that fits, or a writable folder, passes."""
    if os.access(ckpt, os.W_OK):
        return
    problem = problem or graph_problem(ckpt, "fp32")
    if problem:
        raise EngineError(
            f"{ckpt}: {problem} and the folder is not writable; run 'phonesim optimize "
            f"--checkpoint {ckpt}' as a user who can write there, or use --runtime torch"
        )


def ensure_fp32_graph(
    ckpt: str | Path, model: nn.Module | None = None, rebuild_because: str | None = None
) -> Path:
    """The checkpoint's fp32 graph, exported first where it is missing or does not fit.

    ``rebuild_because`` forces an export (the file fit its record but would not load). Only an
    export imports torch. Raises EngineError when the graph cannot be written.
    """
    ckpt = Path(ckpt)
    path = ckpt / GRAPH_FILES["fp32"]
    if rebuild_because is None and graph_problem(ckpt, "fp32") is None:
        return path
    check_fp32_graph_can_be_made(ckpt, rebuild_because)
    with checkpoint_lock(ckpt):
        problem = rebuild_because or graph_problem(ckpt, "fp32")  # another worker may be done
        if problem is None:
            return path
        if path.exists():
            log.warning("%s: %s; exporting it again", ckpt, problem)
        from embedder.onnx_export import build_fp32_graph

        build_fp32_graph(ckpt, model)
    return path


def recorded_check(ckpt: str | Path) -> dict[str, Any] | None:
    """The check result recorded for the fp32 graph as it is now (see :func:`record_check`),
    or None: no graph that fits, no check, or a check of another file."""
    if graph_problem(ckpt, "fp32") is not None:
        return None
    record = read_graph_record(ckpt, "fp32")
    if record is None or record.check.get("graph_sha256") != record.sha256:
        return None
    return record.check


def record_check(ckpt: str | Path, result: dict[str, Any]) -> None:
    """Keep a check result beside the fp32 graph it was made on (``result["graph_sha256"]``);
    best effort: in a read-only folder the next 'auto' just checks again."""
    ckpt = Path(ckpt)
    with contextlib.suppress(OSError), checkpoint_lock(ckpt):
        record = read_graph_record(ckpt, "fp32")
        if record is None or file_sha256(ckpt / record.file) != result.get("graph_sha256"):
            return  # rebuilt meanwhile: the result is of another file
        write_graph_record(ckpt, "fp32", GraphRecord(**{**asdict(record), "check": result}))
