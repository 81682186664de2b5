"""scripts/bench_quality.py end to end on a small generated catalog (frozen-feature methods)."""

from __future__ import annotations

import io
import json
import subprocess
from contextlib import redirect_stderr, redirect_stdout

from tests.conftest import REPO, run_script

SCRIPT = REPO / "scripts" / "bench_quality.py"


def run(*args: str) -> subprocess.CompletedProcess:
    """The script as ``python scripts/bench_quality.py args...`` runs it, but in this process,
    a fresh copy of the module each time: a child spent 2.5 s on its imports, and these tests
    run it 20 times. Exit code and output as :func:`run_script` returns them."""
    from common.errors import reporting_errors

    module = load_bench_quality()
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = reporting_errors(SCRIPT.name, lambda: module.main(list(args)))
        except SystemExit as exc:  # argparse's usage errors, sys.exit("message")
            code = exc.code if isinstance(exc.code, int) else 1
            if isinstance(exc.code, str):
                print(exc.code, file=err)
    return subprocess.CompletedProcess([SCRIPT.name, *args], code, out.getvalue(), err.getvalue())


def write_audit(path, samples, verdicts: dict[int, str]):
    """An audit CSV giving photo i of ``samples`` the verdict ``verdicts[i]``."""
    path.write_text(
        "photo,filed,verdict,shows\n"
        + "".join(f"{samples[i].id},{samples[i].label},{v},x\n" for i, v in verdicts.items())
    )
    return path


