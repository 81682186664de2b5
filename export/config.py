"""Settings of one export job; the CLI flags parse into :class:`ExportConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from embedder.engine_options import DEFAULT_RUNTIME, RUNTIMES
from embedder.text_reader import TextOptions
from export.errors import ExportError

# Storage types of embeddings and probabilities in the HDF5 file.
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExportConfig:
    """What to export, where, and how (single process or on Ray).

    ``input`` is a folder of images (class subfolders or flat) or a CSV manifest
    (``id,image,label,...``); ``input_kind`` says which one the user meant, so a typo is reported
    instead of silently read the other way.
    """

    checkpoint: str
    input: str
    out: str
    input_kind: str | None = None  # "images", "manifest" or None (either)
    index: str | None = None
    #: The catalog store of ``index`` when not its folder's SQLite file (a PostgreSQL URL).
    store: str | None = None
    neighbors: int = 10
    #: > 0: each row's first neighbours re-ranked by its probability of their labels, with
    #: this weight (embedder.class_rerank); 0: similarity order.
    class_rerank: float = 0.0
    #: Read the text on each image whose classifier prediction is below the gate and add the
    #: classes it names to its probabilities (embedder.text_cues); None: no reading.
    text: TextOptions | None = None
    dtype: str = "float32"
    batch_size: int = 64
    workers: int | None = None
    #: How the model runs: "auto", "torch", "onnx" or "onnx-int8" (embedder.engine_options).
    runtime: str = DEFAULT_RUNTIME
    #: cpu, cuda, cuda:N or mps (None: cuda when available, else cpu).
    device: str | None = None
    #: Model threads of the single-process path (None: one per core); with Ray, each actor
    #: uses as many as the CPUs it reserves.
    threads: int | None = None
    #: Inputs per committed shard: at most this much work is redone after a crash.
    shard_size: int = 4096
    #: On-the-fly neighbour index: exact search up to this many items, IVF beyond.
    exact_limit: int = 200_000
    #: A faiss index_factory string that overrides the on-the-fly choice ("Flat", "IVF256,Flat").
    neighbor_index: str | None = None
    overwrite: bool = False
    restart: bool = False
    ray: str | None = None  # None (single process), "local", or a cluster address
    ray_actors: int | None = None
    ray_cpus_per_actor: float | None = None  # None: not given (1 CPU), told from an explicit 1
    ray_ship_code: bool | None = None  # None: ship the packages to remote clusters only
    progress: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.input_kind not in (None, "images", "manifest"):
            raise ExportError(f"input_kind must be 'images' or 'manifest', got {self.input_kind!r}")
        for name in ("batch_size", "shard_size", "exact_limit"):
            if getattr(self, name) < 1:
                raise ExportError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.class_rerank) and self.class_rerank >= 0):
            raise ExportError(f"class_rerank must be 0 (off) or more, got {self.class_rerank}")
        if self.class_rerank and not self.neighbors:
            raise ExportError("class_rerank orders neighbours: it needs neighbors above 0")
        if self.neighbors < 0:
            raise ExportError(f"neighbors must be 0 (none) or more, got {self.neighbors}")
        if self.runtime not in RUNTIMES:
            raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.threads is not None and self.threads < 1:
            raise ExportError(f"threads must be at least 1, got {self.threads}")
        if self.ray_actors is not None and self.ray_actors < 1:
            raise ExportError(f"ray_actors must be at least 1, got {self.ray_actors}")
        if self.ray_cpus_per_actor is not None and self.ray_cpus_per_actor <= 0:
            raise ExportError("ray_cpus_per_actor must be positive")
        if self.ray is not None and not self.ray.strip():
            raise ExportError("ray must be 'local' or a cluster address such as 'auto'")
        if self.ray is None:
            unset = {f.name: f.default for f in fields(self)}
            given = [
                flag
                for flag, name in (
                    ("--ray-actors", "ray_actors"),
                    ("--ray-cpus-per-actor", "ray_cpus_per_actor"),
                    ("--ray-no-ship-code", "ray_ship_code"),
                )
                if getattr(self, name) != unset[name]
            ]
            if given:  # ignored, the run would not be what was asked for
                raise ExportError(f"{', '.join(given)} apply to a Ray run only: add --ray")

    @property
    def cpus_per_actor(self) -> float:
        """CPUs each Ray actor reserves: ``ray_cpus_per_actor``, or 1 when not given."""
        return 1.0 if self.ray_cpus_per_actor is None else self.ray_cpus_per_actor
