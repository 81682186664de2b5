"""Finding duplicate listings among a set of images.

1. Read every image once: byte hash, pixel hash, size, copy-detection features (``features``).
2. Byte- or pixel-identical files are joined unconditionally.
3. Candidates: each image's ``k`` nearest neighbours by global descriptor (FAISS), above a low
   floor; never all pairs.
4. Each candidate pair is verified (geometry + pixels, ``verify``) and scored from that
   evidence (``pair_model``); groups are the connected components of the pairs scoring at
   least the threshold (``common.grouping``).
5. Per group a keeper (highest resolution, then largest file, by default) and label conflicts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController
from tqdm import tqdm

from common import stopping
from common.grouping import component_labels, groups_of
from duplicates.descriptor import CopyDescriptor
from duplicates.features import Features, extract_features
from duplicates.grouping import SearchConfig, knn_pairs, whiten
from duplicates.hashing import identical_pairs
from duplicates.inputs import ImageInfo
from duplicates.pair_model import PairModel, pair_scores
from duplicates.result import (
    DEFAULT_KEEP,
    DuplicateGroup,
    DuplicateResult,
    Member,
    has_label_conflict,
    order_members,
)
from duplicates.verify import EVIDENCE, VerifyConfig, grid_points, score_pair
from embedder.data import Sample
from embedder.errors import DataError

log = logging.getLogger(__name__)

# Used only when neither --threshold nor a calibration is stored in the checkpoint, so the score
# is the pixel agreement alone: what calibration chose for that score on the default recipe's
# checkpoint on phone-brands (precision 0.958).
FALLBACK_THRESHOLD = 0.90


@dataclass(frozen=True)
class FinderConfig:
    """Settings of a duplicate search (the CLI flags parse into this)."""

    threshold: float = FALLBACK_THRESHOLD
    k: int = 16
    candidate_floor: float = 0.5  # raw descriptor cosine; used when the set is not whitened
    # Neighbours are searched among PCA-whitened descriptors of the set (``grouping.whiten``)
    # this wide, above ``whitened_floor`` (their cosine); 0: raw cosines above the floor. On
    # the calibration benchmark (seed 1) whitened neighbours hold 96.8 % of copy-original pairs
    # against 93.9 % (photographed screens: 74 % vs 50 %), with fewer pairs to verify.
    whiten_dims: int = 128
    whitened_floor: float = 0.0
    keep: tuple[str, ...] = DEFAULT_KEEP
    batch_size: int = 32
    workers: int | None = None
    progress: bool = True
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    # Calibrated pair classifier; without one the score is the pixel agreement alone.
    pair_model: PairModel | None = None

    def __post_init__(self) -> None:
        # A pair verification rejects scores 0: a threshold of 0 would group it. (Above 1
        # only identical files group.)
        if not self.threshold > 0.0:
            raise ValueError(f"threshold must be above 0, got {self.threshold}")

    @property
    def score_name(self) -> str:
        """What the threshold applies to, as reports name it."""
        return "agreement" if self.pair_model is None else "pair model"


@dataclass
class ScoredPairs:
    """Candidate pairs (rows of ``Features``) with their verified scores, plus identical pairs."""

    i: np.ndarray
    j: np.ndarray
    scores: np.ndarray
    identical: list[tuple[int, int]]
    evidence: np.ndarray | None = None  # N x len(EVIDENCE); NaN rows: not verified
    verified: int = 0  # candidate pairs verified (identical ones need no verification)
    seconds: float = 0.0  # time verifying them

    def accepted(self, threshold: float) -> np.ndarray:
        """Row pairs (M x 2) that join a group: identical ones and those scoring >= threshold."""
        ok = self.scores >= threshold
        identical = np.asarray(self.identical, dtype=np.int64).reshape(-1, 2)
        return np.concatenate([identical, np.stack([self.i[ok], self.j[ok]], axis=1)])


def pair_rng(seed: int, a: ImageInfo, b: ImageInfo) -> np.random.Generator:
    """RANSAC's draws for one pair, seeded by the two images' pixels: a pair scores the same
    whatever else is in the folder and in whichever order the pairs are verified."""
    words = [int(info.pixel_digest[:16], 16) if info.pixel_digest else 0 for info in (a, b)]
    return np.random.default_rng([seed, *words])


class PairScorer:
    """Verifies pairs of rows of one or two ``Features`` (seeded per pair, so results repeat)."""

    def __init__(
        self,
        a: Features,
        b: Features | None = None,
        config: VerifyConfig | None = None,
        model: PairModel | None = None,
    ):
        self.a, self.b = a, (b if b is not None else a)
        self.config = config or VerifyConfig()
        self.model = model
        self.grid = grid_points(*a.grid_shape)
        # Verification multiplies small matrices (196 x 112): BLAS threads only spin-wait on
        # them, 5x slower than one thread on a busy 2-core machine. Cached: cheap to enter.
        self._blas = ThreadpoolController()

    def evidence(self, ra: int, rb: int) -> np.ndarray:
        """``verify.EVIDENCE`` for rows ra (of a) and rb (of b); NaN where rejected. Verified
        both ways (``VerifyConfig.both_ways``), the way whose evidence ranks higher (more
        agreement first), so a pair scores the same whichever of its files comes first."""
        cosine = float(self.a.global_[ra] @ self.b.global_[rb])
        with self._blas.limit(limits=1, user_api="blas"):
            found = [_one_way(self.a, ra, self.b, rb, self.grid, self.config, cosine)]
            if self.config.both_ways:
                found.append(_one_way(self.b, rb, self.a, ra, self.grid, self.config, cosine))
        found = [f for f in found if f is not None]
        if not found:
            return np.full(len(EVIDENCE), np.nan, np.float32)
        return max(found, key=lambda f: tuple(np.nan_to_num(f, nan=-np.inf).tolist()))

    def score(self, ra: int, rb: int) -> float:
        return float(pair_scores(self.evidence(ra, rb), self.model)[0])

    def evidence_many(self, i: np.ndarray, j: np.ndarray, progress: bool = False) -> np.ndarray:
        out = np.full((len(i), len(EVIDENCE)), np.nan, dtype=np.float32)
        pairs = zip(i.tolist(), j.tolist(), strict=True)
        for n, (ra, rb) in enumerate(
            tqdm(pairs, total=len(i), desc="verifying", unit="pair", disable=not progress)
        ):
            out[n] = self.evidence(ra, rb)
        return out


def _one_way(
    a: Features,
    ra: int,
    b: Features,
    rb: int,
    grid: np.ndarray,
    config: VerifyConfig,
    cosine: float,
) -> np.ndarray | None:
    """Row ra of ``a`` mapped into row rb of ``b`` (:func:`verify.score_pair`)."""
    return score_pair(
        a.local[ra, 0],
        a.thumbs[ra],
        b.local[rb],
        b.thumbs[rb],
        grid,
        config,
        pair_rng(config.seed, a.infos[ra], b.infos[rb]),
        cosine=cosine,
        sizes=(a.size_of(ra), b.size_of(rb)),
    )


def identical_row_pairs(features: Features) -> list[tuple[int, int]]:
    """Rows whose files are byte-identical or decode to identical pixels."""
    pairs = identical_pairs([info.byte_digest for info in features.infos])
    pairs += identical_pairs([info.pixel_digest for info in features.infos])
    return pairs


def candidate_pairs(global_: np.ndarray, config: FinderConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (i < j) to verify: each row's ``k`` nearest neighbours by global descriptor.

    Whitened descriptors when ``whiten_dims`` is set and the set is large enough to fit them
    (``grouping.whiten``), else raw cosines above ``candidate_floor``.
    """
    search = SearchConfig(k=config.k, max_k=config.k)
    white = whiten(global_, config.whiten_dims)
    if white is None:
        i, j, _ = knn_pairs(global_, config.candidate_floor, search)
    else:
        i, j, _ = knn_pairs(white, config.whitened_floor, search)
    return i, j


