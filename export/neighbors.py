"""Neighbour pass: for every exported row, its ``k`` nearest *other* catalog items.

It runs after the embeddings are on disk and reads them back in blocks of ``block_rows``, so
memory is the search index plus one block (and the id list, for naming neighbours). The index
is built on the fly from the file (exact ``IndexFlatIP`` up to ``exact_limit`` items, IVF
beyond, or any faiss factory string), or is an existing index folder (``--index``).

With a class re-rank (``--class-rerank``), each row's first few neighbours are reordered by
similarity plus the row's own predicted probability of the neighbour's label, as ``serve``
ranks an uploaded photo's hits (:mod:`embedder.class_rerank`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

import faiss
import h5py
import numpy as np
from tqdm import tqdm

from common import stopping
from embedder.class_rerank import ClassRerank, rerank_order
from export import schema
from index import knn_factory

log = logging.getLogger(__name__)

BLOCK_ROWS = 4096
IVF_NPROBE = 32
TRAIN_PER_LIST = 32
TRAIN_MIN = 10_000


class NeighborSearch(Protocol):
    """Searches ``k`` neighbours of query rows, leaving out each query's own item."""

    description: str
    #: the ``metric`` attribute: what the scores are (exact cosine, or approximate)
    metric: str

    def search(
        self, xq: np.ndarray, k: int, rows: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (scores N x k float32, neighbour ids N x k str, neighbour rows N x k int64,
        neighbour classes N x k int64: the index of each neighbour's label in the checkpoint's
        label names).

        Missing neighbours (fewer than k other items) are NaN / '' / -1 / -1; a neighbour
        without a label, or with one the checkpoint does not name, has class -1.
        """
        ...

    def close(self) -> None: ...


def drop_self(
    D: np.ndarray, labels: np.ndarray, self_labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per query keep k, removing the query's own label (else the last).

    The query usually finds itself first, but not always (exact duplicates tie, IVF may miss
    it), so it is removed by label, not by position.
    """
    keep = self_labels[:, None] != labels
    no_self = keep.all(axis=1)
    keep[no_self, -1] = False
    n = len(labels)
    return D[keep].reshape(n, k), labels[keep].reshape(n, k)


EXACT_METRIC = "inner product of unit vectors (cosine similarity)"


def approximate_metric(factory: str) -> str:
    """The ``metric`` attribute where ``factory`` keeps the vectors lossily."""
    return (
        f"approximate inner product of unit vectors: {factory} stores the vectors lossily, so "
        "the scores approximate cosine similarities (the embeddings' dot product is exact)"
    )


def scores_exact(index: faiss.Index, dim: int) -> bool:
    """Whether ``index`` answers exact inner products: it keeps every vector whole (Flat, IVF
    Flat, HNSW over Flat, a Flat refine), not as a PQ, SQ or PCA code whose scores are off by
    up to 0.2 (IVF16,PQ16 on phone photos)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):  # ids around another index
        return scores_exact(index.index, dim)
    try:
        return index.sa_code_size() >= 4 * dim
    except RuntimeError:  # HNSW has no standalone code: its storage has
        storage = getattr(index, "storage", None)
        return storage is not None and scores_exact(storage, dim)


def auto_factory(n: int, exact_limit: int) -> str:
    """Exact search while it is affordable (O(N^2) work), IVF beyond, sized as the index is."""
    return knn_factory(n, exact_limit)


class FileIndexSearch:
    """A faiss index over the file's own embeddings; faiss row ids are file rows."""

    def __init__(
        self,
        embeddings: h5py.Dataset,
        row_ids: np.ndarray,
        factory: str,
        block_rows: int = BLOCK_ROWS,
        row_classes: np.ndarray | None = None,
    ) -> None:
        n, dim = embeddings.shape
        self.row_ids = row_ids
        # Class numbers, not label strings: 4 bytes a row beside the index.
        self.row_classes = (
            np.full(n, -1, np.int32) if row_classes is None else np.asarray(row_classes, np.int32)
        )
        self.index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        self.description = f"faiss {factory} (inner product) built from this file's embeddings"
        self.metric = EXACT_METRIC if scores_exact(self.index, dim) else approximate_metric(factory)
        if not self.index.is_trained:  # IVF, or another kind that learns (PQ, OPQ, PCA...)
            try:
                nlist = faiss.extract_index_ivf(self.index).nlist
            except RuntimeError:
                nlist = 0
            want = min(n, max(TRAIN_MIN, TRAIN_PER_LIST * nlist))
            self.index.train(_training_sample(embeddings, want, block_rows))
            if nlist:
                faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", IVF_NPROBE)
        for lo in range(0, n, block_rows):
            self.index.add(_as_f32(embeddings[lo : lo + block_rows]))
        log.info("neighbour index: %s over %d rows", factory, self.index.ntotal)

    def search(
        self, xq: np.ndarray, k: int, rows: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        D, found = self.index.search(_as_f32(xq), k + 1)
        D, found = drop_self(D, found, rows, k)
        missing = found < 0
        at = np.where(missing, 0, found)
        scores = np.where(missing, np.nan, D).astype(np.float32)
        names = np.where(missing, "", self.row_ids[at]).astype(object)
        classes = np.where(missing, -1, self.row_classes[at]).astype(np.int64)
        return scores, names, found.astype(np.int64), classes

    def close(self) -> None:
        self.index.reset()


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _training_sample(embeddings: h5py.Dataset, want: int, block_rows: int) -> np.ndarray:
    """About ``want`` evenly strided rows, read block by block (random HDF5 access is slow)."""
    n = embeddings.shape[0]
    stride = max(1, n // want)
    parts = [
        _as_f32(embeddings[lo : lo + block_rows])[(-lo) % stride :: stride]
        for lo in range(0, n, block_rows)
    ]
    return np.concatenate(parts)


def class_positions(label_names: list[str]) -> dict[str, int]:
    """Each class name's index in ``label_names`` (the checkpoint's class order)."""
    return {name: i for i, name in enumerate(label_names)}


def label_classes(labels: Iterable[str], label_names: list[str]) -> np.ndarray:
    """Each label's index in ``label_names`` (int32), -1 for a blank or unknown label."""
    position = class_positions(label_names)
    return np.fromiter((position.get(x, -1) for x in labels), dtype=np.int32)


def write_neighbors(
    h5: h5py.File,
    k: int,
    search: NeighborSearch,
    row_ids: np.ndarray,
    block_rows: int = BLOCK_ROWS,
    progress: bool = True,
    rerank: ClassRerank | None = None,
) -> int:
    """Create ``neighbors/{ids,rows,scores}`` (N x k) by searching the file's rows in blocks;
    return the fewest neighbours any row found (less than k in a catalog of k items or fewer).

    With ``rerank``, each row's first ``rerank.pool`` neighbours are reordered by its
    probabilities (the file's) of their classes, so the first k are those the server's class
    ranking would answer; scores stay similarities.
    """
    emb = h5[schema.EMBEDDINGS]
    n = emb.shape[0]
    chunk = schema.chunk_rows(k * 8, n)
    group = h5.create_group(schema.NEIGHBORS)
    out_ids = group.create_dataset("ids", (n, k), dtype=schema.STR, chunks=(min(chunk, 1024), k))
    out_rows = group.create_dataset("rows", (n, k), "i8", chunks=(chunk, k), **schema.COMPRESSION)
    out_scores = group.create_dataset(
        "scores", (n, k), "f4", chunks=(chunk, k), **schema.COMPRESSION
    )
    group.attrs["k"] = k
    group.attrs["source"] = search.description
    group.attrs["metric"] = getattr(search, "metric", EXACT_METRIC)
    group.attrs["ranking"] = "similarity" if rerank is None else "class"
    if rerank is not None:
        group.attrs["class_rerank_weight"] = rerank.weight
        group.attrs["class_rerank_pool"] = rerank.pool
    # A re-rank reorders the first `pool` neighbours, so at least that many are fetched.
    fetch = k if rerank is None else max(k, rerank.pool)
    fewest = k
    with tqdm(total=n, desc="neighbours", unit="item", disable=not progress) as bar:
        for lo in range(0, n, block_rows):
            stopping.check()
            hi = min(lo + block_rows, n)
            rows = np.arange(lo, hi, dtype=np.int64)
            scores, names, nrows, classes = search.search(emb[lo:hi], fetch, rows, row_ids[lo:hi])
            if rerank is not None:
                probs = h5[schema.PROBABILITIES][lo:hi]
                order = rerank_order(scores, classes, probs, rerank)[:, :k]
                scores, names, nrows = (
                    np.take_along_axis(a, order, axis=1) for a in (scores, names, nrows)
                )
            out_ids[lo:hi] = names
            out_rows[lo:hi] = nrows
            out_scores[lo:hi] = scores
            fewest = min(fewest, int((names[:, :k] != "").sum(axis=1).min()))
            bar.update(hi - lo)
    return fewest