def load_bench_quality():
    """scripts/bench_quality.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_bench(tmp_path, **extra):
    """The module and a Bench over a generated 3 x 8 catalog, 2 folds, cache in tmp_path."""
    import argparse

    from demo.catalog import generate_catalog

    data = tmp_path / "catalog"
    generate_catalog(data, classes=3, per_class=8, seed=1, image_size=64, progress=False)
    bench_quality = load_bench_quality()
    args = argparse.Namespace(
        data=data, folds=2, repeats=1, seed=0, work=tmp_path / "work", audit=None, **extra
    )
    return bench_quality, bench_quality.Bench(args)


def test_cross_validated_baselines_end_with_one_json_line_and_cache(tmp_path):
    from demo.catalog import generate_catalog

    data = tmp_path / "catalog"
    generate_catalog(data, classes=3, per_class=8, seed=1, image_size=64, progress=False)
    work = tmp_path / "work"
    methods = ("knn", "probe", "probe_knn")
    only = [
        arg
        for m in (*methods, "supcon_knn", "recipe_lite1_knn", "recipe_multiscale")
        for arg in ("--only", m)
    ]
    # Once as a user runs it, in a process of its own.
    done = run_script(SCRIPT, "--data", str(data), "--folds", "2", *only, "--work", str(work))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["photos"] == 24 and figures["folds"] == 2
    # supcon_knn fuses cached supcon outputs: without them it says so and reports nothing.
    assert "no supcon outputs yet" in done.stdout and "supcon_knn" not in figures["methods"]
    assert "no recipe_lite1 outputs yet" in done.stdout
    assert "no recipe outputs yet" in done.stdout and "recipe_multiscale" not in figures["methods"]
    for method in methods:
        acc = figures["methods"][method]["accuracy"]
        assert figures["methods"][method]["folds"] == 2
        assert 0.0 <= acc["mean"] <= 1.0 and acc["low"] <= acc["mean"] <= acc["high"]
    # Each method says which of its folds this run computed, and which commits did the rest.
    computed = figures["methods"]["knn"]["computed"]
    assert computed["this_run"] == 2 and len(computed["commits"]) == 1
    # A second run reports the cached folds without recomputing them.
    again = run("--data", str(data), "--folds", "2", "--report", "--work", str(work))
    reported = json.loads(again.stdout.strip().splitlines()[-1])["methods"]
    assert reported["knn"]["computed"] == {**computed, "this_run": 0}
    for method in reported.values():
        method["computed"]["this_run"] = 2
    assert reported == figures["methods"]
    # More repeats extend the same cache: repeat 0's folds are reused, not refused.
    more = run(
        "--data", str(data), "--folds", "2", "--repeats", "2", "--report", "--work", str(work)
    )
    assert more.returncode == 0, more.stderr[-2000:]
    more_methods = json.loads(more.stdout.strip().splitlines()[-1])["methods"]
    assert more_methods.keys() == figures["methods"].keys()
    assert all(
        {k: v for k, v in more_methods[m].items() if k != "computed"}
        == {k: v for k, v in figures["methods"][m].items() if k != "computed"}
        for m in more_methods
    )
    # Another fold setting refuses to mix its results into this cache.
    other = run("--data", str(data), "--folds", "3", "--report", "--work", str(work))
    assert other.returncode != 0 and "another setting" in other.stderr


def test_a_missing_dataset_is_a_usage_error(tmp_path):
    done = run("--data", str(tmp_path / "nowhere"), "--work", str(tmp_path / "w"))
    assert done.returncode == 2 and "dataset not found" in done.stderr


def test_fused_results_follow_the_fusion_setting_and_nested_choice_runs(tmp_path):
    import numpy as np

    from demo.catalog import generate_catalog

    data = tmp_path / "catalog"
    generate_catalog(data, classes=3, per_class=8, seed=1, image_size=64, progress=False)
    work = tmp_path / "work"
    base = ("--data", str(data), "--folds", "2", "--work", str(work))
    first = run(*base, "--only", "knn", "--only", "probe")
    assert first.returncode == 0, first.stderr[-2000:]
    # A fused result computed with another fusion (or before results recorded it) is stale and
    # scored again; a method that does not fuse keeps its cached figures.
    results = json.loads((work / "results.json").read_text())
    stale = {"k": 5, "temperature": 1.0, "weight": 1.0}
    results["knn"]["r0f0"].update(accuracy=-1.0, fusion=stale)
    del results["knn"]["r0f1"]["fusion"]
    results["knn"]["r0f1"]["accuracy"] = -1.0
    results["probe"]["r0f0"]["accuracy"] = -1.0
    (work / "results.json").write_text(json.dumps(results))
    again = run(*base, "--only", "knn", "--only", "probe")
    assert again.returncode == 0, again.stderr[-2000:]
    results = json.loads((work / "results.json").read_text())
    assert all(results["knn"][f]["accuracy"] >= 0.0 for f in ("r0f0", "r0f1"))
    assert results["probe"]["r0f0"]["accuracy"] == -1.0

    # recipe_knn_nested needs the recipe's outputs on every fold of the repeat.
    missing = run(*base, "--only", "recipe_knn_nested", "--only", "recipe_rerank")
    assert missing.returncode == 0 and "run recipe on all folds" in missing.stdout
    assert "recipe_rerank r0f0: run recipe on all folds" in missing.stdout
    rng = np.random.default_rng(0)

    def cache_outputs(method: str, dim: int) -> None:
        """Unit embeddings and probabilities for the 24 photos, as a trained method caches."""
        for fold in ("r0f0", "r0f1"):
            (work / fold / method).mkdir(parents=True)
            emb = rng.normal(size=(24, dim)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            probs = rng.dirichlet(np.ones(3), size=24).astype(np.float32)
            np.savez(work / fold / method / "outputs.npz", embeddings=emb, probabilities=probs)

    cache_outputs("recipe", 8)
    nested = run(*base, "--only", "recipe_knn_nested", "--only", "recipe_rerank")
    assert nested.returncode == 0, nested.stderr[-2000:]
    results = json.loads((work / "results.json").read_text())
    for fold in ("r0f0", "r0f1"):
        chosen = results["recipe_knn_nested"][fold]["chosen_fusion"]
        assert chosen["k"] in (10, 20) and chosen["weight"] in (0.3, 0.5, 0.7)
        # The re-rank is scored with the default fusion's prediction and its chosen weight.
        ranked = results["recipe_rerank"][fold]
        assert ranked["chosen_rerank"]["weight"] in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3)
        assert ranked["chosen_rerank"]["pool"] == 5 and "fusion" in ranked
        assert 0.0 <= ranked["recall_at_1"] <= ranked["recall_at_5"] <= 1.0
        # Per-photo hits (for the label audit's Recall@1) agree with the fold's Recall@1.
        assert len(ranked["hits_at_1"]) == len(ranked["photos"])
        assert np.mean(ranked["hits_at_1"]) == ranked["recall_at_1"]
    # The same re-rank by the fused prediction, paired with the classifier's.
    fused = run(*base, "--only", "recipe_fused_rerank")
    assert fused.returncode == 0, fused.stderr[-2000:]
    assert "recipe_fused_rerank - recipe_rerank" in fused.stdout
    figures = json.loads(fused.stdout.strip().splitlines()[-1])
    assert figures["fused_rerank_vs_rerank"]["folds"] == 2
    results = json.loads((work / "results.json").read_text())
    for fold in ("r0f0", "r0f1"):
        ranked = results["recipe_fused_rerank"][fold]
        assert ranked["chosen_rerank"]["weight"] in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
        assert np.mean(ranked["hits_at_1"]) == ranked["recall_at_1"] <= ranked["recall_at_5"]
        assert ranked["recall_at_5"] == results["recipe_rerank"][fold]["recall_at_5"]
    # A re-rank scored before per-photo hits were kept is scored again.
    del results["recipe_rerank"]["r0f0"]["hits_at_1"]
    (work / "results.json").write_text(json.dumps(results))
    assert run(*base, "--only", "recipe_rerank").returncode == 0
    results = json.loads((work / "results.json").read_text())
    assert "hits_at_1" in results["recipe_rerank"]["r0f0"]
    # recipe_pair needs recipe_lite1's outputs too, and says so.
    pair = run(*base, "--only", "recipe_pair")
    assert "run recipe and recipe_lite1 first" in pair.stdout
    # With both members' outputs a pair is the mean of their probabilities and the unit-norm
    # concatenation of their embeddings, cached so that its re-rank can be scored.
    cache_outputs("recipe_border", 4)
    crop = ("recipe_crop_pair", "recipe_crop_pair_knn", "recipe_crop_pair_rerank")
    done = run(*base, *(arg for m in crop for arg in ("--only", m)))
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((work / "results.json").read_text())
    for fold in ("r0f0", "r0f1"):
        members = [np.load(work / fold / m / "outputs.npz") for m in ("recipe", "recipe_border")]
        with np.load(work / fold / "recipe_crop_pair" / "outputs.npz") as pair_out:
            assert pair_out["embeddings"].shape == (24, 12)
            np.testing.assert_allclose(np.linalg.norm(pair_out["embeddings"], axis=1), 1, 1e-5)
            mean = (members[0]["probabilities"] + members[1]["probabilities"]) / 2
            np.testing.assert_allclose(pair_out["probabilities"], mean, 1e-6)
        assert all(fold in results[m] for m in crop)
        assert "chosen_rerank" in results["recipe_crop_pair_rerank"][fold]


def test_recipe_clean_leaves_out_photos_filed_under_another_class(tmp_path):
    import numpy as np

    _, bench = tiny_bench(tmp_path)
    # Features that separate the classes (the real ones on real photos mostly do).
    rng = np.random.default_rng(0)
    feats = np.eye(3)[bench.y] + 0.1 * rng.normal(size=(len(bench.y), 3))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    bench.frozen_features = lambda name: feats
    split = bench.splits[0]
    assert set(bench.unsuspected(split).tolist()) == set(split.train.tolist())
    # Two training photos that are near copies of each other, both filed under another class:
    # each one's copy does not vote for it, so both are left out.
    a, b = (int(i) for i in split.train[bench.y[split.train] == 0][:2])
    bench.y[[a, b]] = 1
    bench.groups[b] = bench.groups[a]
    feats[b] = feats[a]
    clean = set(bench.unsuspected(split).tolist())
    assert a not in clean and b not in clean and len(clean) == len(split.train) - 2


def test_the_label_audit_view_leaves_out_the_photos_it_rejects(tmp_path):
    import numpy as np

    from demo.catalog import generate_catalog

    data = tmp_path / "catalog"
    generate_catalog(data, classes=3, per_class=8, seed=1, image_size=64, progress=False)
    work = tmp_path / "work"
    base = ("--data", str(data), "--folds", "2", "--work", str(work))
    first = run(*base, "--only", "knn")
    assert first.returncode == 0, first.stderr[-2000:]
    # Without --audit (not the default dataset) there is no audited view.
    assert "audited" not in json.loads(first.stdout.strip().splitlines()[-1])
    # Stand-ins for the default prediction and a fused candidate that gets every photo right.
    cached = json.loads((work / "results.json").read_text())
    cached["recipe_knn"] = cached["knn"]
    cached["recipe_border_knn"] = {
        n: {**f, "correct": [1] * len(f["correct"])} for n, f in cached["knn"].items()
    }
    cached["recipe_rerank"] = {  # retrieval hits: right on even photo numbers only
        n: {**f, "hits_at_1": [int(p % 2 == 0) for p in f["photos"]]}
        for n, f in cached["knn"].items()
    }
    (work / "results.json").write_text(json.dumps(cached))
    samples = load_bench_quality().load_photos(data).samples
    verdicts = {0: "other_brand", 1: "not_product", 2: "device", 3: "ok", 9: "device"}
    audit = write_audit(tmp_path / "audit.csv", samples, verdicts)
    done = run(*base, "--report", "--audit", str(audit))
    assert done.returncode == 0, done.stderr[-2000:]
    audited = json.loads(done.stdout.strip().splitlines()[-1])["audited"]
    assert "top-1 by the label audit (5 photos audited" in done.stdout
    results = json.loads((work / "results.json").read_text())["knn"]
    for view, left_out in (("label_ok", {0, 1}), ("phones", {0, 1, 2, 9})):
        accs = []
        for fold in results.values():
            pairs = zip(fold["photos"], fold["correct"], strict=True)
            accs.append(np.mean([c for p, c in pairs if p not in left_out]))
        assert audited["methods"]["knn"][view]["mean"] == round(float(np.mean(accs)), 4)
        if view == "label_ok":
            gain = audited["label_ok_paired_vs_default"]["recipe_border_knn"]["mean"]
            assert gain == round(1.0 - float(np.mean(accs)), 4)
    # Re-ranked Recall@1 over the queries the audit keeps (photos 0 and 1 left out).
    recall = [
        np.mean([p % 2 == 0 for p in f["photos"] if p not in {0, 1}]) for f in results.values()
    ]
    got = audited["methods"]["recipe_rerank"]["recall_at_1_label_ok"]["mean"]
    assert got == round(float(np.mean(recall)), 4)
    assert "recall_at_1_label_ok" not in audited["methods"]["knn"]
    # An audit that names another dataset's photos is refused, with its line.
    audit.write_text("photo,filed,verdict,shows\nelsewhere/p1,a,ok,x\n")
    refused = run(*base, "--report", "--audit", str(audit))
    assert refused.returncode == 1 and "audit.csv:2: no photo 'elsewhere/p1'" in refused.stderr


def test_the_committed_label_audit_fits_the_benchmark_data(phone_brands):
    """scripts/phone_brands_label_audit.csv names photos of ../shared/datasets/phone-brands
    under their folder labels."""
    from embedder.label_audit import load_label_audit

    bench_quality = load_bench_quality()
    samples = bench_quality.load_photos(phone_brands).samples
    ids, labels = [s.id for s in samples], [s.label for s in samples]
    audit = load_label_audit(bench_quality.AUDIT, ids, labels)
    assert audit.audited.sum() == 338
    assert audit.wrong_label.sum() == 49 and audit.not_phone.sum() == 83


def test_recipe_audited_trains_without_the_labels_the_audit_rejects(tmp_path):
    import argparse

    from demo.catalog import generate_catalog

    data = tmp_path / "catalog"
    generate_catalog(data, classes=3, per_class=8, seed=1, image_size=64, progress=False)
    bench_quality = load_bench_quality()
    samples = bench_quality.load_photos(data).samples
    verdicts = {0: "other_brand", 5: "not_product", 9: "device", 13: "ok"}
    audit = write_audit(tmp_path / "audit.csv", samples, verdicts)
    args = argparse.Namespace(
        data=data, folds=2, repeats=1, seed=0, work=tmp_path / "work", audit=audit
    )
    bench = bench_quality.Bench(args)
    for split in bench.splits:
        kept = set(bench.training_photos("recipe_audited", split).tolist())
        # A watch of the brand keeps its label; another brand's product and a logo do not.
        assert kept == set(split.train.tolist()) - {0, 5}
        assert set(bench.training_photos("recipe", split).tolist()) == set(split.train.tolist())
    # Without an audit the method says what it needs instead of training on every photo.
    base = ("--data", str(data), "--folds", "2", "--work", str(tmp_path / "w"))
    done = run(*base, "--only", "recipe_audited")
    assert done.returncode == 0 and "recipe_audited: no label audit" in done.stdout


def cache_fold_outputs(bench, method: str, emb, probs) -> None:
    """The same embeddings and probabilities cached as ``method``'s outputs on every fold, as
    a trained method caches them."""
    import numpy as np

    for split in bench.splits:
        (bench.work / split.name / method).mkdir(parents=True)
        outputs = bench.work / split.name / method / "outputs.npz"
        np.savez(outputs, embeddings=emb, probabilities=probs)


def test_text_methods_add_the_classes_the_cached_text_names(tmp_path):
    """recipe_text adds the classes named by the text read at every rotation (from the cache
    in --work, so no OCR runs here), recipe_text_upright only the upright reading's. As the
    product's reader, a photo is turned no further once its text names a class."""
    import numpy as np

    bench_quality, bench = tiny_bench(tmp_path, text_cues=None)
    work = bench.work
    n = len(bench.y)
    # A classifier sure of class 0 for every photo, features that say nothing.
    probs = np.tile(np.array([[0.98, 0.01, 0.01]], dtype=np.float32), (n, 1))
    emb = np.ones((n, 4), dtype=np.float32) / 2.0
    cache_fold_outputs(bench, "recipe", emb, probs)
    # Each photo's label reads sideways only, as a logo along a phone's back would.
    cache = {
        s.id: {"0": [], "0_s": 0.1, "90": [[s.label, 0.99]], "90_s": 0.2, "270": [], "270_s": 0.2}
        for s in bench.samples
    }
    (work / f"photo-text-{bench_quality.DETECT_SIDE}.json").write_text(json.dumps(cache))
    bench.run(["recipe_text_upright", "recipe_text"])
    expected = float(np.mean(bench.y == 0))
    for split in bench.splits:
        text = bench.results["recipe_text"][split.name]
        upright = bench.results["recipe_text_upright"][split.name]
        assert text["accuracy"] == 1.0 and text["cue_photos"] == len(text["photos"])
        # upright (0.1 s) named nothing, 90 degrees (0.2 s) named the label: 270 is not read
        assert text["text_s"] == 0.3 and upright["text_s"] == 0.1
        assert upright["cue_photos"] == 0
        assert upright["accuracy"] == float(np.mean(bench.y[upright["photos"]] == 0))
        assert bench.done("recipe_text", split)
    assert 0 < expected < 1
    # Other cue words are another setting: the cached figures no longer count.
    cues = tmp_path / "cues.json"
    cues.write_text(json.dumps({bench.names[0]: ["extra"]}))
    bench.cue_file = cues
    assert not bench.done("recipe_text", bench.splits[0])


