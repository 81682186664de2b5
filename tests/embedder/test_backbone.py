import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from embedder.backbone import (
    LITE0_MODEL,
    create_backbone,
    lite0_weights_file,
    map_lite0_state_dict,
    read_state_dict,
)
from embedder.errors import WeightsError
from embedder.images import load_image


def test_lite0_package_weights_map_one_to_one():
    source = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0_MODEL, pretrained=False)
    mapped = map_lite0_state_dict(source, model)
    assert len(source) == len(mapped) == 296
    model.load_state_dict(mapped)  # strict: every tensor has a home
    for (src, tensor), dst in zip(source.items(), model.state_dict(), strict=True):
        assert torch.equal(tensor, model.state_dict()[dst]), (src, dst)


def test_lite0_imagenet_default_is_pretrained_with_new_head():
    model = create_backbone(LITE0_MODEL, num_classes=6, weights="imagenet")
    scratch = create_backbone(LITE0_MODEL, num_classes=6, weights="none")
    source = read_state_dict(lite0_weights_file())
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])
    assert not torch.equal(scratch.conv_stem.weight, source["_conv_stem.weight"])
    assert model.get_classifier().out_features == 6
    imagenet = create_backbone(LITE0_MODEL, num_classes=1000, weights="imagenet")
    assert torch.equal(imagenet.get_classifier().weight, source["_fc.weight"])


@pytest.mark.slow
def test_lite0_labels_real_phone_photos_as_phones(phone_brands):
    # The mapped model must behave like the ImageNet classifier it came from.
    model = create_backbone(LITE0_MODEL, num_classes=1000, weights="imagenet").eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    files = sorted((phone_brands / "val").glob("*/*.jpg"))[::6]
    x = torch.stack([transform(load_image(f)) for f in files])
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices
    phone_classes = {487, 605, 590}  # cellular telephone, iPod, hand-held computer
    hits = sum(bool(phone_classes & set(row.tolist())) for row in top5)
    assert hits >= 0.5 * len(files), (hits, len(files))


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
