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
