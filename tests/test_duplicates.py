"""Tests for duplicate detection: grouping vs brute force, metrics, keeper and label rules,
planted duplicates end to end with a tiny model, reports, bad inputs, --against, calibration."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from duplicates.evaluation import group_metrics, sweep_thresholds
from duplicates.grouping import (
    SearchConfig,
    UnionFind,
    brute_force_groups,
    components,
    group_vectors,
    groups_from_labels,
    knn_pairs,
)
from duplicates.pair_model import PairModel
from duplicates.result import (
    DuplicateGroup,
    DuplicateResult,
    Member,
    has_label_conflict,
    order_members,
    parse_keep,
)
from duplicates.verify import EVIDENCE
from embedder.errors import DataError

TEST_SIZE = 128  # descriptor input for the tiny model: an 8 x 8 local feature grid


def agreement_only_model(weight: float, bias: float) -> PairModel:
    """A pair model that reads the agreement only: sigmoid(weight * agreement + bias)."""
    n = len(EVIDENCE)
    return PairModel(EVIDENCE, (0.0,) * n, (1.0,) * n, (weight,) + (0.0,) * (n - 1), bias)


def clustered(n: int, dim: int, seed: int, copies: int = 30) -> np.ndarray:
    """Clustered unit vectors (not uniform noise) with some near-copies planted."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 20), dim))
    owner = rng.integers(0, len(centres), n)
    x = centres[owner] + rng.standard_normal((n, dim)) * 0.6
    src = rng.integers(0, n, copies)
    x[rng.integers(0, n, copies)] = x[src] + rng.standard_normal((copies, dim)) * 0.05
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- grouping ------------------------------------------------------------------------------


def test_union_find_and_labels() -> None:
    uf = UnionFind(6)
    assert uf.union(0, 3) and uf.union(3, 5) and not uf.union(5, 0)
    assert uf.labels().tolist() == [0, 1, 2, 0, 4, 0]
    assert groups_from_labels(components(6, [(4, 1), (2, 2)])) == [[1, 4]]


@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.97])
@pytest.mark.parametrize("exact_limit", [10_000, 0])  # exact search, then forced HNSW
def test_grouping_matches_brute_force(threshold: float, exact_limit: int) -> None:
    xb = clustered(1500, 32, seed=int(threshold * 100))
    reference = brute_force_groups(xb, threshold)
    groups, _ = group_vectors(xb, threshold, SearchConfig(k=4, exact_limit=exact_limit))
    assert reference, "the data must contain groups for the test to mean anything"
    assert groups == reference


