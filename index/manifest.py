"""``manifest.json``: what an index folder holds and which embedder produced its vectors."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.fsutil import atomic_write_text
from common.versions import version_problem
from index.errors import IndexMismatchError, IndexNotFoundError, ManifestError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
METRIC = "inner_product"


@dataclass(frozen=True)
class Manifest:
    """Identity and layout of an index folder.

    ``count`` is the number of items at the last checkpoint; the catalog store is authoritative
    between checkpoints (``len(index)``). ``search_defaults`` holds the tuned search-time
    parameters (``nprobe`` or ``efSearch``) and ``tuning`` how they were measured.
    ``image_roots``: the folders the catalog's ``image`` paths lay in at build time, the only
    places a server reads catalog thumbnails from.
    """

    model_name: str
    checkpoint_hash: str
    dim: int
    kind: str
    factory: str
    count: int = 0
    metric: str = METRIC
    format_version: int = FORMAT_VERSION
    search_defaults: dict[str, int] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    image_roots: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def with_count(self, count: int) -> Manifest:
        return replace(self, count=int(count))

    def check(
        self,
        *,
        expect_model: str | None = None,
        expect_checkpoint_hash: str | None = None,
        expect_dim: int | None = None,
        where: str = "index",
        fix: str = (
            "Use the checkpoint it was built from, or rebuild it with 'phonesim index build' "
            "from embeddings of this checkpoint."
        ),
        other: str = "expected",
        from_checkpoint: bool = True,
    ) -> None:
        """Raise :class:`IndexMismatchError` naming every field that differs from the expectation.

        ``None`` means "do not check". ``fix`` ends the message: by default, the checkpoint
        the index was built from, or an index rebuilt with the embedder in use (an upgrade).
        ``other`` names the expectation's side in the message ("expected" by default).
        ``from_checkpoint``: the expectation is a checkpoint's, so the same weights at another
        dimension mean its config.json was edited, and the message says so.
        """
        diffs = []
        if expect_model is not None and expect_model != self.model_name:
            diffs.append(f"model {self.model_name!r} ({other} {expect_model!r})")
        if expect_checkpoint_hash is not None and expect_checkpoint_hash != self.checkpoint_hash:
            diffs.append(
                f"checkpoint hash {self.checkpoint_hash[:12]}… "
                f"({other} {expect_checkpoint_hash[:12]}…)"
            )
        if expect_dim is not None and int(expect_dim) != self.dim:
            if from_checkpoint and expect_checkpoint_hash == self.checkpoint_hash:
                raise IndexMismatchError(
                    f"{where} was built from these same weights at dimension {self.dim}, but the "
                    f"checkpoint now says {int(expect_dim)}: its config.json was edited; correct "
                    "its num_features"
                )
            diffs.append(f"dimension {self.dim} ({other} {int(expect_dim)})")
        if diffs:
            raise IndexMismatchError(
                f"{where} was built with a different embedder: " + "; ".join(diffs) + ". " + fix
            )


_REQUIRED = {"model_name": str, "checkpoint_hash": str, "dim": int, "kind": str, "factory": str}


def manifest_from_dict(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Validate a decoded manifest; raise :class:`ManifestError` saying what is wrong."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(data).__name__}")
    problem = version_problem(
        data.get("format_version"),
        (FORMAT_VERSION,),
        "rebuild the index with this version of phonesim",
    )
    if problem:
        raise ManifestError(f"{where}: {problem}")
    for key, typ in _REQUIRED.items():
        if not isinstance(data.get(key), typ) or isinstance(data.get(key), bool):
            raise ManifestError(f"{where}: field {key!r} is missing or not a {typ.__name__}")
    if data["dim"] <= 0:
        raise ManifestError(f"{where}: dim must be positive, got {data['dim']}")
    metric = data.get("metric", METRIC)
    if metric != METRIC:
        raise ManifestError(f"{where}: unsupported metric {metric!r} (expected {METRIC!r})")
    known = {f for f in Manifest.__dataclass_fields__}
    kwargs = {k: v for k, v in data.items() if k in known}
    for key in ("search_defaults", "tuning", "source"):
        if not isinstance(kwargs.get(key, {}), dict):
            raise ManifestError(f"{where}: field {key!r} must be an object")
    roots = kwargs.get("image_roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise ManifestError(f"{where}: field 'image_roots' must be a list of folder paths")
    return Manifest(**kwargs)


def read_manifest(folder: str | Path) -> Manifest:
    """Read and validate ``folder/manifest.json``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise IndexNotFoundError(f"{folder}: is a file, not an index folder")
    if not folder.is_dir():
        # A build killed between its two renames leaves the previous index beside the name.
        left = sorted(folder.parent.glob(f".{folder.name}.old-*")) if folder.name else []
        hint = (
            f"; an interrupted rebuild left the previous index at {left[-1]}"
            if left
            else "; 'phonesim index build' makes one"
        )
        raise IndexNotFoundError(f"{folder}: index folder does not exist{hint}")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise IndexNotFoundError(
            f"{folder}: not an index folder ({MANIFEST_NAME} is missing); "
            "create one with 'phonesim index build'"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    return manifest_from_dict(data, where=str(path))


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Write ``folder/manifest.json`` atomically."""
    atomic_write_text(Path(folder) / MANIFEST_NAME, manifest.to_json())
