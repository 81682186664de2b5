"""Choosing and building the inference engine of a checkpoint folder.

``runtime``:

- ``"torch"``: torch eager (:class:`embedder.torch_engine.TorchEngine`);
- ``"onnx"``: ONNX Runtime over ``model.onnx``, exported on first use and again whenever the
  stored graph is missing, corrupt, made from other weights or does not load;
- ``"onnx-int8"``: ONNX Runtime over ``model.int8.onnx`` from ``phonesim optimize --quantize
  int8``; refused with a one-line error when it is missing or does not fit (making it needs
  calibration images);
- ``"auto"`` (the default): onnx when the graph passes :func:`check_against_torch` on a fixed
  batch, else torch with a one-line warning saying why. Never int8. The result is recorded
  beside the graph in config.json, so a graph that passed on this kind of device under this
  ONNX Runtime version is used again without loading torch.

The ONNX runtimes import torch only to export the graph (or, on a machine with a GPU, to ask
whether torch sees it): over a graph that fits, inference needs onnxruntime, numpy and PIL.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.errors import OutOfResourcesError, resources_exhausted
from common.fsutil import folder_write_problem
from embedder.checkpoint import CheckpointConfig, read_config
from embedder.engine import (
    Engine,
    OnnxEngine,
    check_threads,
    default_threads,
    device_string,
    import_onnxruntime,
    onnx_providers,
    parse_device,
    set_torch_threads,
)
from embedder.engine_options import DEFAULT_RUNTIME, RUNTIMES
from embedder.errors import EngineError, first_line
from embedder.graphs import (
    EMBEDDING,
    GRAPH_FILES,
    PROBABILITIES,
    check_fp32_graph_can_be_made,
    ensure_fp32_graph,
    graph_problem,
    record_check,
    recorded_check,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

CHECK_MIN_COSINE = 0.9999
CHECK_IMAGES = 8
# Device files of NVIDIA and AMD (ROCm) GPUs: where one exists, the default device is torch's
# to decide (cuda when it sees the GPU); where none does, it is the CPU without asking torch.
_GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def check_batch(input_size: tuple[int, ...] | list[int], n: int = CHECK_IMAGES) -> np.ndarray:
    """A fixed, seeded batch of smooth random images at the scale of normalised photos."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    coarse = torch.randn(n, input_size[0], 8, 8, generator=gen) * 1.5
    x = nn.functional.interpolate(coarse, size=tuple(input_size[1:]), mode="bilinear")
    return x.numpy().astype(np.float32)


@dataclass(frozen=True)
class CheckResult:
    """How closely an engine follows torch eager on the check batch."""

    min_cosine: float
    top1_agree: int
    images: int

    @property
    def problem(self) -> str | None:
        if not self.min_cosine >= CHECK_MIN_COSINE:  # NaN fails too
            return f"embeddings differ from torch (min cosine {self.min_cosine:.6f} < 0.9999)"
        if self.top1_agree < self.images:
            return f"top-1 differs from torch on {self.images - self.top1_agree} check images"
        return None


def check_against_torch(
    candidate: Engine, model: nn.Module, input_size: tuple[int, ...] | list[int]
) -> CheckResult:
    """Compare ``candidate`` with torch eager fp32 on the CPU over :func:`check_batch`."""
    from embedder.torch_engine import TorchEngine

    x = check_batch(input_size)
    ref = TorchEngine(model, "cpu", autocast=False).run(x)
    got = candidate.run(x)
    cosine = (ref[EMBEDDING] * got[EMBEDDING]).sum(axis=1)
    same = ref[PROBABILITIES].argmax(1) == got[PROBABILITIES].argmax(1)
    return CheckResult(float(cosine.min()), int(same.sum()), len(x))


def _onnxruntime_version() -> str:
    return import_onnxruntime().__version__


def save_check(engine: OnnxEngine, result: CheckResult) -> None:
    """Record ``result`` beside the graph ``engine`` runs (its SHA-256, device kind, ONNX
    Runtime version), for :func:`trusted_check` to find."""
    from embedder.checkpoint import file_sha256

    record_check(
        engine.path.parent,
        {
            **asdict(result),
            "graph_sha256": file_sha256(engine.path),
            "device_type": parse_device(engine.device)[0],
            "onnxruntime": _onnxruntime_version(),
        },
    )


