"""A calibrated pair classifier: verification evidence in, probability of "same photo" out.

No single measurement separates a heavily watermarked copy from another colour of the same
phone: both leave a fifth of the pixels disagreeing. What differs is the shape of the
disagreement (thin strokes and scattered noise against one solid region) together with how
well the local features matched, so a logistic regression over ``verify.EVIDENCE`` scores the
pair. It is fitted on the calibration benchmark; its coefficients (a handful of floats) are
stored in the checkpoint's JSON, so scoring needs no extra library and no pickle.

Pairs that verification rejects (no plausible map) carry NaN evidence and score 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from duplicates.verify import EVIDENCE
from embedder.errors import CheckpointError


def quadratic_terms(z: np.ndarray) -> np.ndarray:
    """Standardised evidence (N x F) with every product z_a * z_b (a <= b) appended.

    Evidence interacts: a solid disagreeing region means another colour of the phone when the
    geometry is exact, a strong screen photo when it is not; a linear score cannot say so.
    """
    a, b = np.triu_indices(z.shape[1])
    return np.hstack([z, z[:, a] * z[:, b]])


# Quadratic terms with 10x the default L2 penalty: on cached evidence of benchmark seeds 1
# and 3 (whitened candidates) held-out F1 at precision 0.95 was 0.902 / 0.920, against 0.854 /
# 0.906 linear and 0.878 / 0.927 quadratic at C = 1; 119 inputs need the stronger penalty.
DEGREE = 2
C = 0.1
EXPANDED = ("expanded_mean", "expanded_scale")


@dataclass(frozen=True)
class PairModel:
    """Standardise the evidence, then a logistic regression (the sklearn fit, as numbers).

    ``degree`` 2: the standardised evidence and its pairwise products (``quadratic_terms``),
    standardised again by ``expanded_mean`` and ``expanded_scale``, are the regression's input.
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    degree: int = 1
    expanded_mean: tuple[float, ...] = ()
    expanded_scale: tuple[float, ...] = ()

    def inputs(self, evidence: np.ndarray) -> np.ndarray:
        """The regression's input rows for evidence rows (NaN read as 0)."""
        x = np.asarray(evidence, dtype=np.float64).reshape(-1, len(EVIDENCE))
        x = x[:, : len(self.features)]  # a model stored before later evidence was added
        z = (np.nan_to_num(x) - self.mean) / self.scale
        if self.degree == 2:
            z = (quadratic_terms(z) - self.expanded_mean) / self.expanded_scale
        return z

    def predict(self, evidence: np.ndarray) -> np.ndarray:
        """Probability per row of an N x len(EVIDENCE) array; rejected rows (NaN) give 0."""
        x = np.asarray(evidence, dtype=np.float64).reshape(-1, len(EVIDENCE))
        rejected = np.isnan(x[:, 0])
        z = self.inputs(x) @ np.asarray(self.coef) + self.intercept
        prob = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        return np.where(rejected, 0.0, prob).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic-regression",
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "degree": self.degree,
            "expanded_mean": list(self.expanded_mean),
            "expanded_scale": list(self.expanded_scale),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PairModel:
        features = tuple(data.get("features") or ())
        # Evidence is only ever appended: a model fitted on a leading part still reads it.
        if not features or features != EVIDENCE[: len(features)]:
            raise CheckpointError(
                "the stored duplicate pair model was fitted on other evidence "
                f"({', '.join(features) or 'none'}); re-run 'phonesim duplicates calibrate'"
            )
        try:
            parts = [tuple(float(v) for v in data[k]) for k in ("mean", "scale", "coef")]
            expanded = [tuple(float(v) for v in data.get(k) or ()) for k in EXPANDED]
            intercept = float(data["intercept"])
            degree = int(data.get("degree", 1))
        except (KeyError, TypeError, ValueError):
            parts, expanded, intercept, degree = [], [], float("nan"), 0
        f = len(features)
        inputs = f + f * (f + 1) // 2 if degree == 2 else f
        if (
            degree not in (1, 2)
            or len(parts) != 3
            or any(len(p) != f for p in parts[:2])
            or len(parts[2]) != inputs
            or any(len(e) != (inputs if degree == 2 else 0) for e in expanded)
        ):
            raise CheckpointError("the stored duplicate pair model is malformed; re-calibrate")
        return cls(features, *parts, intercept, degree, *expanded)


def agreement_scores(evidence: np.ndarray) -> np.ndarray:
    """The uncalibrated score: pixel agreement alone (0 where verification rejected)."""
    x = np.asarray(evidence, dtype=np.float32).reshape(-1, len(EVIDENCE))
    return np.nan_to_num(x[:, 0], nan=0.0)


def pair_scores(evidence: np.ndarray, model: PairModel | None) -> np.ndarray:
    """Scores of evidence rows: the model's probability, or the agreement without a model."""
    return agreement_scores(evidence) if model is None else model.predict(evidence)


def fit_pair_model(
    evidence: np.ndarray, same: np.ndarray, c: float = C, degree: int = DEGREE
) -> PairModel:
    """Fit on verified pairs (rows without NaN) labelled ``same`` (True: one photo)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(evidence, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    keep = ~np.isnan(x[:, 0])
    x, y = x[keep], y[keep]
    if len(np.unique(y)) < 2:
        raise ValueError("the pair model needs both duplicate and distinct verified pairs")
    mean, scale = _standardiser(x)
    z = (x - mean) / scale
    expanded: tuple[tuple[float, ...], ...] = ((), ())
    if degree == 2:
        z = quadratic_terms(z)
        e_mean, e_scale = _standardiser(z)
        z = (z - e_mean) / e_scale
        expanded = (tuple(e_mean.tolist()), tuple(e_scale.tolist()))
    fit = LogisticRegression(C=c, max_iter=5000).fit(z, y)
    return PairModel(
        EVIDENCE,
        tuple(mean.tolist()),
        tuple(scale.tolist()),
        tuple(fit.coef_[0].tolist()),
        float(fit.intercept_[0]),
        degree,
        *expanded,
    )


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (1 where a column is constant)."""
    std = x.std(axis=0)
    return x.mean(axis=0), np.where(std > 1e-9, std, 1.0)


def cross_fitted_scores(
    evidence: np.ndarray, same: np.ndarray, groups: Sequence[int], folds: int = 5
) -> np.ndarray:
    """Held-out probabilities: each pair is scored by a model fitted without its group.

    ``groups`` assigns each pair to a photo family (for a pair of two families, the lower
    one), so the pairs of a held-out family are never seen in fitting; its partner family's
    other pairs may be. The sweep over these scores measures photos the model was not fitted on.
    """
    groups = np.asarray(groups, dtype=np.int64)
    fold = (groups * 2654435761 % 2**32) % folds  # a fixed hash: no RNG state involved
    out = np.zeros(len(groups), dtype=np.float32)
    for k in range(folds):
        test = fold == k
        if not test.any():
            continue
        model = fit_pair_model(evidence[~test], np.asarray(same)[~test])
        out[test] = model.predict(evidence[test])
    return out