def test_knn_grows_k_for_large_groups() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(16)
    x = np.vstack([base + rng.standard_normal((40, 16)) * 0.01, rng.standard_normal((60, 16))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    i, j, s = knn_pairs(x, 0.99, SearchConfig(k=3))
    assert len(i) == 40 * 39 // 2  # every pair in the group, though k is 3
    assert (s >= 0.99).all() and (i < j).all()
    fixed, _, _ = knn_pairs(x, 0.99, SearchConfig(k=3, max_k=3))
    assert len(fixed) < len(i)


def test_sweep_agrees_with_explicit_groups() -> None:
    rng = np.random.default_rng(1)
    n = 200
    truth = rng.integers(0, 60, n)
    i = rng.integers(0, n, 800)
    j = rng.integers(0, n, 800)
    keep = i != j
    i, j = i[keep], j[keep]
    scores = np.where(
        truth[i] == truth[j], rng.uniform(0.5, 1, len(i)), rng.uniform(0, 0.9, len(i))
    )
    sweep = sweep_thresholds(truth, i, j, scores, [0.95, 0.8, 0.6])
    for k, t in enumerate(sweep.thresholds):
        ok = scores >= t
        groups = groups_from_labels(components(n, zip(i[ok], j[ok], strict=True)))
        metrics = group_metrics(truth, groups)
        assert sweep.precision[k] == pytest.approx(metrics["precision"])
        assert sweep.recall[k] == pytest.approx(metrics["recall"])
    assert sweep.recall[0] <= sweep.recall[1] <= sweep.recall[2]


def test_group_metrics_counts_chaining() -> None:
    truth = [0, 0, 1, 1, 2]
    assert group_metrics(truth, [[0, 1], [2, 3]])["precision"] == 1.0
    merged = group_metrics(truth, [[0, 1, 2, 3]])
    assert merged["precision"] == pytest.approx(2 / 6) and merged["recall"] == 1.0


# -- keeper and labels ---------------------------------------------------------------------


def _m(id_: str, w: int, h: int, size: int, label: str = "", source: str = "input") -> Member:
    return Member(id_, f"/x/{id_}.jpg", label, w, h, size, source=source)


def test_keeper_rule_resolution_then_filesize() -> None:
    small_big_file = _m("a", 100, 100, 9000)
    large = _m("b", 200, 200, 1000)
    large_bigger_file = _m("c", 200, 200, 2000)
    order = order_members([small_big_file, large, large_bigger_file])
    assert [m.id for m in order] == ["c", "b", "a"]
    by_size = order_members([small_big_file, large, large_bigger_file], parse_keep("filesize"))
    assert by_size[0].id == "a"
    tie = order_members([_m("z", 10, 10, 5), _m("y", 10, 10, 5)])
    assert tie[0].id == "y"  # deterministic: smallest id wins a full tie
    cat = order_members([large, _m("k", 10, 10, 1, source="catalog")], parse_keep("catalog"))
    assert cat[0].id == "k"


def test_parse_keep_rejects_unknown() -> None:
    assert parse_keep(" resolution , filesize ") == ("resolution", "filesize")
    with pytest.raises(DataError, match="unknown keep rule"):
        parse_keep("resolution,colour")


def test_label_conflict_flag() -> None:
    assert has_label_conflict([_m("a", 1, 1, 1, "iphone"), _m("b", 1, 1, 1, "pixel")])
    assert not has_label_conflict([_m("a", 1, 1, 1, "iphone"), _m("b", 1, 1, 1, "iphone")])
    assert not has_label_conflict([_m("a", 1, 1, 1, "iphone"), _m("b", 1, 1, 1, "")])


# -- end to end with a tiny model ----------------------------------------------------------


@pytest.fixture(scope="module")
def descriptor(tiny_checkpoint):
    from duplicates.descriptor import CopyDescriptor, DescriptorConfig

    return CopyDescriptor.from_checkpoint(tiny_checkpoint, DescriptorConfig(size=TEST_SIZE))


def _planted(root: Path, source: Path) -> dict[str, str]:
    """Copy the demo catalog and plant copies; returns planted id -> id of its original."""
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("*.csv"))
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    a, b, c, d, e = (sorted(classes[k % len(classes)].glob("*.jpg"))[k] for k in range(5))
    img = {p: Image.open(p).convert("RGB") for p in (a, b, c, d)}
    img[a].save(a.parent / "copy_jpeg.jpg", quality=30)
    img[b].resize((img[b].width * 3 // 4, img[b].height * 3 // 4), Image.LANCZOS).save(
        b.parent / "copy_small.jpg", quality=95
    )
    img[c].transpose(Image.FLIP_LEFT_RIGHT).save(c.parent / "copy_mirror.jpg", quality=95)
    img[d].save(d.parent / "copy_pixels.png")  # other bytes, same pixels
    shutil.copy(e, classes[(4 + 1) % len(classes)] / "copy_bytes.jpg")  # another label
    rel = lambda p: p.relative_to(root).with_suffix("").as_posix()  # noqa: E731
    return {
        rel(a.parent / "copy_jpeg.jpg"): rel(a),
        rel(b.parent / "copy_small.jpg"): rel(b),
        rel(c.parent / "copy_mirror.jpg"): rel(c),
        rel(d.parent / "copy_pixels.png"): rel(d),
        rel(classes[(4 + 1) % len(classes)] / "copy_bytes.jpg"): rel(e),
    }


@pytest.fixture(scope="module")
def planted_run(tiny_catalog, descriptor, tmp_path_factory):
    from duplicates.finder import FinderConfig, find_duplicates
    from duplicates.inputs import list_images

    root = tmp_path_factory.mktemp("planted") / "imgs"
    planted = _planted(root, tiny_catalog)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    samples = list_images(root)
    result = find_duplicates(descriptor, samples, FinderConfig(workers=0, progress=False))
    return root, planted, samples, result


def test_planted_duplicates_are_grouped_and_others_not(planted_run) -> None:
    _, planted, samples, result = planted_run
    group_of = {m.id: g.group_id for g in result.groups for m in g.members}
    for copy, original in planted.items():
        assert copy in group_of and group_of[copy] == group_of.get(original), copy
    # Every group is one original with its copies: no two catalog photos are merged.
    for g in result.groups:
        originals = {planted.get(m.id, m.id) for m in g.members}
        assert len(originals) == 1, [m.id for m in g.members]
    assert len(result.groups) == len(planted)
    assert result.listed == len(samples) and result.read == len(samples) - 1


def test_pair_model_scores_the_candidates(planted_run, descriptor) -> None:
    from duplicates.finder import FinderConfig, find_duplicates

    _, planted, samples, default = planted_run

    def groups(m: PairModel) -> set[frozenset[str]]:
        config = FinderConfig(workers=0, progress=False, threshold=0.5, pair_model=m)
        result = find_duplicates(descriptor, samples, config)
        return {frozenset(x.id for x in g.members) for g in result.groups}

    # p >= 0.5 exactly where agreement >= 0.9: the same groups as the plain default run.
    assert groups(agreement_only_model(50.0, -45.0)) == {
        frozenset(x.id for x in g.members) for g in default.groups
    }
    # A model that rejects everything leaves only the byte- and pixel-identical copies.
    only_identical = groups(agreement_only_model(0.0, -50.0))
    identical = {k for k in planted if k.endswith(("copy_pixels", "copy_bytes"))}
    assert {c for g in only_identical for c in g if c in planted} == identical


def test_identical_files_always_group_even_at_threshold_one(tiny_catalog, descriptor, tmp_path):
    from duplicates.finder import FinderConfig, find_duplicates
    from duplicates.inputs import list_images

    root = tmp_path / "imgs"
    root.mkdir()
    src = sorted(tiny_catalog.rglob("*.jpg"))
    shutil.copy(src[0], root / "a.jpg")
    shutil.copy(src[0], root / "b.jpg")
    Image.open(src[0]).save(root / "c.png")  # same pixels, other bytes
    shutil.copy(src[1], root / "d.jpg")
    result = find_duplicates(
        descriptor, list_images(root), FinderConfig(threshold=1.0, workers=0, progress=False)
    )
    assert [sorted(m.id for m in g.members) for g in result.groups] == [["a", "b", "c"]]
    assert all(m.similarity == 1.0 for m in result.groups[0].members)


def test_keeper_and_label_conflict_in_a_run(planted_run) -> None:
    _, planted, _, result = planted_run
    by_member = {m.id: g for g in result.groups for m in g.members}
    small = next(k for k in planted if k.endswith("copy_small"))
    g = by_member[small]
    assert g.keeper.id == planted[small]  # the full-resolution original is kept
    assert g.keeper.pixels > g.members[1].pixels
    cross = next(k for k in planted if k.endswith("copy_bytes"))
    assert by_member[cross].label_conflict
    assert sum(g.label_conflict for g in result.groups) == 1
    assert result.label_conflicts == 1 and result.duplicates == len(planted)


def test_corrupt_image_is_listed_and_counted(planted_run) -> None:
    _, _, _, result = planted_run
    assert [f.id for f in result.failures] == ["broken"]
    assert "failed 1" in result.summary()


def test_report_files(planted_run, tmp_path) -> None:
    from duplicates.report import CSV_COLUMNS, write_report

    _, planted, _, result = planted_run
    paths = write_report(result, tmp_path / "report")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sum(r["keep"] == "1" for r in rows) == len(result.groups)
    assert {r["id"] for r in rows} >= set(planted)
    data = json.loads(paths["json"].read_text())
    assert all(len(g) >= 2 for g in data["groups"]) and len(data["groups"]) == len(planted)
    html = paths["html"].read_text()
    assert html.count("<div class='group") == len(result.groups)
    assert "data:image/jpeg;base64," in html
    assert paths["summary"].read_text().strip() == result.summary()


def test_html_escapes_user_text(tmp_path) -> None:
    from duplicates.report import to_html

    evil = "<script>alert(1)</script>"
    group = DuplicateGroup(1, [_m(evil, 2, 2, 3, label=evil), _m("b", 1, 1, 1, "x")], True)
    html = to_html(DuplicateResult([group], 2, [], 0.9))
    assert evil not in html and "&lt;script&gt;" in html


# -- bad inputs and the command line -------------------------------------------------------


def test_missing_and_empty_inputs(tmp_path) -> None:
    from duplicates.inputs import list_images

    with pytest.raises(DataError, match="no such folder"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path / "empty")


def test_all_unreadable_is_a_clear_error(descriptor, tmp_path) -> None:
    from duplicates.finder import FinderConfig, find_duplicates
    from duplicates.inputs import list_images

    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 1 input images could be read"):
        find_duplicates(descriptor, list_images(tmp_path), FinderConfig(workers=0, progress=False))


def test_cli_reports_errors_in_one_line(tiny_checkpoint, tmp_path, capsys) -> None:
    from duplicates.cli import find_main

    code = find_main(
        [
            "--checkpoint",
            str(tiny_checkpoint),
            "--images",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no such folder" in err and "Traceback" not in err


def test_cli_end_to_end_uses_stored_threshold(planted_run, tiny_checkpoint, tmp_path, capsys):
    from duplicates.calibration import store_calibration, stored_settings
    from duplicates.cli import find_main
    from duplicates.descriptor import DescriptorConfig

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    store_calibration(
        ckpt, {"threshold": 0.8, "descriptor": DescriptorConfig(size=TEST_SIZE).to_json()}
    )
    stored = stored_settings(ckpt)
    assert stored.calibrated and stored.threshold == 0.8 and stored.descriptor.size == TEST_SIZE
    root = planted_run[0]
    code = find_main(
        [
            "--checkpoint",
            str(ckpt),
            "--images",
            str(root),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.strip().splitlines()[-1].startswith(f"images {len(list(root.rglob('*.*')))}, ")
    assert "(threshold 0.800, agreement score)" in out and "failed 1" in out
    assert (tmp_path / "r" / "duplicates.html").is_file()


# -- against a catalog index ---------------------------------------------------------------


def test_against_index_reports_catalog_matches(tiny_catalog, tiny_checkpoint, descriptor, tmp_path):
    from duplicates.against import find_against
    from duplicates.finder import FinderConfig
    from embedder.data import Sample, load_catalog
    from embedder.inference import Embedder
    from index import build_index

    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    catalog = load_catalog(tiny_catalog / "catalog.csv").samples
    xb = embedder.embed_paths([s.path for s in catalog]).embeddings
    meta = [{"image": str(s.path.resolve()), "label": s.label} for s in catalog]
    build_index(
        tmp_path / "idx",
        [s.id for s in catalog],
        xb,
        meta,
        model_name=embedder.model_name,
        checkpoint_hash=embedder.checkpoint_hash,
        progress=False,
    )
    target = catalog[7]
    new = tmp_path / "new"
    new.mkdir()
    Image.open(target.path).convert("RGB").save(new / "relisted.jpg", quality=40)
    Image.new("RGB", (64, 64), (20, 200, 40)).save(new / "unrelated.jpg")
    config = FinderConfig(workers=0, progress=False)
    samples = [
        Sample("relisted", new / "relisted.jpg", ""),
        Sample("unrelated", new / "unrelated.jpg", ""),
    ]
    result = find_against(descriptor, embedder, samples, tmp_path / "idx", config)
    assert result.mode == "against" and len(result.groups) == 1
    group = result.groups[0]
    assert group.keeper.id == target.id and group.keeper.source == "catalog"
    assert group.members[-1].id == "relisted" and group.members[-1].source == "input"
    # One image works too.
    single = find_against(descriptor, embedder, samples[:1], tmp_path / "idx", config)
    assert [m.id for m in single.groups[0].members][0] == target.id


# -- benchmark pieces ----------------------------------------------------------------------


def test_perturbations_are_seeded_and_valid() -> None:
    from duplicates.perturb import STRENGTHS, TRANSFORMS, apply

    img = Image.new("RGB", (120, 160), (240, 240, 240))
    img.paste((30, 60, 200), (20, 30, 100, 140))
    for name in [*TRANSFORMS, "combined"]:
        for s in STRENGTHS:
            a = apply(name, img, s, random.Random(5))
            b = apply(name, img, s, random.Random(5))
            assert a.mode == "RGB" and min(a.size) >= 4
            assert np.array_equal(np.asarray(a), np.asarray(b)), name
    cropped = apply("crop", img, 2, random.Random(0))
    assert 0.6 < cropped.width * cropped.height / (120 * 160) < 0.9


def test_benchmark_truth_and_source_dedup(tiny_catalog, tmp_path) -> None:
    from duplicates.benchmark import BenchmarkConfig, build_benchmark

    src = tmp_path / "src"
    shutil.copytree(tiny_catalog, src, ignore=shutil.ignore_patterns("*.csv"))
    first = sorted(src.rglob("*.jpg"))[0]
    shutil.copy(first, sorted(p for p in src.iterdir() if p.is_dir())[-1] / "dup.jpg")
    config = BenchmarkConfig(originals=3, copies=3, seed=2)
    bench = build_benchmark(src, tmp_path / "bench", config, progress=False)
    assert any(first.stem in " ".join(c) and "dup" in " ".join(c) for c in bench.source_clusters)
    roles = [s.metadata["role"] for s in bench.samples]
    assert roles.count("original") == 3 and roles.count("copy") == 3 * 3
    edits = [s.metadata["transform"] for s in bench.samples if s.metadata["role"] == "copy"]
    assert len(set(edits)) == 9  # the schedule rotates through every edit family
    sources = [s.metadata["source"] for s in bench.samples if s.metadata["role"] != "copy"]
    assert len(sources) == len(set(sources))  # every source photo used once
    assert not {"dup", first.relative_to(src).with_suffix("").as_posix()} <= set(sources)
    for s, t in zip(bench.samples, bench.truth, strict=True):
        assert (s.metadata["role"] == "distractor") == (t >= 3)
    again = build_benchmark(src, tmp_path / "bench2", config, progress=False)
    assert [p.path.read_bytes() for p in bench.samples] == [
        p.path.read_bytes() for p in again.samples
    ]


def test_calibration_end_to_end(tiny_catalog, descriptor, tmp_path) -> None:
    from duplicates.benchmark import BenchmarkConfig
    from duplicates.calibration import CalibrationConfig, calibrate, write_calibration
    from duplicates.finder import FinderConfig

    config = CalibrationConfig(
        benchmark=BenchmarkConfig(originals=6, copies=4, seed=1),
        finder=FinderConfig(workers=0, progress=False),
        min_precision=0.0,
    )
    result = calibrate(descriptor, tiny_catalog, tmp_path / "bench", config)
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


def test_calibrated_model_is_stored_and_used(planted_run, tiny_checkpoint, tmp_path, capsys):
    """A record holding a pair model makes the CLI score with it (and say so)."""
    from duplicates.calibration import store_calibration
    from duplicates.cli import find_main
    from duplicates.descriptor import DescriptorConfig

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    model = agreement_only_model(50.0, -45.0)  # p >= 0.5 exactly where agreement >= 0.9
    record = {
        "threshold": 0.5,
        "pair_model": model.to_json(),
        "descriptor": DescriptorConfig(size=TEST_SIZE).to_json(),
    }
    store_calibration(ckpt, record)
    root, planted = planted_run[0], planted_run[1]
    out = tmp_path / "r"
    argv = ["--checkpoint", str(ckpt), "--images", str(root), "--out", str(out)]
    assert find_main([*argv, "--no-progress", "--workers", "0"]) == 0
    assert "(threshold 0.500, pair model score)" in capsys.readouterr().out
    groups = json.loads((out / "duplicates.json").read_text())["groups"]
    assert len(groups) == len(planted)
    broken = dict(record, pair_model=dict(record["pair_model"], intercept=None))
    store_calibration(ckpt, broken)
    assert find_main([*argv, "--no-progress", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and "Traceback" not in err


def test_single_image_and_no_candidates(tiny_catalog, descriptor, tmp_path) -> None:
    from duplicates.finder import FinderConfig, find_duplicates
    from duplicates.inputs import list_images

    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(sorted(tiny_catalog.rglob("*.jpg"))[0], folder / "only.jpg")
    result = find_duplicates(
        descriptor, list_images(folder), FinderConfig(workers=0, progress=False)
    )
    assert result.groups == [] and result.read == 1


def test_bench_recovers_planted_groups() -> None:
    from duplicates.bench import BenchConfig, run_bench

    r = run_bench(BenchConfig(n=3000, dim=64, clusters=100, planted_groups=200, baseline_n=1500))
    assert r["pair_precision"] == 1.0 and r["pair_recall"] == 1.0
    assert r["subset_matches_brute_force"] and r["groups_found"] == r["groups_planted"]


# -- real photos (slow) --------------------------------------------------------------------


@pytest.mark.slow
def test_real_byte_identical_copies_are_grouped(phone_brands, descriptor, tmp_path) -> None:
    import hashlib
    from collections import defaultdict

    from duplicates.finder import FinderConfig, find_duplicates
    from duplicates.inputs import list_images

    samples = list_images(phone_brands)
    by_hash = defaultdict(list)
    for s in samples:
        by_hash[hashlib.sha256(s.path.read_bytes()).hexdigest()].append(s)
    sets = [v for v in by_hash.values() if len(v) > 1]
    chosen = [s for v in sets for s in v]
    only_identical = FinderConfig(threshold=1.01, workers=0, progress=False)
    result = find_duplicates(descriptor, chosen, only_identical)
    found = sorted(sorted(m.id for m in g.members) for g in result.groups)
    assert found == sorted(sorted(s.id for s in v) for v in sets)
    assert result.label_conflicts == sum(len({s.label for s in v}) > 1 for v in sets) > 0
