"""Checkpoint folders: ``model.safetensors`` + ``config.json`` (no pickle anywhere).

``config.json`` is laid out as timm's ``save_for_hf`` writes it (``architecture``,
``num_classes``, ``num_features``, ``label_names``, ``model_args``, ``pretrained_cfg``), so
``timm.create_model("local-dir:CKPT", pretrained=True)`` rebuilds the model with its weights and
preprocessing. Beside timm's keys sit phonesim's: the data config (input size, mean, std,
crop_pct, interpolation, crop mode) that every later stage reuses, training arguments and
validation metrics for provenance, and ``extra`` for later stages' records.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.fsutil import (
    TMP_SUFFIX,
    LockBusyError,
    atomic_write_text,
    exclusive_lock,
    file_sha256,
    folder_write_problem,
    fsync_path,
    remove_leftovers,
    replaced_path,
    share_file,
    swap_folder,
    temporary_folder,
)
from common.stamps import utc_now
from common.versions import version_problem
from embedder.errors import CheckpointError, DataError, first_line
from embedder.preprocess import CROP_MODES, INTERPOLATIONS

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

# timm, torch and safetensors load only to build or save a model: reading config.json and
# hashing the weights (all ONNX Runtime inference needs) stays free of them.

FORMAT = "phonesim-checkpoint"
FORMAT_VERSION = 2  # 2: timm's config.json layout; 1: phonesim's own flat layout
READABLE_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# The kind of the hidden sibling folder a save builds the checkpoint in (``.NAME.saving-XXXX``):
# a save killed outright (kill -9, power loss) leaves it, a full copy of the model.
SAVING = "saving-"
# The scratch folder of a quantisation (``.model.int8.onnx.quantizing-XXXX``), in the
# checkpoint so that one killed outright is found again (embedder.quantize).
QUANTIZING = "quantizing-"


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
        return timm_layout(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], origin: str) -> CheckpointConfig:
        if not isinstance(data, dict):
            raise CheckpointError(f"{origin}: not a phonesim checkpoint config (not an object)")
        if data.get("format") != FORMAT:
            raise CheckpointError(f"{origin}: not a phonesim checkpoint config")
        problem = version_problem(
            data.get("format_version"),
            READABLE_VERSIONS,
            "train it again, or read it with the phonesim that wrote it",
        )
        if problem:
            raise CheckpointError(f"{origin}: checkpoint {problem}")
        names = cls.__dataclass_fields__
        try:
            config = cls(**{k: v for k, v in config_fields(data).items() if k in names})
        except TypeError as exc:
            raise CheckpointError(f"{origin}: incomplete checkpoint config ({exc})") from exc
        _check_fields(config, origin)
        if len(config.label_names) != config.num_classes:
            raise CheckpointError(f"{origin}: label_names does not match num_classes")
        return config


def _is_int(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_fields(config: CheckpointConfig, origin: str) -> None:
    """Each field of the right type, and the data config one the preprocessing can follow:
    an edited file failed later with a traceback (a KeyError, an unpacking error)."""
    problems = []
    if not (isinstance(config.architecture, str) and config.architecture):
        problems.append("architecture must be a model name")
    if not _is_int(config.num_classes) or not _is_int(config.feature_dim):
        problems.append("num_classes and num_features must be positive integers")
    if not (
        isinstance(config.label_names, list) and all(isinstance(n, str) for n in config.label_names)
    ):
        problems.append("label_names must be a list of names")
    for name in ("model_kwargs", "training", "metrics", "extra"):
        if not isinstance(getattr(config, name), dict):
            problems.append(f"{_TO_TIMM.get(name, name)} must be an object")
    problems += _data_config_problems(config.data_config)
    if problems:
        raise CheckpointError(f"{origin}: {'; '.join(problems)}")


def _data_config_problems(dc: Any) -> list[str]:
    if not isinstance(dc, dict):
        return ["data_config must be an object"]
    problems = []
    size = dc.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(_is_int(v) for v in size)):
        problems.append("data_config.input_size must be [channels, height, width], each >= 1")
    for name in ("mean", "std"):
        values = dc.get(name)
        if not (
            isinstance(values, list)
            and len(values) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            and (name == "mean" or all(v > 0 for v in values))
        ):
            problems.append(
                f"data_config.{name} must be 3 numbers" + (" above 0" if name == "std" else "")
            )
    if dc.get("crop_mode") not in (None, *CROP_MODES):
        problems.append(f"data_config.crop_mode must be one of {', '.join(CROP_MODES)}")
    if dc.get("interpolation", "bilinear") not in (*INTERPOLATIONS, "random"):
        problems.append(f"data_config.interpolation must be one of {', '.join(INTERPOLATIONS)}")
    crop_pct = dc.get("crop_pct")
    if crop_pct is not None and not (isinstance(crop_pct, int | float) and 0 < crop_pct <= 1):
        problems.append("data_config.crop_pct must be in (0, 1]")
    return problems


# timm's names for two of our fields (format version 2 onwards).
_FROM_TIMM = {"num_features": "feature_dim", "model_args": "model_kwargs"}
_TO_TIMM = {ours: theirs for theirs, ours in _FROM_TIMM.items()}
# Where a registered pretrained config says the weights come from: not true of a checkpoint.
_SOURCE_KEYS = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source")
# What describes the source model's classes or evaluation, replaced by the checkpoint's own.
_SOURCE_ONLY_KEYS = (
    *("label_names", "label_descriptions", "label_offset"),
    *("test_input_size", "test_crop_pct", "test_pool_size"),
)


def timm_pretrained_cfg(config: CheckpointConfig) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for the checkpoint: the registered one, with our data config.

    timm reads preprocessing from here (``resolve_model_data_config``), so a model built by
    timm from the folder preprocesses exactly as phonesim does.
    """
    from timm.models import PretrainedCfg, get_pretrained_cfg

    registered = get_pretrained_cfg(config.architecture)
    cfg = registered.to_dict() if registered is not None else {}
    drop = (*_SOURCE_KEYS, *_SOURCE_ONLY_KEYS)
    cfg = {k: v for k, v in cfg.items() if v is not None and k not in drop}
    if list(cfg.get("input_size", ())) != list(config.data_config.get("input_size", ())):
        cfg.pop("pool_size", None)  # the feature map size of another input size
    known = {f.name for f in fields(PretrainedCfg)}
    cfg.update({k: v for k, v in config.data_config.items() if k in known})
    cfg.setdefault("architecture", config.architecture)
    cfg["num_classes"] = config.num_classes
    cfg["custom_load"] = False  # the weights are a plain timm state dict
    return cfg


