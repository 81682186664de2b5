"""Several processes on one catalog store, on SQLite and on a real PostgreSQL server: each
follows the journal (sync), sees its own writes at once, others' after a sync; compaction
while another process searches; no acknowledged write lost to SIGKILL."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from index import build_index, open_index
from index.errors import StoreUnavailableError, UnknownIdError
from tests.index.synthetic import HASH, MODEL, make_catalog

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("store_child.py")
D = 16
N = 300


@dataclass
class Spec:
    path: Path
    store: str | None

    def open(self, **kwargs):  # noqa: ANN003, ANN201
        return open_index(self.path, store=self.store, **kwargs)


def build(folder: Path, store: str | None) -> Spec:
    xb, _, ids, md = make_catalog(N, d=D)
    build_index(folder, ids, xb, md, model_name=MODEL, checkpoint_hash=HASH, kind="flat")
    if store is not None:
        from index.pg_admin import push_folder

        push_folder(folder, store)
    return Spec(folder, store)


@pytest.fixture(params=["sqlite", "postgresql"])
def spec(request, tmp_path) -> Spec:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return build(tmp_path / "ix", url)


class Child:
    """store_child.py in its own process; ``ask`` sends one command, returns its answer."""

    def __init__(self, spec: Spec, mode: str = "rw") -> None:
        argv = [sys.executable, str(CHILD), str(REPO), str(spec.path), spec.store or "-", mode]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.answer(60) == "ready", self.proc.stderr.read() if self.proc.poll() else ""

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def answer(self, timeout: float = 30) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer from the child in {timeout} s") from None

    def ask(self, line: str, timeout: float = 30) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.answer(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, D)).astype(np.float32)


def until(ix, cond, seconds: float = 10.0) -> bool:  # noqa: ANN001
    """Poll ``cond`` (syncing first) until it holds or the deadline passes."""
    deadline = time.monotonic() + seconds
    while True:
        ix.sync()
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def test_processes_see_each_others_writes(spec):
    child = Child(spec)
    try:
        with spec.open() as ix:
            ix.add(["p-1"], vec(1))
            assert "p-1" in ix and ix.search(vec(1), 1)[0][0].id == "p-1"  # read-your-writes
            assert child.ask("wait p-1 present 10") == "yes"
            assert child.ask("add c-1 7") == "ok"
            assert child.ask("remove sku-3") == "ok"
            assert until(ix, lambda: "c-1" in ix and "sku-3" not in ix)
            assert ix.search(vec(7), 1)[0][0].id == "c-1"
            st = ix.sync_status
            assert st.behind_entries == 0 and st.store_error is None
            assert st.applied_seq == st.head_seq == 3 and st.size == N + 1
    finally:
        child.close()


def test_concurrent_writers_in_several_processes(spec):
    children = [Child(spec) for _ in range(3)]
    try:
        for n, child in enumerate(children):
            child.proc.stdin.write(f"burst w{n} 25\n")
            child.proc.stdin.flush()
        assert [c.answer(120) for c in children] == ["ok"] * 3
        with spec.open(readonly=True) as ix:
            added = [i for n in range(3) for i in (f"w{n}-{j}" for j in range(25))]
            assert all(i in ix for i in added) and len(ix) == N + 75
            st = ix.sync_status
            assert st.applied_seq == st.head_seq == 75  # one record each, numbered without gaps
            fids = ix.store.fids_for_ids(added)
            assert len(set(fids.values())) == 75
            assert ix.search(ix.get_vectors(["w2-24"]), 1)[0][0].id in {"w0-24", "w1-24", "w2-24"}
    finally:
        for c in children:
            c.close()


def test_a_copy_behind_the_store_never_answers_short(spec):
    """Hits another process removed since this copy last caught up were dropped after the
    search, leaving fewer than k (a server worker between its follower's syncs)."""
    from index.catalog import IndexOptions

    with (
        spec.open(options=IndexOptions(sync_on_read=False)) as behind,
        spec.open() as writer,
    ):
        q = behind.get_vectors(["sku-7"])[0]
        first = [h.id for h in behind.search(q, 5)[0]]
        writer.remove(first[:3])
        now = [h.id for h in writer.search(q, 5)[0]]
        for flt in (None, {"price": {"gte": 0}}):
            hits = [h.id for h in behind.search(q, 5, filter=flt)[0]]
            assert len(hits) == 5
            if spec.store is None:  # SQLite: one store file, read by both, is already ahead
                assert hits == now
            else:  # PostgreSQL: each copy answers from the state it has applied
                assert hits == first
        behind.sync()
        assert [h.id for h in behind.search(q, 5)[0]] == now


def test_update_metadata_and_list_items(spec):
    child = Child(spec)
    try:
        with spec.open() as ix:
            v0 = ix.version
            item = ix.update_metadata("sku-5", {"brand": "Zeta", "stock": 3})
            assert ix.version != v0  # caches keyed on it are invalidated
            assert item.metadata["brand"] == "Zeta" and item.metadata["price"] == 105
            assert [h.id for h in ix.search(vec(0), 5, filter={"brand": "Zeta"})[0]] == ["sku-5"]
            assert child.ask("field sku-5 brand 10 Zeta") == "yes"
            assert child.ask('meta sku-6 {"brand": "Zeta"}') == "ok"
            assert until(ix, lambda: len(ix.list_items(None, 10, filter={"brand": "Zeta"})) == 2)
            replaced = ix.update_metadata("sku-5", {"only": 1}, merge=False)
            assert replaced.metadata == {"only": 1}

            def at_most_two(md):  # noqa: ANN001, ANN202
                if len(md) > 2:
                    raise ValueError(f"{len(md)} fields")

            # The check sees the merged fields, and what it raises stores nothing.
            ix.update_metadata("sku-5", {"two": 2}, check=at_most_two)
            with pytest.raises(ValueError, match="3 fields"):
                ix.update_metadata("sku-5", {"three": 3}, check=at_most_two)
            assert ix.get("sku-5").metadata == {"only": 1, "two": 2}
            # A replace keeps the named fields the stored item has, and only those.
            kept = ix.update_metadata("sku-5", {"new": 1}, merge=False, keep=("two", "gone"))
            assert kept.metadata == {"new": 1, "two": 2} == ix.get("sku-5").metadata
            ix.update_metadata("sku-5", {"only": 1, "two": 2}, merge=False)
            assert child.ask("field sku-5 two 10 2") == "yes"  # another process: the merge
            assert child.ask("field sku-5 three 0.5 3") == "no"  # and nothing of the refused
            with pytest.raises(UnknownIdError):
                ix.update_metadata("nope", {"a": 1})
            pages, after = [], None
            while page := ix.list_items(after, 64):
                pages += [i.id for i in page]
                after = page[-1].id
            assert pages == sorted(f"sku-{i}" for i in range(N))
            fids, texts = ix.store.field_values("price")
            assert len(fids) == N - 1 and set(texts) == {str(p) for p in range(100, 107)}
    finally:
        child.close()


def test_compaction_while_another_process_searches(spec):
    child = Child(spec, "ro")
    try:
        with spec.open() as ix:
            child.proc.stdin.write("search 4\n")
            child.proc.stdin.flush()
            for r in range(6):
                ix.add([f"k-{r}-{j}" for j in range(20)], np.repeat(vec(r), 20, axis=0))
                ix.remove([f"sku-{r}"])
                assert ix.compact(force=True) is True
                assert ix.sync_status.journal_length == 0
            report = json.loads(child.answer(60))
            assert report["n_errors"] == 0, report["errors"]
            assert report["searches"] > 10
            assert child.ask("wait k-5-19 present 10") == "yes"
            assert child.ask("wait sku-5 absent 10") == "yes"
            assert ix.compact() is False  # nothing due
    finally:
        child.close()


def test_sync_in_a_thread_while_threads_search(spec):
    """A background follower and searching threads of one process, another process writing."""
    child = Child(spec)
    errors: list[BaseException] = []
    stop = threading.Event()
    try:
        with spec.open(readonly=True) as ix:

            def loop(work) -> None:  # noqa: ANN001
                try:
                    while not stop.is_set():
                        work()
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=loop, args=(ix.sync,))]
            threads += [
                threading.Thread(target=loop, args=(lambda: ix.search(vec(5), 10),))
                for _ in range(2)
            ]
            for t in threads:
                t.start()
            for i in range(30):
                assert child.ask(f"add t-{i} {i}") == "ok"
                if i % 3 == 0:
                    assert child.ask(f"remove sku-{i}") == "ok"
            assert until(ix, lambda: "t-29" in ix and len(ix) == N + 20)
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[:3]
    finally:
        stop.set()
        child.close()


