"""What a class's photos were read to say: a vote from labelled examples of read text.

A cue file's words catch a brand that is spelled out. They miss what the reader makes of a
stylised logo ("HUAWEI" read as "muawt" or "huwwey", "SAMSUNG" upside down as "nosnvs") and the
words a brand's photos carry without naming it ("hasselblad" on a OnePlus, "leica" on a
Huawei). Both are in the text read on labelled photos of the classes. ``phonesim learn-text``
reads a labelled folder and writes that text into the cue file as each class's examples; a
photo whose own text names no class then takes a vote of the examples nearest its text
(character n-gram TF-IDF, cosine similarity: misreadings share most of their trigrams).

scripts/bench_quality.py (``recipe_text_learned``, the examples read on each fold's training
photos) measured the constants below; see the README's § Predictions that read the photo's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from embedder.text_cues import Texts

#: How many of the nearest examples vote.
NEIGHBOURS = 3
#: Softmax temperature over their cosine similarities.
TEMPERATURE = 0.1
#: An example less similar than this to the photo's text has no say.
MIN_SIMILARITY = 0.2
#: The vote's share of a cue row (a class named outright counts 1): with the default text
#: weight, the photo's prediction becomes ``(p + SHARE x vote) / (1 + SHARE)``.
SHARE = 0.5
#: Tokens shorter than this, and bare numbers, are mostly noise of the reader.
MIN_TOKEN = 3
#: The longest example or query compared, in characters: the reader stops at 100 lines, and
#: a cue file's examples are fitted in every server worker (a 20 MB one took 4.5 GB).
MAX_EXAMPLE_CHARS = 4000
#: The most examples of one class a cue file holds: learn-text keeps that many, spread over
#: the class's photos. The examples are fitted in every server worker and each photo's text
#: is compared with them all; 1,250 long ones took 82 s and 1 GB to load.
MAX_EXAMPLES_PER_CLASS = 2000
#: And the most characters of examples in all (1,000 examples of 4,000 characters took 15 s
#: and 875 MB to load).
MAX_EXAMPLE_TOTAL_CHARS = 2_000_000
#: Classes with less of the vote than this are dropped from it (and from a response's
#: ``text_cues``): the softmax leaves crumbs on every neighbour's class.
MIN_VOTE_SHARE = 0.05


def document(texts: Texts, min_confidence: float) -> str:
    """The words of ``texts`` ((line, confidence) pairs) that an example or a query is compared
    on: normalised, at least MIN_TOKEN characters, not a bare number; "" when none."""
    from embedder.text_cues import words_of

    tokens = (w for line, conf in texts if conf >= min_confidence for w in words_of(line))
    return " ".join(t for t in tokens if len(t) >= MIN_TOKEN and not t.isdigit())[
        :MAX_EXAMPLE_CHARS
    ]


@dataclass(frozen=True)
class TextExamples:
    """``documents[i]`` (see :func:`document`) was read on a photo of class ``labels[i]``, one
    of ``n_classes``."""

    documents: tuple[str, ...]
    labels: tuple[int, ...]
    n_classes: int
    _index: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.documents) != len(self.labels):
            raise ValueError(f"{len(self.documents)} documents but {len(self.labels)} labels")
        if any(not 0 <= label < self.n_classes for label in self.labels):
            raise ValueError(f"example labels must lie in [0, {self.n_classes})")
        if any(not doc.strip() for doc in self.documents):
            raise ValueError("an example must hold some text")
        self._fitted()  # now, not racing in a server's threads at its first query

    def __len__(self) -> int:
        return len(self.documents)

    def _fitted(self) -> tuple[Any, Any]:
        """The vectoriser fitted on the examples and their TF-IDF rows, made once (and again
        in each process that unpickles these examples, which carry no fitted state)."""
        if "vectorizer" not in self._index and self.documents:
            from sklearn.feature_extraction.text import TfidfVectorizer

            vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)
            rows = vectorizer.fit_transform(self.documents)
            self._index.update(vectorizer=vectorizer, rows=rows)
        return self._index.get("vectorizer"), self._index.get("rows")

    def vote(self, query: str) -> np.ndarray:
        """A distribution over the classes from the examples nearest ``query`` (a
        :func:`document`), or zeros when none is similar enough."""
        out = np.zeros(self.n_classes, dtype=np.float32)
        if not self.documents or not query:
            return out
        vectorizer, rows = self._fitted()
        similarity = (vectorizer.transform([query]) @ rows.T).toarray()[0]
        nearest = np.argsort(-similarity, kind="stable")[:NEIGHBOURS]
        nearest = nearest[similarity[nearest] >= MIN_SIMILARITY]
        if not len(nearest):
            return out
        weights = np.exp((similarity[nearest] - similarity[nearest[0]]) / TEMPERATURE)
        np.add.at(out, np.asarray(self.labels)[nearest], weights)
        out /= out.sum()
        out[out < MIN_VOTE_SHARE] = 0.0
        return (out / out.sum()).astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # The fitted vectoriser is rebuilt where it is needed (a Ray actor, a worker).
        return {"documents": self.documents, "labels": self.labels, "n_classes": self.n_classes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_index", {})
        self._fitted()

    @classmethod
    def from_lists(
        cls, by_class: Sequence[Sequence[str]], n_classes: int | None = None
    ) -> TextExamples:
        """Examples from each class's documents in class order (empty ones dropped)."""
        docs, labels = [], []
        for label, examples in enumerate(by_class):
            for doc in examples:
                if doc.strip():
                    docs.append(doc)
                    labels.append(label)
        return cls(tuple(docs), tuple(labels), len(by_class) if n_classes is None else n_classes)


__all__ = [
    "MAX_EXAMPLE_CHARS",
    "MAX_EXAMPLES_PER_CLASS",
    "MAX_EXAMPLE_TOTAL_CHARS",
    "MIN_SIMILARITY",
    "MIN_VOTE_SHARE",
    "MIN_TOKEN",
    "NEIGHBOURS",
    "SHARE",
    "TEMPERATURE",
    "TextExamples",
    "document",
]