def same_class_neighbours_and_upright_labels(bench_quality, bench, classifier: list):
    """Cached recipe outputs where every photo gets the ``classifier`` probabilities and
    features whose neighbours are all of its own class, and a text cache where each photo's
    label reads upright; returns those features."""
    import numpy as np

    n = len(bench.y)
    probs = np.tile(np.array([classifier], dtype=np.float32), (n, 1))
    emb = np.eye(3, 4, dtype=np.float32)[bench.y]
    cache_fold_outputs(bench, "recipe", emb, probs)
    cache = {
        s.id: {"0": [[s.label, 0.99]], "0_s": 0.1, "90": [], "90_s": 0.2, "270": [], "270_s": 0.2}
        for s in bench.samples
    }
    (bench.work / f"photo-text-{bench_quality.DETECT_SIDE}.json").write_text(json.dumps(cache))
    return emb


def test_gated_text_reads_only_the_photos_the_fused_prediction_is_unsure_of(tmp_path):
    """recipe_text_gated reads a photo only when its fused prediction is below the gate: here
    the classifier is sure of class 0 and the features vote for each photo's own class, so
    only the photos of other classes are unsure, read, and put right by their text."""
    import numpy as np

    bench_quality, bench = tiny_bench(tmp_path, text_cues=None)
    same_class_neighbours_and_upright_labels(bench_quality, bench, [0.98, 0.01, 0.01])
    bench.run(["recipe_text_gated", "recipe_text"])
    for split in bench.splits:
        gated = bench.results["recipe_text_gated"][split.name]
        every = bench.results["recipe_text"][split.name]
        others = float(np.mean(bench.y[gated["photos"]] != 0))
        assert 0 < others < 1
        assert gated["read_fraction"] == round(others, 4) and every["read_fraction"] == 1.0
        assert gated["cue_photos"] == round(others * len(gated["photos"]))
        assert gated["text_s"] == round(0.1 * others, 3)  # upright named it: no turning
        assert gated["accuracy"] == every["accuracy"] == 1.0
        # the curve: every gate in the grid, each reading more than the one below it or as much
        curve = [gated["gate_curve"][str(g)] for g in bench_quality.GATE_GRID]
        assert [read for _, read in curve] == sorted(read for _, read in curve)
    summary = bench.summary()
    assert "recipe_text_gated_vs_every" in summary
    assert set(summary["methods"]["recipe_text_gated"]["gate_curve"]) == {
        str(g) for g in bench_quality.GATE_GRID
    }
    # Every gate predicts as reading every photo here, so each fold picks the lowest.
    nested = summary["gate_nested"]
    assert set(nested["chosen"].values()) == {min(bench_quality.GATE_GRID)}
    assert nested["accuracy"] == 1.0


