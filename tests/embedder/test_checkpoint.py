"""Checkpoint folders: safetensors + timm-layout config.json, atomic saves, both layouts read."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from embedder.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from embedder.data import load_catalog
from embedder.errors import CheckpointError
from embedder.inference import Embedder
from tests.conftest import TINY_SIZE


def test_checkpoint_folder_holds_safetensors_and_config(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    # The ONNX graph appears beside them once an engine has used the checkpoint.
    assert {CONFIG_FILE, WEIGHTS_FILE} <= names <= {CONFIG_FILE, WEIGHTS_FILE, "model.onnx"}
    config = json.loads((tiny_checkpoint / CONFIG_FILE).read_text())
    assert config["architecture"] == "test_efficientnet"
    assert config["num_classes"] == len(config["label_names"]) == 3
    assert config["data_config"]["input_size"] == [3, TINY_SIZE, TINY_SIZE]
    assert config["training"]["seed"] == 0
    assert "val_accuracy" in config["metrics"]
    # timm's save_for_hf keys beside ours
    assert config["num_features"] > 0 and config["model_args"] == {}
    assert config["pretrained_cfg"]["input_size"] == [3, TINY_SIZE, TINY_SIZE]
    assert config["pretrained_cfg"]["num_classes"] == 3


def test_timm_builds_a_checkpoint_folder_with_its_weights(tiny_checkpoint):
    """timm's own loader reads the folder: same logits, same labels, same preprocessing."""
    import timm
    from timm.data import resolve_model_data_config

    ours, config = load_checkpoint(tiny_checkpoint)
    theirs = timm.create_model(f"local-dir:{tiny_checkpoint}", pretrained=True).eval()
    x = torch.randn(3, *config.data_config["input_size"])
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=0, atol=0)
    assert theirs.pretrained_cfg["label_names"] == config.label_names
    data_config = resolve_model_data_config(theirs)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()} == (
        config.data_config
    )


def test_checkpoints_in_the_old_flat_layout_still_load(tiny_checkpoint, tmp_path):
    """Format version 1 (before timm's layout) is read; saving it again writes version 2."""
    model, config = load_checkpoint(tiny_checkpoint)
    old = tmp_path / "v1"
    old.mkdir()
    shutil.copy(tiny_checkpoint / WEIGHTS_FILE, old / WEIGHTS_FILE)
    v1 = {
        "format": "phonesim-checkpoint",
        "format_version": 1,
        "architecture": config.architecture,
        "num_classes": config.num_classes,
        "label_names": config.label_names,
        "data_config": config.data_config,
        "feature_dim": config.feature_dim,
        "model_kwargs": {},
        "training": {"seed": 7},
        "metrics": {"val_accuracy": 0.5},
        "extra": {"duplicates": {"threshold": 0.8}},
    }
    (old / CONFIG_FILE).write_text(json.dumps(v1, indent=2))
    again, read = load_checkpoint(old)
    assert (read.feature_dim, read.label_names, read.data_config) == (
        config.feature_dim,
        config.label_names,
        config.data_config,
    )
    assert read.training == {"seed": 7} and read.extra == {"duplicates": {"threshold": 0.8}}
    x = torch.randn(2, *config.data_config["input_size"])
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    save_checkpoint(again, read, old)
    rewritten = json.loads((old / CONFIG_FILE).read_text())
    assert rewritten["format_version"] == 2 and rewritten["num_features"] == config.feature_dim
    assert "feature_dim" not in rewritten and load_checkpoint(old)[1] == read


