"""Brand and model words read on a photo, as evidence for the classes that they name.

Listing photos often carry text: a logo, a model name, a launch banner, a slogan. The classifier
sees it as pixels; an OCR reader (:mod:`embedder.text_reader`) spells it out, and
:class:`TextCues` turns what was read into the classes it names, so that a photo that reads
"Galaxy S24" is not called an iPhone because the backdrop looks like one.

Each class is named by its label and by the words a cue file adds (``{"samsung": ["galaxy"],
"oneplus": ["nord", "never settle"]}``). Text is compared case-, space- and punctuation-blind;
words of five characters or more match anywhere in the read text, or a slightly misread word
(OCR reads stylised logos as "SAMSUNO" or "Redml"); shorter ones only a whole word ("poco", not
"pocket"). Common listing words that look like a class word ("phone" beside "iphone", "megapixels"
around "pixel") name nothing unless a class is named by them; a brand split around one ("i phone")
still counts. A cue file from ``phonesim learn-text`` also holds examples of text read on each
class's photos: text that names no class then takes their vote (:mod:`embedder.text_examples`).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.text import is_utf8
from embedder.errors import DataError
from embedder.text_examples import (
    MAX_EXAMPLE_CHARS,
    MAX_EXAMPLE_TOTAL_CHARS,
    MAX_EXAMPLES_PER_CLASS,
    SHARE,
    TextExamples,
    document,
)

log = logging.getLogger(__name__)

#: Read text with a lower recognition confidence is ignored.
DEFAULT_MIN_CONFIDENCE = 0.5
#: A token this similar (difflib ratio) to a long word counts as a misreading of it.
DEFAULT_FUZZY = 0.8
#: Words shorter than this match whole tokens only: short words hide inside other words.
LONG_WORD = 5
#: How much a cue counts against the prediction's probabilities (they sum to 1): at 1 a cue
#: for one class outweighs any prediction that does not already favour that class.
DEFAULT_WEIGHT = 1.0
#: Read a photo only when the prediction without its text is less sure than this (the top
#: class's probability): a sure prediction is nearly always right, and the text rarely
#: changes it. 1 reads every photo. scripts/bench_quality.py (recipe_text_gated) measured it:
#: see the README's § Predictions that read the photo's text.
DEFAULT_GATE = 0.8

#: Words listings print that contain or nearly spell a class word of a phone catalog: "phone" is
#: one letter from "iphone", "megapixels" holds "pixel", "apply" ("conditions apply") reads as a
#: misread "apple" and "pixie" as "pixel". On their own they name no brand, so neither they nor
#: a word found inside one count (unless a class is named by one of them); a brand the reader
#: split around one still does ("i phone").
GENERIC_WORDS = frozenset(
    {
        "phone",
        "phones",
        "pixels",
        "megapixel",
        "megapixels",
        "apply",
        "applies",
        "applied",
        "pixie",
        "pixies",
    }
)
#: A cue file's bounds: it is loaded by every server worker, and each photo's text is matched
#: against all its words (a 5 MB file took 82 s to load; 300,000 words, 100 s a photo).
MAX_CUE_FILE_BYTES = 16 * 2**20
MAX_CUE_WORDS = 10_000

Texts = Sequence[tuple[str, float]]


def normalise(text: str) -> str:
    """Lower-case letters and digits only: "Galaxy S24" and "GALAXY-S24" read the same, and so
    do compatibility forms (NFKC): full-width "ＧＡＬＡＸＹ" as some OCR models and listings
    print it, or the ligature in "ﬁve"."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def _unspaced(word: str) -> bool:
    """Whether ``word`` is written in a script that runs words together (Chinese, Japanese;
    Korean compounds such as 삼성전자), where a short brand is part of a longer token."""
    return any(
        unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))
        for ch in word
    )