def test_the_exports_text_gate_looks_at_the_classifier_alone(tmp_path):
    """recipe_text_export predicts as `export --read-text` writes: the gate looks at the
    classifier (no kNN vote), so a classifier unsure of every photo has every photo read, where
    recipe_text_gated's fused prediction is sure of the photos whose neighbours agree with it."""
    import numpy as np

    bench_quality, bench = tiny_bench(tmp_path, text_cues=None)
    same_class_neighbours_and_upright_labels(bench_quality, bench, [0.6, 0.2, 0.2])
    bench.run(["recipe_text_export", "recipe_text_gated"])
    for split in bench.splits:
        export = bench.results["recipe_text_export"][split.name]
        gated = bench.results["recipe_text_gated"][split.name]
        others = float(np.mean(bench.y[export["photos"]] != 0))
        assert 0 < others < 1
        assert export["read_fraction"] == 1.0 and export["accuracy"] == 1.0
        assert gated["read_fraction"] == round(others, 4)  # fused: class 0 at 0.8, not read
        assert "fusion" not in export and "fusion" in gated


def test_text_methods_on_another_model_read_that_models_outputs(tmp_path, capsys):
    """recipe_lite1_text_gated scores the cached outputs of recipe_lite1, not the recipe's:
    here the recipe is unsure of every photo, Lite1 sure and right, so the gate reads no photo
    behind Lite1. Without Lite1's outputs the method says what to run and records nothing."""
    import numpy as np

    bench_quality, bench = tiny_bench(tmp_path, text_cues=None)
    emb = same_class_neighbours_and_upright_labels(bench_quality, bench, [0.4, 0.3, 0.3])
    bench.run(["recipe_lite1_text_gated"])
    assert "recipe_lite1_text_gated" not in bench.results
    assert "run recipe_lite1 first" in capsys.readouterr().out
    cache_fold_outputs(bench, "recipe_lite1", emb, np.eye(3, dtype=np.float32)[bench.y])
    bench.run(["recipe_lite1_text_gated", "recipe_text_gated", "recipe_lite1_text_gated_rerank"])
    for split in bench.splits:
        lite1 = bench.results["recipe_lite1_text_gated"][split.name]
        recipe = bench.results["recipe_text_gated"][split.name]
        assert lite1["read_fraction"] == 0.0 and lite1["cue_photos"] == 0
        assert lite1["accuracy"] == 1.0
        assert recipe["read_fraction"] > 0.0
        assert bench.results["recipe_lite1_text_gated_rerank"][split.name]["recall_at_1"] == 1.0
    # paired with the same words on the recipe: Lite1 is right where the recipe is unsure
    paired = bench.summary()["recipe_lite1_text_gated_vs_recipe"]
    assert paired["folds"] == len(bench.splits) and paired["accuracy"]["mean"] >= 0.0


