"""Which classes a photo's read text names, and how that evidence joins the prediction."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from embedder.errors import DataError
from embedder.text_cues import TextCues, apply_text_cues, check_gate, normalise, unsure, words_of

NAMES = ["huawei", "iphone", "samsung", "xiaomi"]
EXTRA = {"samsung": ["Galaxy"], "xiaomi": ["Redmi", "POCO"], "huawei": ["never settle", "华为"]}


@pytest.fixture
def cues() -> TextCues:
    return TextCues.from_labels(NAMES, EXTRA)


def read(*lines: str, confidence: float = 0.9) -> list[tuple[str, float]]:
    return [(line, confidence) for line in lines]


def test_words_are_compared_case_space_and_punctuation_blind() -> None:
    assert normalise("Galaxy S-24 Ultra!") == "galaxys24ultra"
    assert words_of("POCO X6_Pro") == ["poco", "x6", "pro"]
    assert normalise("华为 Mate") == "华为mate"


def test_compatibility_forms_read_as_their_plain_letters(cues: TextCues) -> None:
    """Full-width letters, as some OCR models and listings print them, name their brand."""
    assert normalise("ＧＡＬＡＸＹ Ｓ２４") == "galaxys24"
    assert normalise("ﬁve") == "five"
    assert [NAMES[i] for i in cues.classes(read("ＳＡＭＳＵＮＧ"))] == ["samsung"]
    wide = TextCues.from_labels(NAMES, {"xiaomi": ["ＭＩＵＩ"]})
    assert [NAMES[i] for i in wide.classes(read("MIUI 14"))] == ["xiaomi"]


def test_each_class_is_named_by_its_label_and_its_extra_words(cues: TextCues) -> None:
    assert cues.words == (
        ("huawei", "neversettle", "华为"),
        ("iphone",),
        ("samsung", "galaxy"),
        ("xiaomi", "redmi", "poco"),
    )


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        (["Galaxy S24 Ultra"], ["samsung"]),
        (["NEW", "iPhone 15 Pro"], ["iphone"]),
        (["SAMSUNO"], ["samsung"]),  # a stylised logo misread by one letter
        (["Redml Note 14"], ["xiaomi"]),
        (["POCO X6"], ["xiaomi"]),
        (["pocket"], []),  # short words match whole words only
        (["NEVER", "SETTLE"], ["huawei"]),  # a phrase the reader split into lines
        (["华为"], ["huawei"]),
        (["SAM"], []),  # too little of the word
        (["iPhone 15 vs Galaxy S24"], ["iphone", "samsung"]),
        (["12:30", "5G"], []),
        (["Play Store", "phone"], []),  # one letter from "iphone", but no brand
        (["HUA", "WEI"], ["huawei"]),  # whole tokens read apart still do
    ],
)
def test_classes_named_by_the_text(cues: TextCues, lines: list[str], named: list[str]) -> None:
    assert [NAMES[i] for i in cues.classes(read(*lines))] == named


def test_listing_words_that_hold_a_class_word_name_no_class() -> None:
    cues = TextCues.from_labels(["iphone", "pixel"])
    assert cues.classes(read("50 Megapixels", "phones")) == []
    assert cues.classes(read("50 mega pixels", "phone")) == []
    assert cues.classes(read("Pixel 8", "50 megapixels")) == [1]


@pytest.mark.parametrize("line", ["T&C apply", "Conditions applied", "Offer applies", "Pixie"])
def test_listing_words_one_letter_from_a_brand_name_no_class(line: str) -> None:
    """A misread brand is one or two letters off ("SAMSUNO"), and so are these words."""
    cues = TextCues.from_labels(["iphone", "pixel"], {"iphone": ["apple"]})
    assert cues.classes(read(line)) == []
    assert cues.classes(read(line, "Apple")) == [0]


def test_a_word_starting_inside_another_names_nothing() -> None:
    """ "Phone Plus" held "oneplus" from the second letter of "phone"."""
    names = ["iphone", "oneplus"]
    cues = TextCues.from_labels(names, {"iphone": ["apple"]})
    assert cues.classes(read("Phone Plus")) == [] and cues.classes(read("Zone Plus")) == []
    assert cues.classes(read("Download our app", "Learn more")) == []  # "app" + "le"
    assert [names[i] for i in cues.classes(read("iPhone Plus"))] == ["iphone"]
    assert [names[i] for i in cues.classes(read("ONE PLUS 12"))] == ["oneplus"]


@pytest.mark.parametrize("lines", [["i phone 13"], ["I-PHONE"], ["i", "Phone 15"]])
def test_a_brand_split_around_a_listing_word_still_counts(lines: list[str]) -> None:
    cues = TextCues.from_labels(["iphone", "pixel"])
    assert cues.classes(read(*lines)) == [0]


def test_a_generic_word_counts_when_a_class_is_named_by_it() -> None:
    names = ["pixel", "phone"]
    cues = TextCues.from_labels(names)
    assert [names[i] for i in cues.classes(read("Pixel 8", "50 megapixels"))] == ["pixel"]
    assert [names[i] for i in cues.classes(read("best phone"))] == ["phone"]


def test_unsure_readings_are_ignored(cues: TextCues) -> None:
    assert cues.classes(read("Galaxy", confidence=0.3)) == []
    assert cues.classes([("Galaxy", 0.3), ("Redmi", 0.95)]) == [NAMES.index("xiaomi")]


def test_matrix_splits_a_cue_between_the_classes_it_names(cues: TextCues) -> None:
    m = cues.matrix([read("Galaxy"), read("iPhone vs Galaxy"), [], read("hello")])
    assert m.shape == (4, len(NAMES))
    assert m[0].tolist() == [0, 0, 1, 0]
    assert m[1].tolist() == [0, 0.5, 0.5, 0]
    assert not m[2:].any()


def test_text_naming_every_class_is_no_evidence() -> None:
    cues = TextCues.from_labels(["iphone", "samsung"])
    assert not cues.matrix([read("iPhone", "Samsung")]).any()


def test_unknown_classes_in_the_cue_words_are_refused() -> None:
    with pytest.raises(DataError, match="nokia"):
        TextCues.from_labels(NAMES, {"nokia": ["lumia"]})


def test_cue_file_is_read_and_checked(tmp_path) -> None:
    good = tmp_path / "cues.json"
    good.write_text(json.dumps({"samsung": ["galaxy"]}))
    assert TextCues.load(good, NAMES).words[2] == ("samsung", "galaxy")
    for text, error in [
        ("{not json", "not a JSON"),
        ('{"samsung": "galaxy"}', "expected"),
        ('["galaxy"]', "expected"),
        ('{"samsung": [1]}', "expected"),
    ]:
        good.write_text(text)
        with pytest.raises(DataError, match=error):
            TextCues.load(good, NAMES)
    with pytest.raises(DataError, match="cannot read"):
        TextCues.load(tmp_path / "missing.json", NAMES)


def test_a_cue_file_error_names_the_label_and_entry_at_fault(tmp_path) -> None:
    """Every shape error had been one generic sentence, useless in a learned file of 2,000
    examples; a label given twice lost its first words without a word."""
    path = tmp_path / "cues.json"
    for text, error in [
        ('{"samsung": ["galaxy"], "samsung": ["note"]}', "'samsung' is given twice"),
        ('{"samsung": {"words": ["a"], "words": []}}', "'words' is given twice"),
        ('{"samsung": ["galaxy", 14]}', "word 2 of 'samsung' must be a string, got 14"),
        ('{"samsung": {"example": []}}', "'samsung' holds 'example'; only"),
        ('{"samsung": {"words": null}}', "'samsung' words must be a list of strings, got null"),
        ('{"samsung": "galaxy"}', "'samsung' must be a list of strings, got \"galaxy\""),
        ('{"samsung": NaN}', "NaN is not JSON"),
        ('["galaxy"]', "the file holds a list, not an object of labels"),
        ('{"samsung": {"examples": ["%s"]}}' % ("x" * 4001), "example 1 of 'samsung' has 4001"),
    ]:
        path.write_text(text)
        with pytest.raises(DataError, match=re.escape(error)):
            TextCues.load(path, NAMES)


def test_a_cue_file_beyond_its_bounds_is_refused(tmp_path, monkeypatch) -> None:
    """Every server worker loads it and matches each photo's text against all its words: a
    5 MB file took 82 s to load, and 300,000 words 100 s a photo."""
    from embedder import text_cues

    path = tmp_path / "cues.json"
    path.write_text(json.dumps({"samsung": {"words": ["a", "b", "c"], "examples": ["x", "y"]}}))
    assert TextCues.load(path, NAMES)
    monkeypatch.setattr(text_cues, "MAX_EXAMPLES_PER_CLASS", 1)
    with pytest.raises(DataError, match="more than 1 examples for samsung"):
        TextCues.load(path, NAMES)
    monkeypatch.setattr(text_cues, "MAX_CUE_WORDS", 2)
    with pytest.raises(DataError, match="3 words; a text cue file may hold at most 2"):
        TextCues.load(path, NAMES)
    monkeypatch.setattr(text_cues, "MAX_CUE_FILE_BYTES", 10)
    with pytest.raises(DataError, match="MB; a text cue file may hold at most"):
        TextCues.load(path, NAMES)
    monkeypatch.undo()
    monkeypatch.setattr(text_cues, "MAX_EXAMPLE_TOTAL_CHARS", 1)
    with pytest.raises(DataError, match="2 characters of examples"):
        TextCues.load(path, NAMES)


def test_a_cue_file_that_is_no_regular_file_is_one_line(tmp_path) -> None:
    """A FIFO blocked serve's preflight until its timeout."""
    import os

    fifo = tmp_path / "cues.fifo"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        TextCues.load(fifo, NAMES)


