"""Checkpoints fold the journal; SIGKILL at any moment loses no acknowledged add or remove
(a real child process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from index import IndexOptions, create_index, open_index

REPO = Path(__file__).resolve().parents[2]
D = 16
BATCH = 25

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from index import IndexOptions, open_index

    path, prefix, every, seed = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    batch, dim, store = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
    rng = np.random.default_rng(seed)
    opts = IndexOptions(checkpoint_every=every, compact_entries=every)
    ix = open_index(path, options=opts, store=None if store == "-" else store)
    print("ready", flush=True)
    for b in range(1_000_000):
        ids = [f"{prefix}{b}-{j}" for j in range(batch)]
        ix.add(ids, rng.standard_normal((batch, dim)), [{"batch": b}] * batch)
        print(f"add {prefix}{b}", flush=True)
        if b % 3 == 2:
            ix.remove([f"{prefix}{b - 1}-0", f"{prefix}{b - 2}-1"])
            print(f"remove {prefix}{b - 1}-0 {prefix}{b - 2}-1", flush=True)
    """
)


def run_and_kill(
    script: Path, path: Path, prefix: str, every: int, delay: float, seed: int, store: str = "-"
) -> list[str]:
    """Start the writer, SIGKILL it ``delay`` s after it is ready, return its acknowledgements."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(REPO), str(path), prefix, str(every), str(seed)]
        + [str(BATCH), str(D), store],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line.strip())
            ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if not ready.wait(60):
        proc.kill()
        pytest.fail(f"child never became ready: {proc.stderr.read()}")
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    reader.join(10)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    return lines[1:]


@pytest.mark.parametrize(
    "kind,backend", [("flat", "sqlite"), ("hnsw", "sqlite"), ("flat", "postgresql")]
)
def test_sigkill_mid_update_keeps_every_acknowledged_change(tmp_path, kind, backend, request):
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    path = tmp_path / "ix"
    create_index(path, D, model_name="m", checkpoint_hash="h", kind=kind).close()
    store = None
    if backend == "postgresql":
        from index.pg_admin import push_folder

        store = request.getfixturevalue("pg_url")
        push_folder(path, store)
    acked_adds: list[str] = []
    acked_removes: set[str] = set()
    # Small checkpoint intervals make kills land inside checkpoints as well as commits.
    for round_, (every, delay) in enumerate([(60, 0.4), (200, 0.9), (40, 1.3), (10**6, 0.6)]):
        acks = run_and_kill(script, path, f"r{round_}-", every, delay, round_, store or "-")
        assert acks, "the child acknowledged nothing before it was killed"
        for ack in acks:
            verb, *names = ack.split()
            if verb == "add":
                acked_adds.append(names[0])
            else:
                acked_removes.update(names)
        with open_index(path, store=store) as ix:  # opens, replaying the journal
            expected = {f"{b}-{j}" for b in acked_adds for j in range(BATCH)} - acked_removes
            present = set(ix.ids())
            # The change in flight at the kill may or may not have committed, but wholly.
            prefix, last = f"r{round_}-", acks[-1]
            b = int(acked_adds[-1].rsplit("-", 1)[1])
            in_flight_removal = set()
            if last.startswith("add") and b % 3 == 2:
                in_flight_removal = {f"{prefix}{b - 1}-0", f"{prefix}{b - 2}-1"}
            missing = expected - present
            assert missing in (set(), in_flight_removal), missing
            acked_removes |= missing
            assert not (acked_removes & present)
            extra = present - expected
            if extra:  # the batch being added: all of it, and it is the next one
                assert not in_flight_removal
                assert extra == {f"{prefix}{b + 1}-{j}" for j in range(BATCH)}
                acked_adds.append(f"{prefix}{b + 1}")
            assert len(ix) == len(present)
            q = ix.get_vectors([sorted(present)[0]])[0]
            assert ix.search(q, 1)[0][0].id == sorted(present)[0]
            meta = ix.get(acked_adds[-1] + "-3").metadata
            assert meta == {"batch": int(acked_adds[-1].rsplit("-", 1)[1])}


def test_checkpoint_folds_the_journal_and_cleans_stale_files(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir) as ix:
        ix.add(["x1", "x2"], xq[:2])
        assert ix.info()["journal_pending"] == 2
        ix.checkpoint()
        assert ix.info()["journal_pending"] == 0
        before = ix.search(xq[:5], 10)
    faiss_files = sorted(p.name for p in flat_dir.glob("vectors-*.faiss"))
    assert len(faiss_files) == 1 and faiss_files[0] != "vectors-000000000000.faiss"
    (flat_dir / "vectors-999999999999.faiss").write_bytes(b"left by a crash")
    with open_index(flat_dir) as ix:
        assert ix.search(xq[:5], 10) == before
        assert json.loads((flat_dir / "manifest.json").read_text())["count"] == len(ix)
    assert not (flat_dir / "vectors-999999999999.faiss").exists()


def test_automatic_checkpoint_after_enough_journaled_vectors(flat_dir, small):
    _, xq, _, _ = small
    with open_index(flat_dir, options=IndexOptions(checkpoint_every=3)) as ix:
        ix.add(["a"], xq[:1])
        ix.add(["b", "c"], xq[1:3])
        assert ix.info()["journal_pending"] == 0
        ix.remove(["a"])
        assert ix.info()["journal_pending"] == 1