def words_of(text: str) -> list[str]:
    """The normalised words of one read line ("POCO X6 Pro" -> poco, x6, pro)."""
    return [w for w in map(normalise, re.split(r"[\s\W_]+", text)) if w]


@dataclass(frozen=True)
class TextCues:
    """Which classes a photo's read text names. ``words[i]``: class i's normalised words."""

    words: tuple[tuple[str, ...], ...]
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    fuzzy: float = DEFAULT_FUZZY
    #: Text read on labelled photos of the classes (``phonesim learn-text``): a photo whose
    #: text names no class takes their vote (:mod:`embedder.text_examples`).
    examples: TextExamples | None = None
    #: The words, as written, of each short word written in several ("Mi 14": mi, 14): it
    #: also names its class read as those words in a row on one line.
    parts: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    #: GENERIC_WORDS but those that name a class here: what matching passes over.
    generic: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        own = {w for words in self.words for w in words}
        object.__setattr__(self, "generic", GENERIC_WORDS - own)
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 < self.fuzzy <= 1.0:
            raise ValueError(f"fuzzy must be in (0, 1], got {self.fuzzy}")
        if self.examples is not None and self.examples.n_classes != len(self.words):
            raise ValueError(
                f"examples for {self.examples.n_classes} classes, words for {len(self.words)}"
            )

    @classmethod
    def from_labels(
        cls,
        label_names: Sequence[str],
        extra: Mapping[str, Sequence[str]] | None = None,
        examples: Mapping[str, Sequence[str]] | None = None,
    ) -> TextCues:
        """Each class named by its label and by ``extra[label]``, with ``examples[label]``
        (text read on its photos) when given; a key that is not one of ``label_names`` is a
        :class:`DataError` (a typo would silently never match)."""
        extra = dict(extra or {})
        unknown = sorted((set(extra) | set(examples or {})) - set(label_names))
        if unknown:
            raise DataError(
                f"text cues for classes the model does not know: {', '.join(unknown)} "
                f"(its classes: {', '.join(label_names)})"
            )
        words, parts = [], {}
        for name in label_names:
            written = [name, *extra.get(name, ())]
            found = dict.fromkeys(w for w in map(normalise, written) if w)
            words.append(tuple(found))
            for w in written:
                split = tuple(words_of(w))
                if len(split) > 1 and len(normalise(w)) < LONG_WORD:
                    parts[normalise(w)] = split
        owners: dict[str, list[str]] = {}
        for name, named in zip(label_names, words, strict=True):
            for w in named:
                owners.setdefault(w, []).append(name)
        for w, names in owners.items():
            if len(names) > 1:  # allowed: read, it names them all, which tells them apart less
                log.warning("text cue word %r names %s alike", w, " and ".join(names))
        if examples is None:
            return cls(tuple(words), parts=parts)
        docs = [[document([(t, 1.0)], 0.0) for t in examples.get(n, ())] for n in label_names]
        return cls(tuple(words), examples=TextExamples.from_lists(docs), parts=parts)

    @classmethod
    def load(cls, path: str | Path, label_names: Sequence[str]) -> TextCues:
        """The labels' own words plus a cue file's (:func:`read_cue_file`), with its
        examples."""
        return cls.from_file(read_cue_file(path), label_names, path)

    @classmethod
    def from_file(cls, file: CueFile, label_names: Sequence[str], path: str | Path) -> TextCues:
        """:meth:`from_labels` with what the cue file at ``path`` holds (its name in errors)."""
        try:
            return cls.from_labels(label_names, file.words, file.examples)
        except DataError as e:
            raise DataError(f"{path}: {e}") from e

    def classes(self, texts: Texts) -> list[int]:
        """Indices of the classes that ``texts`` ((text, confidence) pairs) name."""
        lines = [words_of(t) for t, conf in texts if conf >= self.min_confidence]
        tokens = [w for line in lines for w in line]
        if not tokens:
            return []
        joined = "".join(tokens)  # words the reader split ("one plus") or a banner's lines
        spans, start = [], 0  # where each token lies in ``joined``, and whether it is generic
        for t in tokens:
            spans.append((start, start + len(t), t in self.generic))
            start += len(t)
        tokens = [t for t in tokens if t not in self.generic]
        named = (
            any(self._found(w, tokens, joined, spans, lines) for w in words) for words in self.words
        )
        return [i for i, found in enumerate(named) if found]

    def names_any(self, texts: Texts) -> bool:
        """Whether ``texts`` name some class: a reader stops turning the photo once they do
        (bench_quality recipe_text: the same prediction on every photo as reading all three
        rotations, in 0.61 s per photo instead of 0.72)."""
        return bool(self.classes(texts))

    def _found(
        self,
        word: str,
        tokens: list[str],
        joined: str,
        spans: list[tuple[int, int, bool]],
        lines: list[list[str]],
    ) -> bool:
        if len(word) < LONG_WORD:  # whole words only: "poco", not "pocket"
            if word in tokens:
                return True
            # A cue "Mi 14" (normalised "mi14") read as it is written: "Mi 14" on one line.
            split = self.parts.get(word)
            if split is not None and any(_in_a_row(split, line) for line in lines):
                return True
            # Chinese, Japanese or Korean run words together: "华为Mate60" is one token.
            return _unspaced(word) and any(word in t for t in tokens)
        at = joined.find(word)
        while at >= 0:
            if _names(at, at + len(word), spans):
                return True
            at = joined.find(word, at + 1)
        # A misreading keeps the word's length give or take a letter or two ("SAMSUNO").
        return any(
            abs(len(t) - len(word)) <= 2 and SequenceMatcher(None, t, word).ratio() >= self.fuzzy
            for t in tokens
        )

    def matrix(self, texts: Sequence[Texts]) -> np.ndarray:
        """N x C cue rows: 1/m for each of the m classes an image's text names; where it names
        none, the examples' vote scaled to SHARE (if there are examples and some are like
        it); else a zero row (also where it names every class: no evidence)."""
        out = np.zeros((len(texts), len(self.words)), dtype=np.float32)
        for row, read in enumerate(texts):
            found = self.classes(read)
            if found and len(found) < len(self.words):
                out[row, found] = 1.0 / len(found)
            elif not found and self.examples is not None:
                out[row] = SHARE * self.examples.vote(document(read, self.min_confidence))
        return out