def test_a_copy_behind_one_compaction_follows_on_further_behind_reloads(spec):
    with spec.open() as writer, spec.open(readonly=True) as reader:
        writer.add(["a1", "a2"], np.vstack([vec(1), vec(2)]))
        assert writer.compact(force=True)
        held = reader._replica
        reader.sync()
        assert reader._replica is held and "a2" in reader  # from the journal kept
        for r in range(3):  # three snapshots later its records are gone: it reloads
            writer.add([f"b{r}"], vec(10 + r))
            assert writer.compact(force=True)
        reader.sync()
        assert reader._replica is not held
        assert all(f"b{r}" in reader for r in range(3)) and len(reader) == N + 5
        assert reader.search(vec(12), 1)[0][0].id == "b2"


def test_kill_9_loses_no_acknowledged_write(spec):
    child = Child(spec)
    acked = []
    for i in range(15):
        assert child.ask(f"add kill-{i} {i}") == "ok"
        acked.append(f"kill-{i}")
    child.proc.stdin.write("add kill-x 99\n")
    child.proc.stdin.flush()
    child.proc.kill()  # SIGKILL, maybe mid-write
    child.proc.wait()
    with spec.open() as ix:
        assert all(a in ix for a in acked)
        assert len(ix) in (N + 15, N + 16)
        assert ix.get_vectors(acked).shape == (15, D)


