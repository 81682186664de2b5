"""``phonesim evaluate``: metrics, report files, one-class data and a bad output path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedder.errors import DataError
from embedder.evaluate import evaluate


def test_evaluate_reports_metrics_and_writes_plot(tiny_checkpoint, tiny_catalog, tmp_path):
    report = evaluate(tiny_checkpoint, tiny_catalog, out=tmp_path / "eval", progress=False)
    for key in ("accuracy", "macro_f1", "recall_at_1", "recall_at_5"):
        assert 0.0 <= report[key] <= 1.0
    assert np.asarray(report["confusion_matrix"]).sum() == report["count"] == 18
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["count"] == 18


def test_evaluate_accepts_one_class_and_refuses_a_file_as_output(
    tiny_checkpoint, tiny_catalog, tmp_path
):
    import shutil

    one = tmp_path / "one"
    first = sorted(p for p in tiny_catalog.iterdir() if p.is_dir())[0]
    shutil.copytree(first, one / first.name)
    assert evaluate(tiny_checkpoint, one, progress=False)["count"] == 6
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        evaluate(tiny_checkpoint, one, out=tmp_path / "afile", progress=False)


@pytest.fixture(scope="module")
def torch_report(int8_checkpoint, tiny_catalog):
    from embedder.engine_options import EngineOptions

    return evaluate(int8_checkpoint, tiny_catalog, progress=False, engine=EngineOptions("torch"))


@pytest.mark.parametrize("runtime", ["auto", "onnx", "onnx-int8"])
def test_evaluate_on_every_runtime_scores_as_torch_eager(
    int8_checkpoint, tiny_catalog, torch_report, runtime
):
    from embedder.engine_options import EngineOptions

    engine = EngineOptions(runtime, "cpu", threads=1)
    report = evaluate(int8_checkpoint, tiny_catalog, progress=False, engine=engine)
    assert report["runtime"] == ("onnx" if runtime == "auto" else runtime)
    assert report["count"] == torch_report["count"] == 18
    if runtime == "onnx-int8":  # near-tied classes of the one-epoch model may swap
        assert abs(report["accuracy"] - torch_report["accuracy"]) <= 2 / 18
    else:
        assert report["confusion_matrix"] == torch_report["confusion_matrix"]
        assert report["recall_at_1"] == torch_report["recall_at_1"]
