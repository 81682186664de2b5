"""Training, checkpoints, embeddings, evaluation and the HDF5 embed job on a tiny model."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from embedder.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from embedder.data import load_catalog
from embedder.embed_job import embed_to_hdf5
from embedder.errors import CheckpointError, DataError
from embedder.evaluate import evaluate
from embedder.inference import Embedder, forward_embed
from embedder.train import stratified_split, train
from tests.conftest import TINY_SIZE, tiny_train_config


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


def test_embeddings_are_unit_norm_float32_and_probabilities_sum_to_one(
    tiny_checkpoint, tiny_catalog
):
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    samples = load_catalog(tiny_catalog).samples[:5]
    batch = embedder.embed_paths([s.path for s in samples])
    assert batch.embeddings.dtype == np.float32 and batch.probabilities.dtype == np.float32
    num_features = load_checkpoint(tiny_checkpoint)[0].num_features
    assert batch.embeddings.shape == (5, num_features) == (5, embedder.dim)
    assert batch.probabilities.shape == (5, 3)
    np.testing.assert_allclose(np.linalg.norm(batch.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batch.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_one_forward_pass_matches_the_model_logits(tiny_checkpoint):
    model, config = load_checkpoint(tiny_checkpoint)
    x = torch.randn(2, *config.data_config["input_size"])
    with torch.no_grad():
        _, probs = forward_embed(model, x)
        expected = model(x).softmax(1)
    torch.testing.assert_close(probs, expected)


def test_save_then_load_gives_identical_embeddings(tiny_checkpoint, tiny_catalog, tmp_path):
    model, config = load_checkpoint(tiny_checkpoint)
    copy = save_checkpoint(model, config, tmp_path / "copy")
    images = [Image.open(s.path) for s in load_catalog(tiny_catalog).samples[:4]]
    a = Embedder.from_checkpoint(tiny_checkpoint).embed_images(images)
    b = Embedder.from_checkpoint(copy).embed_images(images)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_training_is_deterministic_for_a_seed(tiny_catalog, tmp_path):
    first = train(tiny_train_config(tiny_catalog, tmp_path / "a", val_fraction=0.2))
    second = train(tiny_train_config(tiny_catalog, tmp_path / "b", val_fraction=0.2))
    a, b = (load_checkpoint(tmp_path / n)[0].state_dict() for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.metrics["train_loss"] == second.metrics["train_loss"]


def test_warmup_trains_only_the_head_then_fine_tuning_moves_the_backbone(tiny_catalog, tmp_path):
    import timm
    from safetensors.torch import save_file

    start = timm.create_model("test_efficientnet", num_classes=3)
    weights = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(weights))
    before = start.state_dict()

    def trained(epochs: int) -> dict:
        out = tmp_path / f"ck{epochs}"
        config = tiny_train_config(
            tiny_catalog,
            out,
            weights=str(weights),
            epochs=epochs,
            warmup_epochs=5,
            val_fraction=0.0,
            frozen_groups=0,
        )
        assert len(train(config).history) == 1 + epochs  # warm-up, then fine-tuning epochs
        return load_checkpoint(out)[0].state_dict()

    warm = trained(0)
    head = [k for k in before if k.startswith("classifier.")]
    body = [k for k in before if k not in head]
    assert all(torch.equal(warm[k], before[k]) for k in body)  # frozen, BN stats included
    assert not all(torch.equal(warm[k], before[k]) for k in head)
    tuned = trained(1)
    assert not torch.equal(tuned["conv_stem.weight"], before["conv_stem.weight"])


def test_frozen_groups_keep_the_early_layers_while_later_ones_train(tiny_catalog, tmp_path):
    import timm
    from safetensors.torch import save_file

    from embedder.train import frozen_parameter_names

    model = timm.create_model("test_efficientnet", num_classes=3)
    frozen = frozen_parameter_names(model, 2)
    assert "conv_stem.weight" in frozen and any(k.startswith("blocks.0.") for k in frozen)
    assert not any(k.startswith(("blocks.1.", "classifier.")) for k in frozen)
    assert frozen_parameter_names(model, 0) == set()
    # More groups than the model has freezes the backbone but never the classifier.
    assert not any(k.startswith("classifier.") for k in frozen_parameter_names(model, 99))

    weights = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "ck"
    train(
        tiny_train_config(
            tiny_catalog, out, weights=str(weights), val_fraction=0.0, frozen_groups=2
        )
    )
    start, tuned = model.state_dict(), load_checkpoint(out)[0].state_dict()
    assert all(torch.equal(tuned[k], start[k]) for k in frozen if k.endswith("weight"))
    assert not torch.equal(tuned["blocks.1.0.conv_exp.weight"], start["blocks.1.0.conv_exp.weight"])


@pytest.mark.parametrize(
    ("weights", "bn_stats", "kept"),
    [("file", "auto", True), ("file", "update", False), ("none", "auto", False)],
)
def test_bn_statistics_stay_pretrained_while_fine_tuning(
    tiny_catalog, tmp_path, weights, bn_stats, kept
):
    import timm
    from safetensors.torch import save_file

    from embedder.train import TrainConfig, freezes_bn_stats

    torch.manual_seed(0)
    start = timm.create_model("test_efficientnet", num_classes=3)
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(path))
    out = tmp_path / "ck"
    config = tiny_train_config(
        tiny_catalog,
        out,
        weights=str(path) if weights == "file" else "none",
        bn_stats=bn_stats,
        val_fraction=0.0,
        frozen_groups=0,
    )
    train(config)
    tuned = load_checkpoint(out)[0].state_dict()
    if weights == "none":  # random start: compare with the initial statistics (0 and 1)
        stats_kept = all(torch.all(tuned[k] == 0) for k in tuned if k.endswith("running_mean"))
    else:
        before = start.state_dict()
        stats_kept = all(
            torch.equal(tuned[k], before[k]) for k in before if k.endswith(("_mean", "_var"))
        )
        # Scale and shift of the batch norms train either way.
        assert not torch.equal(tuned["bn1.weight"], before["bn1.weight"])
    assert stats_kept is kept
    assert freezes_bn_stats(TrainConfig(data="", out="", weights="imagenet")) is True
    assert freezes_bn_stats(TrainConfig(data="", out="", bn_stats="update")) is False


def test_unknown_bn_stats_setting_is_refused(tiny_catalog, tmp_path):
    with pytest.raises(DataError, match="--bn-stats must be auto, frozen or update"):
        train(tiny_train_config(tiny_catalog, tmp_path / "ck", bn_stats="sometimes"))


def test_ctrl_c_keeps_the_best_checkpoint(tiny_catalog, tmp_path, monkeypatch):
    from embedder import train as train_module

    calls = {"n": 0}
    original = train_module.Trainer._run_epoch

    def interrupt_second_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(train_module.Trainer, "_run_epoch", interrupt_second_epoch)
    result = train(tiny_train_config(tiny_catalog, tmp_path / "ck", epochs=3, val_fraction=0.2))
    assert result.interrupted and result.best_epoch == 1
    load_checkpoint(tmp_path / "ck")  # complete and loadable


def test_unreadable_training_images_are_skipped_and_counted(tiny_catalog, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_catalog, data, ignore=shutil.ignore_patterns("*.csv"))
    broken = next((data / sorted(p.name for p in data.iterdir())[0]).glob("*.jpg"))
    broken.write_bytes(b"\xff\xd8\xff garbage")
    result = train(tiny_train_config(data, tmp_path / "ck", val_fraction=0.0))
    assert len(result.skipped) == 1 and broken.name in result.skipped[0]


def test_stratified_split_keeps_every_class_in_training(tiny_catalog):
    samples = load_catalog(tiny_catalog).samples
    train_part, val_part = stratified_split(samples, 0.5, seed=3)
    assert {s.label for s in train_part} == {s.label for s in samples}
    assert len(train_part) + len(val_part) == len(samples)
    assert stratified_split(samples, 0.5, seed=3) == (train_part, val_part)


def test_validation_classes_must_be_known(tiny_catalog, tmp_path):
    val = tmp_path / "val" / "unknown-phone"
    val.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(val / "x.jpg")
    Image.new("RGB", (16, 16)).save(tmp_path / "val" / "x.jpg")
    (tmp_path / "val" / "other").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "val" / "other" / "y.jpg")
    with pytest.raises(DataError, match="not in the training data"):
        train(tiny_train_config(tiny_catalog, tmp_path / "ck", val=str(tmp_path / "val")))


def test_evaluate_reports_metrics_and_writes_plot(tiny_checkpoint, tiny_catalog, tmp_path):
    report = evaluate(tiny_checkpoint, tiny_catalog, out=tmp_path / "eval", progress=False)
    for key in ("accuracy", "macro_f1", "recall_at_1", "recall_at_5"):
        assert 0.0 <= report[key] <= 1.0
    assert np.asarray(report["confusion_matrix"]).sum() == report["count"] == 18
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["count"] == 18


def test_embed_job_writes_hdf5_and_lists_failures(tiny_checkpoint, tiny_catalog, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_catalog, data)
    (data / "demo-extra.jpg").write_bytes(b"")  # loose file: ignored (not in a class folder)
    broken = sorted((data).glob("*/*.jpg"))[0]
    broken.write_bytes(b"not a jpeg")
    summary = embed_to_hdf5(
        tiny_checkpoint, data / "catalog.csv", tmp_path / "e.h5", workers=0, progress=False
    )
    assert summary.embedded == 17 and summary.failed == 1
    with h5py.File(tmp_path / "e.h5") as h5:
        assert h5["embeddings"].shape == (17, summary.dim)
        assert h5["probabilities"].shape == (17, 3)
        assert len(set(h5["ids"].asstr()[:])) == 17
        assert h5.attrs["model_name"] == "test_efficientnet"
        assert h5.attrs["checkpoint_hash"] and h5.attrs["normalized"]
        assert "not a recognised image" in h5["failed"].asstr()[0]
        assert set(h5["labels"].asstr()[:]) == set(json.loads(h5.attrs["label_names"]))


def test_embed_job_bad_output_and_checkpoint(tiny_checkpoint, tiny_catalog, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        embed_to_hdf5(tiny_checkpoint, tiny_catalog, tmp_path / "no" / "e.h5")
    with pytest.raises(CheckpointError, match="not found"):
        embed_to_hdf5(tmp_path / "nockpt", tiny_catalog, tmp_path / "e.h5")


def test_an_interrupted_checkpoint_swap_puts_the_previous_one_back(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """Ctrl-C between moving the old checkpoint aside and moving the new one in loses nothing."""
    import os
    import shutil

    from embedder import checkpoint as checkpoint_module

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


def test_evaluate_accepts_one_class_and_refuses_a_file_as_output(
    tiny_checkpoint, tiny_catalog, tmp_path
):
    import shutil

    one = tmp_path / "one"
    first = sorted(p for p in tiny_catalog.iterdir() if p.is_dir())[0]
    shutil.copytree(first, one / first.name)
    assert evaluate(tiny_checkpoint, one, progress=False)["count"] == 6
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        evaluate(tiny_checkpoint, one, out=tmp_path / "afile", progress=False)


def test_a_failed_embed_job_leaves_no_partial_file(
    tiny_checkpoint, tiny_catalog, tmp_path, monkeypatch
):
    from embedder import embed_job

    def broken(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(embed_job, "iter_embeddings", broken)
    with pytest.raises(KeyboardInterrupt):
        embed_to_hdf5(tiny_checkpoint, tiny_catalog, tmp_path / "e.h5", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_library_images_with_transparency_embed_like_files(tiny_checkpoint, tmp_path):
    """embed_images converts RGBA the same way as reading the file (transparent -> white)."""
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((30, 60, 200, 255), (16, 16, 48, 48))
    rgba.save(tmp_path / "t.png")
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    from_memory = embedder.embed_images([rgba]).embeddings
    from_file = embedder.embed_paths([tmp_path / "t.png"]).embeddings
    np.testing.assert_allclose(from_memory, from_file, atol=1e-6)


def test_checkpoint_targets_relative_dot_and_symlinks(tiny_checkpoint, tmp_path, monkeypatch):
    """'.' saves into the current folder; a symlinked --out keeps its link across saves."""
    import os

    from embedder.checkpoint import check_checkpoint_target

    model, config = load_checkpoint(tiny_checkpoint)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_text("finder noise")  # hidden files do not make it foreign
    monkeypatch.chdir(empty)
    assert check_checkpoint_target(".") == empty
    real = tmp_path / "real"
    os.symlink(real, tmp_path / "link")
    for _ in range(2):  # the second save replaces the first through the link
        save_checkpoint(model, config, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and load_checkpoint(tmp_path / "link")
    with pytest.raises(CheckpointError, match="format version"):
        bad = tmp_path / "old-format"
        shutil.copytree(tiny_checkpoint, bad)
        cfg = json.loads((bad / CONFIG_FILE).read_text())
        cfg["format_version"] = 99
        (bad / CONFIG_FILE).write_text(json.dumps(cfg))
        check_checkpoint_target(bad)