def test_wal_stays_bounded_with_a_reader_open(tmp_path):
    spec = build(tmp_path / "ix", None)
    wal = tmp_path / "ix" / "catalog.sqlite-wal"
    reader = spec.open(readonly=True)
    with spec.open() as ix:
        sizes = []
        for i in range(600):
            ix.add([f"w-{i}"], vec(i))
            if i % 20 == 0:
                assert f"w-{i}" in reader  # the reader follows, and holds nothing open
                sizes.append(wal.stat().st_size)
    reader.close()
    # SQLite checkpoints its WAL every ~1000 pages (4 MB) when no reader pins it; 600
    # transactions pinned by a reader grew it past 10 MB.
    assert max(sizes) < 5 * 2**20, sizes


def test_old_folder_is_upgraded_on_open(tmp_path):
    import sqlite3

    spec = build(tmp_path / "ix", None)
    db = sqlite3.connect(tmp_path / "ix" / "catalog.sqlite")
    db.executescript(
        "DROP TABLE journal; CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "op TEXT NOT NULL, n INTEGER NOT NULL, fids BLOB NOT NULL, vectors BLOB);"
    )
    db.close()
    with spec.open(readonly=True) as ix:
        assert len(ix) == N
    with spec.open() as ix:
        ix.add(["new"], vec(3))
    with spec.open() as ix:
        assert "new" in ix


