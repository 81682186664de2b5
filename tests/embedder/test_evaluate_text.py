"""``phonesim evaluate --read-text``: the classes the text on each image names join the
prediction, after the kNN fusion, as the server adds them."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw, ImageFont

from common.errors import UserError
from embedder.errors import DataError
from embedder.evaluate import evaluate, format_report
from embedder.knn_options import text_options_from_args
from embedder.text_reader import TextOptions
from phonesim.cli import build_parser

pytest.importorskip("rapidocr", reason="phonesim[ocr] not installed")

WORDS = ("Quartz", "Zephyr", "Walrus", "Mangle", "Orchid")


@pytest.fixture(scope="module")
def named_banners(tiny_checkpoint, tmp_path_factory):
    """Two banners per class of the tiny model, each reading a word only the cue file ties to
    that class, and the cue file."""
    names = json.loads((tiny_checkpoint / "config.json").read_text())["label_names"]
    root = tmp_path_factory.mktemp("banners")
    data = root / "data"
    for name, word in zip(names, WORDS, strict=False):
        (data / name).mkdir(parents=True)
        for i in range(2):
            img = Image.new("RGB", (360, 120), (250, 250, 250))
            font = ImageFont.load_default(44)
            ImageDraw.Draw(img).text((12 + 20 * i, 35), word, fill=(20, 20, 20), font=font)
            img.save(data / name / f"{i}.png")
    cues = root / "cues.json"
    cues.write_text(json.dumps(dict(zip(names, ([w] for w in WORDS), strict=False))))
    return data, cues


def test_text_cues_decide_where_the_text_names_the_class(tiny_checkpoint, named_banners):
    data, cues = named_banners
    every = TextOptions(str(cues), rotations=(0,), gate=1.0)
    report = evaluate(tiny_checkpoint, data, progress=False, text=every)
    read = report["text_cues"]
    assert report["prediction"] == "classifier+text"
    assert read["images_with_cue"] == read["images_read"] == report["count"]
    assert read["rotations"] == [0] and read["weight"] == 1.0
    assert report["accuracy"] == read["accuracy"] == 1.0
    assert "with text cues" in format_report(report)
    plain = evaluate(tiny_checkpoint, data, progress=False)
    assert plain["text_cues"] is None and plain["prediction"] == "classifier"


def test_the_gate_reads_only_the_images_the_prediction_is_unsure_of(
    tiny_checkpoint, named_banners, monkeypatch
):
    """An image whose prediction is at least as sure as the gate is never read: at a gate
    below every prediction's top probability nothing is read and the prediction stays the
    classifier's; between the surest and the least sure prediction only some are read."""
    from embedder import text_reader

    data, cues = named_banners
    plain = evaluate(tiny_checkpoint, data, progress=False)
    read_calls = []
    real = text_reader.TextReader.read

    def counted(self, image, enough=None, **kw):
        read_calls.append(1)
        return real(self, image, enough, **kw)

    monkeypatch.setattr(text_reader.TextReader, "read", counted)
    never = evaluate(
        tiny_checkpoint,
        data,
        progress=False,
        text=TextOptions(str(cues), rotations=(0,), gate=0.01),
    )
    assert read_calls == [] and never["text_cues"]["images_read"] == 0
    assert never["accuracy"] == plain["accuracy"]
    assert never["text_cues"]["gate"] == 0.01
    # The top probabilities of the tiny model's predictions, to put a gate between them.
    from embedder.inference import Embedder

    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    images = sorted(data.rglob("*.png"))
    top = sorted(embedder.embed_paths(images).probabilities.max(axis=1).tolist())
    assert top[0] < top[-1]
    gate = (top[0] + top[-1]) / 2
    some = evaluate(
        tiny_checkpoint,
        data,
        progress=False,
        text=TextOptions(str(cues), rotations=(0,), gate=gate),
    )
    unsure = sum(p < gate for p in top)
    assert some["text_cues"]["images_read"] == len(read_calls) == unsure
    assert 0 < unsure < len(top)


def test_a_bad_cue_file_fails_before_the_work(tiny_checkpoint, named_banners, tmp_path):
    data, _ = named_banners
    bad = tmp_path / "cues.json"
    bad.write_text('{"not-a-class": ["word"]}')
    with pytest.raises(
        DataError, match="text cues for classes the model does not know: not-a-class"
    ):
        evaluate(tiny_checkpoint, data, progress=False, text=TextOptions(str(bad)))


def test_text_flags():
    base = ["evaluate", "--checkpoint", "c", "--data", "d"]
    assert text_options_from_args(build_parser().parse_args(base)) is None
    on = build_parser().parse_args([*base, "--text-cues", "f.json", "--text-weight", "0.5"])
    assert text_options_from_args(on) == TextOptions("f.json", 0.5)
    gated = build_parser().parse_args([*base, "--read-text", "--text-gate", "1"])
    assert text_options_from_args(gated) == TextOptions(None, gate=1.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--read-text", "--text-gate", "0"])
    with pytest.raises(UserError, match="need --read-text"):
        text_options_from_args(build_parser().parse_args([*base, "--text-gate", "0.5"]))
    with pytest.raises(UserError, match="need --read-text"):
        text_options_from_args(build_parser().parse_args([*base, "--text-rotations", "0"]))
    twice = build_parser().parse_args(base)
    assert text_options_from_args(twice) is None and text_options_from_args(twice) is None
    # A default value given explicitly had passed, and been ignored, without --read-text.
    for flag, value in (
        ("--text-gate", "0.8"),
        ("--text-weight", "1"),
        ("--text-rotations", "0,90,270"),
    ):
        with pytest.raises(UserError, match=f"{flag}: reading text options, they need --read"):
            text_options_from_args(build_parser().parse_args([*base, flag, value]))


def test_an_image_whose_reading_fails_is_evaluated_without_its_cue(
    tiny_checkpoint, named_banners, monkeypatch
):
    from embedder import text_reader

    data, cues = named_banners
    calls = []

    def flaky(self, image, enough=None, **_):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("OCR fell over")
        return [("Quartz", 0.99)]

    monkeypatch.setattr(text_reader.TextReader, "read", flaky)
    every = TextOptions(str(cues), rotations=(0,), gate=1.0)
    report = evaluate(tiny_checkpoint, data, progress=False, text=every)
    assert report["text_cues"]["images_with_cue"] == report["count"] - 1


def test_the_class_rerank_believes_the_text_read(tiny_checkpoint, named_banners):
    """As the server's: with each banner's class named by its text and a heavy re-rank, a
    same-class image among an image's first five neighbours always comes first."""
    from embedder.class_rerank import ClassRerank

    data, cues = named_banners
    heavy = ClassRerank(weight=10.0)
    every = TextOptions(str(cues), rotations=(0,), gate=1.0)
    read = evaluate(tiny_checkpoint, data, progress=False, rerank=heavy, text=every)
    plain = evaluate(tiny_checkpoint, data, progress=False, rerank=heavy)
    ranked, unranked = read["class_rerank"], plain["class_rerank"]
    assert ranked["recall_at_1"] == ranked["recall_at_5"] > 0
    assert ranked["recall_at_5"] == unranked["recall_at_5"]  # the same five, reordered
    assert ranked["recall_at_1"] >= unranked["recall_at_1"]
