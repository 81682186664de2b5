"""Reading the text on a photo with RapidOCR (PP-OCR models on ONNX Runtime).

The ``ocr`` extra (:func:`common.extras.install_hint`) installs ``rapidocr``, whose wheel ships its
detection, orientation and recognition models: nothing is downloaded at run time. The reader is
imported only when text cues are asked for, so the service runs without it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.extras import install_hint
from embedder.errors import EngineError
from embedder.images import load_image
from embedder.text_cues import DEFAULT_GATE, DEFAULT_WEIGHT, TextCues, check_gate, unsure

log = logging.getLogger(__name__)

#: Upright, and turned both ways: a logo printed along a phone's back reads sideways.
DEFAULT_ROTATIONS: tuple[int, ...] = (0, 90, 270)
ROTATIONS = (0, 90, 180, 270)
#: The detector scales a smaller image's shorter side up to this many pixels (RapidOCR's own
#: default is 736). On the phone-brands photos, mostly 100-400 px wide, 480 and 320 read as
#: many brands as 736 (bench_quality recipe_text_upright 0.807 / 0.806 / 0.804) in 0.24 /
#: 0.15 / 0.49 s per photo; larger photos are read at their own size either way.
DETECT_SIDE = 480
#: A long thin banner would still make a huge input (a 3000 x 200 banner: 7,200 x 480):
#: longer ratios are padded to this one.
MAX_ASPECT = 4.0
# Bounds on what one hostile photo costs (a 2000 px square wall of words took 12.9 s a
# rotation with RapidOCR's own 2000 px and 1000 lines): larger photos are shrunk to this
# side, at most this many lines are recognised (a benchmark photo showed at most 20), and no
# further rotation starts once reading has taken this long (every benchmark photo took
# under 1.7 s for all three).
MAX_SIDE = 1280
MAX_LINES = 100
# Text regions the detector may find before the MAX_LINES tallest are kept (RapidOCR's own
# default). Capped at MAX_LINES itself, it kept the first regions in contour order, from the
# bottom up: a brand printed large above 100 lines of small print was never read.
DETECT_CANDIDATES = 1000
READ_BUDGET_S = 3.0
# And the lines recognised in one pass add up to at most this width once scaled to the
# recogniser's 48 px height (its cost grows with it: about 45 us a pixel on 2 cores). A wall of
# small print made 365,000 px, 16-40 s of recognition in one pass that READ_BUDGET_S, checked
# between rotations, could not stop; the widest of the 702 benchmark photos (upright) made
# 4,563 px. Beyond it the tallest lines are read (a brand is printed large), the rest not.
REC_WIDTH_BUDGET = 20_000
REC_HEIGHT = 48

#: Whether the lines read so far suffice, so that no further rotation is read.
Enough = Callable[[list[tuple[str, float]]], bool]


def check_rotations(rotations: Sequence[int], name: str = "rotations") -> tuple[int, ...]:
    """``rotations`` without repeats; ValueError unless they are some of ROTATIONS."""
    if not rotations or not set(rotations) <= set(ROTATIONS):
        raise ValueError(f"{name} must be some of {ROTATIONS}, got {list(rotations)}")
    return tuple(dict.fromkeys(rotations))


#: Callers that may wait for a busy reader at once when they bound their wait (the server's
#: request threads); more are turned away at once. Waiting, each holds a request thread: 24
#: uploads with read_text=always had tied up all 8 threads of a worker, and an ordinary
#: request queued 15 s for one.
MAX_WAITING = 2


class ReaderBusy(Exception):
    """The reader is busy with other photos: the caller waited as long as it would
    (``waited``), or enough others were waiting already (not ``waited``)."""

    def __init__(self, message: str, *, waited: bool) -> None:
        super().__init__(message)
        self.waited = waited


class TextReader:
    """Text lines and their recognition confidences on an RGB image, read at each of
    ``rotations`` (degrees counter-clockwise). ``threads``: ONNX Runtime threads per model
    (None: its default). ``detect_side``: the shorter side a smaller image is scaled up to for
    detection. ``budget_s``: no further rotation is read once an image has taken this long.
    One reader serves many threads, one image at a time."""

    def __init__(
        self,
        rotations: Sequence[int] = DEFAULT_ROTATIONS,
        threads: int | None = None,
        detect_side: int = DETECT_SIDE,
        budget_s: float = READ_BUDGET_S,
    ) -> None:
        self.rotations = check_rotations(rotations)
        if detect_side < 32:
            raise ValueError(f"detect_side must be at least 32, got {detect_side}")
        try:
            from rapidocr import RapidOCR
        except ImportError as e:
            raise EngineError(
                f"reading text on photos needs RapidOCR: {install_hint('ocr')}"
            ) from e
        self.budget_s = budget_s
        params: dict[str, object] = {
            "Global.log_level": "error",
            "Global.max_side_len": MAX_SIDE,
            "Det.limit_side_len": detect_side,
            "Det.max_candidates": DETECT_CANDIDATES,
        }
        if threads is not None:
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = int(threads)
            params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
        self._engine = RapidOCR(params=params)
        _keep_tallest_regions(self._engine, MAX_LINES)
        _bound_recognition(self._engine, REC_WIDTH_BUDGET)
        # RapidOCR logs every image without text at warning level.
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        # The pipeline keeps per-call state between its stages: one image at a time.
        self._lock = threading.Lock()
        self._waiting, self._waiting_lock = 0, threading.Lock()

    def _take(self, wait_s: float | None) -> None:
        """Acquire the reader, waiting at most ``wait_s`` (None: as long as it takes) and
        only when fewer than MAX_WAITING bounded callers wait already; ReaderBusy if not."""
        if wait_s is None:
            self._lock.acquire()
            return
        with self._waiting_lock:
            if self._waiting >= MAX_WAITING and self._lock.locked():
                raise ReaderBusy("the text reader is busy and others wait for it", waited=False)
            self._waiting += 1
        try:
            got = self._lock.acquire(timeout=max(0.0, wait_s))
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        if not got:
            raise ReaderBusy(f"the text reader stayed busy for {wait_s:.1f} s", waited=True)

    def read(
        self, image: Image.Image, enough: Enough | None = None, wait_s: float | None = None
    ) -> list[tuple[str, float]]:
        """(text, confidence) of every line read, over the rotations read (see
        :meth:`read_each`)."""
        lines = self.read_each(image, enough, wait_s)
        return [line for read in lines.values() for line in read]

    def read_each(
        self, image: Image.Image, enough: Enough | None = None, wait_s: float | None = None
    ) -> dict[int, list[tuple[str, float]]]:
        """(text, confidence) of every line read, by rotation: those read within the budget,
        and only until ``enough`` says the lines read so far suffice (such as: they name a
        class, :meth:`TextCues.names_any`). ``wait_s``: how long to wait for the reader while
        it reads other photos (None: as long as it takes); :class:`ReaderBusy` past it."""
        # The pixels the server keeps of an upload (reading_copy), for every caller: evaluate
        # and export passed the whole photo, which RapidOCR shrank its own way, and read
        # other letters than the server on photos over MAX_SIDE.
        image = bounded_aspect(reading_copy(image).convert("RGB"))
        out: dict[int, list[tuple[str, float]]] = {}
        # A server's request may wait only what is left of its reading budget: six uploads
        # with read_text=always had kept an ordinary request waiting 26 s for the lock.
        self._take(wait_s)
        try:
            t0 = time.perf_counter()
            for angle in self.rotations:
                if out and time.perf_counter() - t0 > self.budget_s:
                    break  # a photo this slow to read is not worth a server's time
                if out and enough is not None and enough([x for v in out.values() for x in v]):
                    break
                turned = image.rotate(angle, expand=True) if angle else image
                result = self._engine(turned)
                out[angle] = [
                    (str(t), float(s))
                    for t, s in zip(result.txts or (), result.scores or (), strict=False)
                ]
        finally:
            self._lock.release()
        return out


def recognition_width(crop: np.ndarray) -> float:
    """What a cropped line costs the recogniser: its width at the recogniser's height."""
    height, width = crop.shape[:2]
    return width * REC_HEIGHT / max(1, height)