def timm_layout(config: CheckpointConfig) -> dict[str, Any]:
    """``config.json`` content: timm's ``save_for_hf`` keys first, then phonesim's own."""
    return {
        "architecture": config.architecture,
        "num_classes": config.num_classes,
        "num_features": config.feature_dim,
        "label_names": config.label_names,
        "model_args": config.model_kwargs,
        "pretrained_cfg": timm_pretrained_cfg(config),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "data_config": config.data_config,
        "training": config.training,
        "metrics": config.metrics,
        "extra": config.extra,
    }


def config_fields(data: dict[str, Any]) -> dict[str, Any]:
    """``CheckpointConfig`` fields from a ``config.json`` in either layout (version 1 or 2)."""
    if data.get("format_version") == 1:
        return data
    return {_FROM_TIMM.get(k, k): v for k, v in data.items()}


# `phonesim duplicates calibrate`'s work folder, by default inside the checkpoint it calibrates.
CALIBRATION_FOLDER = "duplicates-calibration"
# What a checkpoint folder holds of phonesim's own: the weights, the config, the ONNX graphs
# (embedder.graphs.GRAPH_FILES) and the calibration's work, all made for the weights a new
# save replaces. Hidden names are temporaries.
_OWN_FILES = frozenset(
    {WEIGHTS_FILE, CONFIG_FILE, "model.onnx", "model.int8.onnx", CALIBRATION_FOLDER}
)


