"""Classification and retrieval metrics over numpy arrays (no torch, no sklearn needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where undefined (no predictions/support)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the ground truth."""
    scores = per_class_scores(cm)
    present = scores["support"] > 0
    return float(scores["f1"][present].mean()) if present.any() else 0.0


def recall_at_k(
    xq: np.ndarray,
    labels_q: Sequence[str] | np.ndarray,
    xb: np.ndarray | None = None,
    labels_b: Sequence[str] | np.ndarray | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Share of queries with a same-label item among their k nearest gallery items.

    Without a gallery, each query searches the other queries (leave-one-out). Vectors are
    unit-norm, so inner product is cosine similarity.
    """
    leave_one_out = xb is None
    if leave_one_out:
        xb, labels_b = xq, labels_q
    labels_q = np.asarray(labels_q)
    labels_b = np.asarray(labels_b)
    if len(xq) == 0 or len(xb) <= (1 if leave_one_out else 0):
        return {k: 0.0 for k in ks}
    kmax = min(max(ks), len(xb) - (1 if leave_one_out else 0))
    hits = {k: 0 for k in ks}
    for start in range(0, len(xq), 1024):  # bounded memory for big query sets
        sims = xq[start : start + 1024] @ xb.T
        if leave_one_out:
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        top = np.argsort(-sims, axis=1, kind="stable")[:, :kmax]
        match = labels_b[top] == labels_q[start : start + 1024, None]
        for k in ks:
            hits[k] += int(match[:, :k].any(axis=1).sum())
    return {k: hits[k] / len(xq) for k in ks}
