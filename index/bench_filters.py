"""Filtered-search figures of the index benchmark: equality and range filters matching about
1 %, 20 % and 80 % of the catalog, plus a rare tag, each against exact filtered search.

Labels follow the vector clusters ("brands"), so a label filter's nearest matches mostly lie in
other clusters than the query's: the hard case for filtered approximate search. Prices are
drawn per cluster, then vary per item, so price ranges are partly tied to the clusters.
"""

# ruff: noqa: E741  (faiss vocabulary: D and I are scores and ids)

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from index.catalog import CatalogIndex
from index.evaluation import knn_recall_at_k

N_LABELS = 100  # "brands" of ~1 % of the catalog each
RARE_EVERY = 1000  # one item in RARE_EVERY is tagged rare
SHARES = (0.01, 0.2, 0.8)  # what the equality and the range filters match


def catalog_metadata(clusters: np.ndarray, seed: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Metadata of a benchmark catalog (label, price, rare tag) and its labels and prices."""
    rng = np.random.default_rng([seed, 7])
    labels = clusters % N_LABELS
    base = np.exp(rng.normal(5.5, 0.8, int(clusters.max()) + 1))  # a price level per cluster
    prices = np.round(base[clusters] * np.exp(rng.normal(0.0, 0.3, len(clusters))), 2)
    metadata = [
        {
            "label": f"brand{int(c)}",
            "price": float(p),
            **({"tier": "rare"} if i % RARE_EVERY == 0 else {}),
        }
        for i, (c, p) in enumerate(zip(labels, prices, strict=True))
    ]
    return metadata, labels, prices


def filter_cases(labels: np.ndarray, prices: np.ndarray) -> list[tuple[str, dict, np.ndarray]]:
    """``(name, filter, matching rows)`` for every filter the benchmark measures."""
    cases = []
    for share in SHARES:
        m = max(1, round(share * N_LABELS))
        names = [f"brand{i}" for i in range(m)]
        flt: dict[str, Any] = {"label": names[0]} if m == 1 else {"label": {"in": names}}
        cases.append((f"eq_{share:.0%}", flt, np.flatnonzero(labels < m)))
    q = {s: round(float(np.quantile(prices, s)), 2) for s in (0.01, 0.2, 0.4, 0.6)}
    cases += [
        ("range_1%", {"price": {"lt": q[0.01]}}, np.flatnonzero(prices < q[0.01])),
        (
            "range_20%",
            {"price": {"gte": q[0.4], "lt": q[0.6]}},
            np.flatnonzero((prices >= q[0.4]) & (prices < q[0.6])),
        ),
        ("range_80%", {"price": {"gte": q[0.2]}}, np.flatnonzero(prices >= q[0.2])),
        ("rare_0.1%", {"tier": "rare"}, np.arange(0, len(labels), RARE_EVERY)),
    ]
    return [c for c in cases if len(c[2])]


def _p50_ms(fn: Any, xq: np.ndarray) -> float:
    times = []
    for q in xq:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return float(np.percentile(np.asarray(times) * 1e3, 50))


def _found(hits: list[list[Any]], k: int) -> np.ndarray:
    out = np.full((len(hits), k), -1, dtype=np.int64)
    for row, hs in enumerate(hits):
        out[row, : len(hs)] = [int(h.id[4:]) for h in hs]
    return out


def measure_filters(
    ix: CatalogIndex,
    flat: faiss.IndexFlatIP,
    xq: np.ndarray,
    cases: list[tuple[str, dict, np.ndarray]],
    *,
    k: int,
    nq: int,
    exact_queries: int,
    r: dict[str, Any],
) -> None:
    """Recall@k and p50 of each filtered search, and p50 of exact filtered search over the
    same catalog (``flat``, rows = fids) through a FAISS bitmap selector, into ``r``."""
    xq = xq[:nq]
    rows_of: dict[str, Any] = {}
    for name, flt, rows in cases:
        mask = np.zeros(flat.ntotal, dtype=bool)
        mask[rows] = True
        bitmap = np.packbits(mask, bitorder="little")
        sp = faiss.SearchParameters()
        sp.sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        _, I_gt = flat.search(xq, k, params=sp)  # exact filtered neighbours
        ix.search(xq[0], k, filter=flt)  # warm the filter caches, as a server would
        p50 = _p50_ms(lambda q, f=flt: ix.search(q, k, filter=f), xq)
        recall = knn_recall_at_k(_found(ix.search(xq, k, filter=flt), k), I_gt, k)
        exact = _p50_ms(lambda q, s=sp: flat.search(q[None, :], k, params=s), xq[:exact_queries])
        rows_of[name] = {
            "filter": _short(flt),
            "matches": int(len(rows)),
            "share": round(len(rows) / flat.ntotal, 4),
            "recall_at_10": round(recall, 4),
            "p50_ms": round(p50, 3),
            "exact_p50_ms": round(exact, 3),
            "speedup_vs_exact": float(f"{exact / p50:.3g}"),  # 0.04 is not 0.0
            "p50_vs_unfiltered": round(p50 / r["p50_ms"], 2),
        }
    r["filters"] = rows_of
    if rows_of:
        r["filter_min_recall_at_10"] = min(v["recall_at_10"] for v in rows_of.values())


def _short(flt: dict) -> Any:
    """The filter for the JSON line, long ``in`` lists summarised."""
    out = {}
    for field, spec in flt.items():
        if isinstance(spec, dict) and len(spec.get("in", ())) > 3:
            spec = {**spec, "in": f"{len(spec['in'])} values"}
        out[field] = spec
    return out


def format_filters(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Table rows of :func:`measure_filters`'s figures."""
    out = []
    for name, f in r.get("filters", {}).items():
        out.append(
            (
                f"filter {name} ({f['matches']:,} match)",
                f"recall@10 {f['recall_at_10']:.4f}, p50 {f['p50_ms']:.2f} ms "
                f"({f['p50_vs_unfiltered']:.1f}x unfiltered; exact filtered "
                f"{f['exact_p50_ms']:.2f} ms, ratio {f['speedup_vs_exact']:.3g}x)",
            )
        )
    return out
