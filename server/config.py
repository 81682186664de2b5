"""Settings of the lookup server: what the app serves (:class:`ServerConfig`) and how its
processes run (:class:`GunicornSettings`), both parsed once from the ``serve`` flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from embedder.class_rerank import DEFAULT_POOL as RERANK_POOL
from embedder.class_rerank import DEFAULT_WEIGHT as RERANK_WEIGHT
from embedder.class_rerank import ClassRerank, class_rerank
from embedder.engine_options import DEFAULT_RUNTIME, RUNTIMES
from embedder.knn_vote import (
    DEFAULT_K,
    DEFAULT_TEMPERATURE,
    DEFAULT_WEIGHT,
    FUSE_BY_DEFAULT,
    KnnFusion,
)
from embedder.text_cues import DEFAULT_GATE as TEXT_GATE
from embedder.text_cues import DEFAULT_WEIGHT as TEXT_WEIGHT
from embedder.text_cues import check_gate, check_weight
from embedder.text_reader import DEFAULT_ROTATIONS, check_rotations

# Environment variable the ``serve`` command reads the API key from when --api-key is absent.
API_KEY_ENV = "PHONESIM_API_KEY"
# How often a process follows the store: often enough for the 1 s visibility promise, rarely
# enough that an idle replica costs nothing.
MIN_SYNC_INTERVAL_S = 0.01
MAX_SYNC_INTERVAL_S = 60.0
# An upload smaller than 10 KiB refuses nearly every photo; one above 1 GiB lets a client
# make a worker hold gigabytes per request.
MIN_UPLOAD_MB = 0.01
MAX_UPLOAD_MB = 1024.0
# Past these a setting only holds memory or time: a forward pass of 100,000 images, a batch
# held seconds for company, a request of 100,000 queries (`serve` took each of them).
MAX_BATCH = 1024
MAX_BATCH_ENTRIES = 10_000
MAX_WAIT_MS = 1000


def _is_header_text(text: str) -> bool:
    """Printable ASCII without outer spaces: what an HTTP header carries unchanged."""
    return text == text.strip() and all(" " <= c <= "~" for c in text)


@dataclass(frozen=True)
class ServerConfig:
    """What the app serves and its limits.

    ``checkpoint``/``index``: folders to load when no embedder/index is injected into
    :func:`server.app.create_app`. ``api_key``: required by the write endpoints; ``None``
    disables writes (and the index is opened read-only). ``max_batch``/``max_wait_ms``: the
    micro-batcher's bound on images per forward pass and on how long a batch waits for
    requests already being decoded. ``max_batch_entries``: queries of one ``/v1/search/batch``
    and items of one ``/v1/items/batch``. ``image_dir``: where images of items added through the
    API are kept for thumbnails (``None``: not kept). ``image_roots``: extra folders that
    catalog thumbnails may be read from, besides those the index was built from.
    ``rate_limit``/``rate_burst``: requests per second each client address may make, and how
    many at once (``None``: no limit; counted per worker process). ``cors_origins``: web
    origins allowed to call the API from a browser (``"*"``: any; empty: none).
    ``runtime``/``device``/``model_threads``: how the model runs (see
    :mod:`embedder.engine_options`); ``model_threads`` None: every core of the process.
    ``store``: the catalog store's URL (``postgresql://...``; None: the SQLite file in the
    index folder). ``sync_interval_s``: seconds between two background follows of the store
    (see :mod:`server.follower`; None: only the check before each request).
    ``knn_fusion``: predict an image's class from the classifier fused with a vote of its
    ``knn_k`` nearest catalog items' ``label`` fields (see :mod:`embedder.knn_vote`;
    ``knn_weight`` the vote's share, ``knn_temperature`` its sharpness).
    ``class_rerank``: the weight by which the query's class probabilities re-rank the first
    ``RERANK_POOL`` neighbours of an uploaded photo, and a catalog item's own label those of
    the item (see :mod:`embedder.class_rerank`; 0: by similarity alone).
    ``read_text``: read the text on each uploaded photo (OCR at ``text_rotations``) whose
    prediction gives its top class less than ``text_gate`` and add the classes it names to the
    prediction at ``text_weight`` (see :mod:`embedder.text_cues`); ``text_cues``: a JSON file
    of words naming each class besides its label.
    """

    checkpoint: str | None = None
    index: str | None = None
    api_key: str | None = None
    max_upload_mb: float = 10.0
    default_k: int = 10
    max_k: int = 100
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_batch_entries: int = 64
    request_timeout_s: float = 30.0
    top_classes: int = 5
    thumbnail_px: int = 256
    image_dir: str | None = None
    image_roots: tuple[str, ...] = ()
    rate_limit: float | None = None
    rate_burst: int | None = None
    cors_origins: tuple[str, ...] = ()
    runtime: str = DEFAULT_RUNTIME
    device: str | None = None
    model_threads: int | None = None
    store: str | None = None
    sync_interval_s: float | None = 0.5
    knn_fusion: bool = FUSE_BY_DEFAULT
    knn_k: int = DEFAULT_K
    knn_weight: float = DEFAULT_WEIGHT
    knn_temperature: float = DEFAULT_TEMPERATURE
    class_rerank: float = RERANK_WEIGHT
    read_text: bool = False
    text_cues: str | None = None
    text_weight: float = TEXT_WEIGHT
    text_rotations: tuple[int, ...] = DEFAULT_ROTATIONS
    text_gate: float = TEXT_GATE

    @property
    def fusion(self) -> KnnFusion | None:
        """The kNN fusion of predictions, or None when the classifier predicts alone."""
        if not self.knn_fusion:
            return None
        return KnnFusion(k=self.knn_k, temperature=self.knn_temperature, weight=self.knn_weight)

    @property
    def rerank(self) -> ClassRerank | None:
        """The class-aware re-rank of a photo's or an item's neighbours, or None for
        similarity order."""
        return class_rerank(self.class_rerank)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def writes_enabled(self) -> bool:
        return bool(self.api_key)

    def validate(self) -> ServerConfig:
        """Raise ValueError on settings that cannot work; return self."""
        if not MIN_UPLOAD_MB <= self.max_upload_mb <= MAX_UPLOAD_MB:
            bounds = f"{MIN_UPLOAD_MB:g}-{MAX_UPLOAD_MB:g}"
            raise ValueError(f"max_upload_mb must be {bounds}, got {self.max_upload_mb}")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"need 1 <= default_k ({self.default_k}) <= max_k ({self.max_k})")
        if self.max_batch < 1 or self.max_queue < 1 or self.max_batch_entries < 1:
            raise ValueError("max_batch, max_queue and max_batch_entries must be at least 1")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and request_timeout_s > 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be blank")
        if self.api_key is not None and not _is_header_text(self.api_key):
            # Headers arrive as latin-1: a key beyond ASCII matches no bytes a client sends.
            raise ValueError(
                "the API key must be printable ASCII (letters, digits, punctuation, no spaces "
                "at either end): an HTTP header cannot carry other characters reliably"
            )
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError(f"rate_limit must be positive, got {self.rate_limit}")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError(f"rate_burst must be at least 1, got {self.rate_burst}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.model_threads is not None and self.model_threads < 1:
            raise ValueError(f"model_threads must be at least 1, got {self.model_threads}")
        if self.sync_interval_s is not None and not (
            MIN_SYNC_INTERVAL_S <= self.sync_interval_s <= MAX_SYNC_INTERVAL_S
        ):
            raise ValueError(
                f"sync_interval_s must be in [{MIN_SYNC_INTERVAL_S}, {MAX_SYNC_INTERVAL_S}], "
                f"got {self.sync_interval_s}"
            )
        # KnnFusion's own checks, whether fusion is on or not: a bad value is a bad setting.
        if isinstance(self.knn_k, bool) or not isinstance(self.knn_k, int):
            raise ValueError(f"knn_k must be an integer, got {self.knn_k!r}")
        KnnFusion(k=self.knn_k, temperature=self.knn_temperature, weight=self.knn_weight)
        if isinstance(self.class_rerank, bool) or not isinstance(self.class_rerank, int | float):
            raise ValueError(f"class_rerank must be a number, got {self.class_rerank!r}")
        ClassRerank(float(self.class_rerank), RERANK_POOL)
        # The text reading's own checks, whether it is on or not, as for the fusion above.
        check_weight(self.text_weight, "text_weight")
        check_rotations(self.text_rotations, "text_rotations")
        check_gate(self.text_gate, "text_gate")
        if self.text_cues is not None and not self.read_text:
            raise ValueError("text_cues needs read_text (the words are matched to read text)")
        return self

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any] | None = None, **overrides: Any
    ) -> ServerConfig:
        """Build from a dict; unknown keys are an error."""
        data = {**(values or {}), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown server setting(s): {', '.join(unknown)}")
        for key in ("image_roots", "cors_origins"):
            if key in data:
                data[key] = tuple(str(p) for p in data[key])
        if "text_rotations" in data:
            data["text_rotations"] = tuple(data["text_rotations"])
        return cls(**data).validate()

    def replace(self, **changes: Any) -> ServerConfig:
        return replace(self, **changes).validate()


LOG_FORMATS = ("text", "json")  # serve --log-format


@dataclass(frozen=True)
class GunicornSettings:
    """Process settings of the HTTP server.

    ``threads``: request threads per worker (connections are read on the worker's event
    loop and cost no thread). ``header_timeout_s``/``body_timeout_s``: how long a connection
    may take to send its headers, and then its body, before it is answered 408.
    ``graceful_timeout_s``: how long a stopping or reloading worker may finish its requests.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 8
    timeout_s: int = 60
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    graceful_timeout_s: int = 30  # whole seconds, as gunicorn takes it
    torch_threads: int | None = None  # model threads (torch or ONNX Runtime): cores / workers
    faiss_threads: int = 1
    access_log: bool = False
    log_format: str = "text"  # LOG_FORMATS: "json" is server.json_logs

    @property
    def bind(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"