def trusted_check(ckpt: Path, device: str) -> bool:
    """Whether the fp32 graph as it is passed a recorded check on this kind of device under
    this ONNX Runtime version, against today's thresholds."""
    check = recorded_check(ckpt)
    if not check or check.get("device_type") != parse_device(device)[0]:
        return False
    if check.get("onnxruntime") != _onnxruntime_version():
        return False
    try:
        result = CheckResult(
            float(check["min_cosine"]), int(check["top1_agree"]), int(check["images"])
        )
    except (KeyError, TypeError, ValueError):
        return False
    return result.problem is None


def graph_fits(engine: OnnxEngine, config: CheckpointConfig) -> str | None:
    """Why a loaded graph cannot serve this checkpoint (other shapes), or None."""
    want = [*map(int, config.data_config["input_size"])]
    if list(engine.input_shape[1:]) != want:
        return f"{engine.path.name} takes input {list(engine.input_shape[1:])}, not {want}"
    for name, size in ((EMBEDDING, config.feature_dim), (PROBABILITIES, config.num_classes)):
        if name not in engine.output_names or engine.output_shape(name)[1:] != (size,):
            return f"{engine.path.name} has no {name} output of size {size}"
    return None


def _open_graph(
    path: Path, config: CheckpointConfig, device: str, threads: int, runtime: str
) -> OnnxEngine:
    """Open a graph; raises EngineError(one line) when it does not load or fit."""
    try:
        engine = OnnxEngine(path, device, threads, runtime=runtime)
    except EngineError:
        raise
    except Exception as exc:  # ONNX Runtime raises its own exception types (Fail, InvalidGraph)
        if resources_exhausted(exc):  # not the graph's fault: exporting it again cannot help
            raise OutOfResourcesError(
                f"{path.name}: the machine ran out of memory loading it ({first_line(exc)})"
            ) from exc
        raise EngineError(f"{path.name} does not load ({first_line(exc)})") from exc
    problem = graph_fits(engine, config)
    if problem:
        raise EngineError(problem)
    return engine


def open_fp32(
    ckpt: Path,
    device: str | torch.device,
    threads: int,
    model: nn.Module | None = None,
) -> OnnxEngine:
    """The fp32 graph's engine: exported where missing or unfit, exported again if it fails."""
    config = read_config(ckpt)
    device = device_string(device)
    onnx_providers(device)  # no provider for this device: fail before exporting anything
    path = ensure_fp32_graph(ckpt, model)
    try:
        return _open_graph(path, config, device, threads, "onnx")
    except EngineError as exc:
        path = ensure_fp32_graph(ckpt, model, rebuild_because=str(exc))
        return _open_graph(path, config, device, threads, "onnx")


def _int8_missing(ckpt: Path, problem: str) -> EngineError:
    # A real write, as 'phonesim optimize' itself tries: permission bits mislead on a
    # read-only mount and for root.
    where = "" if folder_write_problem(ckpt) is None else " where the folder is writable (not here)"
    return EngineError(
        f"{ckpt}: {problem}; make it{where} with: phonesim optimize --checkpoint {ckpt} "
        "--quantize int8 --calibration TRAIN_IMAGES, or use --runtime onnx or torch"
    )


def open_int8(ckpt: Path, device: str | torch.device, threads: int) -> OnnxEngine:
    """The int8 graph's engine; never rebuilt here (that needs calibration images)."""
    config = read_config(ckpt)
    device = device_string(device)
    onnx_providers(device)  # a device missing here is said as such, not as a graph to remake
    problem = graph_problem(ckpt, "int8")
    try:
        if problem is None:
            return _open_graph(ckpt / GRAPH_FILES["int8"], config, device, threads, "onnx-int8")
    except EngineError as exc:
        problem = str(exc)
    raise _int8_missing(ckpt, problem)


def check_runtime(path: str | Path, runtime: str) -> None:
    """Cheap checks of ``runtime`` for checkpoint ``path`` before workers start (one-line
    EngineError): a known name, the int8 graph that only 'phonesim optimize' makes, and for
    onnx a graph that fits or a folder to export one into."""
    if runtime not in RUNTIMES:
        raise EngineError(f"unknown runtime '{runtime}' (choose from {', '.join(RUNTIMES)})")
    if runtime == "onnx-int8":
        problem = graph_problem(path, "int8")
        if problem:
            raise _int8_missing(Path(path), problem)
    if runtime == "onnx":  # what ensure_fp32_graph would say in each worker under serve
        check_fp32_graph_can_be_made(path)


