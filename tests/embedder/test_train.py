"""Training end to end on a tiny model: the two phases, freezing, determinism, Ctrl-C."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from embedder.checkpoint import load_checkpoint, read_config
from embedder.errors import DataError
from embedder.train import train
from tests.conftest import tiny_train_config


def test_training_is_deterministic_for_a_seed(tiny_catalog, tmp_path):
    first = train(tiny_train_config(tiny_catalog, tmp_path / "a", val_fraction=0.2))
    second = train(tiny_train_config(tiny_catalog, tmp_path / "b", val_fraction=0.2))
    a, b = (load_checkpoint(tmp_path / n)[0].state_dict() for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.metrics["train_loss"] == second.metrics["train_loss"]
    # What the two runs record about their making is equal too, and says what they resolved.
    records = [read_config(tmp_path / n).training for n in ("a", "b")]
    made = ("data_record", "versions", "workers_used", "device_used", "threads")
    assert [{k: r[k] for k in made} for r in records][0] == {k: records[1][k] for k in made}
    record = records[0]
    assert record["workers_used"] == 0 and record["device_used"] == "cpu"
    assert record["threads"] == torch.get_num_threads()
    assert record["versions"]["torch"] == torch.__version__.split("+")[0]
    data = record["data_record"]
    assert (data["train_images"], data["val_images"]) == (15, 3)
    assert data["train_fingerprint"] != data["val_fingerprint"]
    assert record["state"] == "finished" and record["started"] <= record["ended"]


def test_the_data_fingerprint_follows_content_and_labels_not_the_folder(tiny_catalog, tmp_path):
    """A checkpoint had recorded its data only as the path typed (`"data": "cat"`)."""
    import dataclasses
    import shutil

    from embedder.data import load_catalog
    from embedder.provenance import samples_fingerprint

    copy = shutil.copytree(tiny_catalog, tmp_path / "elsewhere")
    here, there = load_catalog(tiny_catalog).samples, load_catalog(copy).samples
    assert samples_fingerprint(here) == samples_fingerprint(there)  # another folder, same photos
    relabelled = [dataclasses.replace(there[0], label="other"), *there[1:]]
    assert samples_fingerprint(relabelled) != samples_fingerprint(here)
    assert samples_fingerprint(there[1:]) != samples_fingerprint(here)  # one removed
    with open(there[0].path, "ab") as fh:  # one edited in place
        fh.write(b"\0")
    assert samples_fingerprint(there) != samples_fingerprint(here)


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

    from embedder.fine_tune import frozen_parameter_names

    model = timm.create_model("test_efficientnet", num_classes=3)
    frozen = frozen_parameter_names(model, 2)
    assert "conv_stem.weight" in frozen and any(k.startswith("blocks.0.") for k in frozen)
    assert not any(k.startswith(("blocks.1.", "classifier.")) for k in frozen)
    assert frozen_parameter_names(model, 0) == set()
    # Every group but the head's freezes the backbone but never the classifier; more is an
    # error (test_freezing_every_layer_group_is_refused_before_the_images_are_read).
    assert not any(k.startswith("classifier.") for k in frozen_parameter_names(model, 6))

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


def test_freezing_every_layer_group_is_refused_before_the_images_are_read(
    tiny_catalog, tmp_path, monkeypatch
):
    import timm
    from timm.models import group_parameters

    import embedder.trainer as trainer

    model = timm.create_model("test_efficientnet", num_classes=3)
    groups = len(group_parameters(model, model.group_matcher(coarse=True)))
    monkeypatch.setattr(trainer, "CachedImages", None)  # reading the images would fail here
    config = tiny_train_config(tiny_catalog, tmp_path / "ck", frozen_groups=groups)
    with pytest.raises(DataError, match=f"--frozen-groups {groups}: .* at most {groups - 1}"):
        train(config)


@pytest.mark.parametrize(
    ("weights", "bn_stats", "kept"),
    [("file", "auto", True), ("file", "update", False), ("none", "auto", False)],
)
def test_bn_statistics_stay_pretrained_while_fine_tuning(
    tiny_catalog, tmp_path, weights, bn_stats, kept
):
    import timm
    from safetensors.torch import save_file

    from embedder.fine_tune import freezes_bn_stats
    from embedder.train_config import TrainConfig

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


def ctrl_c_on_second_call(monkeypatch, module, name: str) -> None:  # noqa: ANN001
    """Make ``module.name`` raise KeyboardInterrupt on its second call, as Ctrl-C would."""
    original, calls = getattr(module, name), []

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


def test_ctrl_c_keeps_the_best_checkpoint(tiny_catalog, tmp_path, monkeypatch):
    from embedder import trainer

    ctrl_c_on_second_call(monkeypatch, trainer, "train_one_epoch")
    result = train(tiny_train_config(tiny_catalog, tmp_path / "ck", epochs=3, val_fraction=0.2))
    assert result.interrupted and result.best_epoch == 1
    load_checkpoint(tmp_path / "ck")  # complete and loadable


def test_ctrl_c_during_a_save_reports_the_checkpoint_on_disk(tiny_catalog, tmp_path, monkeypatch):
    """The epoch was logged "(best, saved)" and reported as the best before its save ran;
    a Ctrl-C stopping the save left the report naming an epoch the folder does not hold."""
    from embedder import trainer

    ctrl_c_on_second_call(monkeypatch, trainer, "save_checkpoint")
    config = tiny_train_config(tiny_catalog, tmp_path / "ck", epochs=3, val_fraction=0.0)
    result = train(config)  # without validation every epoch is the best: each one saves
    assert result.interrupted and result.history[-1]["epoch"] > result.best_epoch
    assert read_config(tmp_path / "ck").metrics["epoch"] == result.best_epoch


def test_unreadable_training_images_are_skipped_and_counted(tiny_catalog, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_catalog, data, ignore=shutil.ignore_patterns("*.csv"))
    broken = next((data / sorted(p.name for p in data.iterdir() if p.is_dir())[0]).glob("*.jpg"))
    broken.write_bytes(b"\xff\xd8\xff garbage")
    result = train(tiny_train_config(data, tmp_path / "ck", val_fraction=0.0))
    assert len(result.skipped) == 1 and broken.name in result.skipped[0]


def test_validation_classes_must_be_known(tiny_catalog, tmp_path):
    val = tmp_path / "val" / "unknown-phone"
    val.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(val / "x.jpg")
    (tmp_path / "val" / "other").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "val" / "other" / "y.jpg")
    with pytest.raises(DataError, match="not in the training data"):
        train(tiny_train_config(tiny_catalog, tmp_path / "ck", val=str(tmp_path / "val")))


def test_a_validation_set_with_no_readable_image_fails_instead_of_keeping_the_warm_up(
    tiny_catalog, tmp_path, monkeypatch
):
    """Every score would read 0.0, the warm-up would stay "best" and early stopping would end
    the run: a checkpoint without fine-tuning, reported as a success. It fails before any
    training."""
    import embedder.trainer as trainer

    monkeypatch.setattr(trainer, "train_one_epoch", None)  # training would fail otherwise
    classes = sorted(p.name for p in tiny_catalog.iterdir() if p.is_dir())
    for label in classes[:2]:
        (tmp_path / "val" / label).mkdir(parents=True)
        (tmp_path / "val" / label / "bad.jpg").write_bytes(b"not a jpeg")
    config = tiny_train_config(tiny_catalog, tmp_path / "ck", val=str(tmp_path / "val"))
    with pytest.raises(DataError, match="none of the 2 validation images could be read"):
        train(config)
    assert not (tmp_path / "ck" / "config.json").exists()


CUDA_REASON = "needs a CUDA GPU (torch.cuda.is_available() is False)"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_checkpoint_trained_on_a_device_loads_and_embeds_on_the_cpu(
    tiny_catalog, tmp_path, device
):
    import json

    from embedder.inference import Embedder

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(CUDA_REASON)
    out = tmp_path / "ck"
    config = tiny_train_config(tiny_catalog, out, val_fraction=0.2, warmup_epochs=2, device=device)
    result = train(config)
    assert json.loads((out / "config.json").read_text())["training"]["device"] == device
    model, _ = load_checkpoint(out)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    embedder = Embedder.from_checkpoint(out, runtime="torch", device="cpu")
    val = sorted(tiny_catalog.rglob("*.jpg"))[:4]
    batch = embedder.embed_paths(val)
    assert batch.embeddings.shape == (4, embedder.dim) and result.best_epoch >= 0


def test_a_device_this_machine_lacks_fails_before_the_data_loads(tmp_path):
    from embedder.errors import EngineError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(EngineError, match="torch sees no CUDA GPU"):
        train(tiny_train_config(tmp_path / "no-data", tmp_path / "out", device="cuda"))


@pytest.mark.parametrize("loss", ["supcon", "multisim"])
def test_a_metric_loss_changes_the_fine_tuned_weights(tiny_catalog, tmp_path, loss):
    pytest.importorskip("pytorch_metric_learning", reason="phonesim[metric] not installed")
    plain = tiny_train_config(tiny_catalog, tmp_path / "ce", val_fraction=0.0, frozen_groups=0)
    metric = tiny_train_config(
        tiny_catalog, tmp_path / "sc", val_fraction=0.0, frozen_groups=0, metric_loss=loss
    )
    first, second = train(plain), train(metric)
    assert second.metrics["train_loss"] != first.metrics["train_loss"]  # the extra term counts
    a, b = (load_checkpoint(tmp_path / n)[0].state_dict() for n in ("ce", "sc"))
    assert not torch.equal(a["conv_stem.weight"], b["conv_stem.weight"])


@pytest.mark.parametrize(
    "overrides", [{"metric_loss": "triplet"}, {"metric_weight": -1.0}, {"metric_temperature": 0}]
)
def test_bad_metric_loss_settings_are_refused(tiny_catalog, tmp_path, overrides):
    with pytest.raises(DataError, match="--metric"):
        train(tiny_train_config(tiny_catalog, tmp_path / "x", **overrides))


def test_the_epoch_hook_sees_every_epoch_with_its_weights(tiny_catalog, tmp_path):
    from embedder.data import load_catalog
    from embedder.trainer import Trainer

    catalog = load_catalog(tiny_catalog)
    seen = []
    config = tiny_train_config(
        tiny_catalog, tmp_path / "h", epochs=2, warmup_epochs=1, frozen_groups=0
    )
    trainer = Trainer(
        config,
        catalog,
        [],
        on_epoch=lambda epoch, model: seen.append((epoch, model.conv_stem.weight.sum().item())),
    )
    trainer.fit()
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    assert seen[1][1] != seen[2][1]  # the hook saw the weights of that epoch


def test_average_last_saves_the_mean_of_the_last_epochs(tiny_catalog, tmp_path):
    states = []
    config = tiny_train_config(
        tiny_catalog,
        tmp_path / "soup",
        epochs=3,
        val_fraction=0.2,
        frozen_groups=0,
        average_last=2,
        patience=10,
    )
    from embedder.data import load_catalog
    from embedder.train_data import stratified_split
    from embedder.trainer import Trainer

    catalog = load_catalog(tiny_catalog)
    fit, val = stratified_split(catalog.samples, 0.2, 0)
    trainer = Trainer(
        config,
        type(catalog)(fit, catalog.label_names, catalog.source),
        val,
        on_epoch=lambda e, m: states.append({k: v.clone() for k, v in m.state_dict().items()}),
    )
    result = trainer.fit()
    assert result.metrics["averaged_epochs"] == [2, 3]
    saved = load_checkpoint(tmp_path / "soup")[0].state_dict()
    assert len(states) == 3  # no warm-up epoch in the tiny settings: epochs 1, 2, 3
    expected = (states[1]["conv_stem.weight"] + states[2]["conv_stem.weight"]) / 2
    assert torch.allclose(saved["conv_stem.weight"], expected, atol=1e-6)
    assert not torch.allclose(saved["conv_stem.weight"], states[2]["conv_stem.weight"])


def test_mixup_and_cutmix_train_other_weights_the_same_way_each_time(tiny_catalog, tmp_path):
    base = dict(val_fraction=0.0, frozen_groups=0)
    train(tiny_train_config(tiny_catalog, tmp_path / "plain", **base))
    for name in ("mix1", "mix2"):
        train(tiny_train_config(tiny_catalog, tmp_path / name, mixup=0.4, cutmix=1.0, **base))
    plain, mix1, mix2 = (
        load_checkpoint(tmp_path / n)[0].state_dict() for n in ("plain", "mix1", "mix2")
    )
    assert all(torch.equal(mix1[k], mix2[k]) for k in mix1)  # same seed, same blends
    assert not torch.equal(plain["conv_stem.weight"], mix1["conv_stem.weight"])


def test_odd_sized_batches_train_unblended():
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from embedder.fine_tune import train_one_epoch
    from embedder.optim import adamw, warmup_cosine

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 3, 8, 8))
    data = TensorDataset(torch.randn(7, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    seen: list[int] = []

    def mixer(x, y):
        seen.append(len(y))
        return x.flip(0), nn.functional.one_hot(y.flip(0), 3).float()

    optimizer = adamw(model, 1e-3, 0.0)
    train_one_epoch(
        model,
        DataLoader(data, batch_size=4),
        nn.CrossEntropyLoss(label_smoothing=0.1),
        optimizer,
        warmup_cosine(optimizer, 2, 1),
        0,
        freeze_bn_stats=False,
        mixer=mixer,
    )
    assert seen == [4]  # the last batch of 3 has no partner for each photo


def test_smoothing_blended_targets_is_timms_smoothing_of_the_blend():
    from timm.data.mixup import mixup_target

    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    blended = mixup_target(y, 3, lam=0.7, smoothing=0.0)
    ours = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, blended)
    timms = torch.sum(-mixup_target(y, 3, lam=0.7, smoothing=0.1) * logits.log_softmax(1), 1)
    assert torch.allclose(ours, timms.mean())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mixup": -0.2}, "--mixup must be >= 0"),
        ({"cutmix": float("nan")}, "--cutmix must be >= 0"),
        ({"mixup": 0.2, "metric_loss": "supcon"}, "cannot be combined with --metric-loss"),
    ],
)
def test_bad_mixing_settings_are_refused(tiny_catalog, tmp_path, overrides, message):
    with pytest.raises(DataError, match=message):
        train(tiny_train_config(tiny_catalog, tmp_path / "x", **overrides))


def test_a_validation_set_holding_training_images_is_warned_about(tiny_catalog, tmp_path, caplog):
    """Early stopping would pick its best epoch on photos the model learns. The count is of
    validation images: two training copies of one had read "2 of the 1"."""
    import shutil

    train(tiny_train_config(tiny_catalog, tmp_path / "ck", epochs=1, val=str(tiny_catalog)))
    assert "validation images are training images too" in caplog.text
    caplog.clear()
    data, val = tmp_path / "data", tmp_path / "val"
    shutil.copytree(tiny_catalog, data)
    first = sorted(p for p in data.iterdir() if p.is_dir())[0]
    photo = sorted(first.glob("*.jpg"))[0]
    shutil.copy(photo, first / "again.jpg")
    (val / first.name).mkdir(parents=True)
    shutil.copy(photo, val / first.name / "v.jpg")
    train(tiny_train_config(data, tmp_path / "ck2", epochs=1, val=str(val)))
    assert "1 of the 1 validation images are training images too" in caplog.text


def test_a_diverging_run_stops_and_keeps_the_last_finite_checkpoint(tiny_catalog, tmp_path):
    """At --lr 1e8 the weights went NaN: without validation they were saved as the best and
    the run exited 0; with it, the run died on a misleading "weights are broken" error."""
    from embedder.errors import TrainingDivergedError

    out = tmp_path / "ck"
    config = tiny_train_config(tiny_catalog, out, epochs=6, lr=1e8, val_fraction=0.0)
    with pytest.raises(TrainingDivergedError, match="lower --lr") as stopped:
        train(config)
    assert "best checkpoint so far" in str(stopped.value)
    model, config = load_checkpoint(out)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert config.training["state"] == "diverged"


def test_outputs_that_overflow_under_validation_are_a_divergence_naming_the_rate(
    tiny_catalog, tmp_path
):
    """Finite weights whose outputs overflowed died on the evaluation's "its weights are
    broken; retrain or restore the checkpoint", which named neither the cause nor --lr."""
    from embedder.errors import TrainingDivergedError

    config = tiny_train_config(tiny_catalog, tmp_path / "ck", epochs=2, lr=1e6, val_fraction=0.34)
    with pytest.raises(TrainingDivergedError) as stopped:
        train(config)
    message = str(stopped.value)
    assert "outputs no longer finite" in message and "lower --lr (now 1e+06)" in message
    assert "nothing was saved" in message and not (tmp_path / "ck").exists()


