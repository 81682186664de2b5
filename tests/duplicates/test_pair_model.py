"""The calibrated pair classifier: fitting, held-out scores, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from duplicates.pair_model import (
    PairModel,
    agreement_scores,
    cross_fitted_scores,
    fit_pair_model,
    pair_scores,
)
from duplicates.verify import EVIDENCE
from embedder.errors import CheckpointError
from tests.duplicates.conftest import synthetic_evidence


def test_fit_separates_and_rejected_rows_score_zero() -> None:
    x, same = synthetic_evidence(400, 0)
    model = fit_pair_model(x, same)
    prob = model.predict(x)
    assert prob.dtype == np.float32 and prob.shape == (400,)
    assert prob[same].mean() > 0.8 and prob[~same].mean() < 0.2
    rejected = np.full((1, len(EVIDENCE)), np.nan, np.float32)
    assert model.predict(rejected)[0] == 0.0
    assert agreement_scores(rejected)[0] == 0.0
    np.testing.assert_array_equal(pair_scores(x, None), x[:, 0])


def test_json_round_trip_and_mismatched_features() -> None:
    x, same = synthetic_evidence(200, 1)
    model = fit_pair_model(x, same)
    again = PairModel.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6)
    data = model.to_json()
    data["features"] = ["inliers", *data["features"][1:]]  # other evidence
    with pytest.raises(CheckpointError, match="re-run"):
        PairModel.from_json(data)
    data = model.to_json()
    data["coef"] = data["coef"][:-1]
    with pytest.raises(CheckpointError, match="malformed"):
        PairModel.from_json(data)


def test_a_model_stored_before_the_view_evidence_still_scores() -> None:
    """Evidence is only appended, so a model over its first ten measurements reads new rows."""
    x, same = synthetic_evidence(200, 1)
    data = fit_pair_model(x, same, degree=1).to_json()
    for key in ("features", "mean", "scale", "coef"):
        data[key] = list(data[key])[:10]
    for key in ("degree", "expanded_mean", "expanded_scale"):  # not written back then
        del data[key]
    stored = PairModel.from_json(data)
    z = (x[:, :10] - np.array(data["mean"])) / np.array(data["scale"]) @ np.array(data["coef"])
    expected = 1 / (1 + np.exp(-(z + data["intercept"])))
    np.testing.assert_allclose(stored.predict(x), expected, rtol=1e-5)
    assert stored.predict(x)[same].mean() > stored.predict(x)[~same].mean()


def test_fit_needs_both_kinds() -> None:
    x, _ = synthetic_evidence(50, 2)
    with pytest.raises(ValueError, match="both"):
        fit_pair_model(x, np.ones(50, bool))


def test_cross_fitted_scores_never_see_their_family() -> None:
    # Family 7's labels are flipped: a model that saw them would fit them; held out, it cannot.
    x, same = synthetic_evidence(600, 3)
    family = np.arange(600) % 40
    flipped = same.copy()
    flipped[family == 7] = ~same[family == 7]
    held = cross_fitted_scores(x, flipped, family)
    own = family == 7
    assert ((held[own] >= 0.5) == flipped[own]).mean() < 0.2  # wrong, as it should be
    assert ((held[~own] >= 0.5) == flipped[~own]).mean() > 0.9


def test_quadratic_model_learns_an_interaction_a_linear_one_cannot() -> None:
    """One photo when two measurements agree in sign (both high or both low), else not:
    no weighted sum separates that, the product term does."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((600, len(EVIDENCE))).astype(np.float32)
    same = (x[:, 2] > 0) == (x[:, 5] > 0)
    linear = fit_pair_model(x, same, degree=1).predict(x)
    quadratic = fit_pair_model(x, same, degree=2).predict(x)
    assert ((linear >= 0.5) == same).mean() < 0.65
    assert ((quadratic >= 0.5) == same).mean() > 0.9


def test_quadratic_model_round_trips_and_malformed_expansion_is_refused() -> None:
    x, same = synthetic_evidence(200, 5)
    model = fit_pair_model(x, same)
    assert model.degree == 2
    n = len(EVIDENCE)
    assert len(model.coef) == len(model.expanded_mean) == n + n * (n + 1) // 2
    again = PairModel.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6)
    for key, value in (("expanded_scale", [1.0]), ("degree", 3), ("degree", "two")):
        data = model.to_json()
        data[key] = value
        with pytest.raises(CheckpointError, match="malformed"):
            PairModel.from_json(data)