def test_unreachable_postgresql_keeps_reads_and_refuses_writes(tmp_path, pg_server):
    from tests.pg import PgServer

    own = PgServer(pg_server.bindir)  # a server of its own, to stop mid-test
    own.start()
    try:
        spec = build(tmp_path / "ix", own.create_db())
        ix = spec.open()
        ix.add(["before"], vec(1))
        ix.sync()
        time.sleep(3)
        assert ix.sync().store_error is None  # nothing new: current as of now
        own.stop(remove=False)
        st = ix.sync()
        assert st.store_error and "unavailable" in st.store_error and st.behind_seconds > 0
        # Counted from the last check that found it current, not from the last change (a
        # quiet catalog read as minutes behind, and /readyz took every replica out at once).
        assert st.behind_seconds < 3
        assert ix.search(vec(1), 1)[0][0].id == "before"  # reads answer from the last state
        assert ix.get("before").metadata == {}
        with pytest.raises(StoreUnavailableError):
            ix.add(["after"], vec(2))
        with pytest.raises(StoreUnavailableError):
            ix.update_metadata("before", {"a": 1})
        assert "after" not in ix
        own.start()  # the database comes back: the replica catches up by itself
        other = spec.open()
        other.add(["while-away"], vec(3))
        st = ix.sync()
        assert st.store_error is None and st.behind_entries == 0 and "while-away" in ix
        ix.add(["after"], vec(2))
        assert until(other, lambda: "after" in other)
        other.close()
        ix.close()
    finally:
        own.stop()


def test_searches_go_on_while_this_process_writes_a_snapshot_file(tmp_path):
    """SQLite writes the snapshot file under the apply lock, which every read's change check
    took: at 80,000 items each search waited as long as the compaction (207 ms)."""
    spec = build(tmp_path / "ix", None)
    with spec.open() as ix:
        source = ix._source
        real = source.commit_snapshot
        writing, finish = threading.Event(), threading.Event()

        def slow_commit(index, seq):  # noqa: ANN001, ANN202
            writing.set()
            assert finish.wait(30)
            return real(index, seq)

        source.commit_snapshot = slow_commit
        ix.add(["during"], vec(3))
        compactor = threading.Thread(target=ix.compact, kwargs={"force": True})
        compactor.start()
        try:
            assert writing.wait(10)
            found: list = []
            reader = threading.Thread(target=lambda: found.append(ix.search(vec(3), 1)))
            reader.start()
            reader.join(5)
            assert not reader.is_alive(), "the search waited for the snapshot file"
            assert found[0][0][0].id == "during"  # this process's own write, applied before
        finally:
            finish.set()
            compactor.join(30)
        assert ix.sync_status.journal_length == 0


def test_a_compaction_empties_the_wal_it_leaves_behind(tmp_path):
    """The WAL kept the size of the journal just folded (160 MB beside a 7.7 MB store) until
    the next write: for good on a catalog that is only read after it."""
    import os

    from index.store import WAL_SIZE_LIMIT

    spec = build(tmp_path / "ix", None)
    wal = tmp_path / "ix" / "catalog.sqlite-wal"
    with spec.open() as ix, spec.open(readonly=True) as reader:
        many = np.repeat(vec(1), 20_000, axis=0)
        ix.add([f"bulk-{i}" for i in range(20_000)], many)
        assert ix.compact(force=True)
        ix.remove([f"bulk-{i}" for i in range(20_000)])
        assert ix.compact(force=True)  # drops the record holding the vectors
        assert reader.search(vec(1), 1)[0]  # another connection reading meanwhile
        assert os.path.getsize(wal) < WAL_SIZE_LIMIT / 4


def test_a_compaction_whose_tidying_fails_after_its_commit_still_succeeds(tmp_path, monkeypatch):
    """On a full disk the snapshot committed, then emptying the WAL failed: a traceback and
    exit 1 for a compaction that had in fact been made."""
    import sqlite3

    from index.store import CatalogStore

    folder = build(tmp_path / "ix", None).path
    with open_index(folder) as ix:
        ix.add(["late"], vec(1))

        def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(CatalogStore, "checkpoint_wal", full)
        assert ix.compact(force=True) is True
        monkeypatch.undo()
    with open_index(folder, readonly=True) as again:
        assert "late" in again and again.sync_status.journal_length == 0


