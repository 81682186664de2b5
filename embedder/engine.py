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

:func:`embedder.runtime.load_engine` picks and builds one from a checkpoint folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embedder.errors import EngineError
from embedder.onnx_export import (
    EMBEDDING,
    INPUT,
    PROBABILITIES,
    forward_outputs,
    output_names,
    stage_name,
)

DEFAULT_OUTPUTS = (EMBEDDING, PROBABILITIES)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the whole machine)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(workers: int = 1) -> int:
    """ONNX Runtime threads for one of ``workers`` processes sharing this machine's cores."""
    return max(1, available_cores() // max(1, workers))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` checked against this machine; None means cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise EngineError(f"unknown device '{device}' (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"device '{device}': torch sees no CUDA GPU here; use device 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise EngineError(
                f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise EngineError(f"device '{device}': MPS is not available here; use device 'cpu'")
    elif dev.type != "cpu":
        raise EngineError(f"unsupported device '{device}' (use cpu, cuda, cuda:N or mps)")
    return dev


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Autocast type on ``device``: bf16 where the GPU has it, else fp16; None on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None


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


class TorchEngine(Engine):
    """Torch eager, channels-last; ``device`` None keeps the model where it is."""

    runtime = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device | None = None,
        autocast: bool = True,
    ) -> None:
        if device is None:
            first = next(model.parameters(), None)
            dev = first.device if first is not None else torch.device("cpu")
        else:
            dev = resolve_device(device)
        # channels_last: about 2x faster CPU inference for convnets (measured on Lite0).
        self.model = model.eval().to(dev, memory_format=torch.channels_last)
        self.device = str(dev)
        self._device = dev
        self.autocast_dtype = autocast_dtype(dev) if autocast else None
        self.output_names = tuple(output_names(model))

    @torch.inference_mode()
    def run(
        self, x: np.ndarray | torch.Tensor, outputs: Sequence[str] = DEFAULT_OUTPUTS
    ) -> dict[str, np.ndarray]:
        self._check_outputs(outputs)
        x = torch.as_tensor(x, dtype=torch.float32).to(self._device, non_blocking=True)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype
        with torch.autocast(self._device.type, dtype=dtype, enabled=dtype is not None):
            out = forward_outputs(self.model, x, outputs)
        return {
            n: np.ascontiguousarray(t.float().cpu().numpy(), dtype=np.float32)
            for n, t in out.items()
        }

    def describe(self) -> str:
        cast = f", autocast {str(self.autocast_dtype).removeprefix('torch.')}"
        return f"torch on {self.device}{cast if self.autocast_dtype else ''}"


def onnx_providers(device: torch.device) -> list:
    """ONNX Runtime providers for ``device``: CUDA then CPU on a GPU, else the CPU alone."""
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
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
        import onnxruntime as ort

        dev = resolve_device(device)
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
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(dev))
        self.path = Path(path)
        self.runtime = runtime
        self.device = str(dev)
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
        if isinstance(x, torch.Tensor):
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