def lines_within(heights: Sequence[int], widths: Sequence[float], budget: float) -> list[int]:
    """The indices (in order) of the lines read within ``budget`` of scaled ``widths``:
    the tallest text first (a brand is printed large); always at least one."""
    kept: list[int] = []
    spent = 0.0
    for i in sorted(range(len(widths)), key=lambda i: (-heights[i], i)):
        if kept and spent + widths[i] > budget:
            break
        kept.append(i)
        spent += widths[i]
    return sorted(kept)


def region_heights(boxes: np.ndarray) -> np.ndarray:
    """The height of each detected region (N x 4 x 2 corners, clockwise from top left)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    left = np.linalg.norm(boxes[:, 3] - boxes[:, 0], axis=1)
    right = np.linalg.norm(boxes[:, 2] - boxes[:, 1], axis=1)
    return (left + right) / 2


def _keep_tallest_regions(engine: Any, most: int) -> None:
    """Make ``engine``'s detector keep its ``most`` tallest regions (a brand is printed large),
    in the detector's order; under that many, the detector's answer as it is."""
    load = engine._load_det_model

    def bounded_detector() -> Any:
        detector = load()

        def detect(img: np.ndarray) -> Any:
            found = detector(img)
            if found.boxes is None or len(found.boxes) <= most:
                return found
            kept = np.sort(np.argsort(-region_heights(found.boxes), kind="stable")[:most])
            log.debug("text: %d of %d regions kept (the tallest)", most, len(found.boxes))
            scores = None if found.scores is None else [found.scores[i] for i in kept]
            return replace(found, boxes=found.boxes[kept], scores=scores)

        return detect

    engine._load_det_model = bounded_detector


def _bound_recognition(engine: Any, budget: float) -> None:
    """Make ``engine`` recognise at most ``budget`` of scaled line width per image: the
    lines left out come back as empty text, which RapidOCR drops from its result as it
    drops every line read as nothing. Under the budget, the call is RapidOCR's own."""
    recognize = engine.recognize_txt

    def bounded(crops: list[np.ndarray]) -> Any:
        widths = [recognition_width(c) for c in crops]
        if sum(widths) <= budget:
            return recognize(crops)
        kept = lines_within([c.shape[0] for c in crops], widths, budget)
        log.debug("text: %d of %d lines recognised (width budget)", len(kept), len(crops))
        part = recognize([crops[i] for i in kept])
        txts, scores = [""] * len(crops), [0.0] * len(crops)
        words: list[Any] = [("", 0.0, None)] * len(crops)
        imgs: list[Any] = [None] * len(crops)
        for j, i in enumerate(kept):
            txts[i], scores[i] = part.txts[j], part.scores[j]
            if part.word_results and j < len(part.word_results):
                words[i] = part.word_results[j]
            if part.imgs is not None and j < len(part.imgs):
                imgs[i] = part.imgs[j]
        return replace(part, imgs=imgs, txts=tuple(txts), scores=scores, word_results=tuple(words))

    engine.recognize_txt = bounded


