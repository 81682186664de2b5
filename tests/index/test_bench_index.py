"""scripts/bench_index.py at a toy size: each step announced on stderr as it starts, then the
table and one JSON line with the figures and the flat baseline of the same run."""

from __future__ import annotations

import json

from tests.conftest import REPO, run_script

SCRIPT = REPO / "scripts" / "bench_index.py"


def test_a_small_run_announces_its_steps_and_ends_with_one_json_line(tmp_path):
    """It also leaves the --workdir's own files alone: "WORKDIR/index" had been replaced and
    deleted, a real index or not."""
    (tmp_path / "w" / "index").mkdir(parents=True)
    (tmp_path / "w" / "index" / "notes.txt").write_text("precious")
    done = run_script(
        SCRIPT,
        *("--n", "3000", "--dim", "32", "--nq", "50", "--latency-queries", "20"),
        *("--flat-queries", "20", "--filter-queries", "20", "--workdir", str(tmp_path / "w")),
    )
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("... ")]
    assert steps[0].startswith("... generating 3000 x 32 vectors")
    assert steps[-1] == "... the exact flat-search baseline"
    assert len(steps) == 7
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.0 <= figures["recall_at_10"] <= 1.0
    assert figures["speedup_p50"] == figures["flat_p50_ms"] / figures["p50_ms"]
    # What it built is removed without --keep; what was there stays.
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["index"]
    assert (tmp_path / "w" / "index" / "notes.txt").read_text() == "precious"


def test_a_workdir_that_is_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    done = run_script(SCRIPT, "--n", "50", "--workdir", str(tmp_path / "afile"))
    assert done.returncode == 2 and "is a file, not a folder" in done.stderr
