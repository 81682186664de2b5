"""``phonesim learn-text``: read a labelled folder's photos and write a cue file that holds, for
each class, its words and the text read on its photos (:mod:`embedder.text_examples`).

The photos are read as ``serve --read-text`` reads an upload: decoded at the checkpoint's input
side, turned no further once their text names a class. The file is written once, atomically,
when every photo has been read; an interrupted run leaves any earlier file as it was.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from common.fsutil import atomic_write_text, folder_write_problem
from embedder.checkpoint import read_config
from embedder.data import load_catalog
from embedder.errors import DataError, ImageError
from embedder.images import load_image
from embedder.preprocess import Preprocessor
from embedder.text_cues import (
    CueFile,
    TextCues,
    cue_bounds_problem,
    cue_size_problem,
    read_cue_file,
)
from embedder.text_examples import MAX_EXAMPLE_TOTAL_CHARS, MAX_EXAMPLES_PER_CLASS, document
from embedder.text_reader import DEFAULT_ROTATIONS, TextReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnedText:
    """What :func:`learn_text` read: photos per class, those whose text gave an example, and
    those that could not be read."""

    photos: dict[str, int]
    examples: dict[str, int]
    unreadable: int
    seconds: float


def learn_text(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    cue_file: str | Path | None = None,
    rotations: tuple[int, ...] = DEFAULT_ROTATIONS,
    threads: int | None = None,
    progress: bool = True,
) -> LearnedText:
    """Read every photo of ``data`` (class folders or CSV) and write ``out``: the cue file
    ``cue_file`` (or the labels alone) with each class's examples added. Raises DataError for
    classes the checkpoint does not know, a bad cue file or a folder with no readable photo."""
    check_cue_output(out)  # now, not after minutes of reading
    config = read_config(checkpoint)
    names = list(config.label_names)
    catalog = load_catalog(data, min_classes=1)
    unknown = sorted(set(catalog.label_names) - set(names))
    if unknown:
        raise DataError(
            f"{data}: classes the model does not know: {', '.join(unknown)} "
            f"(its classes: {', '.join(names)})"
        )
    # Only their words are kept: examples over the bounds do not matter.
    given = read_cue_file(cue_file, bounded=False) if cue_file else CueFile({}, None)
    if cue_file is None and Path(out).is_file():  # a cue file (checked above): refreshed
        # Its words are the user's, written by hand: re-learning the examples keeps them,
        # those of the classes the model still has.
        given = read_cue_file(out, bounded=False)
        named = set(given.words) | set(given.examples or {})
        if named and not named & set(names):  # a JSON file of another tool's, say
            shown = ", ".join(sorted(named)[:5])
            raise DataError(
                f"{out}: exists and names none of the model's classes ({shown}): not a cue "
                "file for this model; not replacing it (choose another --out, or remove it)"
            )
        retired = sorted(set(given.words) - set(names))
        if retired:
            log.warning(
                "%s: dropping the words of classes the model does not have: %s",
                out,
                ", ".join(retired),
            )
        given = given._replace(words={k: v for k, v in given.words.items() if k in names})
        log.info("%s: keeping its words; its examples are read again", out)
        cue_file = out
    # Its words tell the reader when to stop turning a photo; its examples (an earlier
    # learned file) are replaced, so they are not fitted.
    cues = TextCues.from_labels(names)
    if cue_file:
        cues = TextCues.from_file(given._replace(examples=None), names, cue_file)
    reader = TextReader(rotations, threads=threads)
    decode_side = Preprocessor(config.data_config).decode_side
    examples: dict[str, list[str]] = {name: [] for name in names}
    photos = dict.fromkeys(names, 0)
    unreadable = 0
    t0 = time.perf_counter()
    for sample in tqdm(catalog.samples, desc="reading text", unit="img", disable=not progress):
        try:
            lines = reader.read(load_image(sample.path, decode_side), enough=cues.names_any)
        except ImageError as e:
            log.warning("%s: skipped (%s)", sample.path, e)
            unreadable += 1
            continue
        except Exception as e:  # the reader failing on one photo costs that photo only
            log.warning("%s: reading its text failed (%s); skipped", sample.path, e)
            unreadable += 1
            continue
        photos[sample.label] += 1  # photos read: the unreadable are counted apart
        doc = document(lines, cues.min_confidence)
        if doc:
            examples[sample.label].append(doc)
    if unreadable == len(catalog.samples):
        raise DataError(f"{data}: none of its {unreadable} photos could be read")
    examples = within_bounds(examples)
    learned = {
        name: {"words": given.words.get(name, []), "examples": examples[name]} for name in names
    }
    text = json.dumps(learned, indent=1, ensure_ascii=False) + "\n"
    problem = cue_bounds_problem(CueFile(given.words, examples)) or cue_size_problem(
        len(text.encode("utf-8"))
    )
    if problem:  # the words given are too many: the file serve would refuse is not written
        raise DataError(f"{out}: not written: {problem}")
    atomic_write_text(out, text)
    TextCues.load(out, names)  # what serve will load: fail here, not at its start
    return LearnedText(
        photos={k: v for k, v in photos.items() if v},
        examples={k: len(v) for k, v in examples.items() if photos[k]},
        unreadable=unreadable,
        seconds=time.perf_counter() - t0,
    )


def within_bounds(examples: dict[str, list[str]]) -> dict[str, list[str]]:
    """``examples`` as a cue file may hold them: at most MAX_EXAMPLES_PER_CLASS per class and
    MAX_EXAMPLE_TOTAL_CHARS in all, each class's kept ones spread over its photos."""
    keep = {name: min(len(docs), MAX_EXAMPLES_PER_CLASS) for name, docs in examples.items()}

    def spread(docs: list[str], n: int) -> list[str]:
        return [docs[int(i * len(docs) / n)] for i in range(n)] if n < len(docs) else docs

    while True:
        kept = {name: spread(docs, keep[name]) for name, docs in examples.items()}
        chars = sum(len(e) for docs in kept.values() for e in docs)
        if chars <= MAX_EXAMPLE_TOTAL_CHARS:
            break
        keep = {name: int(n * 0.9) for name, n in keep.items()}  # every class alike
    for name, docs in examples.items():
        if len(kept[name]) < len(docs):
            log.info("%s: kept %d of its %d examples", name, len(kept[name]), len(docs))
    return kept


def check_cue_output(out: str | Path) -> None:
    """DataError unless ``out`` can be written: a folder (or a name ending in a slash), a file
    that is not a text cue file (an image, a CSV, a checkpoint's config.json: never replaced)
    or an unwritable folder is refused."""
    if str(out).endswith(("/", os.sep)) or Path(out).is_dir():  # Path() drops the slash
        raise DataError(f"{out}: is a folder; give a file name such as cues.json")
    out = Path(out)
    if out.exists():
        try:
            read_cue_file(out, bounded=False)  # one over today's bounds is learned again
        except DataError:
            raise DataError(f"{out}: exists and is not a text cue file; not replacing it") from None
    problem = folder_write_problem(out.parent)
    if problem:
        raise DataError(f"{out.parent}: {problem}; {out.name} cannot be written there")


__all__ = ["LearnedText", "check_cue_output", "learn_text"]
