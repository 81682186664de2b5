"""``phonesim demo``: what a second run reuses, and what it must not."""

from __future__ import annotations

import embedder.train as train_module
from phonesim.cli import main

# The smallest demo: 2 models x 5 shots, the head only (epochs 0); the real backbone.
TINY = ["--classes", "2", "--per-class", "5", "--epochs", "0", "--no-serve"]


def test_an_interrupted_or_other_training_is_not_reused(tmp_path, monkeypatch, capsys):
    from embedder import runtime

    # Five runs, four trainings: "auto" runs torch, not exporting an ONNX graph each time
    # (13 s each here; what this test checks does not depend on the runtime).
    monkeypatch.setattr(
        runtime, "_auto", lambda ckpt, device, threads: runtime._torch_engine(ckpt, device)
    )
    work = tmp_path / "demo"
    argv = ["-q", "demo", "--workdir", str(work), *TINY]
    real_train = train_module.train
    calls = []

    def interrupted_train(config):
        calls.append(config)
        result = real_train(config)  # the checkpoint of a run cut short: on disk, unfinished
        result.interrupted = True
        return result

    monkeypatch.setattr(train_module, "train", interrupted_train)
    assert main(argv) == 130
    assert (work / "checkpoint" / "config.json").exists()
    assert not (work / "trained.json").exists()

    def counted_train(config):
        calls.append(config)
        return real_train(config)

    monkeypatch.setattr(train_module, "train", counted_train)
    assert main(argv) == 0  # trains again instead of reusing the cut-short checkpoint
    assert len(calls) == 2 and (work / "index" / "manifest.json").exists()
    assert main(argv) == 0  # now finished with these options: reused
    assert len(calls) == 2 and "reusing checkpoint" in capsys.readouterr().out
    # A checkpoint trained into the folder by hand is not the demo's, whatever the stamp says.
    weights = work / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert main(argv) == 0
    assert len(calls) == 3 and "reusing checkpoint" not in capsys.readouterr().out
    other = ["-q", "demo", "--workdir", str(work), *TINY[:2], "--per-class", "4", *TINY[4:]]
    assert main(other) == 0  # other options: a new catalog, and a new training on it
    assert len(calls) == 4
    rows = (work / "catalog" / "catalog.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4


def test_a_users_catalog_in_the_workdir_is_neither_reused_nor_deleted(tmp_path, capsys):
    """The demo replaced any workdir/catalog laid out like its own: a user's photos went."""
    from PIL import Image

    catalog = tmp_path / "demo" / "catalog"
    for label in ("a", "b"):
        (catalog / label).mkdir(parents=True)
        for i in range(5):  # the shape TINY asks for: it must not be "reused" either
            Image.new("RGB", (8, 8), (i, 0, 0)).save(catalog / label / f"{i}.jpg")
    rows = [f"{label}{i},{label}/{i}.jpg,{label}" for label in ("a", "b") for i in range(5)]
    (catalog / "catalog.csv").write_text("id,image,label\n" + "\n".join(rows) + "\n")
    before = sorted(p.relative_to(catalog).as_posix() for p in catalog.rglob("*"))
    assert main(["-q", "demo", "--workdir", str(tmp_path / "demo"), *TINY]) == 2
    assert "the demo did not write" in capsys.readouterr().err
    assert sorted(p.relative_to(catalog).as_posix() for p in catalog.rglob("*")) == before
    assert not (tmp_path / "demo" / "checkpoint").exists()


def test_a_workdir_that_is_a_file_and_a_huge_catalog_are_refused_at_once(tmp_path, capsys):
    """A file said only "File exists"; --per-class 100000 rendered for minutes toward 800,000
    images."""
    import pytest

    (tmp_path / "a-file").write_text("x")
    assert main(["demo", "--workdir", str(tmp_path / "a-file"), *TINY]) == 2
    assert "a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--workdir", str(tmp_path / "demo"), "--per-class", "100000"])
    assert "must be 1-1000" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