def test_a_cue_decides_at_weight_one_and_only_leans_below() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.9, 0.1, 0.0], [0.2, 0.5, 0.3]], dtype=np.float32)
    cue = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    decided = apply_text_cues(probs, cue, 1.0)
    assert decided.argmax(1).tolist() == [1, 1, 1]
    np.testing.assert_allclose(decided.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(decided[2], probs[2])  # no cue: unchanged
    leaned = apply_text_cues(probs, cue, 0.2)
    assert leaned.argmax(1).tolist() == [0, 0, 1]  # a sure prediction outvotes a light cue
    assert leaned[0, 1] > probs[0, 1]


def test_cue_arguments_are_checked() -> None:
    probs = np.full((1, 3), 1 / 3, dtype=np.float32)
    with pytest.raises(ValueError, match="weight"):
        apply_text_cues(probs, np.zeros((1, 3)), -1.0)
    with pytest.raises(ValueError, match="differ"):
        apply_text_cues(probs, np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="fuzzy"):
        TextCues((("a",),), fuzzy=0.0)


def test_the_gate_reads_only_predictions_less_sure_than_it() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.5, 0.3, 0.2]], dtype=np.float32)
    assert unsure(probs, 0.8).tolist() == [False, False, True]
    assert unsure(probs, 0.95).tolist() == [True, True, True]
    assert unsure(np.array([[1.0, 0.0, 0.0]]), 1.0).tolist() == [True]  # 1 reads every photo
    assert unsure(np.zeros((0, 3)), 0.5).shape == (0,)
    for bad in (0.0, -0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="gate"):
            check_gate(bad)  # type: ignore[arg-type]