def test_a_compaction_stopped_by_a_full_disk_says_so_as_a_machine_failure(tmp_path, monkeypatch):
    """The sync's full-disk error was raised again as a plain "unavailable" error: `index
    compact` exited 2 (input error) and a server answered 503 instead of 507."""
    import sqlite3

    from index.errors import StoreMachineError

    folder = build(tmp_path / "ix", None).path
    with open_index(folder) as ix:
        ix.add(["late"], vec(1))
        full = sqlite3.OperationalError("database or disk is full")

        def disk_full() -> bool:
            raise StoreMachineError.of(folder, full)

        monkeypatch.setattr(ix._source, "changed", disk_full)
        with pytest.raises(StoreMachineError, match="disk is full") as caught:
            ix.compact(force=True)
        assert caught.value.exit_code == 1 and caught.value.disk_full


def test_a_wall_clock_stepped_back_does_not_stop_automatic_compaction(tmp_path, monkeypatch):
    """Automatic compaction asks the store at most once a second, timed on the wall clock: one
    stepped back an hour (NTP, a resumed VM) kept it from asking for that hour, and the
    journal grew past ``compact_entries`` unfolded."""
    from index.catalog import IndexOptions

    folder = build(tmp_path / "ix", None).path
    with open_index(folder, options=IndexOptions(compact_entries=3)) as ix:
        ix.sync()
        assert ix.sync_status.journal_length == 0
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 3600.0)
        for i in range(3):
            ix.add([f"late-{i}"], vec(i))
        time.sleep(1.2)  # past the once-a-second check
        ix.add(["last"], vec(9))
        assert ix.sync_status.journal_length == 0  # the four records were folded
        assert ix.sync_status.behind_seconds == 0


def test_failed_automatic_compactions_are_retried_less_and_less_often(tmp_path, monkeypatch):
    """On a full disk every automatic compaction wrote most of a snapshot file and failed, once
    a second for as long as writes came: after a failure the next try waits twice as long (on
    a clock of the test's own: real sleeps are no margin on a loaded machine)."""
    import errno
    from types import SimpleNamespace

    from index import following
    from index.catalog import IndexOptions

    clock = [1000.0]
    monkeypatch.setattr(
        following, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    )
    folder = build(tmp_path / "ix", None).path
    with open_index(folder, options=IndexOptions(compact_entries=1)) as ix:
        tries = []

        def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            tries.append(clock[0])
            raise OSError(errno.ENOSPC, "No space left on device")

        source = ix._source
        monkeypatch.setattr(source, "commit_snapshot", full)
        ix.add(["a"], vec(1))  # tried and failed: the next try waits 1 s
        clock[0] += 1.5
        ix.add(["b"], vec(2))  # tried and failed: the next waits 2 s
        clock[0] += 1.5
        ix.add(["c"], vec(3))  # 1.5 s later: not tried
        assert tries == [1000.0, 1001.5]
        assert all(name in ix for name in ("a", "b", "c"))  # the writes themselves went in
        ix._compact_failures = 2000  # days of failures: the wait stays at its longest
        clock[0] += 10
        ix.add(["e"], vec(5))  # tried (no OverflowError from 2**2000), the next in 300 s
        assert len(tries) == 3 and ix._compact_retry_at == clock[0] + 300
        monkeypatch.setattr(source, "commit_snapshot", type(source).commit_snapshot.__get__(source))
        clock[0] += 301
        ix.add(["d"], vec(4))  # the wait is over and the disk has room: compacted
        assert ix.sync_status.journal_length == 0 and "a" in ix
