"""The one inference interface: a checkpoint's model on preprocessed batches, by output name.

Every part of phonesim that needs the model goes through an :class:`Engine`: it takes a float32
batch (N x 3 x H x W, numpy or torch) and returns float32 numpy arrays for the named outputs it
is asked for (``embedding``, ``probabilities``, ``feature_map``, ``stage0``..; see
:mod:`embedder.onnx_export`). Two runtimes implement it:

- :class:`TorchEngine`: torch eager in channels-last memory format on cpu, cuda, cuda:N or mps,
  under autocast (bf16 where the GPU has it, else fp16) on a GPU;
- :class:`OnnxEngine`: an ONNX Runtime session over the checkpoint's exported graph, with the
  CUDA provider first where onnxruntime-gpu is installed, and an explicit thread count (ONNX
  Runtime would otherwise take every core in every worker process) whose threads sleep, not
  spin, between runs.

:func:`embedder.runtime.load_engine` picks and builds one from a checkpoint folder. This
module imports no torch (the ONNX path runs without it); the torch runtime and the torch device
helpers live in :mod:`embedder.torch_engine` and are still importable from here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from common.argtypes import threads_problem
from common.errors import OutOfResourcesError, resources_exhausted
from common.machine import default_threads
from embedder.errors import EngineError, first_line
from embedder.graphs import EMBEDDING, INPUT, PROBABILITIES, stage_name

if TYPE_CHECKING:
    import torch

DEFAULT_OUTPUTS = (EMBEDDING, PROBABILITIES)


def check_threads(threads: int | None) -> None:
    """Refuse a thread count outside 1 to :func:`common.argtypes.max_threads` (None: default)."""
    problem = None if threads is None else threads_problem(threads)
    if problem:
        raise EngineError(f"threads {problem}")


def set_torch_threads(threads: int | None, runtime: str = "torch") -> None:
    """torch's intra-op threads where this process runs torch: on the ``torch`` runtime, or
    once something (an ``auto`` check or fallback) has imported it. Never imports torch for an
    ONNX runtime, so a worker on one stays torch-free; None leaves torch's default."""
    if threads and (runtime == "torch" or "torch" in sys.modules):
        import torch

        torch.set_num_threads(threads)


class Engine:
    """Runs a model on preprocessed batches. Calls keep no state between them; the Embedder
    serialises its own calls, so one engine serves a process's threads one batch at a time."""

    runtime: str = ""
    device: str = "cpu"
    output_names: tuple[str, ...] = ()
    # C x H x W the engine is fixed to (an exported graph), or None: any size.
    input_size: tuple[int, ...] | None = None

    def run(
        self, x: np.ndarray | torch.Tensor, outputs: Sequence[str] = DEFAULT_OUTPUTS
    ) -> dict[str, np.ndarray]:
        """The named outputs of one pass over ``x``, as float32 numpy arrays."""
        raise NotImplementedError

    @property
    def stage_count(self) -> int:
        return sum(1 for n in self.output_names if n.startswith("stage"))

    def stage_output(self, index: int) -> str:
        """Output name of feature stage ``index``; negative counts from the last stage."""
        count = self.stage_count
        if not -count <= index < count:
            raise EngineError(f"feature stage {index} does not exist ({count} stages)")
        return stage_name(index % count)

    def _check_outputs(self, outputs: Sequence[str]) -> None:
        unknown = [n for n in outputs if n not in self.output_names]
        if unknown:
            raise EngineError(
                f"unknown output(s) {unknown}; this {self.runtime} engine offers "
                f"{list(self.output_names)}"
            )

    def describe(self) -> str:
        return f"{self.runtime} on {self.device}"


def parse_device(device: str | torch.device | None) -> tuple[str, int | None]:
    """(type, index) of a device name (cpu, cuda, cuda:N, mps) without asking torch whether
    this machine has it; None is the CPU."""
    text = "cpu" if device is None else str(device).strip().lower()
    kind, colon, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (colon and (kind != "cuda" or not index.isdigit())):
        raise EngineError(f"unknown device '{device}' (use cpu, cuda, cuda:N or mps)")
    return kind, int(index) if colon else None


