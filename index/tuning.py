"""Search parameters (``nprobe``, ``efSearch``, ...) and their tuning at build time.

``search_params`` turns a ``{name: value}`` mapping into FAISS ``SearchParameters`` for the
kind of index at hand (a name the index does not use is an error); ``tune`` picks the smallest
``nprobe``/``efSearch`` that reaches a recall target on held-out catalog vectors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from index.ann import unwrap
from index.errors import InvalidParamsError
from index.evaluation import knn_ground_truth, knn_recall_at_k

log = logging.getLogger(__name__)

TUNING_MARGIN = 0.01
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
EF_SEARCH_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_PARAM_NAMES = {"nprobe", "efSearch", "k_factor", "quantizer_efSearch"}


def tunable_param(index: faiss.Index) -> str | None:
    """The speed/recall knob of this index: ``nprobe``, ``efSearch`` or None (exact)."""
    core = unwrap(index)
    if isinstance(core, faiss.IndexRefine):
        core = unwrap(faiss.downcast_index(core.base_index))
    if isinstance(core, faiss.IndexIVF):
        return "nprobe"
    if isinstance(core, faiss.IndexHNSW):
        return "efSearch"
    return None


# FAISS keeps these in C ints: a larger value overflowed with a traceback. Far beyond any list
# or graph size, so nothing useful is refused.
MAX_SEARCH_PARAM = 2**31 - 1


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidParamsError(f"search parameter {name!r} must be a positive integer: {value!r}")
    if value > MAX_SEARCH_PARAM:
        raise InvalidParamsError(
            f"search parameter {name!r} must be at most {MAX_SEARCH_PARAM}: {value!r}"
        )
    return int(value)


def search_params(
    index: faiss.Index, params: Mapping[str, Any] | None, sel: Any = None
) -> tuple[Any, list]:
    """FAISS ``SearchParameters`` for ``params``, plus objects that must outlive the search.

    Known names: ``nprobe`` (IVF), ``quantizer_efSearch`` (IVF with HNSW quantizer),
    ``efSearch`` (HNSW), ``k_factor`` (refine). A name the index does not use is an error.
    ``sel`` (an ``IDSelector``, for kinds where :func:`index.filtered_search.selector_kind`
    is not None) restricts the search to the ids it selects.
    """
    unknown = sorted(set(params or {}) - _PARAM_NAMES)
    if unknown:
        raise InvalidParamsError(
            f"unknown search parameter(s) {', '.join(unknown)}; known: "
            + ", ".join(sorted(_PARAM_NAMES))
        )
    if not params and sel is None:
        return None, []
    sp, keep = _params_for(unwrap(index), dict(params or {}))
    if sel is not None:
        if sp is None:
            sp = faiss.SearchParameters()
        sp.sel = sel
        keep.append(sel)
    return sp, keep


def _params_for(core: faiss.Index, params: dict[str, Any]) -> tuple[Any, list]:
    keep: list = []
    if isinstance(core, faiss.IndexRefine):
        sp = faiss.IndexRefineSearchParameters()
        if "k_factor" in params:
            k_factor = params.pop("k_factor")
            if not isinstance(k_factor, int | float) or k_factor < 1:
                raise InvalidParamsError(f"k_factor must be a number >= 1: {k_factor!r}")
            sp.k_factor = float(k_factor)
        base, keep = _params_for(unwrap(faiss.downcast_index(core.base_index)), params)
        if base is not None:
            sp.base_index_params = base
            keep.append(base)
        return sp, keep
    if isinstance(core, faiss.IndexIVF):
        sp = faiss.SearchParametersIVF()
        if "nprobe" in params:
            sp.nprobe = _positive_int("nprobe", params.pop("nprobe"))
        else:
            sp.nprobe = core.nprobe
        quantizer = faiss.downcast_index(core.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            # the graph must explore well beyond nprobe lists to find the nprobe nearest
            ef = params.pop("quantizer_efSearch", max(quantizer.hnsw.efSearch, 2 * sp.nprobe))
            qp = faiss.SearchParametersHNSW()
            qp.efSearch = _positive_int("quantizer_efSearch", ef)
            sp.quantizer_params = qp
            keep.append(qp)
        elif "quantizer_efSearch" in params:
            raise InvalidParamsError("quantizer_efSearch needs an HNSW coarse quantizer")
    elif isinstance(core, faiss.IndexHNSW):
        sp = faiss.SearchParametersHNSW()
        ef = params.pop("efSearch", core.hnsw.efSearch)
        sp.efSearch = _positive_int("efSearch", ef)
    else:
        sp = None
    if params:
        raise InvalidParamsError(
            f"search parameter(s) {', '.join(sorted(params))} do not apply to a "
            f"{type(core).__name__} index"
        )
    return sp, keep


def tuning_split(n: int, n_queries: int = 500, seed: int = 4321) -> np.ndarray:
    """Rows held out of the index while tuning, to serve as queries (empty if too few)."""
    m = min(n_queries, n // 10)
    if m < 20:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


def tune(
    index: faiss.Index,
    xb: np.ndarray,
    fids: np.ndarray,
    held: np.ndarray,
    k: int = 10,
    target_recall: float = 0.95,
) -> tuple[dict[str, int], dict[str, Any]]:
    """Pick the smallest ``nprobe``/``efSearch`` whose recall@k reaches the target.

    ``index`` holds ``xb`` under ``fids`` except the rows ``held``, which serve as queries: held
    out of the build until tuning is done, they behave like new photos of catalogued phones.
    The goal is ``target_recall + TUNING_MARGIN``, the margin covering sampling noise.
    Returns ``(search_defaults, tuning report)``; both empty for exact kinds.
    """
    name = tunable_param(index)
    if name is None or len(held) == 0 or len(xb) - len(held) <= k:
        return {}, {}
    goal = min(1.0, target_recall + TUNING_MARGIN)
    xq = np.ascontiguousarray(xb[held], dtype=np.float32)
    # exact neighbours among the indexed rows: search all rows, drop the held-out ones
    _, I_rows = knn_ground_truth(xq, xb, k + len(held))
    is_held = np.zeros(len(xb), dtype=bool)
    is_held[held] = True
    I_gt = np.stack([row[~is_held[row]][:k] for row in I_rows])
    I_gt = fids[I_gt]
    if name == "nprobe":
        grid = [v for v in NPROBE_GRID if v <= faiss.extract_index_ivf(index).nlist]
    else:
        grid = list(EF_SEARCH_GRID)
    best, curve = grid[-1], []
    for value in grid:
        sp, _keep = search_params(index, {name: value})
        _, I = index.search(xq, k, params=sp)
        recall = knn_recall_at_k(I, I_gt, k)
        curve.append((value, round(recall, 4)))
        if recall >= goal:
            best = value
            break
    else:
        log.warning("recall %.3f not reached at %s=%d; using it anyway", goal, name, best)
    report = {
        "param": name,
        "value": best,
        "target_recall": target_recall,
        "tuned_for": goal,
        "recall": curve[-1][1],
        "k": k,
        "queries": len(xq),
        "curve": curve,
    }
    log.info(
        "tuned %s=%d: recall@%d %.3f on %d held-out catalog vectors",
        name,
        best,
        k,
        curve[-1][1],
        len(xq),
    )
    return {name: best}, report
