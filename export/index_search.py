"""Neighbours from an existing index folder (``--index``), through the index package's API.

The index may hold items the export does not (a larger catalog) and lack some it does, so the
query's own item is removed by id and neighbour rows are -1 where the id is not in the file.
"""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np

from export.neighbors import EXACT_METRIC, approximate_metric, class_positions, scores_exact

log = logging.getLogger(__name__)


class IndexDirSearch:
    """Adapts a ``CatalogIndex`` (``search(xq, k) -> [[Hit]]``) to the neighbour pass."""

    def __init__(
        self, index: Any, row_ids: np.ndarray, description: str, label_names: list[str]
    ) -> None:
        self.index = index
        self.description = description
        factory = index.manifest.factory
        probe = faiss.index_factory(index.dim, factory, faiss.METRIC_INNER_PRODUCT)
        self.metric = (
            EXACT_METRIC if scores_exact(probe, index.dim) else approximate_metric(factory)
        )
        self.row_of = {str(i): r for r, i in enumerate(row_ids)}
        self.class_of = class_positions(label_names)

    @classmethod
    def open(
        cls,
        path: str | None,
        model_name: str,
        checkpoint_hash: str,
        dim: int,
        row_ids: np.ndarray,
        label_names: list[str],
        store: str | None = None,
    ) -> IndexDirSearch:
        """Open read-only (from ``store``, a PostgreSQL URL, if given); a different model or
        checkpoint raises the index's mismatch error."""
        from index.catalog import CatalogIndex

        index = CatalogIndex.open(
            path,
            readonly=True,
            store=store,
            expect_model=model_name,
            expect_checkpoint_hash=checkpoint_hash,
            expect_dim=dim,
        )
        log.info("neighbours from index %s (%d items)", index.where, len(index))
        what = f"store {index.where}" if store else f"index folder {path}"
        return cls(index, row_ids, f"{what} ({index.kind})", label_names)

    def search(
        self, xq: np.ndarray, k: int, rows: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        # exclude_ids applies to the whole query batch, so self is dropped per query instead.
        hits = self.index.search(np.ascontiguousarray(xq, dtype=np.float32), k + 1)
        n = len(xq)
        scores = np.full((n, k), np.nan, np.float32)
        names = np.full((n, k), "", dtype=object)
        nrows = np.full((n, k), -1, np.int64)
        classes = np.full((n, k), -1, np.int64)
        for q, (own, found) in enumerate(zip(ids, hits, strict=True)):
            others = [h for h in found if h.id != own][:k]
            for j, hit in enumerate(others):
                scores[q, j] = hit.score
                names[q, j] = hit.id
                nrows[q, j] = self.row_of.get(hit.id, -1)
                label = hit.metadata.get("label")  # the catalog's, also for items not exported
                classes[q, j] = self.class_of.get(label, -1) if isinstance(label, str) else -1
        return scores, names, nrows, classes

    def close(self) -> None:
        self.index.close()
