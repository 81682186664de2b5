"""How a command runs the model (runtime, device, threads), importable without torch or ONNX
Runtime: the command-line parsers and settings dataclasses of every stage read it, and
``phonesim --help`` must not load the model stack. :mod:`embedder.runtime` builds the engine."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from common.argtypes import device as device_type
from common.argtypes import thread_count

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
DEFAULT_RUNTIME = "auto"

# Calibration images for the int8 graph's activation ranges: more barely moves them.
DEFAULT_CALIBRATION_IMAGES = 256
# How the int8 graph is made (embedder.quantize): how activation ranges are calibrated, and
# layers kept float beside the head (which always is): the stem convolution (sees raw pixels),
# everything up to the output of a feature stage ("stage0" at stride 2, "stage1" at 4,
# "stage2" at 8: the stem and the blocks before it), the depthwise convolutions (one filter
# per channel) and the last convolution (its output is pooled into the embedding).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FLOAT_LAYERS = ("stem", "stage0", "stage1", "stage2", "depthwise", "last")
DEFAULT_CALIBRATION_METHOD = "minmax"
# The early, high-resolution layers stay float: their activations are quantised per tensor
# while their channels' ranges differ most, and the error they add carries through the whole
# network. On five cross-validated Lite0 fold checkpoints (scripts/bench_quality.py) the mean
# cosine to fp32 was 0.971-0.978 with only the stem float, 0.989-0.991 up to stage0,
# 0.990-0.993 up to stage1 and 0.995-0.996 up to stage2; keeping any one later stage float
# instead did not help (0.972-0.976). Up to stage2, the fully trained checkpoint lost 1 of
# 122 validation photos (0.754 vs 0.762; 3 of 122 up to stage0), at about 1.3x the fp32 speed.
DEFAULT_FLOAT_LAYERS: tuple[str, ...] = ("stage2",)

RUNTIME_HELP = (
    "how the model runs: 'torch' (eager), 'onnx' (ONNX Runtime over the checkpoint's exported "
    "graph, made on first use), 'onnx-int8' (the int8 graph of 'phonesim optimize --quantize "
    "int8'), or 'auto': onnx when its graph matches torch on a check batch, else torch "
    "(default %(default)s)"
)
DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)"


def precision(runtime: str) -> str:
    """What an embedding's numbers come from: ``"int8"`` for the quantised graph, else
    ``"fp32"`` (torch and the fp32 graph agree to about 1e-5)."""
    return "int8" if runtime == "onnx-int8" else "fp32"


def precision_mismatch(where: str, stored: str | None, runtime: str) -> str | None:
    """Why embeddings of ``runtime`` should not be searched against ``where``'s stored
    embeddings of precision ``stored`` (None: written before runtimes were recorded, so fp32),
    or None when they match. Callers warn: the search still works, a little less exactly."""
    stored = stored or "fp32"
    if precision(runtime) == stored:
        return None
    advice = "onnx-int8" if stored == "int8" else "torch or onnx"
    return (
        f"{where} holds {stored} embeddings, but queries are embedded by runtime {runtime} "
        f"({precision(runtime)}): the two agree to a cosine of about 0.99, so neighbours and "
        f"scores shift slightly; use --runtime {advice}, or rebuild it from embeddings of "
        f"runtime {runtime}"
    )


@dataclass(frozen=True)
class EngineOptions:
    """Runtime, device and thread count of one command's model (None: the defaults)."""

    runtime: str = DEFAULT_RUNTIME
    device: str | None = None
    threads: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineOptions:
        """The options of :func:`add_engine_options` (``threads`` where the command has it;
        not for ``serve``, whose ``--threads`` are request threads)."""
        return cls(args.runtime, args.device, getattr(args, "threads", None))


def add_engine_options(parser: argparse.ArgumentParser, *, threads_help: str | None = None) -> None:
    """``--runtime`` and ``--device``, plus ``--threads`` when ``threads_help`` is given
    (the serve command names its model threads otherwise: its --threads are request threads)."""
    parser.add_argument("--runtime", choices=RUNTIMES, default=DEFAULT_RUNTIME, help=RUNTIME_HELP)
    parser.add_argument("--device", type=device_type, help=DEVICE_HELP)
    if threads_help:
        parser.add_argument("--threads", type=thread_count, help=threads_help)
