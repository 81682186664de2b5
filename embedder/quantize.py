"""Static int8 quantisation of a checkpoint's ONNX graph, and what it costs in quality.

``model.int8.onnx`` is the fp32 graph with QDQ (QuantizeLinear / DequantizeLinear) pairs:
weights int8 per output channel, activations uint8 with ranges calibrated (min/max) on
training images run through the checkpoint's own eval transform (onnxruntime.quantization).
It is recorded in config.json like the fp32 graph and only used when asked for
(``runtime="onnx-int8"``): quantisation moves embeddings, so indexes built with fp32
embeddings should be rebuilt with the same runtime.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.fsutil import atomic_write, remove_leftovers, temporary_folder
from embedder.checkpoint import QUANTIZING, file_sha256, read_config
from embedder.data import Catalog, Sample, load_catalog
from embedder.engine import DEFAULT_OUTPUTS, Engine, default_threads, import_onnxruntime
from embedder.engine_options import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_FLOAT_LAYERS,
    FLOAT_LAYERS,
)
from embedder.errors import DataError, EngineError, ImageError
from embedder.graphs import model_identity
from embedder.images import decodes, load_image
from embedder.metrics import label_recall_at_k, macro_f1
from embedder.onnx_export import (
    EMBEDDING,
    FEATURE_MAP,
    GRAPH_FILES,
    INPUT,
    OPSET,
    PROBABILITIES,
    GraphRecord,
    checkpoint_lock,
    ensure_fp32_graph,
    exporter_version,
    graph_problem,
    read_graph_record,
    write_graph_record,
)
from embedder.preprocess import Preprocessor
from embedder.runtime import load_engine

log = logging.getLogger(__name__)

BATCH_SIZE = 16
_TEMPDIR_LOCK = threading.Lock()  # tempfile.tempdir is one setting for the whole process


def spread(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples spread evenly over the list (every class, not the first few)."""
    if len(samples) <= limit:
        return list(samples)
    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, limit)]


def image_batches(
    samples: Sequence[Sample], data_config: dict[str, Any], batch_size: int = BATCH_SIZE
) -> Iterator[tuple[list[int], np.ndarray]]:
    """(sample indices, preprocessed float32 batch); unreadable images are logged and skipped."""
    transform = Preprocessor(data_config)
    indices, tensors = [], []
    for i, sample in enumerate(samples):
        try:
            tensors.append(transform(load_image(sample.path)))
            indices.append(i)
        except ImageError as exc:
            log.warning("skipping %s: %s", sample.id, exc)
        if len(tensors) == batch_size or (i == len(samples) - 1 and tensors):
            yield indices, np.stack(tensors).astype(np.float32)
            indices, tensors = [], []


def head_nodes(graph_path: str | Path) -> list[str]:
    """Names of the nodes downstream of ``feature_map``: pooling, classifier, softmax, norm.

    They stay float: they cost next to nothing, and quantising their outputs would round the
    probabilities to steps of 1/255 and turn close classes into ties.
    """
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    tainted, names = {FEATURE_MAP}, []
    for node in graph.node:  # ONNX nodes are stored in topological order
        if tainted.intersection(node.input):
            tainted.update(node.output)
            names.append(node.name)
    return names


def upstream_nodes(graph: Any, tensor: str) -> list[str]:
    """Names of the nodes that ``tensor`` is computed from (its producer included)."""
    producers = {out: node for node in graph.node for out in node.output}
    names, pending, seen = [], [tensor], set()
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        names.append(node.name)
        pending.extend(node.input)
    return names


def float_layer_nodes(graph_path: str | Path, layers: Sequence[str]) -> list[str]:
    """Names of the nodes of the chosen layers (``engine_options.FLOAT_LAYERS``) in the graph."""
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    stem = [n.name for n in convs if INPUT in n.input]
    names: list[str] = []
    if "stem" in layers:
        names += stem
    outputs = {o.name for o in graph.output}
    for stage in (layer for layer in layers if layer.startswith("stage")):
        if stage in outputs:
            names += upstream_nodes(graph, stage)
        else:  # a backbone without this feature stage: its stem is the nearest equivalent
            log.warning("the graph has no '%s' output: keeping only the stem float", stage)
            names += stem
    if "depthwise" in layers:
        names += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if "last" in layers and convs:
        names.append(convs[-1].name)
    return list(dict.fromkeys(names))