def device_string(device: str | torch.device | None) -> str:
    kind, index = parse_device(device)
    return kind if index is None else f"{kind}:{index}"


ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a one-line :class:`EngineError` saying what to do: a
    broken install (the package gone, its shared library not loading) had been a traceback
    in every command, and ``serve``'s workers failed to boot."""
    # ONNX Runtime 1.29+ sends usage events to Microsoft from Linux too, and writes a device id
    # under ~/.cache (warning when it cannot): a service and its catalog stay on the machine
    # unless the operator sets ORT_DISABLE_TELEMETRY=0. Read when the library loads.
    os.environ.setdefault(ORT_TELEMETRY_ENV, "1")
    try:
        import onnxruntime
    except (ImportError, OSError) as exc:
        text = str(exc).lower()
        if resources_exhausted(exc) or (
            "failed to map segment" in text and "cannot allocate memory" in text
        ):
            # A memory limit (ulimit -v, a container's), where reinstalling cannot help.
            raise OutOfResourcesError(
                f"onnxruntime cannot be loaded ({first_line(exc)}): the process is short of "
                "memory (an address-space or container limit); raise it, or use --runtime torch"
            ) from exc
        if "failed to map segment" in text:
            # The dynamic loader could not map the library: a memory limit, or a file system
            # mounted noexec; reinstalling helps in neither case.
            raise EngineError(
                f"onnxruntime cannot be loaded ({first_line(exc)}): the process may be short "
                "of memory (an address-space or container limit), or the library lies on a "
                "file system mounted noexec; or use --runtime torch"
            ) from exc
        raise EngineError(
            f"onnxruntime cannot be imported ({exc}): pip install onnxruntime, or use "
            "--runtime torch"
        ) from exc
    return onnxruntime


def onnx_providers(device: str | torch.device) -> list:
    """ONNX Runtime providers for ``device``: CUDA then CPU on a GPU, else the CPU alone."""
    ort = import_onnxruntime()

    kind, index = parse_device(device)
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": index or 0}), "CPUExecutionProvider"]
    raise EngineError(
        f"onnxruntime has no provider for device '{device}' here (for CUDA install "
        "onnxruntime-gpu); use runtime 'torch' or device 'cpu'"
    )


class OnnxEngine(Engine):
    """An ONNX Runtime session over an exported graph. Raises what ONNX Runtime raises when
    the file does not load; :func:`embedder.runtime.load_engine` turns that into a rebuild."""

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        runtime: str = "onnx",
    ) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its warnings are not the user's business
        # No spin-waiting between runs: the cores are shared with decoding, request threads and
        # other workers, and spinning threads took the CPU they needed (server on 2 busy
        # cores, Lite0: c1 p50 27 ms with spinning, 11-14 ms without; c8 req/s up 1.1-1.7x).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = onnx_providers(device)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.path = Path(path)
        self.runtime = runtime
        self.device = device_string(device)
        self.threads = options.intra_op_num_threads
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.input_size = tuple(int(v) for v in self.input_shape[1:])
        self._shapes = {o.name: o.shape for o in self.session.get_outputs()}

    def output_shape(self, name: str) -> tuple[int | str, ...]:
        """Shape of an output, the batch dimension symbolic."""
        return tuple(self._shapes[name])

    def run(
        self, x: np.ndarray | torch.Tensor, outputs: Sequence[str] = DEFAULT_OUTPUTS
    ) -> dict[str, np.ndarray]:
        self._check_outputs(outputs)
        if not isinstance(x, np.ndarray):  # a torch tensor (numpy() shares its CPU memory)
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or list(x.shape[1:]) != list(self.input_shape[1:]):
            raise EngineError(
                f"{self.path.name} takes N x {' x '.join(map(str, self.input_shape[1:]))} "
                f"input, got {' x '.join(map(str, x.shape))}; use runtime 'torch' for other sizes"
            )
        if len(x) == 0:  # ONNX Runtime kernels do not all take an empty batch
            return {n: np.zeros((0, *self._shapes[n][1:]), np.float32) for n in outputs}
        values = self.session.run(list(outputs), {INPUT: x})
        pairs = zip(outputs, values, strict=True)
        return {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in pairs}

    def describe(self) -> str:
        provider = self.session.get_providers()[0].removesuffix("ExecutionProvider")
        return f"{self.runtime} ({self.path.name}) on {provider}, {self.threads} threads"


_TORCH_NAMES = ("TorchEngine", "autocast_dtype", "resolve_device")


def __getattr__(name: str) -> Any:
    """The torch runtime's names, imported (with torch) only when asked for."""
    if name in _TORCH_NAMES:
        from embedder import torch_engine

        return getattr(torch_engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