def test_a_checkpoint_is_readable_by_other_users_as_the_umask_says(tiny_checkpoint, tmp_path):
    """A server or CI job running as another user loads it: not mkdtemp's or safetensors'
    owner-only modes."""
    model, config = load_checkpoint(tiny_checkpoint)
    old = os.umask(0o022)
    try:
        out = save_checkpoint(model, config, tmp_path / "shared")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_save_then_load_gives_identical_embeddings(tiny_checkpoint, tiny_catalog, tmp_path):
    model, config = load_checkpoint(tiny_checkpoint)
    copy = save_checkpoint(model, config, tmp_path / "copy")
    images = [Image.open(s.path) for s in load_catalog(tiny_catalog).samples[:4]]
    a = Embedder.from_checkpoint(tiny_checkpoint).embed_images(images)
    b = Embedder.from_checkpoint(copy).embed_images(images)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_an_interrupted_checkpoint_swap_puts_the_previous_one_back(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """Ctrl-C between moving the old checkpoint aside and moving the new one in loses nothing."""
    import os
    import shutil

    from common import fsutil
    from embedder import checkpoint as checkpoint_module

    monkeypatch.setattr(fsutil, "exchange", lambda a, b: False)  # the two-rename fallback

    out = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, out)
    before = (out / WEIGHTS_FILE).read_bytes()
    model, config = load_checkpoint(out)
    real_replace = os.replace
    calls = {"n": 0}

    def interrupted_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the new checkpoint's move into place
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, config, out)
    monkeypatch.undo()
    assert (out / WEIGHTS_FILE).read_bytes() == before
    load_checkpoint(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folders left


def test_checkpoint_targets_relative_dot_and_symlinks(tiny_checkpoint, tmp_path, monkeypatch):
    """'.' saves into the current folder; a symlinked --out keeps its link across saves."""
    import os

    from embedder.checkpoint import check_checkpoint_target

    model, config = load_checkpoint(tiny_checkpoint)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_text("finder noise")  # a file browser's: not the user's
    monkeypatch.chdir(empty)
    assert check_checkpoint_target(".") == empty
    # "--out ''" had been refused naming the working folder, as if the user had given it.
    for blank in ("", "  "):
        with pytest.raises(CheckpointError, match="output folder is empty"):
            check_checkpoint_target(blank)
    # Other hidden entries are the user's, which saving (it replaces the folder) deleted.
    for hidden in (".git", ".env"):
        repo = tmp_path / f"with{hidden}"
        repo.mkdir()
        (repo / hidden).mkdir() if hidden == ".git" else (repo / hidden).write_text("s")
        with pytest.raises(CheckpointError, match="not a phonesim checkpoint"):
            check_checkpoint_target(repo)
        kept = tmp_path / f"ck{hidden}"
        shutil.copytree(tiny_checkpoint, kept)
        (kept / hidden).mkdir() if hidden == ".git" else (kept / hidden).write_text("s")
        with pytest.raises(CheckpointError, match=f"holds '\\{hidden}'"):
            save_checkpoint(model, config, kept)
        assert (kept / hidden).exists()
    real = tmp_path / "real"
    os.symlink(real, tmp_path / "link")
    for _ in range(2):  # the second save replaces the first through the link
        save_checkpoint(model, config, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and load_checkpoint(tmp_path / "link")
    with pytest.raises(CheckpointError, match="format_version 99 is newer than"):
        bad = tmp_path / "old-format"
        shutil.copytree(tiny_checkpoint, bad)
        cfg = json.loads((bad / CONFIG_FILE).read_text())
        cfg["format_version"] = 99
        (bad / CONFIG_FILE).write_text(json.dumps(cfg))
        check_checkpoint_target(bad)


def test_unwritable_checkpoint_target_is_refused_before_training(tmp_path):
    from embedder.checkpoint import check_checkpoint_target

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CheckpointError, match="a-file is a file, not a folder"):
        check_checkpoint_target(tmp_path / "a-file" / "deeper" / "ck")
    assert check_checkpoint_target(tmp_path / "new" / "deeper" / "ck")  # made when saving
    with pytest.raises(CheckpointError, match="not writable"):
        check_checkpoint_target("/proc/ck")


def test_a_checkpoint_holding_other_files_is_not_replaced(tiny_checkpoint, tmp_path):
    """Saving swaps in a whole new folder: a cue file or notes kept beside the model were
    deleted without a word. Its own files (graphs included, rebuilt for new weights) are not
    in the way."""
    from embedder.checkpoint import _OWN_FILES, check_checkpoint_target
    from embedder.graphs import GRAPH_FILES

    assert set(GRAPH_FILES.values()) <= _OWN_FILES
    out = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, out)
    (out / "model.onnx").write_bytes(b"stale graph")
    (out / "duplicates-calibration").mkdir()  # calibrate's work for these weights
    (out / ".model.onnx.k2j4h1.tmp").write_text("x")  # an export's, cut short
    (out / ".DS_Store").write_text("x")
    assert check_checkpoint_target(out) == out
    (out / "cues.json").write_text("{}")
    (out / "notes").mkdir()
    with pytest.raises(CheckpointError, match="holds 'cues.json' and 1 more beside the"):
        check_checkpoint_target(out)


