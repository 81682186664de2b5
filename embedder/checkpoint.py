"""Checkpoint folders: ``model.safetensors`` + ``config.json`` (no pickle anywhere).

The config mirrors timm's ``save_for_hf`` layout: the architecture, ``num_classes``,
``label_names`` and the data config (input size, mean, std, crop_pct, interpolation) that every
later stage reuses, plus training arguments and validation metrics for provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file, save_file
from torch import nn

from common.fsutil import fsync_path, swap_folder
from embedder.errors import CheckpointError

FORMAT = "phonesim-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class CheckpointConfig:
    """Everything needed to rebuild the model and its preprocessing without the training code."""

    architecture: str
    num_classes: int
    label_names: list[str]
    data_config: dict[str, Any]
    feature_dim: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, data: dict[str, Any], origin: str) -> CheckpointConfig:
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{origin}: not a phonesim checkpoint config")
        if data.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{origin}: checkpoint format version {data.get('format_version')} "
                f"is not supported (this phonesim reads version {FORMAT_VERSION})"
            )
        fields = cls.__dataclass_fields__
        try:
            config = cls(**{k: v for k, v in data.items() if k in fields})
        except TypeError as exc:
            raise CheckpointError(f"{origin}: incomplete checkpoint config ({exc})") from exc
        if len(config.label_names) != config.num_classes:
            raise CheckpointError(f"{origin}: label_names does not match num_classes")
        return config


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_checkpoint_target(out: str | Path) -> Path:
    """``out`` may be written as a checkpoint: absent, an empty folder, or a checkpoint.

    Saving replaces the folder, so anything else there (a typo'd ``--out data/``) is refused.
    Returns the absolute path to save to (a symlink is followed, so the link survives).
    """
    out = Path(out)
    out = out.resolve() if out.is_symlink() else Path(os.path.abspath(out))
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        try:
            read_config(out)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{out}: exists and is not a phonesim checkpoint that can be replaced ({exc}); "
                "choose another output folder"
            ) from None
    if not out.name:
        raise CheckpointError(f"{out}: not usable as a checkpoint folder")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(model: nn.Module, config: CheckpointConfig, out: str | Path) -> Path:
    """Write the checkpoint folder atomically: a reader sees the old or the new one, never half.

    Also under Ctrl-C: if the swap is interrupted, the previous checkpoint is put back.
    """
    out = check_checkpoint_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint is shared
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2) + "\n")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            fsync_path(tmp / name)
        swap_folder(tmp, out, out.with_name(f".{out.name}.old"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_config(path: str | Path) -> CheckpointConfig:
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint folder not found")
    if not config_path.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: not a checkpoint (needs {WEIGHTS_FILE} and {CONFIG_FILE})")
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: invalid JSON ({exc})") from exc
    return CheckpointConfig.from_json(data, str(config_path))


def load_checkpoint(path: str | Path) -> tuple[nn.Module, CheckpointConfig]:
    """Rebuild the model from a checkpoint folder, in eval mode on the CPU."""
    path = Path(path)
    config = read_config(path)
    try:
        model = timm.create_model(
            config.architecture,
            pretrained=False,
            num_classes=config.num_classes,
            **config.model_kwargs,
        )
        state = load_file(str(path / WEIGHTS_FILE), device="cpu")
        model.load_state_dict(state)
    except Exception as exc:  # timm, safetensors and torch raise many kinds
        raise CheckpointError(f"{path}: cannot load model ({type(exc).__name__}: {exc})") from exc
    model.eval()
    return model, config


def checkpoint_hash(path: str | Path) -> str:
    """Identity of a checkpoint's weights, recorded in indexes and exports."""
    return file_sha256(Path(path) / WEIGHTS_FILE)