def test_random_weights_fine_tune_every_layer_by_default(tiny_catalog, tmp_path):
    """--frozen-groups 3 (the default for pretrained weights) kept the random stem and first
    stages of --weights none as they were initialised."""
    import timm

    from embedder.train_config import TrainConfig, frozen_group_count

    assert frozen_group_count(TrainConfig(data="", out="", weights="none")) == 0
    assert frozen_group_count(TrainConfig(data="", out="")) == 3
    assert frozen_group_count(TrainConfig(data="", out="", weights="none", frozen_groups=2)) == 2
    torch.manual_seed(0)
    start = timm.create_model("test_efficientnet", num_classes=3).state_dict()
    train(tiny_train_config(tiny_catalog, tmp_path / "ck", val_fraction=0.0))
    tuned = load_checkpoint(tmp_path / "ck")[0].state_dict()
    assert not torch.equal(tuned["conv_stem.weight"], start["conv_stem.weight"])
    assert read_config(tmp_path / "ck").training["frozen_groups"] == 0


def test_a_model_with_two_heads_is_refused_in_one_line():
    from embedder.backbone import create_backbone
    from embedder.errors import WeightsError

    with pytest.raises(WeightsError, match="2 classifier heads"):
        create_backbone("deit_tiny_distilled_patch16_224", 3, "none")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mixup": 0.2, "batch_size": 7}, "need an even --batch-size"),
        ({"img_size": 100_000}, "--img-size must be in"),
        ({"seed": 2**70}, "--seed must be in"),
        ({"seed": -1}, "--seed must be in"),
    ],
)
def test_settings_that_failed_deep_in_training_are_refused(
    tiny_catalog, tmp_path, overrides, message
):
    with pytest.raises(DataError, match=message):
        train(tiny_train_config(tiny_catalog, tmp_path / "x", **overrides))