def _in_a_row(words: tuple[str, ...], line: list[str]) -> bool:
    """Whether ``words`` follow one another in ``line``."""
    n = len(words)
    return any(tuple(line[i : i + n]) == words for i in range(len(line) - n + 1))


def _names(start: int, end: int, spans: list[tuple[int, int, bool]]) -> bool:
    """Whether the text at ``joined[start:end]`` names its word: inside one token that is not
    a generic word ("pixel" in "megapixels" is not), or whole tokens read apart ("one plus",
    "sam sung", "i phone"). Not words that merely run across tokens: "app" + "learn" hold
    "apple", and "phone plus" holds "oneplus"."""
    covered = [(a, b, generic) for a, b, generic in spans if a < end and start < b]
    if len(covered) == 1:
        return not covered[0][2]
    return covered[0][0] == start and covered[-1][1] == end


class CueFile(NamedTuple):
    """What a cue file holds, as written: each label's words, and its examples of read text
    (None when no label has any: a file of words only)."""

    words: dict[str, list[str]]
    examples: dict[str, list[str]] | None


def read_cue_file(path: str | Path, bounded: bool = True) -> CueFile:
    """A JSON file's ``{label: [word, ...]}``; a label may instead map to ``{"words": [...],
    "examples": [...]}`` (as ``phonesim learn-text`` writes), the text read on its photos.
    Raises DataError for a file that cannot be read or has another shape, and, where
    ``bounded`` (a file to serve with, not one learn-text reads for its words or replaces),
    for one over the bounds of size, words and examples."""
    try:
        if Path(path).exists() and not Path(path).is_file():  # a FIFO blocked the reading
            raise DataError(f"{path}: not a regular file")
        too_big = cue_size_problem(Path(path).stat().st_size)
        if bounded and too_big:  # before reading: every worker loads it
            raise DataError(f"{path}: {too_big}")
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text, object_pairs_hook=unique_keys, parse_constant=_no_constant)
    except OSError as e:
        raise DataError(f"{path}: cannot read the text cue file: {e.strerror or e}") from e
    except RepeatedKey as e:
        raise DataError(f"{path}: {e}") from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError included
        raise DataError(f"{path}: not a JSON text cue file: {e}") from e
    problem = cue_shape_problem(data)
    if problem:
        raise DataError(
            f'{path}: {problem}; expected {{"label": ["word", ...], ...}} or {{"label": '
            '{"words": ["word", ...], "examples": ["text read on a photo", ...]}, ...}'
        )
    words = {k: v if isinstance(v, list) else v.get("words", []) for k, v in data.items()}
    examples = {
        k: v["examples"] for k, v in data.items() if isinstance(v, dict) and "examples" in v
    }
    file = CueFile(words, examples or None)
    if bounded:
        problem = cue_bounds_problem(file)
        if problem:
            raise DataError(f"{path}: {problem}")
    return file