def test_a_short_cue_written_with_a_space_matches_its_own_spelling() -> None:
    """A cue "Mi 14" normalises to "mi14", shorter than a long word, so it matched only a read
    word "Mi14", never the two words "Mi 14" it is written as."""
    names = ["samsung", "xiaomi"]
    cues = TextCues.from_labels(names, {"xiaomi": ["Mi 14"], "samsung": ["S 24"]})
    assert [names[i] for i in cues.classes(read("Mi 14 Ultra"))] == ["xiaomi"]
    assert [names[i] for i in cues.classes(read("S 24"))] == ["samsung"]
    assert [names[i] for i in cues.classes(read("Mi14"))] == ["xiaomi"]
    assert cues.classes(read("Mi 145")) == [] and cues.classes(read("AS 24")) == []
    assert cues.classes(read("Mi", "14")) == []  # on two lines: not as it is written


def test_a_short_cue_names_nothing_split_in_other_ways() -> None:
    """Words that merely spell a short cue in a row are not it: "P.O. Co." is no "poco"."""
    names = ["huawei", "xiaomi"]
    cues = TextCues.from_labels(names, {"xiaomi": ["poco"], "huawei": ["mate", "nova"]})
    for lines in (["P.O. Co., Ltd"], ["MA", "TE"], ["Model No", "VA 1"]):
        assert cues.classes(read(*lines)) == [], lines
    assert [names[i] for i in cues.classes(read("POCO X6"))] == ["xiaomi"]


def test_a_word_given_to_two_classes_is_named_once_loaded(caplog) -> None:
    """Accepted without a word, "mi" for xiaomi and huawei named both whenever it was read."""
    TextCues.from_labels(NAMES, {"xiaomi": ["mi"], "huawei": ["Mi"]})
    assert "text cue word 'mi' names huawei and xiaomi alike" in caplog.text  # NAMES' order


def test_a_short_word_of_a_script_without_spaces_is_found_inside_a_token() -> None:
    """ "华为Mate60 Pro", "小米手机" and "삼성전자" named nothing: the script runs words together,
    so a short brand is part of one longer token, and short words matched whole tokens only."""
    extra = {"huawei": ["华为"], "xiaomi": ["小米", "mi"], "samsung": ["삼성"]}
    cues = TextCues.from_labels(NAMES, extra)
    for line, label in (
        ("华为Mate60 Pro", "huawei"),
        ("小米手机", "xiaomi"),
        ("삼성전자", "samsung"),
    ):
        assert cues.classes([(line, 0.9)]) == [NAMES.index(label)]
    assert cues.classes([("Mimosa", 0.9)]) == []  # a short Latin word still matches whole
    # A spaced cue read as written still counts (its words in a row), as before.
    spaced = TextCues.from_labels(NAMES, {"xiaomi": ["小米 14"]})
    assert spaced.classes([("小米 14", 0.9)]) == [NAMES.index("xiaomi")]