def test_a_checkpoint_from_a_local_folder_model_names_its_architecture(tiny_catalog, tmp_path):
    """``--model local-dir:PATH`` was written into config.json: the checkpoint could not load
    once that folder moved."""
    import json
    import shutil

    import timm
    from safetensors.torch import save_file

    base = tmp_path / "base"
    base.mkdir()
    # With the arguments it was made with: a checkpoint that dropped them did not load.
    model = timm.create_model("test_efficientnet", num_classes=3, channel_multiplier=0.5)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(base / "model.safetensors")
    )
    config = {
        "architecture": "test_efficientnet",
        "num_classes": 3,
        "model_args": {"channel_multiplier": 0.5},
        "pretrained_cfg": {},  # timm's layout (without it the whole file is the pretrained cfg)
    }
    (base / "config.json").write_text(json.dumps(config))
    out = tmp_path / "ck"
    train(tiny_train_config(tiny_catalog, out, model=f"local-dir:{base}", weights="imagenet"))
    shutil.rmtree(base)
    assert read_config(out).architecture == "test_efficientnet"
    assert read_config(out).model_kwargs == {"channel_multiplier": 0.5}
    loaded, _ = load_checkpoint(out)
    assert loaded.num_features == 128  # 256 x 0.5


def test_empty_weights_are_refused_as_such():
    """Path("") is the working folder: the error said ".: is a folder"."""
    from embedder.backbone import create_backbone
    from embedder.errors import WeightsError

    with pytest.raises(WeightsError, match="--weights is empty"):
        create_backbone("test_efficientnet", 3, " ")