def cue_size_problem(size: int) -> str | None:
    """Why a cue file of ``size`` bytes is too large to serve with, or None."""
    if size <= MAX_CUE_FILE_BYTES:
        return None
    return (
        f"{size / 2**20:.1f} MB; a text cue file may hold at most {MAX_CUE_FILE_BYTES // 2**20} MB"
    )


def cue_bounds_problem(file: CueFile) -> str | None:
    """Why ``file`` is over a cue file's bounds, or None. Every server worker loads it and
    matches each photo's text against all its words (300,000 words took 100 s a photo) and
    fits all its examples (1,000 of 4,000 characters took 15 s and 875 MB)."""
    count = sum(len(w) for w in file.words.values())
    if count > MAX_CUE_WORDS:
        return f"{count} words; a text cue file may hold at most {MAX_CUE_WORDS}"
    examples = file.examples or {}
    crowded = sorted(k for k, v in examples.items() if len(v) > MAX_EXAMPLES_PER_CLASS)
    if crowded:
        return (
            f"more than {MAX_EXAMPLES_PER_CLASS} examples for {', '.join(crowded)} "
            "(learn it again: phonesim learn-text keeps at most that many)"
        )
    chars = sum(len(e) for v in examples.values() for e in v)
    if chars > MAX_EXAMPLE_TOTAL_CHARS:
        return (
            f"{chars:,} characters of examples; a text cue file may hold at most "
            f"{MAX_EXAMPLE_TOTAL_CHARS:,} (learn it again: phonesim learn-text keeps within it)"
        )
    return None


def cue_shape_problem(data: object) -> str | None:
    """Why ``data`` (parsed JSON) has not a cue file's shape, naming the label at fault, or
    None. The shape: ``{label: [word, ...]}`` or ``{label: {"words": [...], "examples":
    [...]}}``, every string valid UTF-8 (no lone surrogate) and every example at most
    MAX_EXAMPLE_CHARS long. Labels are not checked against a model's classes."""

    def strings(value: object, owner: str, noun: str, limit: int | None = None) -> str | None:
        if not isinstance(value, list):
            return f"{owner} must be a list of strings, got {_shown(value)}"
        for i, w in enumerate(value, 1):
            where = f"{noun} {i} of {label!r}"
            if not isinstance(w, str):
                return f"{where} must be a string, got {_shown(w)}"
            if not is_utf8(w):
                return f"{where} is not valid UTF-8 (it holds a lone surrogate)"
            if limit is not None and len(w) > limit:
                return f"{where} has {len(w)} characters; an example may have at most {limit}"
        return None

    if not isinstance(data, dict):
        return f"the file holds {_shown(data)}, not an object of labels"
    for label, value in data.items():
        if not is_utf8(label):
            return f"label {label!r} is not valid UTF-8 (it holds a lone surrogate)"
        if not isinstance(value, dict):
            problem = strings(value, repr(label), "word")
        elif set(value) - {"words", "examples"}:
            odd = ", ".join(repr(k) for k in sorted(set(value) - {"words", "examples"}))
            problem = f'{label!r} holds {odd}; only "words" and "examples" are known'
        else:
            problem = strings(value.get("words", []), f"{label!r} words", "word") or strings(
                value.get("examples", []), f"{label!r} examples", "example", MAX_EXAMPLE_CHARS
            )
        if problem:
            return problem
    return None


