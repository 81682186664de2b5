"""The Ray runner: install hint, and the same file as the single-process path."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from export import RayUnavailableError, export_features
from tests.export.conftest import _config, _read

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(
    not HAVE_RAY, reason="ray is not installed (pip install '.[distributed]' or 'ray[data]')"
)


def test_ray_missing_gives_install_hint(monkeypatch):
    from export import ray_runner

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayUnavailableError, match=r"phonesim\[distributed\]"):
        ray_runner.import_ray()


@pytest.fixture(scope="module")
def local_ray():
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install '.[distributed]' or 'ray[data]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_path_equals_local_path(local_ray, reference, demo, ckpt, tmp_path):
    out = tmp_path / "ray.h5"
    summary = export_features(
        _config(ckpt, demo / "with_bad.csv", out, ray="local", ray_actors=2, batch_size=3)
    )
    assert summary.runner == "ray" and local_ray.is_initialized()  # reused, not shut down
    ray_data, local = _read(out), _read(reference)
    assert ray_data["ids"] == local["ids"] and ray_data["failed"] == local["failed"]
    assert ray_data["labels"] == local["labels"]
    np.testing.assert_allclose(ray_data["emb"], local["emb"], atol=1e-5)
    np.testing.assert_allclose(ray_data["probs"], local["probs"], atol=1e-5)
    assert np.array_equal(ray_data["pred"], local["pred"])
    np.testing.assert_allclose(ray_data["nb_scores"], local["nb_scores"], atol=1e-5)
    for key in ("model_name", "checkpoint_hash", "count", "failed_count", "dim", "runtime"):
        assert ray_data["attrs"][key] == local["attrs"][key]
    assert ray_data["attrs"]["runtime"] == "onnx"  # "auto", decided once in the driver