def test_weights_of_another_model_are_one_line_saying_so(tiny_checkpoint, tmp_path):
    """torch's message spanned lines and 2,200 characters of missing keys."""
    import json
    import shutil

    from embedder.checkpoint import CONFIG_FILE, load_checkpoint
    from embedder.errors import CheckpointError

    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    data = json.loads((ckpt / CONFIG_FILE).read_text())
    data["num_classes"] += 1
    data["label_names"] = [*data["label_names"], "extra"]
    (ckpt / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400
    assert "does not hold the model config.json describes" in message
    assert "of another shape (first: " in message


def test_a_wrong_num_features_is_refused_at_load(tiny_checkpoint, tmp_path):
    """Never checked: 'embed' failed after the work with "Can't broadcast (15, 1280) -> (15,
    999)", and 'index query' blamed the index for the checkpoint's dimension."""
    import json
    import shutil

    from embedder.checkpoint import CONFIG_FILE, load_checkpoint
    from embedder.errors import CheckpointError

    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    data = json.loads((ckpt / CONFIG_FILE).read_text())
    real = data["num_features"]
    data["num_features"] = real + 7
    (ckpt / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"num_features {real + 7}, but .* gives {real}-dim"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: [], "not an object"),
        (lambda c: {**c, "data_config": {}}, "input_size must be"),
        (lambda c: {**c, "data_config": {**c["data_config"], "input_size": [3, 64]}}, "input_size"),
        (
            lambda c: {**c, "data_config": {**c["data_config"], "input_size": [3, 0, 0]}},
            "input_size",
        ),
        (lambda c: {**c, "data_config": {**c["data_config"], "std": [0, 1, 1]}}, "std must be"),
        (lambda c: {**c, "data_config": {**c["data_config"], "crop_mode": "x"}}, "crop_mode"),
        (lambda c: {**c, "data_config": {**c["data_config"], "interpolation": "x"}}, "interpol"),
        (lambda c: {**c, "num_features": "x"}, "num_features must be"),
        (lambda c: {**c, "label_names": "abc"}, "label_names must be"),
        (lambda c: {**c, "model_args": []}, "model_args must be an object"),
    ],
)
def test_an_edited_config_is_one_line_naming_the_field(tiny_checkpoint, tmp_path, edit, message):
    """Each of these failed later, in the ONNX export or the preprocessing, with a
    traceback (AttributeError, KeyError, an unpacking ValueError)."""
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    config = json.loads((ck / CONFIG_FILE).read_text())
    (ck / CONFIG_FILE).write_text(json.dumps(edit(config)))
    with pytest.raises(CheckpointError, match=message) as refused:
        load_checkpoint(ck)
    assert "\n" not in str(refused.value)


def test_a_head_with_a_hidden_layer_records_the_width_it_embeds_at(tiny_catalog, tmp_path):
    """MobileNetV3's embedding (pre-logits) is 1024 wide where timm's num_features says 288:
    the checkpoint recorded 288, and its graph and every index were sized by it."""
    from embedder.checkpoint import read_config
    from embedder.inference import Embedder
    from embedder.train import train
    from tests.conftest import tiny_train_config

    out = tmp_path / "mnv3"
    train(tiny_train_config(tiny_catalog, out, model="mobilenetv3_small_050"))
    assert read_config(out).feature_dim == 1024
    embedder = Embedder.from_checkpoint(out, runtime="torch")
    batch = embedder.embed_paths(sorted(tiny_catalog.rglob("*.jpg"))[:2])
    assert batch.embeddings.shape == (2, 1024) == (2, embedder.dim)
    # As an older phonesim wrote it: refused, saying which value to put in.
    import json

    from embedder.checkpoint import CONFIG_FILE
    from embedder.errors import CheckpointError

    data = json.loads((out / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps({**data, "num_features": 288}))
    with pytest.raises(CheckpointError, match='older phonesim.*"num_features" to 1024'):
        load_checkpoint(out)


def test_a_full_disk_while_saving_is_an_oserror_and_keeps_the_old_checkpoint(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """safetensors raised its own SafetensorError on a full disk: `train` printed a
    traceback (exit 1) where every other failed write is one line."""
    import safetensors.torch
    from safetensors import SafetensorError

    from common.errors import reporting_errors

    model, config = load_checkpoint(tiny_checkpoint)
    out = save_checkpoint(model, config, tmp_path / "ck")
    before = (out / WEIGHTS_FILE).read_bytes()

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="cannot write the weights.*No space left"):
        save_checkpoint(model, config, out)
    assert reporting_errors("phonesim train", lambda: save_checkpoint(model, config, out)) == 1
    assert (out / WEIGHTS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
