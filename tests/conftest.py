"""Shared fixtures: a tiny generated catalog and a tiny checkpoint trained on it, built once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHONE_BRANDS = REPO.parent / "shared" / "datasets" / "phone-brands"
TINY_MODEL = "test_efficientnet"
TINY_SIZE = 64

# The PostgreSQL fixtures (pg_server, pg_url): one server for the whole session.
pytest_plugins = ["tests.pg"]


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI job cancelled, `kill`) stops the run as Ctrl-C does, so fixture
    teardowns still stop what they started: the PostgreSQL servers of a killed run stayed
    up otherwise."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)


def refuse_lock_file_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening an index folder's lock file fails as in a folder of another user's: root
    writes into any folder, so a folder's mode cannot make one unwritable for these tests."""
    import errno
    import os

    from index import folder

    real_open = os.open

    def read_only(path, flags, *args):  # noqa: ANN001, ANN002, ANN202
        if str(path).endswith("writer.lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(folder.os, "open", read_only)


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(folder, media=True) -> Path``: a copy of ``folder`` on read-only media (a tmpfs
    filled, then remounted read-only: its file system itself refuses writes, as a squashfs
    image's does), or with ``media=False`` ``folder`` itself through a read-only bind mount
    (as a container's read-only volume shows it: other mounts may still write it). Unmounted
    after the test. Skips where this user may not mount (root only); the mode bits of a
    folder cannot stop root writing."""
    import os
    import shutil

    mounted: list[Path] = []

    def run_mount(*args: str) -> None:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
        if done.returncode:
            pytest.skip(f"cannot mount here: {done.stderr.strip()}")

    def mount(folder: Path, media: bool = True) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a read-only mount needs root")
        where = tmp_path / f"ro-{len(mounted)}"
        where.mkdir()
        if not media:
            run_mount("--bind", str(folder), str(where))
            mounted.append(where)
            run_mount("-o", "remount,bind,ro", str(where))
            return where
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        run_mount("-t", "tmpfs", "-o", f"size={size * 2 + 2**22}", "tmpfs", str(where))
        mounted.append(where)
        shutil.copytree(folder, where / folder.name, symlinks=True)
        run_mount("-o", "remount,ro", str(where))
        return where / folder.name

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    """``python script args...`` as a user runs it, its output captured (10 minutes at most)."""
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=600
    )


def tiny_train_config(data: Path, out: Path, **overrides):
    """Settings for a seconds-long training run of timm's smallest test model at 64 px."""
    from embedder.train import TrainConfig

    settings = dict(
        data=str(data),
        out=str(out),
        model=TINY_MODEL,
        weights="none",
        img_size=TINY_SIZE,
        epochs=1,
        warmup_epochs=0,
        batch_size=8,
        workers=0,
        progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory) -> Path:
    """Three demo phone models, six 64 px images each: class folders plus catalog.csv."""
    from demo.catalog import generate_catalog

    out = tmp_path_factory.mktemp("catalog") / "demo"
    generate_catalog(out, classes=3, per_class=6, seed=1, image_size=TINY_SIZE, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_catalog, tmp_path_factory) -> Path:
    from embedder.train import train

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    train(tiny_train_config(tiny_catalog, out, val_fraction=0.2))
    return out


@pytest.fixture(scope="session")
def phone_brands() -> Path:
    if not (PHONE_BRANDS / "train").is_dir():
        pytest.skip(f"real benchmark data not present at {PHONE_BRANDS}")
    return PHONE_BRANDS


@pytest.fixture(scope="session")
def int8_checkpoint(tiny_checkpoint, tiny_catalog, tmp_path_factory) -> Path:
    """A copy of the tiny checkpoint with its fp32 and int8 graphs: every runtime loads it.

    Same weights, so indexes built with the tiny checkpoint open with it too.
    """
    import shutil

    from embedder.quantize import quantize_int8

    ckpt = tmp_path_factory.mktemp("int8") / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    quantize_int8(ckpt, tiny_catalog)
    return ckpt
