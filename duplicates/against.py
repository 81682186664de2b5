"""Checking new listings against a live catalog index instead of among themselves.

The index holds the checkpoint's classifier embeddings, so candidates come from the index's own
search (the query and its mirror, ``k`` each); each candidate is then verified like a pair
within a folder, which needs the catalog image: the index metadata's ``image`` path (present
when the index was built with ``--catalog CSV``). Unreachable catalog images are counted and
skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps

from duplicates.descriptor import CopyDescriptor
from duplicates.features import Features, extract_features
from duplicates.finder import FinderConfig, PairScorer, member, timing_of
from duplicates.result import (
    SOURCE_CATALOG,
    DuplicateGroup,
    DuplicateResult,
    has_label_conflict,
    order_members,
)
from embedder.batch import Failure
from embedder.data import Sample
from embedder.engine_options import precision_mismatch
from embedder.errors import DataError, ImageError
from embedder.images import load_image
from embedder.inference import Embedder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgainstConfig:
    """How many index neighbours (per orientation) are verified for each new listing."""

    k: int = 20


def _query_vectors(embedder: Embedder, features: Features, batch: int = 32):
    """Classifier embeddings of each readable input and of its mirror (for the index search)."""
    xq, xm = [], []
    for start in range(0, len(features), batch):
        images = []
        for r in range(start, min(start + batch, len(features))):
            try:
                images.append(load_image(features.sample(r).path, embedder.decode_side))
            except ImageError as exc:  # changed on disk since it was read
                raise DataError(f"{features.sample(r).id}: {exc}") from exc
        xq.append(embedder.embed_images(images).embeddings)
        xm.append(embedder.embed_images([ImageOps.mirror(im) for im in images]).embeddings)
    return np.concatenate(xq), np.concatenate(xm)


_NO_IMAGES = (
    "{}: catalog items have no 'image' path in their metadata, so matches cannot be "
    "verified; build the index with 'phonesim index build --catalog CSV'"
)


def find_against(
    descriptor: CopyDescriptor,
    embedder: Embedder,
    samples: Sequence[Sample],
    index_dir: str | Path | None,
    config: FinderConfig,
    against: AgainstConfig | None = None,
    store: str | None = None,
) -> DuplicateResult:
    """Groups of one new listing plus the catalog items it duplicates (catalog item kept)."""
    from index import open_index  # the index package is only needed in this mode

    against = against or AgainstConfig()
    if not samples:
        raise DataError("no input images")
    with open_index(
        index_dir,
        readonly=True,
        store=store,
        expect_model=embedder.model_name,
        expect_checkpoint_hash=embedder.checkpoint_hash,
        expect_dim=embedder.dim,
    ) as ix:
        index_dir = index_dir if index_dir is not None else ix.where
        stored = ix.manifest.source.get("embedding_precision")
        problem = precision_mismatch(f"index {index_dir}", stored, embedder.runtime)
        if problem:
            log.warning("%s", problem)
        if "image" not in ix.filterable_fields:  # no item ever had one: say so before reading
            raise DataError(_NO_IMAGES.format(index_dir))
        queries = extract_features(
            descriptor, samples, config.batch_size, config.workers, config.progress
        )
        if not len(queries):
            queries.close()
            raise DataError(f"none of the {len(samples)} input images could be read")
        xq, xm = _query_vectors(embedder, queries)
        k = min(against.k, max(1, len(ix)))
        hits = [h + m for h, m in zip(ix.search(xq, k), ix.search(xm, k), strict=True)]
    # Catalog candidates, each read and described once.
    cand: dict[str, Sample] = {}
    unreachable: dict[str, Failure] = {}
    for row in hits:
        for h in row:
            image = h.metadata.get("image")
            if not image:
                unreachable.setdefault(h.id, Failure(-1, h.id, "no 'image' path in its metadata"))
            elif h.id not in cand:
                label = str(h.metadata.get("label", ""))
                cand[h.id] = Sample(h.id, Path(image), label, metadata=dict(h.metadata))
    if unreachable and not cand:
        queries.close()
        raise DataError(_NO_IMAGES.format(index_dir))
    catalog = extract_features(
        descriptor, list(cand.values()), config.batch_size, config.workers, progress=False
    )
    unreachable.update((f.id, f) for f in catalog.failures)
    row_of = {catalog.sample(r).id: r for r in range(len(catalog))}
    scorer = PairScorer(queries, catalog, config.verify, config.pair_model)
    inner = PairScorer(catalog, None, config.verify, config.pair_model)
    groups: list[DuplicateGroup] = []
    verified, verify_s = 0, 0.0
    for q in range(len(queries)):
        info_q = queries.infos[q]
        matched: dict[int, float] = {}
        for h in hits[q]:
            r = row_of.get(h.id)
            if r is None or r in matched:
                continue
            info_c = catalog.infos[r]
            if (
                info_c.byte_digest == info_q.byte_digest
                or info_c.pixel_digest == info_q.pixel_digest
            ):
                score = 1.0
            elif float(queries.global_[q] @ catalog.global_[r]) < config.candidate_floor:
                # As in a folder search: below the floor a pair is not a candidate (and lies
                # outside the range the pair model was fitted on).
                continue
            else:
                started = time.perf_counter()
                score = scorer.score(q, r)
                verify_s += time.perf_counter() - started
                verified += 1
            if score >= config.threshold:
                matched[r] = score
        if not matched:
            continue
        members = [member(catalog, r, 1.0, SOURCE_CATALOG) for r in matched]
        ordered = order_members(members, ("catalog", *config.keep))
        keeper = row_of[ordered[0].id]
        final = [ordered[0]]
        for m in ordered[1:]:
            final.append(
                member(catalog, row_of[m.id], inner.score(keeper, row_of[m.id]), SOURCE_CATALOG)
            )
        final.append(member(queries, q, matched[keeper]))
        groups.append(DuplicateGroup(len(groups) + 1, final, has_label_conflict(final)))
    if unreachable:
        log.warning(
            "%d catalog candidates could not be verified (no readable image)", len(unreachable)
        )
    timing = timing_of([queries, catalog], verified, verify_s, descriptor.engine.runtime)
    queries.close()
    catalog.close()
    return DuplicateResult(
        groups=groups,
        listed=len(samples),
        failures=queries.failures,
        catalog_failures=sorted(unreachable.values(), key=lambda f: f.id),
        threshold=config.threshold,
        score=config.score_name,
        mode="against",
        catalog=str(index_dir),
        extra={
            "unverified_catalog_candidates": len(unreachable),
            "timing": timing,
        },
    )