@dataclass(frozen=True)
class TextEvidence:
    """What a prediction adds from the text on its photos: a reader, the classes' words, the
    cues' weight (:func:`embedder.text_cues.apply_text_cues`) and the gate below which a
    prediction is unsure enough to read its photo (:func:`embedder.text_cues.unsure`)."""

    reader: TextReader
    cues: TextCues
    weight: float = DEFAULT_WEIGHT
    gate: float = DEFAULT_GATE

    def read(self, image: Image.Image, wait_s: float | None = None) -> list[tuple[str, float]]:
        """The lines read on ``image``, turning it no further once they name a class (the
        product's reading: ``serve`` and ``evaluate``); ``wait_s``: see
        :meth:`TextReader.read_each`."""
        return self.reader.read(image, enough=self.cues.names_any, wait_s=wait_s)

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "weight": self.weight,
            "rotations": list(self.reader.rotations),
            "gate": self.gate,
        }
        if self.cues.examples is not None:  # a learned cue file (phonesim learn-text)
            out["examples"] = len(self.cues.examples)
        return out

    def plan(self) -> TextPlan:
        """This evidence without its reader, to build again in another process."""
        return TextPlan(self.cues, self.weight, self.gate, self.reader.rotations)

    def read_files(
        self, paths: Sequence[Path], decode_side: int, progress: bool = True
    ) -> FileCues:
        """Each image file's cue row, read as the server reads an upload (decoded at the
        model's ``decode_side``; ``evaluate`` and ``export``). A file whose reading fails gets
        a zero row, a warning and a mark in ``failed``: as in the server, it costs that image
        its cue, not the job."""
        texts, failed = [], np.zeros(len(paths), dtype=bool)
        t0 = time.perf_counter()
        for row, path in enumerate(
            tqdm(paths, desc="reading text", unit="img", disable=not progress)
        ):
            try:
                texts.append(self.read(load_image(path, min_side=decode_side)))
            except Exception as e:
                log.warning("%s: reading its text failed (%s); predicted without it", path, e)
                texts.append([])
                failed[row] = True
        return FileCues(self.cues.matrix(texts), time.perf_counter() - t0, failed)

    def read_unsure(
        self,
        probabilities: np.ndarray,
        paths: Sequence[Path],
        decode_side: int,
        progress: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, FileCues]:
        """The cue rows (N x C) of the image files whose ``probabilities`` (N x C, their
        prediction without the text) are less sure than the gate, zero rows for the rest;
        which rows were read; and :meth:`read_files`' answer for them (``evaluate`` and
        ``export`` read as the server's gate does)."""
        read = unsure(probabilities, self.gate)
        cues = np.zeros(np.shape(probabilities), dtype=np.float32)
        found = self.read_files(
            [p for p, r in zip(paths, read, strict=True) if r], decode_side, progress
        )
        cues[read] = found.cues
        return cues, read, found


