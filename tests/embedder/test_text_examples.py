"""Examples of read text per class (``phonesim learn-text``'s cue files): the vote a photo
whose text names no class takes from the examples nearest its own text."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from embedder.errors import DataError
from embedder.text_cues import TextCues, apply_text_cues
from embedder.text_examples import (
    MAX_EXAMPLE_CHARS,
    MIN_SIMILARITY,
    MIN_VOTE_SHARE,
    SHARE,
    TextExamples,
    document,
)

NAMES = ["huawei", "oneplus", "samsung"]
LEARNED = {
    "huawei": {"words": ["mate"], "examples": ["muawt p30", "leica", "huwwey nova"]},
    "oneplus": {"examples": ["hasselblad camera", "warp charge"]},
    "samsung": ["galaxy"],  # the plain form beside the learned one
}


def read(*lines: str, confidence: float = 0.9) -> list[tuple[str, float]]:
    return [(line, confidence) for line in lines]


@pytest.fixture
def cues(tmp_path) -> TextCues:
    path = tmp_path / "learned.json"
    path.write_text(json.dumps(LEARNED))
    return TextCues.load(path, NAMES)


def test_a_document_keeps_the_sure_words_that_carry_letters() -> None:
    lines = [("MUAWT P30 5G", 0.9), ("12 108MP", 0.9), ("Leica", 0.3), ("ok", 0.9)]
    assert document(lines, 0.5) == "muawt p30 108mp"
    assert document([], 0.5) == ""


def test_the_cue_file_holds_words_and_examples(cues: TextCues) -> None:
    assert cues.words == (("huawei", "mate"), ("oneplus",), ("samsung", "galaxy"))
    assert cues.examples is not None and len(cues.examples) == 5
    assert cues.examples.labels == (0, 0, 0, 1, 1)


def test_misreadings_and_unnamed_words_vote_for_their_class(cues: TextCues) -> None:
    m = cues.matrix([read("MUAWT"), read("Hasselblad"), read("HUWWEY")])
    assert m.argmax(1).tolist() == [0, 1, 0]
    np.testing.assert_allclose(m.sum(1), SHARE)  # a vote counts SHARE, not a whole cue


def test_text_that_names_a_class_is_not_outvoted_by_examples(cues: TextCues) -> None:
    # "leica" is a Huawei example, but the text names Samsung outright.
    m = cues.matrix([read("Galaxy", "Leica")])
    assert m.tolist() == [[0.0, 0.0, 1.0]]


def test_text_like_no_example_votes_for_nothing(cues: TextCues) -> None:
    m = cues.matrix([read("zzqqxx"), read(), read("12 34"), read("Leica", confidence=0.2)])
    assert not m.any()


def test_a_vote_needs_a_similar_example() -> None:
    examples = TextExamples.from_lists([["abcdefgh", "abcdxxxx"], ["mnopqrst"]])
    assert examples.vote("abcdefgh").argmax() == 0
    assert examples.vote("mnopqrsx").tolist() == [0.0, 1.0]
    assert not examples.vote("ghijkl").any()  # no n-gram in common
    # Its nearest example is under MIN_SIMILARITY: no say.
    weak = TextExamples.from_lists([["abcdefghijklmnopqrstuvwxyz"], ["zzzzzzzzz"]])
    vectorizer, rows = weak._fitted()
    assert (vectorizer.transform(["xabcx"]) @ rows.T).toarray().max() < MIN_SIMILARITY
    assert not weak.vote("xabcx").any()
    assert not TextExamples.from_lists([[], []]).vote("abcdefgh").any()


def test_an_examples_vote_leans_an_unsure_prediction_only(cues: TextCues) -> None:
    vote = cues.matrix([read("muawt"), read("muawt")])
    probs = np.array([[0.35, 0.40, 0.25], [0.05, 0.90, 0.05]], dtype=np.float32)
    out = apply_text_cues(probs, vote, 1.0)
    assert out.argmax(1).tolist() == [0, 1]
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)


def test_learned_cues_survive_pickling(cues: TextCues) -> None:
    """An export's Ray actors get the cues pickled: the vote works there as here."""
    again = pickle.loads(pickle.dumps(cues))
    assert again == cues
    texts = [read("muawt"), read("hasselblad")]
    np.testing.assert_array_equal(again.matrix(texts), cues.matrix(texts))


@pytest.mark.parametrize(
    "content, error",
    [
        ({"samsung": {"examples": "galaxy s24"}}, "expected"),
        ({"samsung": {"words": ["galaxy"], "notes": []}}, "expected"),
        ({"samsung": {"examples": [1]}}, "expected"),
        ({"nokia": {"examples": ["lumia"]}}, "nokia"),
        ({"samsung": {"examples": ["x" * (MAX_EXAMPLE_CHARS + 1)]}}, "at most"),
        ({"samsung": ["\ud800galaxy"]}, "UTF-8"),
    ],
)
def test_a_bad_learned_cue_file_is_refused(tmp_path, content, error) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=error):
        TextCues.load(path, NAMES)


def test_examples_are_checked() -> None:
    with pytest.raises(ValueError, match="labels"):
        TextExamples(("a b c",), (0, 1), 2)
    with pytest.raises(ValueError, match="lie in"):
        TextExamples(("abc",), (2,), 2)
    with pytest.raises(ValueError, match="some text"):
        TextExamples((" ",), (0,), 2)
    with pytest.raises(ValueError, match="classes"):
        TextCues((("a",), ("b",)), examples=TextExamples.from_lists([["abc"]]))


def test_crumbs_of_a_vote_are_dropped() -> None:
    """The softmax leaves a little on every neighbour's class; under MIN_VOTE_SHARE it goes,
    so a response does not list a class that hardly counted."""
    close = TextExamples.from_lists([["abcdefgh"], ["abcdefgh xyz"]]).vote("abcdefgh")
    assert close[1] >= MIN_VOTE_SHARE and close.sum() == pytest.approx(1.0)
    far = TextExamples.from_lists([["abcdefgh"], ["abcdefgz"]]).vote("abcdefgh")
    assert far.tolist() == [1.0, 0.0]


def test_long_text_is_cut_to_the_compared_length() -> None:
    assert len(document([("word " * 5000, 0.9)], 0.5)) == MAX_EXAMPLE_CHARS


def test_a_deeply_nested_cue_file_is_a_data_error(tmp_path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(DataError, match="not a JSON"):
        TextCues.load(path, NAMES)
