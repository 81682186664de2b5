"""Reading text on a photo with RapidOCR's bundled models (the ``ocr`` extra)."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw, ImageFont

from embedder.text_cues import TextCues
from embedder.text_reader import TextReader, bounded_aspect

pytest.importorskip("rapidocr", reason="phonesim[ocr] not installed")


def banner(text: str) -> Image.Image:
    img = Image.new("RGB", (360, 120), (250, 250, 250))
    ImageDraw.Draw(img).text((12, 35), text, fill=(20, 20, 20), font=ImageFont.load_default(44))
    return img


@pytest.fixture(scope="module")
def reader() -> TextReader:
    return TextReader(threads=1)


def test_reads_a_brand_upright_and_sideways(reader: TextReader) -> None:
    cues = TextCues.from_labels(["iphone", "samsung"], {"samsung": ["galaxy"]})
    upright = reader.read_each(banner("Galaxy S24"))
    assert set(upright) == {0, 90, 270}
    assert cues.classes(upright[0]) == [1]
    # Printed along a phone's back: only a turned reading spells it.
    sideways = reader.read(banner("Galaxy S24").rotate(90, expand=True))
    assert cues.classes(sideways) == [1]
    assert all(0.0 <= conf <= 1.0 for _, conf in sideways)


def test_the_photo_is_turned_no_further_once_its_text_is_enough(reader: TextReader) -> None:
    cues = TextCues.from_labels(["iphone", "samsung"], {"samsung": ["galaxy"]})
    upright = reader.read_each(banner("Galaxy S24"), enough=cues.names_any)
    assert set(upright) == {0}  # named upright: neither turn is read
    # Turned: the reading stops at the first rotation whose text, with the earlier ones',
    # names a class.
    turned = reader.read_each(banner("Galaxy S24").rotate(270, expand=True), enough=cues.names_any)
    angles = list(turned)
    assert angles == [0, 90, 270][: len(angles)] and len(angles) < 3
    lines = [[x for a in angles[:n] for x in turned[a]] for n in range(1, len(angles) + 1)]
    assert [cues.names_any(x) for x in lines] == [False] * (len(angles) - 1) + [True]
    # Text that names nothing is read at every rotation.
    assert set(reader.read_each(banner("Hello"), enough=cues.names_any)) == {0, 90, 270}


def test_a_photo_without_text_reads_nothing(reader: TextReader) -> None:
    assert reader.read(Image.new("RGB", (64, 64), (255, 255, 255))) == []
    assert reader.read(Image.new("L", (1, 1))) == []  # any mode, any size


def test_long_banners_are_padded_to_a_bounded_aspect() -> None:
    padded = bounded_aspect(Image.new("RGB", (3000, 200), (0, 0, 0)))
    assert padded.size == (3000, 750)
    assert padded.getpixel((0, 0)) == (255, 255, 255)  # white margin
    assert padded.getpixel((1500, 375)) == (0, 0, 0)  # the banner, centred
    tall = bounded_aspect(Image.new("RGB", (10, 100)))
    assert tall.size == (25, 100)
    square = Image.new("RGB", (300, 200))
    assert bounded_aspect(square) is square


def test_rotations_and_detector_size_are_checked() -> None:
    with pytest.raises(ValueError, match="rotations"):
        TextReader(rotations=(45,))
    with pytest.raises(ValueError, match="rotations"):
        TextReader(rotations=())
    with pytest.raises(ValueError, match="detect_side"):
        TextReader(detect_side=8)


def test_a_hostile_photo_costs_a_bounded_reading() -> None:
    """A wall of words: at most MAX_LINES lines, and no rotation after the budget is spent."""
    from embedder.text_reader import MAX_LINES

    wall = Image.new("RGB", (900, 900), (255, 255, 255))
    draw = ImageDraw.Draw(wall)
    for y in range(0, 900, 15):
        for x in range(0, 900, 75):
            draw.text((x, y), f"w{x + y}", fill=(0, 0, 0), font=ImageFont.load_default(12))
    reader = TextReader(rotations=(0, 90, 270), threads=1, budget_s=0.0)
    read = reader.read_each(wall)
    assert list(read) == [0]  # the budget was spent on the upright reading
    assert len(read[0]) == MAX_LINES  # of the 720 words on the wall


def test_a_wall_of_small_print_is_read_within_the_width_budget_tallest_first() -> None:
    """Long lines of small print made 365,000 px of recognition in one pass (16-40 s, with
    the reader's lock held): a pass now recognises at most REC_WIDTH_BUDGET, tallest first,
    so a brand printed large over the wall is still read."""
    import random

    import numpy as np

    from embedder.text_reader import REC_WIDTH_BUDGET, _bound_recognition, recognition_width

    wall = Image.new("RGB", (1280, 1280), (255, 255, 255))
    draw = ImageDraw.Draw(wall)
    rng = random.Random(1)
    words = ["lorem", "ipsum", "dolor", "sit", "amet"]
    for y in range(120, 1270, 13):
        line = " ".join(rng.choice(words) for _ in range(110))
        draw.text((4, y), line, fill=(0, 0, 0), font=ImageFont.load_default(12))
    draw.text((300, 10), "GALAXY", fill=(0, 0, 0), font=ImageFont.load_default(90))
    reader = TextReader(rotations=(0,), threads=1)
    engine = reader._engine
    seen: list[float] = []
    rapidocr_own = type(engine).recognize_txt.__get__(engine)

    def spy(crops: list[np.ndarray]):  # what the budget lets through to RapidOCR
        seen.append(sum(recognition_width(c) for c in crops))
        return rapidocr_own(crops)

    engine.recognize_txt = spy
    _bound_recognition(engine, REC_WIDTH_BUDGET)  # as the reader wraps RapidOCR's own
    cues = TextCues.from_labels(["iphone", "samsung"], {"samsung": ["galaxy"]})
    lines = reader.read(wall)
    assert cues.classes(lines) == [1]  # the tallest line came first
    assert len(seen) == 1 and 0 < seen[0] <= REC_WIDTH_BUDGET
    assert len(lines) < 40  # of about 88 lines on the wall: the rest were left unread


def test_every_caller_reads_the_pixels_the_server_keeps(reader: TextReader, monkeypatch) -> None:
    """evaluate and export passed a 2000 px photo whole (RapidOCR shrank it its own way) while
    the server read its reading_copy: other letters on the same photo."""
    import numpy as np

    from embedder.text_reader import MAX_SIDE, reading_copy

    seen: list[np.ndarray] = []

    class Result:
        txts, scores = (), ()

    def engine(image):  # noqa: ANN001, ANN202
        seen.append(np.asarray(image))
        return Result()

    monkeypatch.setattr(reader, "_engine", engine)
    big = Image.effect_noise((2000, 1500), 60).convert("RGB")
    reader.read_each(big)
    reader.read_each(reading_copy(big))
    half = len(seen) // 2
    assert max(seen[0].shape[:2]) == MAX_SIDE
    assert all(np.array_equal(a, b) for a, b in zip(seen[:half], seen[half:], strict=True))


def test_a_brand_above_a_hundred_lines_of_small_print_is_read() -> None:
    """The detector kept its first 100 regions in contour order, from the bottom up: the
    brand printed large at the top of a spec sheet was never read."""
    import random

    img = Image.new("RGB", (1280, 1280), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((300, 40), "SAMSUNG", fill=(0, 0, 0), font=ImageFont.load_default(100))
    rng, small = random.Random(0), ImageFont.load_default(16)
    for row in range(45):
        for col in range(9):
            word = "".join(rng.choice("abcdefghkmnprstuvwxyz") for _ in range(5))
            draw.text((20 + col * 140, 220 + row * 23), word, fill=(0, 0, 0), font=small)
    read = TextReader(rotations=(0,), threads=1).read(img)
    assert len(read) > 50 and any("SAMSUNG" in text.upper() for text, _ in read)


def test_the_detector_keeps_its_tallest_regions_in_its_own_order() -> None:
    import numpy as np
    from rapidocr.ch_ppocr_det.utils import TextDetOutput

    from embedder.text_reader import _keep_tallest_regions

    def box(top: float, height: float) -> list[list[float]]:
        return [[0, top], [50, top], [50, top + height], [0, top + height]]

    heights = [10, 40, 12, 30, 11]
    found = TextDetOutput(
        boxes=np.array([box(i * 50, h) for i, h in enumerate(heights)], dtype=np.float32),
        scores=[0.9, 0.8, 0.7, 0.6, 0.5],
    )

    class Engine:
        def _load_det_model(self):  # noqa: ANN202
            return lambda img: found

    engine = Engine()
    _keep_tallest_regions(engine, 3)
    kept = engine._load_det_model()(None)
    assert kept.scores == [0.8, 0.7, 0.6]  # heights 40, 12, 30, in the detector's order
    engine = Engine()
    _keep_tallest_regions(engine, 10)
    assert engine._load_det_model()(None) is found  # no more than 10: as they are
