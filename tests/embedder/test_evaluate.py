"""``phonesim evaluate``: metrics, report files, one-class data and a bad output path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedder.checkpoint import checkpoint_hash
from embedder.errors import DataError
from embedder.evaluate import evaluate, format_report
from embedder.knn_vote import KnnFusion


def test_evaluate_reports_metrics_and_writes_plot(tiny_checkpoint, tiny_catalog, tmp_path):
    report = evaluate(tiny_checkpoint, tiny_catalog, out=tmp_path / "eval", progress=False)
    for key in ("accuracy", "macro_f1", "recall_at_1", "recall_at_5"):
        assert 0.0 <= report[key] <= 1.0
    assert np.asarray(report["confusion_matrix"]).sum() == report["count"] == 18
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written["count"] == 18
    # Which weights were measured, not only where they lay (a later train there replaced them).
    assert written["checkpoint_hash"] == checkpoint_hash(tiny_checkpoint)
    assert written["model_name"] == "test_efficientnet"


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


@pytest.fixture(scope="module")
def classifier_report(tiny_checkpoint, tiny_catalog):
    return evaluate(tiny_checkpoint, tiny_catalog, progress=False)


def test_without_fusion_the_headline_is_the_classifier(classifier_report):
    report = classifier_report
    assert report["prediction"] == "classifier" and report["knn_fusion"] is None
    assert report["classifier"] == {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    assert "classifier+knn" not in format_report(report)


def test_fusion_with_the_vote_alone_predicts_the_nearest_neighbours_class(
    tiny_checkpoint, tiny_catalog, classifier_report
):
    """weight 1, k 1: the fused class is the nearest other image's, so the headline accuracy
    is Recall@1 (leave-one-out); the classifier's own figures stay as they were."""
    fusion = KnnFusion(k=1, weight=1.0)
    report = evaluate(tiny_checkpoint, tiny_catalog, progress=False, fusion=fusion)
    assert report["prediction"] == "classifier+knn"
    assert report["accuracy"] == pytest.approx(report["recall_at_1"])
    assert report["classifier"] == classifier_report["classifier"]
    knn = report["knn_fusion"]
    assert knn["neighbours"] == "leave-one-out"
    assert (knn["k"], knn["weight"], knn["temperature"]) == (1, 1.0, fusion.temperature)
    assert (knn["accuracy"], knn["macro_f1"]) == (report["accuracy"], report["macro_f1"])
    assert np.asarray(report["confusion_matrix"]).sum() == 18
    text = format_report(report)
    assert "prediction: classifier+knn" in text and "classifier alone: accuracy" in text


def test_fusion_with_a_gallery_holding_the_queries_finds_each_image_itself(
    tiny_checkpoint, tiny_catalog
):
    fusion = KnnFusion(k=1, weight=1.0)
    report = evaluate(
        tiny_checkpoint, tiny_catalog, gallery=tiny_catalog, progress=False, fusion=fusion
    )
    assert report["knn_fusion"]["neighbours"] == "gallery"
    assert report["accuracy"] == report["macro_f1"] == 1.0  # each image is its own neighbour
    assert np.trace(np.asarray(report["confusion_matrix"])) == 18


def test_a_gallery_is_checked_before_the_work_and_counted_apart(
    tiny_checkpoint, tiny_catalog, tmp_path, monkeypatch
):
    """A missing gallery, one that shares no class with the data, or one with no readable
    image would give Recall 0 by construction: each fails before any image is embedded (or,
    when none can be read, before anything is scored); unreadable gallery images are not
    counted as the evaluated data's."""
    import shutil

    import embedder.evaluate as ev

    embedded = []
    real = ev.embed_samples
    monkeypatch.setattr(
        ev, "embed_samples", lambda e, s, *a, **k: embedded.append(s) or real(e, s, *a, **k)
    )
    classes = sorted(p.name for p in tiny_catalog.iterdir() if p.is_dir())
    other = tmp_path / "other"
    for name in ("x", "y"):
        (other / name).mkdir(parents=True)
        shutil.copy(next((tiny_catalog / classes[0]).glob("*.jpg")), other / name / "1.jpg")
    unreadable = tmp_path / "unreadable"
    (unreadable / classes[0]).mkdir(parents=True)
    (unreadable / classes[0] / "bad.jpg").write_bytes(b"not a jpeg")
    cases = [
        (tmp_path / "missing", "no such file"),
        (other, "shares no class with the evaluated data"),
    ]
    for gallery, message in cases:
        with pytest.raises(DataError, match=message):
            evaluate(tiny_checkpoint, tiny_catalog, gallery=gallery, progress=False)
        assert embedded == []
    with pytest.raises(DataError, match="none of the gallery images could be read"):
        evaluate(tiny_checkpoint, tiny_catalog, gallery=unreadable, progress=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_catalog, mixed, ignore=shutil.ignore_patterns("*.csv"))
    (mixed / classes[0] / "bad.jpg").write_bytes(b"not a jpeg")
    report = evaluate(tiny_checkpoint, tiny_catalog, gallery=mixed, progress=False)
    assert report["failed"] == 0 and report["gallery_failed"] == 1
    assert "gallery: 1 unreadable" in format_report(report)