# What file browsers leave in any folder they show: replacing the folder may drop it.
_BROWSER_NOISE = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def _own_temporary(name: str) -> bool:
    """A file this code leaves while writing one of the checkpoint's own files (see
    :func:`common.fsutil.temporary_file`), or a file browser's. Any other name, hidden ones
    (``.git``, ``.env``) included, is the user's, which replacing the folder would delete."""
    if name in _BROWSER_NOISE or name.startswith(f".model.int8.onnx.{QUANTIZING}"):
        return True
    return name.endswith(TMP_SUFFIX) and any(name.startswith(f".{own}.") for own in _OWN_FILES)


def check_checkpoint_target(out: str | Path) -> Path:
    """``out`` may be written as a checkpoint: absent, an empty folder, or a checkpoint.

    Saving replaces the folder, so anything else there (a typo'd ``--out data/``) is refused.
    Returns the absolute path to save to (a symlink is followed, so the link survives).
    """
    if not str(out).strip():  # abspath("") is the working folder, which was then named
        raise CheckpointError("the output folder is empty: give a folder to save the checkpoint")
    out = replaced_path(Path(os.path.abspath(out)))
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(not _own_temporary(p.name) for p in out.iterdir()):
        try:
            read_config(out)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{out}: exists and is not a phonesim checkpoint that can be replaced ({exc}); "
                "choose another output folder"
            ) from None
        # Saving replaces the whole folder: a user's file kept beside the model would go.
        foreign = sorted(
            p.name for p in out.iterdir() if p.name not in _OWN_FILES and not _own_temporary(p.name)
        )
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise CheckpointError(
                f"{out}: holds {foreign[0]!r}{more} beside the checkpoint, which replacing it "
                "would delete; move it out, or choose another output folder"
            )
    if not out.name:
        raise CheckpointError(f"{out}: not usable as a checkpoint folder")
    problem = folder_write_problem(out.parent, created=True)  # now, not after an hour's training
    if problem:
        raise CheckpointError(f"{out}: cannot save a checkpoint here: {problem}")
    return out


def check_outside_inputs(out: str | Path, inputs: Mapping[str, str | Path | None]) -> None:
    """:class:`DataError` when the output folder ``out`` lies in an input folder of images
    (``inputs``: flag -> path): what is saved there (a checkpoint, a report's PNG) would be
    read back by the next run as a class of photos, or fail it ("class 'ck' has no images").
    A CSV manifest lists its images, so a folder beside it is not read: only folders count."""
    target = Path(os.path.abspath(out)).resolve()
    for flag, given in inputs.items():
        folder = Path(given).resolve() if given else None
        if folder is None or not folder.is_dir() or not target.is_relative_to(folder):
            continue
        inside = target.relative_to(folder).parts
        if not inside:
            raise DataError(f"{out}: is the {flag} folder itself; write it outside the images")
        raise DataError(
            f"{out}: inside the {flag} folder {given}, where it would be read as a class of "
            f"photos ({inside[0]!r}); choose a folder outside {given}"
        )


def _lock_file(out: Path) -> Path:
    """The lock beside the checkpoint folder: the folder itself is replaced by each save."""
    return out.parent / f".{out.name}.lock"