def first_identical(n: int, identical: list[tuple[int, int]]) -> np.ndarray:
    """For each of ``n`` rows, the first row of its set of identical files (itself when it
    has no copy)."""
    labels = component_labels(n, identical)  # numbered in order of each set's first row
    _, first = np.unique(labels, return_index=True)
    return first[labels]


def score_candidates(features: Features, config: FinderConfig) -> ScoredPairs:
    """Candidate pairs from the k-NN search, each verified; identical files listed apart.

    The search sees each identical file once: copies of one file would otherwise crowd each
    other's k nearest neighbours (and be verified against each other for nothing), and tip
    the set over the size at which descriptors are whitened, as if it held more photos. They
    join their group through ``identical``.
    """
    identical = identical_row_pairs(features)
    first = first_identical(len(features.infos), identical)
    rows = np.flatnonzero(first == np.arange(len(first)))
    # No copy of the descriptors when no file repeats (most folders).
    distinct = features.global_ if len(rows) == len(features.infos) else features.global_[rows]
    i, j = candidate_pairs(distinct, config)
    i, j = rows[i], rows[j]
    evidence = np.full((len(i), len(EVIDENCE)), np.nan, dtype=np.float32)
    start = time.perf_counter()
    if len(i):
        scorer = PairScorer(features, config=config.verify, model=config.pair_model)
        evidence[:] = scorer.evidence_many(i, j, progress=config.progress)
    seconds = time.perf_counter() - start
    scores = pair_scores(evidence, config.pair_model)
    log.info("%d candidate pairs verified, %d identical pairs", len(i), len(identical))
    return ScoredPairs(i, j, scores, identical, evidence, len(i), seconds)