def check_device(runtime: str, device: str) -> None:
    """One-line EngineError, before any model loads, when ``device`` is not here for
    ``runtime``: ONNX Runtime's providers for the ONNX runtimes, torch's devices for torch,
    either for auto (which runs the graph where ONNX Runtime has the device, else torch)."""
    if runtime in ("onnx", "onnx-int8"):
        onnx_providers(device)
        return
    if runtime == "auto":
        if device_string(device) == "cpu":
            return
        try:
            onnx_providers(device)
            return
        except EngineError:
            pass  # auto falls back to torch: the device must be torch's then
    from embedder.torch_engine import resolve_device

    resolve_device(device)


def _gpu_in_sight() -> bool:
    return any(Path(p).exists() for p in _GPU_DEVICE_FILES)


def default_device() -> str:
    """cuda when torch sees a GPU, else cpu; torch is asked only where a GPU may exist."""
    if not _gpu_in_sight():
        return "cpu"
    from embedder.torch_engine import resolve_device

    return str(resolve_device(None))


def onnx_device(device: str | torch.device | None) -> str:
    """Default device for ONNX Runtime: CUDA only where both torch and onnxruntime have it."""
    if device is not None:
        return device_string(device)
    ort = import_onnxruntime()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "cpu"  # whatever torch sees, ONNX Runtime runs on the CPU here
    return default_device()


def _torch_engine(ckpt: Path, device: str | torch.device | None) -> Engine:
    """The checkpoint's model on torch, on ``device`` (default: cuda when available)."""
    from embedder.checkpoint import load_checkpoint
    from embedder.torch_engine import TorchEngine, resolve_device

    dev = resolve_device(device)  # a device this machine lacks fails before the model loads
    return TorchEngine(load_checkpoint(ckpt)[0], dev)


def _auto(ckpt: Path, device: str | torch.device | None, threads: int) -> Engine:
    """Runtime auto: the fp32 graph when it passes the check against torch, else torch."""
    wanted = device_string(device) if device is not None else default_device()
    try:
        import_onnxruntime()
    except EngineError as exc:  # a broken install: torch runs, as "auto" promises
        log.warning("%s: runtime auto falls back to torch: %s", ckpt, exc)
        return _torch_engine(ckpt, wanted)
    check_device("auto", wanted)  # neither runtime has it: one line, before any loading
    if trusted_check(ckpt, wanted):
        try:
            return open_fp32(ckpt, wanted, threads)
        except EngineError:
            pass  # rebuilt below, and checked again
    from embedder.checkpoint import load_checkpoint
    from embedder.torch_engine import TorchEngine

    model, config = load_checkpoint(ckpt)
    try:
        engine = open_fp32(ckpt, wanted, threads, model)
        result = check_against_torch(engine, model, config.data_config["input_size"])
        save_check(engine, result)
        problem = result.problem
    except EngineError as exc:
        problem = str(exc)
    if problem is None:
        return engine
    log.warning("%s: runtime auto falls back to torch: %s", ckpt, problem)
    return TorchEngine(model, wanted)


def load_engine(
    path: str | Path,
    runtime: str = DEFAULT_RUNTIME,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> Engine:
    """Build the engine of checkpoint ``path`` (see the module docstring for ``runtime``).

    ``device``: cpu, cuda, cuda:N or mps (default cuda when available, else cpu). ``threads``:
    ONNX Runtime threads (default all cores this process may use; pass
    ``default_threads(workers)`` when several worker processes share the machine).
    """
    check_runtime(path, runtime)
    check_threads(threads)
    # --threads means the model's threads on torch too: set before the model loads (an
    # "auto" check runs torch), and again below for an "auto" that fell back to torch.
    set_torch_threads(threads, runtime)
    ckpt = Path(path)
    given, threads = threads, threads or default_threads()
    if runtime == "onnx-int8":
        return open_int8(ckpt, onnx_device(device), threads)
    if runtime == "onnx":
        return open_fp32(ckpt, onnx_device(device), threads)
    engine = _auto(ckpt, device, threads) if runtime == "auto" else _torch_engine(ckpt, device)
    set_torch_threads(given, engine.runtime)
    return engine


def resolve_runtime(
    path: str | Path, runtime: str = DEFAULT_RUNTIME, device: str | torch.device | None = None
) -> str:
    """The runtime :func:`load_engine` picks for ``path`` here, with its graph made.

    For jobs that start many worker processes (Ray actors): "auto" is decided, and the fp32
    graph exported, once in the driver instead of once per worker.
    """
    if runtime == "torch":
        return runtime
    # No thread count: the caller's torch threads stay as they are (load_engine sets them to
    # any count it is given), and the engine made here only decides.
    return load_engine(path, runtime, device).runtime