@contextmanager
def training_lock(out: Path) -> Iterator[None]:
    """Hold for the block the lock that lets one training at a time save into ``out``, or
    raise :class:`CheckpointError` at once, naming the process that holds it.

    Two trainings into one folder both ended "saved", each naming its own metrics, while the
    folder held one run's model (their saves alternated epoch by epoch). The lock is a file
    beside the folder, not the folder itself: :func:`embedder.graphs.checkpoint_lock` flocks
    the folder for graph exports, and a second flock on it in the same process would wait
    for ever.
    """
    lock = _lock_file(out)
    busy = f"{out}: another training is saving to this folder now"
    out.parent.mkdir(parents=True, exist_ok=True)  # the lock goes there; checked writable
    with ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(lock, busy))
        except LockBusyError as exc:
            raise CheckpointError(
                f"{busy}{exc.holder}; wait for it to end, or choose another --out"
            ) from None
        yield


def remove_interrupted_saves(out: Path) -> None:
    """Delete the folders that saves into ``out`` killed outright left beside it (each a full
    copy of a model; they stayed for good, unsaid). Only under :func:`training_lock`: no
    other training is saving into ``out`` meanwhile."""
    remove_leftovers(out, SAVING, f"a save into {out} that was killed", log)


def save_checkpoint(model: nn.Module, config: CheckpointConfig, out: str | Path) -> Path:
    """Write the checkpoint folder atomically: a reader sees the old or the new one, never half.

    Also under Ctrl-C: if the swap is interrupted, the previous checkpoint is put back.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    out = check_checkpoint_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_folder(out, SAVING)  # named, so what a killed save left is found again
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        try:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        except SafetensorError as exc:  # a full disk: "I/O error: No space left on device"
            # An OSError, as every other failed write: one line and exit 1, not a traceback.
            raise OSError(errno.EIO, f"cannot write the weights ({exc})", str(out)) from exc
        share_file(tmp / WEIGHTS_FILE)  # safetensors writes it owner-only
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
    if path.is_file():
        raise CheckpointError(f"{path}: is a file; give the checkpoint folder that holds it")
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: checkpoint folder not found; 'phonesim train' makes one ('make demo' the "
            "demo's, in runs/demo/checkpoint)"
        )
    if not config_path.is_file() or not (path / WEIGHTS_FILE).is_file():
        inner = [p.parent.name for p in sorted(path.glob(f"*/{CONFIG_FILE}"))
                 if (p.parent / WEIGHTS_FILE).is_file()]  # fmt: skip
        hint = f"; the checkpoint may be {path / inner[0]}" if len(inner) == 1 else ""
        raise CheckpointError(
            f"{path}: not a checkpoint (needs {WEIGHTS_FILE} and {CONFIG_FILE}){hint}"
        )
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: invalid JSON ({exc})") from exc
    return CheckpointConfig.from_json(data, str(config_path))


# The SHA-256 of the weights bytes a model was loaded from, kept on the model: a graph made from
# it records what it was made from, even if the file was replaced meanwhile.
LOADED_WEIGHTS_ATTR = "phonesim_weights_sha256"


def loaded_weights_hash(model: nn.Module) -> str | None:
    """The :func:`checkpoint_hash` of the weights ``model`` was loaded from (None: not loaded
    by :func:`load_checkpoint`)."""
    value = getattr(model, LOADED_WEIGHTS_ATTR, None)
    return value if isinstance(value, str) else None


def load_checkpoint(path: str | Path) -> tuple[nn.Module, CheckpointConfig]:
    """Rebuild the model from a checkpoint folder, in eval mode on the CPU."""
    import timm
    from safetensors.torch import load as load_weights

    path = Path(path)
    config = read_config(path)
    try:
        model = timm.create_model(
            config.architecture,
            pretrained=False,
            num_classes=config.num_classes,
            **config.model_kwargs,
        )
        # Read once, hashed and loaded from the same bytes: the file may be replaced meanwhile
        # (a training run into the same folder), and a graph must record the weights it holds.
        data = (path / WEIGHTS_FILE).read_bytes()
        state = load_weights(data)
        weights_sha256 = hashlib.sha256(data).hexdigest()
        del data
    except Exception as exc:  # timm, safetensors and torch raise many kinds
        raise CheckpointError(f"{path}: cannot load model ({first_line(exc)})") from exc
    # torch's own message lists every tensor over many lines: one line says what is wrong.
    problem = _weights_problem(model.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"{path}: {WEIGHTS_FILE} does not hold the model {CONFIG_FILE} describes "
            f"({config.architecture}, {config.num_classes} classes): {problem}"
        )
    built = embedding_width(model, config.feature_dim)
    if built != config.feature_dim:  # else every embedding file and index is sized wrong
        fix = "correct the file"
        if config.feature_dim == getattr(model, "num_features", None):
            # phonesim before the width fix recorded timm's num_features (MobileNetV3: 288)
            fix = (
                f"an older phonesim recorded the width before the head's hidden layer: set "
                f'"num_features" to {built} in {CONFIG_FILE} (nothing embedded with it before)'
            )
        raise CheckpointError(
            f"{path}: {CONFIG_FILE} says num_features {config.feature_dim}, but its model "
            f"({config.architecture}) gives {built}-dimensional features; {fix}"
        )
    model.load_state_dict(state)
    model.eval()
    setattr(model, LOADED_WEIGHTS_ATTR, weights_sha256)
    return model, config


def embedding_width(model: Any, default: int = 0) -> int:
    """The width of the penultimate features the embedder returns (``forward_head(...,
    pre_logits=True)``): timm's ``head_hidden_size`` where the head has a hidden layer
    (MobileNetV3: 1024 where ``num_features`` is 288), else ``num_features``."""
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    return int(width) if width else default


def _weights_problem(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str | None:
    """How ``given`` tensors differ from a model's ``expected`` ones, or None when they fit."""
    missing = [k for k in expected if k not in given]
    unknown = [k for k in given if k not in expected]
    reshaped = [
        k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{len(names)} {what} (first: {names[0]})"
        for names, what in (
            (missing, "tensors missing"),
            (unknown, "tensors it does not have"),
            (reshaped, "of another shape"),
        )
        if names
    ]
    return "; ".join(parts) or None


