"""What a :class:`~index.catalog.CatalogIndex` hands back: search hits and stored items."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index.store import StoredItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One search result: catalog id, cosine similarity (higher is closer) and metadata."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    """One catalog item as stored: its id and metadata."""

    id: str
    metadata: dict[str, Any] = field(default_factory=dict)


def hits_of(D: np.ndarray, I: np.ndarray, rows: dict[int, StoredItem]) -> list[list[Hit]]:
    """Per query, the hits of scores ``D`` and ids ``I`` (nq x k, -1 padded), named by
    ``rows`` (the store's items by id)."""
    out = []
    for scores, fids in zip(D.tolist(), I.tolist(), strict=True):
        hits = []
        for fid, score in zip(fids, scores, strict=True):
            if fid < 0:
                continue
            row = rows.get(fid)
            if row is None:  # cannot happen while store and FAISS agree
                log.warning("search returned fid %d that is not in the catalog", fid)
                continue
            hits.append(Hit(row.id, float(score), dict(row.metadata)))
        out.append(hits)
    return out