def test_fusion_weight_zero_keeps_the_classifiers_prediction(tiny_checkpoint, tiny_catalog):
    report = evaluate(
        tiny_checkpoint, tiny_catalog, progress=False, fusion=KnnFusion(k=5, weight=0.0)
    )
    assert report["prediction"] == "classifier+knn"
    assert report["accuracy"] == report["classifier"]["accuracy"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--knn-k", "0"],
        ["--knn-k", "2.5"],
        ["--knn-weight", "1.5"],
        ["--knn-weight", "-0.1"],
        ["--knn-weight", "nan"],
        ["--knn-temperature", "0"],
        ["--knn-temperature", "inf"],
    ],
)
def test_evaluate_refuses_bad_fusion_flags(flags):
    from phonesim.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--checkpoint", "c", "--data", "d", *flags])


def test_evaluate_shows_progress_bars_only_to_a_person_watching(
    tiny_checkpoint, tiny_catalog, tmp_path, monkeypatch
):
    import sys

    import embedder.evaluate as ev
    from phonesim.cli import main

    seen = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: seen.append(k["progress"]) or real(*a, **k))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_catalog)]
    for i, argv in enumerate(([*base], [*base, "--no-progress"], ["-q", *base, "--json"])):
        assert main([*argv, "--out", str(tmp_path / f"e{i}")]) == 0
    assert seen == [True, False, False]


def test_evaluate_fusion_flags_default_to_the_product_default():
    from embedder.knn_options import knn_fusion_from_args
    from embedder.knn_vote import DEFAULT_K, FUSE_BY_DEFAULT
    from phonesim.cli import build_parser

    base = ["evaluate", "--checkpoint", "c", "--data", "d"]
    args = build_parser().parse_args(base)
    assert args.knn_fusion is FUSE_BY_DEFAULT and args.knn_k == DEFAULT_K
    on = build_parser().parse_args([*base, "--knn-fusion", "--knn-k", "3", "--knn-weight", "1"])
    assert knn_fusion_from_args(on) == KnnFusion(k=3, weight=1.0)
    assert knn_fusion_from_args(build_parser().parse_args([*base, "--no-knn-fusion"])) is None


# -- class re-rank of the neighbours ---------------------------------------------------------------
def test_rerank_weight_zero_reports_the_similarity_recall(tiny_checkpoint, tiny_catalog):
    from embedder.class_rerank import ClassRerank

    report = evaluate(tiny_checkpoint, tiny_catalog, progress=False, rerank=ClassRerank(0.0))
    ranked = report["class_rerank"]
    assert (ranked["recall_at_1"], ranked["recall_at_5"]) == (
        report["recall_at_1"],
        report["recall_at_5"],
    )
    assert "class re-rank (weight 0 over the first 5)" in format_report(report)


def test_reranked_recall_lets_the_classifier_pick_among_the_nearest():
    """The nearest gallery image is of the wrong class, the second of the right one, and the
    classifier is sure of the right one: the re-rank turns a Recall@1 miss into a hit, and an
    image of an unknown class (-1) never matches."""
    from embedder.class_rerank import ClassRerank
    from embedder.evaluate import reranked_recall

    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    angles = np.array([0.1, 0.2, 0.3])
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    probs = np.array([[0.0, 1.0]])
    args = (queries, probs, np.array([1]), gallery)
    assert reranked_recall(*args, np.array([0, 1, 0]), ClassRerank(0.0)) == {
        "recall_at_1": 0.0,
        "recall_at_5": 1.0,
    }
    assert reranked_recall(*args, np.array([0, 1, 0]), ClassRerank(0.5))["recall_at_1"] == 1.0
    assert reranked_recall(*args, np.array([0, -1, 0]), ClassRerank(0.5)) == {
        "recall_at_1": 0.0,
        "recall_at_5": 0.0,
    }
    one = reranked_recall(queries, probs, np.array([1]), None, np.array([1]), ClassRerank())
    assert one == {"recall_at_1": 0.0, "recall_at_5": 0.0}  # leave-one-out of one image