@contextlib.contextmanager
def _quiet_root_info() -> Iterator[None]:
    """onnxruntime.quantization logs each rescaled weight with ``logging.info`` on the root
    logger (hundreds of lines); drop those records, not other loggers' propagated ones."""
    root = logging.getLogger()

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_int8(
    ckpt: str | Path,
    calibration: str | Path,
    max_images: int = DEFAULT_CALIBRATION_IMAGES,
    method: str = DEFAULT_CALIBRATION_METHOD,
    keep_float: Sequence[str] = DEFAULT_FLOAT_LAYERS,
    per_channel: bool = True,
) -> GraphRecord:
    """Write and record ``model.int8.onnx`` calibrated on up to ``max_images`` of ``calibration``.

    ``method``: activation ranges from the min/max, a percentile (99.999) or the entropy of the
    calibration activations. ``keep_float``: :data:`FLOAT_LAYERS` left unquantised beside the
    head. Exports the fp32 graph first where needed. Raises DataError when no calibration image
    can be read.
    """
    ort = import_onnxruntime()  # one line, not a traceback, where it cannot be imported
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise DataError(f"unknown calibration method '{method}' ({', '.join(CALIBRATION_METHODS)})")
    unknown = sorted(set(keep_float) - set(FLOAT_LAYERS))
    if unknown:
        raise DataError(f"unknown float layer(s) {unknown} (choose from {', '.join(FLOAT_LAYERS)})")
    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    ckpt = Path(ckpt)
    config = read_config(ckpt)
    samples = spread(load_catalog(calibration, require_labels=False).samples, max_images)
    batches = [x for _, x in image_batches(samples, config.data_config)]
    count = sum(len(x) for x in batches)
    if count == 0:
        raise DataError(f"{calibration}: none of the calibration images could be read")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._batches, None)
            return None if x is None else {INPUT: x}

    fp32 = ensure_fp32_graph(ckpt)  # takes the lock itself: not under ours (flock is per open)
    path = ckpt / GRAPH_FILES["int8"]
    start = time.perf_counter()
    with checkpoint_lock(ckpt), _scratch_folder(path) as tmp, _quiet_root_info():
        # The int8 graph is made from this fp32 graph: it records that graph's weights (the
        # file may have been replaced since; then graph_problem says so and it is not used).
        fp32_record = read_graph_record(ckpt, "fp32")
        problem = graph_problem(ckpt, "fp32")
        if fp32_record is None or problem is not None:
            raise EngineError(
                f"{ckpt}: the checkpoint changed while quantising ({problem}); run again"
            )
        # Shape inference and graph fusions first, as onnxruntime.quantization recommends.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        atomic_write(
            path,
            lambda out: quantize_static(
                str(prepared),
                str(out),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calibrate_method,
                nodes_to_exclude=head_nodes(prepared) + float_layer_nodes(prepared, keep_float),
            ),
        )
        record = GraphRecord(
            file=path.name,
            sha256=file_sha256(path),
            weights_sha256=fp32_record.weights_sha256,
            opset=OPSET,
            exporter=f"{exporter_version()}; onnxruntime.quantization {ort.__version__}",
            outputs=fp32_record.outputs,
            input_shape=[int(v) for v in config.data_config["input_size"]],
            quantization={
                "format": "QDQ",
                "weights": "int8, per channel" if per_channel else "int8, per tensor",
                "activations": "uint8",
                "float_head": "pooling, classifier, softmax and normalisation",
                "float_layers": list(keep_float),
                "calibration": method,
                "calibration_images": count,
                "calibration_data": str(calibration),
            },
            model=model_identity(config),
        )
        write_graph_record(ckpt, "int8", record)
    log.info("quantised %s in %.1f s on %d images", path, time.perf_counter() - start, count)
    return record