# Child: the second fine-tuning epoch says so in a marker file, then waits to be terminated.
TERM_IN_SECOND_EPOCH = """
import sys, time
sys.path.insert(0, {repo!r})
import embedder.trainer as trainer
real, calls = trainer.train_one_epoch, []
def epoch_then_wait(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        open({marker!r}, "w").close()
        time.sleep(60)
    return real(*args, **kwargs)
trainer.train_one_epoch = epoch_then_wait
from phonesim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_stops_training_as_ctrl_c_does(tiny_catalog, tmp_path):
    """SIGTERM ended `phonesim train` at once (143): no word of the best checkpoint, and its
    lock file left behind."""
    import sys

    from tests.conftest import REPO, TINY_MODEL, TINY_SIZE
    from tests.signals import terminate_at_marker

    marker, out = tmp_path / "second-epoch", tmp_path / "ckpt"
    script = tmp_path / "child.py"
    script.write_text(TERM_IN_SECOND_EPOCH.format(repo=str(REPO), marker=str(marker)))
    command = [sys.executable, str(script), "train", "--data", str(tiny_catalog)]
    command += ["--out", str(out), "--model", TINY_MODEL, "--weights", "none"]
    command += ["--img-size", str(TINY_SIZE), "--epochs", "3", "--warmup-epochs", "0"]
    command += ["--workers", "0", "--no-progress"]
    code, stderr = terminate_at_marker(command, marker, timeout=180)
    assert code == 130, stderr
    assert "interrupted; best checkpoint so far (epoch 1)" in stderr
    assert (out / "model.safetensors").is_file()
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


@pytest.mark.parametrize(
    ("stop", "state", "said"),
    [
        (SystemExit, "running", "the run was killed, or is still going"),  # as a kill -9 leaves it
        (KeyboardInterrupt, "interrupted", "the run was stopped (Ctrl-C)"),
        (None, "finished", None),
    ],
)
def test_a_checkpoint_says_whether_its_training_finished(
    tiny_catalog, tmp_path, monkeypatch, caplog, stop, state, said
):
    """A training killed after its first save left a checkpoint that read as complete: it
    loaded, embedded and served without a word."""
    import json

    import embedder.trainer as trainer_module
    from embedder.inference import Embedder

    real = trainer_module.train_one_epoch

    def epoch(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if stop is not None:
            raise stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_one_epoch", epoch)
    out = tmp_path / "ck"
    config = tiny_train_config(tiny_catalog, out, epochs=2, warmup_epochs=1, val_fraction=0.0)
    if stop is SystemExit:
        with pytest.raises(SystemExit):
            train(config)
    else:
        train(config)
    assert json.loads((out / "config.json").read_text())["training"]["state"] == state
    caplog.clear()
    Embedder.from_checkpoint(out, runtime="torch")
    if said is None:
        assert "did not finish" not in caplog.text
    else:
        assert "its best epoch so far at epoch 0 of 2; " + said in caplog.text