def group_rows(n: int, pairs: ScoredPairs, threshold: float) -> list[list[int]]:
    """Connected components (two or more rows) of accepted and identical pairs."""
    return groups_of(n, pairs.accepted(threshold))


def member(features: Features, r: int, similarity: float = 1.0, source: str = "input") -> Member:
    s: Sample = features.sample(r)
    info = features.infos[r]
    return Member(
        id=s.id,
        path=str(s.path),
        label=s.label,
        width=info.width,
        height=info.height,
        file_size=info.file_size,
        similarity=similarity,
        source=source,
    )


def build_groups(
    features: Features,
    groups: list[list[int]],
    pairs: ScoredPairs,
    keep: Sequence[str],
    config: FinderConfig,
) -> list[DuplicateGroup]:
    """Order each group keeper-first and score every member against the keeper."""
    known = {
        (int(a), int(b)): float(s) for a, b, s in zip(pairs.i, pairs.j, pairs.scores, strict=True)
    }
    # Identical files score as the one of them the search saw: 300 reposts of a photo are
    # not verified again, one by one, against a keeper that is a near copy of it.
    first = first_identical(len(features), pairs.identical)
    scorer = PairScorer(features, config=config.verify, model=config.pair_model)
    out = []
    for rows in groups:
        by_id = {features.sample(r).id: r for r in rows}
        ordered = order_members([member(features, r) for r in rows], keep)
        keeper = by_id[ordered[0].id]
        members = [ordered[0]]
        for m in ordered[1:]:
            r = by_id[m.id]
            a, b = int(first[keeper]), int(first[r])
            pair = (min(a, b), max(a, b))
            if a == b:
                sim = 1.0
            elif pair not in known:  # joined through other members: score against the keeper
                known[pair] = sim = scorer.score(a, b)
            else:
                sim = known[pair]
            members.append(member(features, r, sim))
        out.append(DuplicateGroup(len(out) + 1, members, has_label_conflict(members)))
    return out


def find_duplicates(
    descriptor: CopyDescriptor, samples: Sequence[Sample], config: FinderConfig
) -> DuplicateResult:
    """Group the samples that show the same photo; unreadable files are skipped and listed."""
    if not samples:
        raise DataError("no input images")
    features = extract_features(
        descriptor, samples, config.batch_size, config.workers, config.progress
    )
    try:
        if not len(features):
            raise DataError(
                f"none of the {len(samples)} input images could be read "
                f"(first error: {features.failures[0].reason})"
            )
        pairs = score_candidates(features, config)
        stopping.check()  # a Ctrl-C or SIGTERM Python dropped (common.stopping)
        groups = group_rows(len(features), pairs, config.threshold)
        result_groups = build_groups(features, groups, pairs, config.keep, config)
    finally:
        features.close()
    return DuplicateResult(
        groups=result_groups,
        listed=len(samples),
        failures=features.failures,
        threshold=config.threshold,
        score=config.score_name,
        extra={"timing": stage_timing(features, pairs, descriptor.engine.runtime)},
    )


def stage_timing(features: Features, pairs: ScoredPairs, runtime: str) -> dict:
    """Speed of the two costly stages: describing images and verifying candidate pairs."""
    return timing_of([features], pairs.verified, pairs.seconds, runtime)


def timing_of(
    described: Sequence[Features], verified: int, verify_seconds: float, runtime: str
) -> dict:
    """:func:`stage_timing` over several described sets (the inputs and catalog candidates
    of a search against an index) and ``verified`` pairs in ``verify_seconds``."""

    def rate(count: int, seconds: float) -> float:
        return round(count / seconds, 2) if seconds > 0 else 0.0

    n = sum(len(f) for f in described)
    seconds = sum(f.seconds for f in described)
    model_seconds = sum(f.model_seconds for f in described)
    return {
        "runtime": runtime,
        "images": n,
        "describe_s": round(seconds, 3),
        "describe_images_per_s": rate(n, seconds),
        "model_s": round(model_seconds, 3),
        "model_images_per_s": rate(n, model_seconds),
        "pairs": verified,
        "verify_s": round(verify_seconds, 3),
        "verify_pairs_per_s": rate(verified, verify_seconds),
    }


def format_timing(timing: dict) -> str:
    """The speed line of a run: the descriptor stage (read, decode, model) and verification."""
    return (
        f"descriptor stage: {timing['images']} images in {timing['describe_s']:.1f} s "
        f"({timing['describe_images_per_s']:.1f} images/s; model alone "
        f"{timing['model_images_per_s']:.1f} images/s on {timing['runtime']}); verification: "
        f"{timing['pairs']} pairs in {timing['verify_s']:.1f} s "
        f"({timing['verify_pairs_per_s']:.1f} pairs/s)"
    )