def test_evaluate_rerank_flag_defaults_to_the_server_default():
    from embedder.class_rerank import DEFAULT_WEIGHT, ClassRerank
    from embedder.knn_options import class_rerank_from_args
    from phonesim.cli import build_parser

    base = ["evaluate", "--checkpoint", "c", "--data", "d"]
    assert class_rerank_from_args(build_parser().parse_args(base)) == ClassRerank(DEFAULT_WEIGHT)
    off = build_parser().parse_args([*base, "--class-rerank", "0"])
    assert class_rerank_from_args(off) is None
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--class-rerank", "-1"])


def test_a_folder_where_a_report_file_goes_is_refused_before_the_work(tmp_path):
    """It failed at the end, when the file was to replace it (duplicates, evaluate)."""
    from embedder.errors import check_output_folder

    out = tmp_path / "report"
    (out / "report.json").mkdir(parents=True)
    check_output_folder(out, owns={"report.json"})  # a folder of that name, none written
    with pytest.raises(DataError, match="'report.json' is a folder where this command writes"):
        check_output_folder(out, owns={"report.json"}, files={"report.json"})


def test_a_gallery_holding_the_evaluated_images_is_warned_about(
    tiny_checkpoint, tiny_catalog, tmp_path, caplog
):
    """Each image finds itself: accuracy 1.0 from a classifier at 0.39 in a review's run. A
    copied folder does the same, so byte-identical copies count; re-encoded photos do not."""
    import shutil

    from PIL import Image

    gallery = tmp_path / "gallery"
    first = sorted(p for p in tiny_catalog.iterdir() if p.is_dir())[0]
    shutil.copytree(first, gallery / first.name)  # one class only, and the same files' copies
    (gallery / "nokia").mkdir()
    shutil.copy(next(first.glob("*.jpg")), gallery / "nokia" / "x.jpg")
    evaluate(tiny_checkpoint, tiny_catalog, gallery=tiny_catalog, progress=False)
    n = len(list(tiny_catalog.rglob("*.jpg")))
    assert f"{n} of the {n} evaluated images are in the gallery too" in caplog.text
    caplog.clear()
    evaluate(tiny_checkpoint, tiny_catalog, gallery=gallery, progress=False)
    copies = len(list(first.glob("*.jpg")))  # the nokia copy is one of them again
    assert f"{copies} of the {n} evaluated images are in the gallery too" in caplog.text
    assert "has no image of the evaluated class" in caplog.text
    assert "the checkpoint does not know: nokia" in caplog.text
    caplog.clear()
    for path in gallery.rglob("*.jpg"):  # the same photos, other bytes
        Image.open(path).convert("RGB").save(path, quality=60)
    evaluate(tiny_checkpoint, tiny_catalog, gallery=gallery, progress=False)
    assert "in the gallery too" not in caplog.text


def test_class_names_the_plot_font_lacks_are_said_in_one_line(tmp_path, caplog):
    """Chinese class names made matplotlib warn several lines per character."""
    import warnings

    import numpy as np

    from embedder.evaluate import plot_confusion

    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        plot_confusion(np.array([[3, 1], [0, 2]]), ["华为", "小米"], tmp_path / "cm.png")
    assert not [w for w in escaped if "missing from font" in str(w.message)]
    said = [r for r in caplog.records if "drawn as boxes" in r.getMessage()]
    assert len(said) == 1 and "(4 characters)" in said[0].getMessage()
    assert (tmp_path / "cm.png").stat().st_size > 0


def test_a_checkpoint_naming_its_classes_decomposed_is_said_to_be(tmp_path):
    """A checkpoint trained on a macOS-made folder before names were read composed (NFC)
    names "Café" decomposed: evaluating the same photos named it unknown without a reason."""
    import unicodedata

    from embedder.data import Catalog, Sample
    from embedder.errors import DataError
    from embedder.evaluate import _check_known_classes

    composed = unicodedata.normalize("NFC", "Café")
    catalog = Catalog(
        samples=[Sample("a", tmp_path / "a.jpg", composed)], label_names=[composed], source=tmp_path
    )
    decomposed = [unicodedata.normalize("NFD", "Café"), "Other"]
    with pytest.raises(DataError, match="another Unicode form.*train it again"):
        _check_known_classes("data", catalog, decomposed)
    with pytest.raises(DataError, match="does not know: Café$"):
        _check_known_classes("data", catalog, ["Other"])