def learned_bench(tmp_path, reads):
    """A tiny bench whose classifier leans to class 0 and whose features say nothing, with
    photo i reading ``reads(bench, i)`` upright (None: nothing)."""
    import numpy as np

    bench_quality, bench = tiny_bench(tmp_path, text_cues=None)
    n = len(bench.y)
    probs = np.tile(np.array([[0.5, 0.25, 0.25]], dtype=np.float32), (n, 1))
    cache_fold_outputs(bench, "recipe", np.ones((n, 4), dtype=np.float32) / 2.0, probs)
    cache = {}
    for i, s in enumerate(bench.samples):
        text = reads(bench, i)
        lines = [[text, 0.99]] if text else []
        cache[s.id] = {"0": lines, "0_s": 0.1, "90": [], "90_s": 0.1, "270": [], "270_s": 0.1}
    (bench.work / f"photo-text-{bench_quality.DETECT_SIDE}.json").write_text(json.dumps(cache))
    bench.run(["recipe_text_learned", "recipe_text_gated", "recipe_text_learned_rerank"])
    return bench_quality, bench


def test_learned_text_votes_with_the_training_folds_examples(tmp_path):
    """recipe_text_learned: each class's photos read a word that names no class, so the words
    alone change nothing, while the examples read on the training folds' photos put every
    photo right."""
    import numpy as np

    words = ("quartzite", "zephyrine", "walrusoid")
    bench_quality, bench = learned_bench(tmp_path, lambda bench, i: words[bench.y[i]])
    for split in bench.splits:
        learned = bench.results["recipe_text_learned"][split.name]
        words_only = bench.results["recipe_text_gated"][split.name]
        assert words_only["cue_photos"] == 0
        assert words_only["accuracy"] == float(np.mean(bench.y[words_only["photos"]] == 0)) < 1
        assert learned["accuracy"] == 1.0 and learned["cue_photos"] == len(learned["photos"])
        assert learned["text_cues"]["examples"] == bench_quality.learned_setting()
    summary = bench.summary()
    assert summary["recipe_text_learned_vs_words"]["accuracy"]["mean"] > 0


