"""Tests for the calibrated pair classifier and the evidence it reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from duplicates.calibration import fit_with_held_out_scores, store_calibration, stored_settings
from duplicates.finder import ScoredPairs
from duplicates.pair_model import (
    PairModel,
    agreement_scores,
    cross_fitted_scores,
    fit_pair_model,
    pair_scores,
)
from duplicates.verify import EVIDENCE, disagreement_shape
from embedder.errors import CheckpointError


def synthetic_evidence(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Evidence where duplicates agree more and disagree in thin, not solid, regions."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.4
    x = rng.normal(0.0, 0.05, size=(n, len(EVIDENCE))).astype(np.float32)
    x[:, 0] += np.where(same, 0.88, 0.80)  # agreement overlaps between the two kinds
    x[:, EVIDENCE.index("solid_share")] += np.where(same, 0.01, 0.15)
    return x, same


def test_disagreement_shape_tells_solid_regions_from_strokes() -> None:
    lattice = np.zeros((40, 40), np.float32)
    solid = lattice.copy()
    solid[10:20, 10:20] = 100.0  # a recoloured body: one block
    strokes = lattice.copy()
    strokes[::4, :] = 100.0  # text lines / moire: thin
    largest_solid, share_solid = disagreement_shape(solid, 16.0)
    _, share_strokes = disagreement_shape(strokes, 16.0)
    assert largest_solid == pytest.approx(100 / 1600)
    assert share_solid > 0.04 and share_strokes == 0.0
    outside = solid.copy()
    outside[:, :15] = np.nan  # points outside the overlap do not count
    assert disagreement_shape(outside, 16.0)[0] == pytest.approx(50 / 1000)


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
    data["features"] = ["agreement"]
    with pytest.raises(CheckpointError, match="re-run"):
        PairModel.from_json(data)
    data = model.to_json()
    data["coef"] = data["coef"][:-1]
    with pytest.raises(CheckpointError, match="malformed"):
        PairModel.from_json(data)


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


def test_held_out_scores_keep_identical_and_rejected_pairs() -> None:
    x, _ = synthetic_evidence(300, 4)
    truth = np.repeat(np.arange(150), 2)
    i = np.arange(0, 300, 2)
    j = np.concatenate([np.arange(1, 200, 2), (np.arange(201, 300, 2) + 2) % 300])
    same = truth[i] == truth[j]
    ev = x[: len(i)].copy()
    ev[same, 0] += 0.1
    ev[0] = np.nan  # a rejected pair
    ev[1] = np.nan  # an identical pair
    scores = np.nan_to_num(ev[:, 0]).astype(np.float32)
    scores[1] = 1.0
    pairs = ScoredPairs(i, j, scores, [(int(i[1]), int(j[1]))], ev)
    model, held = fit_with_held_out_scores(pairs, truth)
    assert model is not None
    assert held[0] == 0.0 and held[1] == 1.0
    assert held[2:][same[2:]].mean() > held[2:][~same[2:]].mean()
    few = ScoredPairs(i[:5], j[:5], scores[:5], [], ev[:5])
    assert fit_with_held_out_scores(few, truth)[0] is None


def test_stored_pair_model_is_read_back(tiny_checkpoint, tmp_path) -> None:
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    x, same = synthetic_evidence(200, 5)
    model = fit_pair_model(x, same)
    store_calibration(ckpt, {"threshold": 0.7, "pair_model": model.to_json()})
    stored = stored_settings(ckpt)
    assert stored.threshold == 0.7
    np.testing.assert_allclose(
        stored.finder_overrides["pair_model"].predict(x), model.predict(x), rtol=1e-6
    )
