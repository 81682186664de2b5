"""The Ray runner: install hint, and the same file as the single-process path."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import sys
from pathlib import Path

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
    with pytest.raises(RayUnavailableError, match=r"pip install 'ray\[data\].*' \(phonesim's"):
        ray_runner.import_ray()


@needs_ray
def test_a_local_instance_leaves_no_folder_behind(monkeypatch, tmp_path):
    """Ray's default folder ($TMPDIR/ray) keeps a session folder per run, never removed: an
    export that starts Ray gives it a folder of its own and removes it when it succeeds, and
    keeps it (Ray's logs) when it fails."""
    import tempfile

    import ray

    from export.ray_runner import connect

    if ray.is_initialized():  # another module's instance: this test starts its own
        ray.shutdown()
    # Short paths: Ray's socket paths under the folder must stay within 107 characters.
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    try:
        session = connect("local")
        assert session.started and session.temp_dir is not None
        assert session.temp_dir.parent == root and ray.is_initialized()
        assert list(session.temp_dir.glob("session_*"))  # Ray's session lives in it
        session.close()
        assert not ray.is_initialized() and not session.temp_dir.exists()
        assert list(root.iterdir()) == []

        failed = connect("local")
        failed.close(failed=True)
        assert not ray.is_initialized() and list(failed.temp_dir.glob("session_*"))

        ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(root / "own"))
        reused = connect("local")  # an instance already up is reused and left up
        assert not reused.started
        reused.close()
        assert ray.is_initialized()
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@needs_ray
def test_starting_ray_keeps_the_sigterm_handler_of_the_command():
    """ray.init sets its own (sys.exit(15)): with --ray, SIGTERM ended the export without the
    resume hint that it gives without Ray."""
    import signal

    import ray

    from export.ray_runner import connect

    if ray.is_initialized():
        ray.shutdown()

    def handler(signum, frame):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        session = connect("local")
        assert signal.getsignal(signal.SIGTERM) is handler
        session.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.shutdown()


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


@needs_ray
def test_ray_names_failed_files_as_the_input_gave_them(
    local_ray, demo, ckpt, tmp_path, monkeypatch
):
    """Workers read absolute paths: under --ray the reasons named the absolute path where the
    single-process run names the file as the manifest (here relative) gave it."""
    import h5py

    from export import schema

    monkeypatch.chdir(demo.parent)
    manifest = f"{demo.name}/with_bad.csv"  # relative: so are its images' paths
    reasons = {}
    for ray, extra in ((None, {}), ("local", {"ray_actors": 1})):
        out = tmp_path / f"{ray}.h5"
        export_features(_config(ckpt, manifest, out, ray=ray, batch_size=3, **extra))
        with h5py.File(out, "r") as f:
            reasons[ray] = f[schema.FAILED_REASONS].asstr()[:].tolist()
    assert reasons[None] and reasons["local"] == reasons[None]
    assert not any(r.startswith("/") for r in reasons[None])


@needs_ray
def test_quiet_export_hides_ray_datas_info_lines(local_ray, demo, ckpt, tmp_path, caplog):
    """Under -q (phonesim's loggers at WARNING) Ray Data had still printed its plan, timing
    and "Progress bars disabled" (they are, on purpose: the export shows its own bar)."""
    import ray.data  # noqa: F401  (configures its logger, as the export's import does)

    ray_data_log = logging.getLogger("ray.data")
    before = ray_data_log.level
    shown: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = shown.append  # what Ray Data's console handler beside it would print
    ray_data_log.addHandler(catcher)
    try:
        caplog.set_level(logging.WARNING, logger="export")
        export_features(_config(ckpt, demo / "with_bad.csv", tmp_path / "q.h5", ray="local"))
        assert [r.getMessage() for r in shown] == []
        assert ray_data_log.level == before  # Ray Data's own setting is put back
        caplog.set_level(logging.INFO, logger="export")
        export_features(_config(ckpt, demo / "with_bad.csv", tmp_path / "v.h5", ray="local"))
        assert any("Starting execution" in r.getMessage() for r in shown)  # without -q
    finally:
        ray_data_log.removeHandler(catcher)


@needs_ray
def test_an_actors_user_error_is_raised_as_itself():
    """An actor out of memory printed a long Ray traceback where the local run prints one
    line (exit 1): with raise_original_map_exception (set by ray_batches) the driver gets
    RayTaskError(OutOfResourcesError), whose message is the actor's whole traceback. Built
    here as Ray builds it: pickled across processes, then made an instance of its cause."""
    import pickle
    import traceback

    from ray.exceptions import RayTaskError

    from common.errors import OutOfResourcesError
    from export.ray_runner import _actor_errors_as_raised

    inner = OutOfResourcesError("photo.jpg: the machine ran out of resources while reading it")
    try:
        raise inner
    except OutOfResourcesError as exc:
        wrapped = RayTaskError("EmbedMapper", traceback.format_exc(), exc)
    dual = pickle.loads(pickle.dumps(wrapped)).as_instanceof_cause()
    assert isinstance(dual, OutOfResourcesError) and "raise inner" in str(dual)  # a traceback
    with pytest.raises(OutOfResourcesError) as caught, _actor_errors_as_raised():
        raise dual
    assert type(caught.value) is OutOfResourcesError
    assert str(caught.value) == str(inner)
    with pytest.raises(RayTaskError), _actor_errors_as_raised():  # anything else as it was
        raise RayTaskError("EmbedMapper", "tb", ValueError("bug"))
    plain = OutOfResourcesError("raised here")
    with pytest.raises(OutOfResourcesError) as caught, _actor_errors_as_raised():
        raise plain
    assert caught.value is plain and caught.value.__cause__ is not plain