def test_learned_text_never_learns_from_the_photos_it_scores(tmp_path):
    """Only the first fold's test photos read their class word: the first fold's examples
    (its training photos) hold none, so its test photos keep the words-only prediction; a
    vote from the photos scored would have put them right."""
    import numpy as np

    words = ("quartzite", "zephyrine", "walrusoid")

    def reads(bench, i):
        return words[bench.y[i]] if i in bench.splits[0].test else None

    _, bench = learned_bench(tmp_path, reads)
    first = bench.splits[0].name
    learned = bench.results["recipe_text_learned"][first]
    words_only = bench.results["recipe_text_gated"][first]
    assert learned["accuracy"] == words_only["accuracy"] < 1
    assert learned["cue_photos"] == 0
    assert np.array_equal(learned["correct"], words_only["correct"])


def test_two_rerankings_are_paired_photo_by_photo(tmp_path):
    """Recall@1 of two re-rankings of the same photos gets a group bootstrap beside the fold
    interval (the interval for a prediction-time change)."""
    bench_quality, bench = tiny_bench(tmp_path)
    names = [s.name for s in bench.splits]
    for method, hit in (("recipe_rerank", 0), ("recipe_text_rerank", 1)):
        bench.results[method] = {}
        for split in bench.splits:
            photos = split.test.tolist()
            bench.results[method][split.name] = {
                **{m: 0.5 for m in bench_quality.METRICS},
                "photos": photos,
                "correct": [1] * len(photos),
                # the second re-ranking finds the brand first on even photo numbers as well
                "hits_at_1": [int(hit == 1 and p % 2 == 0) for p in photos],
            }
    entry = bench.paired("recipe_text_rerank", "recipe_rerank", names, 1.0)
    even = sum(p % 2 == 0 for s in bench.splits for p in s.test) / sum(
        len(s.test) for s in bench.splits
    )
    boot = entry["recall_at_1_photo_bootstrap"]
    assert boot["mean"] == round(even, 4) and boot["low"] > 0
    del bench.results["recipe_rerank"][names[0]]["hits_at_1"]
    assert "recall_at_1_photo_bootstrap" not in bench.paired(
        "recipe_text_rerank", "recipe_rerank", names, 1.0
    )