@contextlib.contextmanager
def _scratch_folder(path: Path) -> Iterator[Path]:
    """A folder beside ``path`` for the prepared graph and onnxruntime's own temporaries.

    In the system's temporary folder, a quantisation killed outright (kill -9) left them for
    good: about 30 MB for Lite0. Beside the graph, the next quantisation finds and removes
    them (under the checkpoint's lock: no other is running). onnxruntime makes its folders
    in ``tempfile``'s, which points here meanwhile: a setting of the whole process, so two
    quantisations in one process take turns (other threads' temporary files made meanwhile
    land here too, and go with it).
    """
    with _TEMPDIR_LOCK:
        remove_leftovers(path, QUANTIZING, "a quantisation that was killed", log)
        tmp = temporary_folder(path, QUANTIZING)
        system_tmp = tempfile.tempdir
        tempfile.tempdir = str(tmp)
        try:
            yield tmp
        finally:
            tempfile.tempdir = system_tmp
            shutil.rmtree(tmp, ignore_errors=True)


def _scores(y_true: np.ndarray, probs: np.ndarray, emb: np.ndarray) -> dict:
    pred = probs.argmax(1)
    return {
        "accuracy": float((pred == y_true).mean()),
        "macro_f1": macro_f1(y_true, pred),
        "recall_at_1": label_recall_at_k(emb, y_true, ks=(1,))[1],
    }


def read_val_images(val: str | Path, label_names: Sequence[str]) -> Catalog:
    """The labelled images of ``val``, whose classes must be among the checkpoint's
    ``label_names``."""
    catalog = load_catalog(val, require_labels=True, min_classes=1)
    unknown = sorted(set(catalog.label_names) - set(label_names))
    if unknown:
        raise DataError(f"{val}: classes the checkpoint does not know: {', '.join(unknown)}")
    # Reading stops at the first image that decodes: checked before the int8 graph is
    # written, which a --val of unreadable images had replaced before failing.
    if not any(decodes(s.path) for s in catalog.samples):
        raise DataError(f"{val}: none of the images could be read")
    return catalog


def compare_int8(
    ckpt: str | Path, val: str | Path, threads: int | None = None, batch_size: int = 32
) -> dict[str, Any]:
    """Quality and speed of the int8 graph against the fp32 one on labelled images ``val``.

    Both run on the CPU with the same thread count over the same decoded batches; Recall@1 is
    leave-one-out within ``val``. The speed ratio is int8 images/s over fp32 images/s.
    """
    ckpt = Path(ckpt)
    config = read_config(ckpt)
    threads = threads or default_threads()
    engines: dict[str, Engine] = {
        kind: load_engine(ckpt, runtime, device="cpu", threads=threads)
        for kind, runtime in (("fp32", "onnx"), ("int8", "onnx-int8"))
    }
    catalog = read_val_images(val, config.label_names)
    warm = np.zeros((1, *config.data_config["input_size"]), np.float32)
    for engine in engines.values():  # the first run allocates; keep it out of the timing
        engine.run(warm)
    kept: list[int] = []
    outputs: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in engines}
    seconds = dict.fromkeys(engines, 0.0)
    for indices, x in image_batches(catalog.samples, config.data_config, batch_size):
        kept.extend(indices)
        for kind, engine in engines.items():
            start = time.perf_counter()
            outputs[kind].append(engine.run(x))
            seconds[kind] += time.perf_counter() - start
    if not kept:
        raise DataError(f"{val}: none of the images could be read")
    y_true = np.array([config.label_names.index(catalog.samples[i].label) for i in kept])
    report: dict[str, Any] = {"images": len(kept), "threads": threads}
    joined = {}
    for kind, parts in outputs.items():
        joined[kind] = {n: np.concatenate([p[n] for p in parts]) for n in DEFAULT_OUTPUTS}
        emb, probs = joined[kind][EMBEDDING], joined[kind][PROBABILITIES]
        report[kind] = {
            **_scores(y_true, probs, emb),
            "img_per_s": len(kept) / seconds[kind],
        }
    cosine = (joined["fp32"][EMBEDDING] * joined["int8"][EMBEDDING]).sum(axis=1)
    report["mean_cosine_to_fp32"] = float(cosine.mean())
    report["speed_ratio"] = report["int8"]["img_per_s"] / report["fp32"]["img_per_s"]
    return report
