"""Calibration: held-out scores, the stored record, and a whole run on the tiny catalog."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import numpy as np
import pytest

from common.errors import UserError
from duplicates.benchmark import BenchmarkConfig
from duplicates.calibration import (
    CalibrationConfig,
    calibrate,
    calibration_record,
    fit_with_held_out_scores,
    store_calibration,
    stored_settings,
)
from duplicates.calibration_report import write_calibration
from duplicates.descriptor import DescriptorConfig
from duplicates.finder import FinderConfig, ScoredPairs
from duplicates.hashing import phash_available
from duplicates.pair_model import fit_pair_model
from embedder.errors import CheckpointError
from tests.duplicates.conftest import synthetic_evidence


def test_calibration_end_to_end(tiny_catalog, descriptor, tmp_path) -> None:
    result = calibrate(descriptor, tiny_catalog, tmp_path / "bench", _small_calibration())
    assert result.originals == 6 and result.truth_pairs == 6 * 10  # C(5, 2) pairs per family
    assert result.chosen is not None and result.chosen["f1"] > 0.5
    # Too few verified distinct pairs among 18 tiny photos to fit: agreement is the score.
    assert result.pair_model is None and result.sweep is result.agreement
    assert all(p["score"] >= result.chosen["threshold"] for p in result.false_pairs)
    paths = write_calibration(result, tmp_path / "report")
    assert all(path.is_file() for path in paths.values())
    header = paths["false_pairs"].read_text().splitlines()[0]
    assert header.startswith("score,a_image,a_role")
    report = json.loads(paths["json"].read_text())
    assert report["chosen"] == result.chosen and "agreement_only" in report
    phash_rows = "phash," in paths["table"].read_text()
    assert (result.phash is not None) == phash_available() == phash_rows


def _small_calibration() -> CalibrationConfig:
    return CalibrationConfig(
        benchmark=BenchmarkConfig(originals=6, copies=4, seed=1),
        finder=FinderConfig(workers=0, progress=False),
        min_precision=0.0,
    )


def test_calibration_completes_without_imagehash(
    tiny_catalog, tiny_checkpoint, descriptor, tmp_path, monkeypatch, caplog
) -> None:
    """imagehash is a dev extra: without it the pHash baseline is skipped with one note."""
    monkeypatch.setitem(sys.modules, "imagehash", None)  # `import imagehash` now fails
    config = _small_calibration()
    with caplog.at_level(logging.WARNING, logger="duplicates.calibration"):
        result = calibrate(descriptor, tiny_catalog, tmp_path / "bench", config)
    notes = [r.getMessage() for r in caplog.records if "imagehash" in r.getMessage()]
    assert notes == [
        "imagehash is not installed: the pHash baseline is skipped (pip install imagehash)"
    ]
    assert result.phash is None and result.phash_best is None and result.chosen is not None
    assert "pHash baseline skipped" in result.summary()
    paths = write_calibration(result, tmp_path / "report")
    assert "phash" not in paths["table"].read_text()
    assert json.loads(paths["json"].read_text())["phash_best"] is None
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    store_calibration(ckpt, calibration_record(result, descriptor.config, config.finder))
    assert stored_settings(ckpt).threshold == result.chosen["threshold"]
    assert stored_settings(ckpt).finder_overrides["verify"].both_ways  # as it was calibrated


def test_a_missing_required_package_fails_before_the_benchmark(
    tiny_catalog, descriptor, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(UserError, match="pip install scikit-learn"):
        calibrate(descriptor, tiny_catalog, tmp_path / "bench", _small_calibration())
    assert not (tmp_path / "bench").exists()


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
    # The library's way to run as `duplicates find` does (duplicates/README.md): a plain
    # FinderConfig() had run the README's example at 0.90 on the raw agreement.
    config = stored.finder_config(batch_size=8)
    assert config.threshold == 0.7 and config.pair_model is not None and config.batch_size == 8
    assert stored.finder_config(threshold=0.5).threshold == 0.5


def test_candidate_settings_are_read_back_and_old_records_keep_raw_cosines(
    tiny_checkpoint, tmp_path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    store_calibration(ckpt, {"threshold": 0.7, "whiten_dims": 64, "whitened_floor": 0.1})
    overrides = stored_settings(ckpt).finder_overrides
    assert overrides["whiten_dims"] == 64 and overrides["whitened_floor"] == 0.1
    # Calibrated before candidates were whitened: its threshold holds for raw cosines only.
    store_calibration(ckpt, {"threshold": 0.7, "candidate_floor": 0.5})
    overrides = stored_settings(ckpt).finder_overrides
    assert overrides["whiten_dims"] == 0 and overrides["candidate_floor"] == 0.5
    # ... and verified each pair one way: its threshold was chosen on one-way scores.
    assert overrides["verify"].both_ways is False


def test_descriptor_blur_is_read_back_and_old_records_keep_the_sharp_pass(
    tiny_checkpoint, tmp_path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    store_calibration(ckpt, {"threshold": 0.7, "descriptor": DescriptorConfig(blur=1.5).to_json()})
    assert stored_settings(ckpt).descriptor.blur == 1.5
    # Calibrated before the blurred pass existed: its threshold holds for sharp descriptors.
    store_calibration(ckpt, {"threshold": 0.7, "descriptor": {"gem_p": 3.0}})
    assert stored_settings(ckpt).descriptor.blur == 0.0
    assert stored_settings(ckpt).descriptor.gem_p == 3.0


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"threshold": "abc"}, r"threshold must be a number in \[0, 1\], got 'abc'"),
        ({"threshold": 0.7, "verify": {"min_inliers": "x"}}, r"verify.min_inliers must be like 12"),
        ({"threshold": 0.7, "verify": {"min_inliers": 2.5}}, r"verify.min_inliers must be"),
        ({"threshold": 0.7, "k": "many"}, r"duplicates.k must be like 16, got 'many'"),
        ({"threshold": 0.7, "descriptor": "gem"}, r"descriptor must be an object, got 'gem'"),
        ({"threshold": 0.7, "verify": {"both_ways": 1}}, r"verify.both_ways must be like True"),
        (
            {"format_version": 1, "threshold": 0.7, "descriptor": {"kind": "future"}},
            r"descriptor: settings this phonesim does not know \(kind\): a newer phonesim",
        ),
        ({"format_version": 2, "threshold": 0.7}, r"format_version 2 is newer than"),
        ({"format_version": 1, "threshold": 0.7, "min_area": 3}, r"know \(min_area\)"),
    ],
)
def test_a_damaged_or_newer_calibration_is_one_line_naming_the_setting(
    tiny_checkpoint, tmp_path, record, message
) -> None:
    """Each was a traceback (ValueError, TypeError, AttributeError) from 'duplicates find', or
    a newer phonesim's settings dropped unread while its threshold was applied."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    store_calibration(ckpt, record)
    with pytest.raises(CheckpointError, match=message) as err:
        stored_settings(ckpt)
    assert "config.json: extra.duplicates" in str(err.value)


def test_an_unversioned_record_drops_settings_removed_since(tiny_checkpoint, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    store_calibration(ckpt, {"threshold": 0.7, "verify": {"old_setting": 3, "min_inliers": 9.0}})
    verify = stored_settings(ckpt).finder_overrides["verify"]
    assert verify.min_inliers == 9 and isinstance(verify.min_inliers, int)


def test_storing_a_calibration_waits_for_the_graph_records_lock(tiny_checkpoint, tmp_path):
    """Both rewrite config.json whole: unlocked, one writer's change was lost to the other."""
    import shutil
    import threading

    from embedder.graphs import checkpoint_lock

    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    done = threading.Event()
    writer = threading.Thread(
        target=lambda: (store_calibration(ckpt, {"threshold": 0.5}), done.set())
    )
    with checkpoint_lock(ckpt):
        writer.start()
        assert not done.wait(0.5)  # held off while an export records its graph
    writer.join(30)
    assert done.is_set() and stored_settings(ckpt).threshold == 0.5