def test_every_trained_variant_sets_real_training_options():
    """Each candidate recipe's overrides name TrainConfig options with values of their type, so
    a misspelt override (which would train the plain recipe under another name) fails here,
    not after an hour of fold trainings."""
    import dataclasses

    from embedder.train_config import TrainConfig

    bench_quality = load_bench_quality()
    defaults = TrainConfig(data="", out="")
    for method, overrides in bench_quality.TRAINED.items():
        for name, value in overrides.items():
            assert hasattr(defaults, name), f"{method}: {name}"
            default = getattr(defaults, name)
            assert default is None or isinstance(value, type(default)), f"{method}: {name}"
        assert dataclasses.replace(defaults, **overrides) != defaults or not overrides


def test_copy_groups_join_cropped_and_mirrored_copies_and_set_mixed_brands_apart():
    """The thumbnail test alone left a cropped copy in another group (cosine 0.92 here), so it
    could be in the training folds while its original was scored."""
    import numpy as np
    from PIL import Image, ImageOps

    from embedder.label_conflicts import thumbnail_vector

    bench_quality = load_bench_quality()

    def picture(seed: int) -> Image.Image:  # smooth, like a photo (blocks would alias)
        small = np.random.default_rng(seed).integers(0, 256, (6, 5, 3), dtype=np.uint8)
        return Image.fromarray(small).resize((250, 300), Image.BICUBIC)

    base = picture(1)
    cropped = base.crop((20, 25, 230, 280)).resize((210, 255))
    images = [base, cropped, picture(2), ImageOps.mirror(picture(2)), picture(3), picture(4)]
    thumbs = np.stack([thumbnail_vector(img) for img in images])
    assert float(thumbs[0] @ thumbs[1]) < 0.98  # the old test would not have joined them
    brands = np.array([0, 0, 1, 2, 1, 2])
    groups, headline = bench_quality.copy_groups(images, thumbs, brands, 0.98)
    assert groups[0] == groups[1] and groups[2] == groups[3]
    assert len({groups[0], groups[2], groups[4], groups[5]}) == 4
    # The mirrored pair is filed under two brands: scored apart; the cropped pair is not.
    assert headline.tolist() == [True, True, False, False, True, True]