#: ``training.state`` in ``config.json``: what became of the run that saved the checkpoint.
#: Each best epoch is saved as it comes with "running"; the end of the run says "finished",
#: Ctrl-C "interrupted", a divergence "diverged". One killed outright stays "running". Older
#: checkpoints have none.
TRAINING_STATES = ("running", "finished", "interrupted", "diverged")
_UNFINISHED = {
    "running": "was killed, or is still going",
    "interrupted": "was stopped (Ctrl-C)",
    "diverged": "diverged",
}


def set_training_state(path: str | Path, state: str) -> None:
    """Record what became of the training run in the checkpoint's ``config.json``."""
    if state not in TRAINING_STATES:
        raise ValueError(f"training state must be one of {TRAINING_STATES}, got {state!r}")
    from embedder.graphs import checkpoint_lock  # it reads this module: imported here

    config_path = Path(path) / CONFIG_FILE
    with checkpoint_lock(path):  # as the graph and calibration records: no write lost
        data = json.loads(config_path.read_text())
        data.setdefault("training", {})["state"] = state
        data["training"]["ended"] = utc_now()
        atomic_write_text(config_path, json.dumps(data, indent=2) + "\n")


def unfinished_training(config: CheckpointConfig) -> str | None:
    """Why the checkpoint is not a finished run's (a sentence), or None: a training killed
    mid-run had left a checkpoint that read as complete."""
    how = _UNFINISHED.get(config.training.get("state"))
    if how is None:
        return None
    epoch, epochs = config.metrics.get("epoch"), config.training.get("epochs")
    at = f" at epoch {epoch} of {epochs}" if epoch is not None and epochs is not None else ""
    return f"saved by a training that did not finish: its best epoch so far{at}; the run {how}"


def checkpoint_hash(path: str | Path) -> str:
    """Identity of a checkpoint's weights, recorded in indexes and exports."""
    return file_sha256(Path(path) / WEIGHTS_FILE)
