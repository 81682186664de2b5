"""The grouping scaling benchmark on synthetic vectors."""

from __future__ import annotations


def test_bench_recovers_planted_groups() -> None:
    from duplicates.bench import BenchConfig, run_bench

    r = run_bench(BenchConfig(n=3000, dim=64, clusters=100, planted_groups=200, baseline_n=1500))
    assert r["pair_precision"] == 1.0 and r["pair_recall"] == 1.0
    assert r["subset_matches_brute_force"] and r["groups_found"] == r["groups_planted"]
