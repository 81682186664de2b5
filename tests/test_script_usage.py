"""Benchmark scripts refuse arguments they cannot use in one line with exit 2, before any work
(not a traceback from a child process, nor a bare message with exit 1)."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, run_script

SCRIPTS = REPO / "scripts"


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("bench_replicas.py", ["--catalog", "1", "2"], "--catalog: CLASSES must be 2 to 96"),
        ("bench_replicas.py", ["--catalog", "200", "2"], "--catalog: CLASSES must be 2 to 96"),
        ("bench_hostile.py", ["--checkpoint", "x"], "give both --checkpoint and --index"),
        ("bench_server.py", ["--index", "x"], "give both --checkpoint and --index"),
        ("bench_embed.py", ["--checkpoint", "/nonexistent"], "--checkpoint: /nonexistent: "),
    ],
)
def test_unusable_arguments_are_usage_errors(script, args, message):
    done = run_script(SCRIPTS / script, *args)
    assert done.returncode == 2, done.stderr
    assert f"{script}: error: {message}" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("script", ["bench_export.py", "bench_replicas.py"])
def test_a_workdir_that_is_a_file_is_a_usage_error(script, tmp_path):
    """It had been "error: ...: File exists" with exit 1."""
    (tmp_path / "afile").write_text("x")
    done = run_script(SCRIPTS / script, "--workdir", str(tmp_path / "afile"))
    message = f"--workdir {tmp_path / 'afile'}: is a file, not a folder"
    assert done.returncode == 2, done.stderr
    assert f"{script}: error: {message}" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "script", ["bench_embed.py", "bench_find_runtimes.py", "bench_catalog_writes.py"]
)
def test_the_help_says_the_output_ends_in_one_json_line(script):
    """Their --help had cut the description before it said so (mid-sentence for one)."""
    done = run_script(SCRIPTS / script, "--help")
    assert done.returncode == 0 and "one JSON line" in " ".join(done.stdout.split())


def test_the_catalog_writes_benchmark_ends_with_its_figures_and_baselines():
    import json

    done = run_script(SCRIPTS / "bench_catalog_writes.py", "--n", "3000", "--rounds", "2")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["n"] == 3000 and len(figures["compaction_ms"]) == 3
    ratios = ("stock_update_ratio", "price_update_ratio", "other_process_update_ratio")
    for ratio in (*ratios, "caches_dropped_ratio", "rare_page_ratio"):
        assert figures[ratio] > 0
    # Where and with what it ran, so two runs' figures can be compared.
    context = figures["context"]
    assert context["cores"] >= 1 and context["when"].endswith("+00:00")
    assert {"phonesim", "numpy", "faiss-cpu"} <= set(context["versions"])