class FileCues(NamedTuple):
    """:meth:`TextEvidence.read_files`' answer: the cue rows (N x C), the seconds the reading
    took and which files could not be read (a boolean per row)."""

    cues: np.ndarray
    seconds: float
    failed: np.ndarray


@dataclass(frozen=True)
class TextPlan:
    """A :class:`TextEvidence` without its reader (which holds ONNX Runtime sessions): what a
    worker process, such as an export's Ray actor, needs to read as :meth:`TextOptions.build`
    makes this process read. The words are resolved already, so no cue file has to be found
    on the worker."""

    cues: TextCues
    weight: float
    gate: float
    rotations: tuple[int, ...]

    def build(self, threads: int | None = None) -> TextEvidence:
        """Raises EngineError without the OCR package."""
        return TextEvidence(
            TextReader(self.rotations, threads=threads), self.cues, self.weight, self.gate
        )


@dataclass(frozen=True)
class TextOptions:
    """The ``--read-text`` settings: a cue file (None: the labels alone), the cues' weight, the
    rotations read and the gate; :meth:`build` makes them a :class:`TextEvidence` for a model."""

    cue_file: str | None = None
    weight: float = DEFAULT_WEIGHT
    rotations: tuple[int, ...] = DEFAULT_ROTATIONS
    gate: float = DEFAULT_GATE

    def build(self, label_names: Sequence[str], threads: int | None = None) -> TextEvidence:
        """Raises DataError for a bad cue file and EngineError without the OCR package."""
        cues = (
            TextCues.load(self.cue_file, label_names)
            if self.cue_file
            else TextCues.from_labels(label_names)
        )
        check_gate(self.gate)
        reader = TextReader(self.rotations, threads=threads)
        return TextEvidence(reader, cues, self.weight, self.gate)


def reading_copy(image: Image.Image) -> Image.Image:
    """``image`` no larger than the reader takes it (:data:`MAX_SIDE` on its longer side,
    where RapidOCR shrinks larger ones itself): what a server keeps of a decoded photo while
    it waits to be read, about 5 MB, not the 150 MB of a 40 MP one."""
    w, h = image.size
    if max(w, h) <= MAX_SIDE:
        return image
    scale = MAX_SIDE / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def bounded_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """``image`` centred on a white canvas whose sides differ by at most ``max_aspect``."""
    w, h = image.size
    long_side, short_side = max(w, h), min(w, h)
    if long_side <= max_aspect * short_side:
        return image
    side = round(long_side / max_aspect)
    size = (w, side) if w >= h else (side, h)
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(image, ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas


__all__ = [
    "DEFAULT_ROTATIONS",
    "DETECT_SIDE",
    "Enough",
    "FileCues",
    "MAX_ASPECT",
    "MAX_LINES",
    "MAX_SIDE",
    "READ_BUDGET_S",
    "ROTATIONS",
    "TextEvidence",
    "TextOptions",
    "TextPlan",
    "TextReader",
    "bounded_aspect",
    "check_rotations",
    "reading_copy",
]
