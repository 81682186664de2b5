"""``phonesim learn-text``: the text read on a labelled folder's photos becomes each class's
examples in a cue file, and ``evaluate --text-cues`` with that file predicts by them."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image, ImageDraw, ImageFont

from common.errors import UserError
from embedder.errors import DataError
from embedder.evaluate import evaluate
from embedder.learn_text import learn_text
from embedder.text_cues import TextCues
from embedder.text_reader import TextOptions
from phonesim.cli import main

pytest.importorskip("rapidocr", reason="phonesim[ocr] not installed")

# Words no class is named by: only examples can tie them to a class.
WORDS = ("Quartz", "Zephyr", "Walrus")


def banners(root, names, words, offsets=(0, 24)):
    for name, word in zip(names, words, strict=True):
        (root / name).mkdir(parents=True)
        for i, dx in enumerate(offsets):
            img = Image.new("RGB", (360, 120), (250, 250, 250))
            font = ImageFont.load_default(44)
            ImageDraw.Draw(img).text((12 + dx, 35), word, fill=(20, 20, 20), font=font)
            img.save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def labelled(tiny_checkpoint, tmp_path_factory):
    """Banners per class of the tiny model (to learn from), other banners with the same words
    (to predict), and the class names."""
    names = json.loads((tiny_checkpoint / "config.json").read_text())["label_names"]
    root = tmp_path_factory.mktemp("learn")
    learn = banners(root / "learn", names, WORDS)
    query = banners(root / "query", names, [f"{w} 5G" for w in WORDS], offsets=(40,))
    return learn, query, names


@pytest.fixture(scope="module")
def learned(tiny_checkpoint, labelled, tmp_path_factory):
    learn, _, _ = labelled
    out = tmp_path_factory.mktemp("cues") / "learned.json"
    summary = learn_text(tiny_checkpoint, learn, out, rotations=(0,), progress=False)
    return out, summary


def test_each_class_gets_the_text_read_on_its_photos(learned, labelled) -> None:
    out, summary = learned
    _, _, names = labelled
    data = json.loads(out.read_text())
    assert sorted(data) == sorted(names)
    for name, word in zip(names, WORDS, strict=True):
        assert data[name]["words"] == []
        assert data[name]["examples"] == [word.lower()] * 2
    assert summary.photos == dict.fromkeys(names, 2)
    assert summary.examples == dict.fromkeys(names, 2) and summary.unreadable == 0


def test_evaluate_predicts_by_the_examples(tiny_checkpoint, learned, labelled) -> None:
    out, _ = learned
    _, query, _ = labelled
    every = dict(rotations=(0,), gate=1.0)
    taught = evaluate(tiny_checkpoint, query, progress=False, text=TextOptions(str(out), **every))
    assert taught["text_cues"]["images_with_cue"] == taught["count"] == 3
    assert taught["accuracy"] == 1.0
    # The labels alone name no class on these banners: no cue at all.
    plain = evaluate(tiny_checkpoint, query, progress=False, text=TextOptions(None, **every))
    assert plain["text_cues"]["images_with_cue"] == 0


def test_the_cue_files_words_are_kept_and_unreadable_photos_skipped(
    tiny_checkpoint, labelled, tmp_path, capsys, caplog
) -> None:
    learn, _, names = labelled
    data = tmp_path / "data"
    shutil.copytree(learn, data)
    (data / names[0] / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    cues = tmp_path / "cues.json"
    cues.write_text(json.dumps({names[1]: ["zephyr"]}))
    out = tmp_path / "out.json"
    argv = ["learn-text", "--checkpoint", str(tiny_checkpoint), "--data", str(data)]
    argv += ["--out", str(out), "--text-cues", str(cues), "--text-rotations", "0", "--json"]
    argv += ["--no-progress"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    # Photos read: the broken one is counted as unreadable only (it was in both).
    assert summary["unreadable"] == 1 and summary["photos"][names[0]] == 2
    written = json.loads(out.read_text())
    assert written[names[1]]["words"] == ["zephyr"]
    # Text naming its class is an example too: a misreading of it will lie near.
    assert written[names[1]]["examples"] == ["zephyr"] * 2
    assert TextCues.load(out, names).examples is not None
    # Learned again into the same file without --text-cues: its words stay (they were the
    # user's, written by hand, and were dropped), its examples are read again.
    shutil.rmtree(data / names[0])
    # A class the model no longer has (retrained without it): its words go, with a warning.
    written["retired"] = {"words": ["oldphone"], "examples": []}
    out.write_text(json.dumps(written))
    rerun = argv[: argv.index("--text-cues")] + ["--text-rotations", "0", "--no-progress"]
    assert main(rerun) == 0
    again = json.loads(out.read_text())
    assert again[names[1]]["words"] == ["zephyr"] and again[names[0]]["examples"] == []
    assert "retired" not in again and "dropping the words of classes" in caplog.text


def test_classes_the_model_does_not_know_are_refused(tiny_checkpoint, labelled, tmp_path):
    learn, _, _ = labelled
    data = tmp_path / "data"
    shutil.copytree(learn, data)
    shutil.copytree(next(learn.iterdir()), data / "nokia")
    out = tmp_path / "out.json"
    with pytest.raises(UserError, match="nokia"):
        learn_text(tiny_checkpoint, data, out, rotations=(0,), progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    "where",
    ["missing/out.json", "folder", "new/", "photo.csv", "config.json", "deep.json", "ts.json"],
)
def test_an_output_that_cannot_be_written_fails_before_the_reading(
    tiny_checkpoint, labelled, tmp_path, monkeypatch, where
):
    from embedder import learn_text as module

    learn, _, _ = labelled
    (tmp_path / "folder").mkdir()
    (tmp_path / "photo.csv").write_text("id,image,label\n")
    # A JSON object that is no cue file: a checkpoint's config, a report.
    (tmp_path / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    # Another tool's JSON that reads as words of two classes the model lacks: it was replaced.
    ts = '{"files": ["src/a.ts"], "exclude": ["node_modules"]}\n'
    (tmp_path / "ts.json").write_text(ts)
    monkeypatch.setattr(module, "TextReader", None)  # reading would fail the test differently
    refused = "cannot be written|is a folder|not a text cue file|not a cue file for this model"
    with pytest.raises(UserError, match=refused):
        learn_text(tiny_checkpoint, learn, f"{tmp_path}/{where}", rotations=(0,), progress=False)
    assert (tmp_path / "photo.csv").read_text() == "id,image,label\n"
    assert (tmp_path / "ts.json").read_text() == ts
    assert not (tmp_path / "new").exists()


def test_a_cue_word_that_cannot_be_written_fails_before_the_reading(
    tiny_checkpoint, labelled, tmp_path, monkeypatch
):
    """A lone surrogate in a word: valid JSON, but no UTF-8 file can hold it."""
    from embedder import learn_text as module

    learn, _, names = labelled
    cues = tmp_path / "cues.json"
    cues.write_text(json.dumps({names[0]: ["\ud800mate"]}))  # JSON escapes the surrogate
    monkeypatch.setattr(module, "TextReader", None)
    with pytest.raises(UserError, match="UTF-8"):
        learn_text(tiny_checkpoint, learn, tmp_path / "out.json", cue_file=cues, progress=False)


def test_a_class_keeps_at_most_the_examples_a_cue_file_may_hold(
    tiny_checkpoint, labelled, tmp_path, monkeypatch
) -> None:
    """One example per photo, unbounded: a large catalog's file took minutes and gigabytes
    to load in every server worker, and serve now refuses such a file."""
    from embedder import learn_text as module
    from embedder import text_cues

    learn, _, names = labelled
    monkeypatch.setattr(module, "MAX_EXAMPLES_PER_CLASS", 1)
    monkeypatch.setattr(text_cues, "MAX_EXAMPLES_PER_CLASS", 1)
    out = tmp_path / "learned.json"
    summary = learn_text(tiny_checkpoint, learn, out, rotations=(0,), progress=False)
    data = json.loads(out.read_text())
    assert all(len(data[name]["examples"]) == 1 for name in names)
    assert summary.examples == dict.fromkeys(names, 1)


def test_examples_are_kept_within_the_bounds_spread_over_each_class(monkeypatch) -> None:
    from embedder import learn_text as module

    monkeypatch.setattr(module, "MAX_EXAMPLES_PER_CLASS", 4)
    docs = {"a": [f"a{i}" for i in range(8)], "b": ["b0", "b1"]}
    assert module.within_bounds(docs) == {"a": ["a0", "a2", "a4", "a6"], "b": ["b0", "b1"]}
    monkeypatch.setattr(module, "MAX_EXAMPLE_TOTAL_CHARS", 8)  # 4 of 2 characters
    kept = module.within_bounds(docs)
    assert sum(len(e) for v in kept.values() for e in v) <= 8 and kept["a"][0] == "a0"


def test_a_learned_file_over_the_bounds_is_learned_again_not_refused(
    tiny_checkpoint, labelled, tmp_path, monkeypatch
) -> None:
    """One from before the bounds was refused as 'not a text cue file', so learn-text could
    not replace it; nor read its words from it."""
    from embedder import text_cues

    learn, _, names = labelled
    out = tmp_path / "old.json"
    out.write_text(json.dumps({names[0]: {"words": ["w"], "examples": ["x", "y", "z"]}}))
    monkeypatch.setattr(text_cues, "MAX_EXAMPLES_PER_CLASS", 2)
    with pytest.raises(DataError, match="learn it again"):
        text_cues.TextCues.load(out, names)
    learn_text(tiny_checkpoint, learn, out, rotations=(0,), progress=False)
    data = json.loads(out.read_text())
    assert data[names[0]]["words"] == ["w"] and len(data[names[0]]["examples"]) <= 2
