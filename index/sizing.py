"""How big a FAISS index to build for ``n`` vectors: the one sizing policy of every stage.

The catalog index (:func:`index.ann.resolve_kind`), the feature export's neighbour pass and
the duplicate finder's candidate search all size their FAISS indexes here, so a change of
policy (say, more IVF lists) reaches every stage at once.
"""

from __future__ import annotations

import math

TRAIN_POINTS_PER_LIST = 40  # k-means wants ~40 training points per list (faiss warns below 39)
HNSW_M = 32  # graph neighbours per node of an HNSW index
IVF_HNSW_QUANTIZER_FROM = 1024  # IVF lists from which the catalog index finds them by HNSW
APPROXIMATE = ("ivf", "hnsw")


def ivf_nlist(n: int) -> int:
    """Lists for an IVF index of ``n`` vectors: the power of two nearest ``2 * sqrt(n)``,
    at most ``n / 40`` (k-means needs ~40 training points per list), at least 1.

    k-means costs grow with the square of the list count (points x centroids), so 2048 lists
    at 1M vectors train in a quarter of the time of 4096, for slightly longer lists to scan.
    """
    target = max(1.0, 2.0 * math.sqrt(max(n, 1)))
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and nlist * TRAIN_POINTS_PER_LIST > n:
        nlist //= 2
    return int(nlist)


def knn_factory(n: int, exact_limit: int, approximate: str = "ivf", hnsw_m: int = HNSW_M) -> str:
    """``faiss.index_factory`` string for k-NN search over ``n`` vectors.

    Exact (``Flat``) for at most ``exact_limit`` vectors, where brute force is affordable;
    beyond, ``IVF{ivf_nlist(n)},Flat`` or, with ``approximate="hnsw"``, ``HNSW{hnsw_m}``.
    The IVF string has a flat coarse quantizer, right for a one-off index trained and filled
    by faiss itself; the catalog index adds an HNSW quantizer from
    :data:`IVF_HNSW_QUANTIZER_FROM` lists, as it also trains and fills it exactly
    (:mod:`index.ann`).
    """
    if approximate not in APPROXIMATE:
        raise ValueError(f"approximate must be one of {', '.join(APPROXIMATE)}: {approximate!r}")
    if n <= exact_limit:
        return "Flat"
    if approximate == "hnsw":
        return f"HNSW{hnsw_m}"
    return f"IVF{ivf_nlist(n)},Flat"