def _shown(value: object) -> str:
    """A JSON value as a message names it, cut short."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


class RepeatedKey(ValueError):
    """A JSON object names one key twice."""


def unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json.loads``' ``object_pairs_hook``: a key given twice is an error (JSON keeps the
    last, which would drop the words of the first without a word)."""
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise RepeatedKey(f"{key!r} is given twice (JSON would keep only the last)")
        seen[key] = value
    return seen


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def check_weight(weight: float, name: str = "text cue weight") -> None:
    """ValueError unless ``weight`` is a finite number of 0 or more (``name`` in the message)."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ValueError(f"{name} must be a number, got {weight!r}")
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"{name} must be 0 or more, got {weight}")


def check_gate(gate: float, name: str = "text gate") -> None:
    """ValueError unless ``gate`` is a number above 0 and at most 1 (``name`` in the message)."""
    if isinstance(gate, bool) or not isinstance(gate, numbers.Real):
        raise ValueError(f"{name} must be a number, got {gate!r}")
    if not (math.isfinite(gate) and 0.0 < gate <= 1.0):
        raise ValueError(f"{name} must be above 0 and at most 1, got {gate}")


def unsure(probabilities: np.ndarray, gate: float) -> np.ndarray:
    """Which rows of ``probabilities`` (N x C) are worth reading the photo's text for: those
    whose top class is less probable than ``gate``; every row at gate 1."""
    check_gate(gate)
    probabilities = np.asarray(probabilities)
    if gate >= 1.0:
        return np.ones(len(probabilities), dtype=bool)
    return probabilities.max(axis=1, initial=0.0) < gate


def apply_text_cues(probabilities: np.ndarray, cues: np.ndarray, weight: float) -> np.ndarray:
    """``(p + weight x cue) / (1 + weight x sum(cue))`` for images with a cue, ``p`` for the
    rest: still a distribution. A row naming classes sums to 1; the examples' vote to at most
    SHARE. From weight 1 on, a cue that names one class always decides; below 1 a confident
    prediction can outvote it, and a cue naming two classes only chooses between them."""
    check_weight(weight)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    cues = np.asarray(cues, dtype=np.float32)
    if cues.shape != probabilities.shape:
        raise ValueError(f"cues {cues.shape} and probabilities {probabilities.shape} differ")
    total = cues.sum(axis=1, keepdims=True)
    named = total > 0
    mixed = (probabilities + weight * cues) / (1.0 + weight * total)
    return np.where(named, mixed, probabilities).astype(np.float32)


__all__ = [
    "CueFile",
    "DEFAULT_FUZZY",
    "DEFAULT_GATE",
    "DEFAULT_MIN_CONFIDENCE",
    "DEFAULT_WEIGHT",
    "GENERIC_WORDS",
    "TextCues",
    "Texts",
    "apply_text_cues",
    "check_gate",
    "check_weight",
    "cue_shape_problem",
    "cue_bounds_problem",
    "cue_size_problem",
    "read_cue_file",
    "normalise",
    "unsure",
    "words_of",
]