def test_the_paired_bootstrap_draws_a_photo_with_all_its_repeats(tmp_path):
    """Both repeats score the same photos; keyed by repeat, the bootstrap took a photo's two
    differences as independent and its interval was too narrow."""
    import numpy as np

    from embedder.crossval import group_bootstrap_interval

    _, bench = tiny_bench(tmp_path, text_cues=None)
    photos = list(range(len(bench.y)))
    rng = np.random.default_rng(3)
    fixed = rng.random(len(photos)) < 0.3  # the same photos fixed in both repeats
    for m, correct in (("a", fixed.astype(int)), ("b", np.zeros(len(photos), int))):
        bench.results[m] = {
            n: {"correct": correct.tolist(), "photos": photos, "accuracy": float(correct.mean())}
            | {k: 0.0 for k in ("macro_f1", "recall_at_1", "recall_at_5")}
            for n in ("r0f0", "r1f0")
        }
    entry = bench.paired("a", "b", ["r0f0", "r1f0"], 0.25)
    diffs = np.concatenate([fixed, fixed]).astype(float)
    groups = [str(g) for g in bench.groups] * 2  # one key per photo's group, both repeats
    by_photo = group_bootstrap_interval(diffs, np.array(groups))
    assert entry["accuracy_photo_bootstrap"] == by_photo.to_json()
