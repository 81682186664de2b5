"""The calibration benchmark built from real photos: truth and source de-duplication."""

from __future__ import annotations

import shutil


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
