"""Benchmark replicas on one catalog store: every write seen everywhere, nothing deleted comes
back, and acknowledged writes survive kill -9.

Two servers with two workers each on one store (SQLite, then PostgreSQL started here on a
temporary folder and a free port), 8 clients searching while one client adds and deletes
items (default 1,000 adds over 60 s; every other added item is deleted again a few writes
later). Printed: errors; how long after its acknowledgement each add is visible on every
server, and each delete gone (p50/p99/max, polled per server); deleted items returned by a
search sent after the delete was acknowledged; search latency under writes against a baseline
measured in the same run without writes (the ratio); WAL and journal sizes at start and end.
Then kill -9 a random server process (master or worker) three times during writes: every
acknowledged add must be present afterwards on every server, nothing deleted may come back.
Ends with ONE JSON line.

    python scripts/bench_replicas.py [--backend sqlite postgresql] [--items 1000]
        [--duration 60] [--kill-items 150] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from http_load import free_port, multipart_form
from replica_checks import Cluster, Ledger, killer, pct, poll_visible, summary, verify
from replica_cluster import (
    Server,
    build_tiny,
    env_with_repo,
    folder_bytes,
    postgres,
    readyz,
    request,
    server_command,
)

from common.argtypes import (
    non_negative_int,
    positive_float,
    positive_int,
    refuse_file_as_folder,
)
from common.errors import reporting_errors
from common.machine import run_context
from demo.specs import CLASS_NAMES

API_KEY = "bench-replicas-key"
KEY = {"X-API-Key": API_KEY}
# Enough polling threads that a poll starts when its write is acknowledged: a poll waiting for
# a thread would count the client's own backlog as the servers' lag.
POLLERS = 32
VISIBLE_WITHIN_S = 1.0  # the consistency promise: every process answers with a write within 1 s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backend",
        nargs="+",
        choices=("sqlite", "postgresql"),
        default=["sqlite", "postgresql"],
        help="stores to measure (default both)",
    )
    p.add_argument(
        "--items",
        type=positive_int,
        default=1000,
        help="adds in the steady phase (default %(default)s)",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=60.0,
        help="seconds of the steady phase (default %(default)s)",
    )
    p.add_argument(
        "--baseline",
        type=positive_float,
        default=8.0,
        help="seconds of searches, no writes (default %(default)s)",
    )
    p.add_argument(
        "--searchers",
        type=positive_int,
        default=8,
        help="clients searching all along (default %(default)s)",
    )
    p.add_argument(
        "--workers", type=positive_int, default=2, help="workers per server (default %(default)s)"
    )
    p.add_argument(
        "--kills",
        type=non_negative_int,
        default=3,
        help="kill -9 of a random server process (default %(default)s)",
    )
    p.add_argument(
        "--kill-items",
        type=positive_int,
        default=150,
        help="adds during the kill phase (default %(default)s)",
    )
    p.add_argument(
        "--sync-interval",
        type=positive_float,
        default=0.5,
        help="servers' --sync-interval (default %(default)s)",
    )
    p.add_argument(
        "--catalog",
        type=positive_int,
        nargs=2,
        default=(4, 25),
        metavar=("CLASSES", "PER"),
        help="size of the generated catalog (default 4 x 25)",
    )
    p.add_argument("--workdir", help="folder for the catalog, model and index (reused)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed of the kill choices (default %(default)s)"
    )
    args = p.parse_args(argv)
    refuse_file_as_folder(p, "--workdir", args.workdir)
    if not 2 <= args.catalog[0] <= len(CLASS_NAMES):  # else a traceback from a child process
        p.error(f"--catalog: CLASSES must be 2 to {len(CLASS_NAMES)}, got {args.catalog[0]}")
    return args


def searcher(cluster: Cluster, images: list[tuple[str, bytes]], ledger: Ledger, stop,
             out: dict, n: int) -> None:  # fmt: skip
    lat, errors, deleted_hits = [], [], []
    i = n
    while not stop.is_set():
        server = cluster.servers[i % len(cluster.servers)]
        name, data = images[i % len(images)]
        i += 1
        body, headers = multipart_form({"image": (name, data)})
        sent = time.monotonic()
        gone = ledger.deleted_before(sent)
        status, raw = request(server.port, "POST", "/v1/search?k=50", body=body, headers=headers)
        if status != 200:
            errors.append(f"{server.name}: HTTP {status} {raw[:80]!r}")
            continue
        lat.append(time.monotonic() - sent)
        ids = {h["id"] for h in json.loads(raw)["neighbors"]}
        deleted_hits += sorted(ids & gone)
    out[n] = {"lat": lat, "errors": errors, "deleted_hits": deleted_hits}


def run_searchers(cluster, images, ledger, seconds: float | None, stop=None) -> tuple:
    stop = stop or threading.Event()
    out: dict = {}
    # Daemon threads: a Ctrl-C that skips stop.set() must not leave them searching for ever.
    threads = [threading.Thread(target=searcher, args=(cluster, images, ledger, stop, out, n),
                                daemon=True)
               for n in range(ARGS.searchers)]  # fmt: skip
    for t in threads:
        t.start()
    if seconds is not None:
        time.sleep(seconds)
        stop.set()
    return threads, out, stop


def collect(threads, out) -> dict:
    for t in threads:
        t.join()
    lat = [x for r in out.values() for x in r["lat"]]
    return {
        "searches": len(lat),
        "errors": [e for r in out.values() for e in r["errors"]],
        "deleted_hits": [d for r in out.values() for d in r["deleted_hits"]],
        "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
        "p99_ms": round(1000 * pct(lat, 99), 2) if lat else None,
    }


def writer(cluster: Cluster, images, ledger: Ledger, prefix: str, n: int, duration: float,
           pool: ThreadPoolExecutor, tolerate_errors: bool) -> None:  # fmt: skip
    """Add ``n`` items over ``duration`` s, alternating servers; delete every other one a few
    writes later. A failed write (a server being killed) is not acknowledged: not counted."""
    pending_deletes: list[str] = []
    gap = duration / max(1, n)
    start = time.monotonic()
    for i in range(n):
        target = start + i * gap
        time.sleep(max(0.0, target - time.monotonic()))
        up = cluster.up() or cluster.servers
        server = up[i % len(up)]
        item_id = f"{prefix}-{i:05d}"
        name, data = images[i % len(images)]
        body, headers = multipart_form({"image": (name, data), "id": item_id})
        headers = {**headers, **KEY}
        status, raw = request(server.port, "POST", "/v1/items", body=body, headers=headers)
        acked = time.monotonic()
        if status == 201:
            with ledger.lock:
                ledger.added[item_id] = acked
            pool.submit(poll_visible, cluster, item_id, 200, acked, ledger, ledger.add_lag)
            if i % 2 == 0:
                pending_deletes.append(item_id)
        else:
            with ledger.lock:
                ledger.write_errors.append(f"add {item_id} on {server.name}: {status} {raw[:80]!r}")
        if len(pending_deletes) > 3:  # delete a few writes later: it was found by searches
            victim = pending_deletes.pop(0)
            server = up[(i + 1) % len(up)]
            status, raw = request(server.port, "DELETE", f"/v1/items/{victim}", headers=KEY)
            acked = time.monotonic()
            if status == 200:
                with ledger.lock:
                    ledger.deleted[victim] = acked
                pool.submit(poll_visible, cluster, victim, 404, acked, ledger, ledger.delete_lag)
            else:
                with ledger.lock:
                    ledger.write_errors.append(f"delete {victim}: {status} {raw[:80]!r}")
    if not tolerate_errors and ledger.write_errors:
        print(f"write errors: {ledger.write_errors[:5]}", flush=True)


def sizes(cluster: Cluster, index: Path | None, pg_data: Path | None) -> dict:
    """WAL bytes (SQLite's -wal file or PostgreSQL's pg_wal) and the journal's length."""
    if pg_data is not None:
        wal = folder_bytes(pg_data / "pg_wal")
    else:
        wal_file = index / "catalog.sqlite-wal"
        wal = wal_file.stat().st_size if wal_file.exists() else 0
    journal = max((readyz(s.port).get("replica") or {}).get("journal_length", 0)
                  for s in cluster.up())  # fmt: skip
    return {"wal_bytes": wal, "journal_length": journal}


def prepare_store(backend: str, index_src: Path, folder: Path, url: str | None) -> Path:
    """This run's copy of the catalog: the SQLite index folder copied, or the same catalog
    built into the PostgreSQL store ``url`` (ids, vectors and metadata read from the copy)."""
    out = folder / "index"
    if backend == "sqlite":
        shutil.copytree(index_src, out)
        return out
    from index import CatalogIndex, build_index

    with CatalogIndex.open(index_src, readonly=True) as ix:
        ids = sorted(ix.ids())
        vectors = ix.get_vectors(ids)
        metadata = [ix.get(i).metadata for i in ids]
        m = ix.manifest
    build_index(out, ids, vectors, metadata, model_name=m.model_name,
                checkpoint_hash=m.checkpoint_hash, source=dict(m.source), store=url)  # fmt: skip
    return out


def start_cluster(ckpt: Path, index: Path, url: str | None, folder: Path) -> Cluster:
    env = env_with_repo({"PHONESIM_API_KEY": API_KEY})
    args = ["--workers", str(ARGS.workers), "--threads", "4",
            "--sync-interval", str(ARGS.sync_interval)]  # fmt: skip
    servers = []
    for name in ("a", "b"):
        port = free_port()
        where = (None, url) if url else (index, None)
        cmd = server_command(ckpt, *where, port, args)
        servers.append(Server(name, cmd, port, folder / f"server-{name}.log", env))
    cluster = Cluster(servers, ARGS.workers)
    for server in servers:
        server.start(ARGS.workers)
    return cluster


def run_backend(backend: str, ckpt: Path, index_src: Path, work: Path, images) -> dict:
    folder = work / f"run-{backend}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pg_ctx = postgres(folder / "pg") if backend == "postgresql" else _no_pg()
    with pg_ctx as pg:
        url, pg_data = pg if pg else (None, None)
        index = prepare_store(backend, index_src, folder, url)
        cluster = start_cluster(ckpt, index, url, folder)
        try:
            return measure(backend, cluster, index, pg_data, images)
        finally:
            for server in cluster.servers:
                server.stop()


class _no_pg:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def measure(backend: str, cluster: Cluster, index: Path, pg_data, images) -> dict:
    print(f"\n== {backend}: 2 servers x {ARGS.workers} workers, {ARGS.searchers} searchers")
    at_start = sizes(cluster, index, pg_data)
    print(f"  start: WAL {at_start['wal_bytes']} B, journal {at_start['journal_length']}")
    steady = Ledger()
    threads, out, _ = run_searchers(cluster, images, steady, ARGS.baseline)
    baseline = collect(threads, out)
    print(f"  baseline (no writes): {baseline['searches']} searches, p50 {baseline['p50_ms']} ms")

    threads, out, stop = run_searchers(cluster, images, steady, None)
    try:
        with ThreadPoolExecutor(POLLERS) as pool:
            writer(cluster, images, steady, "bench", ARGS.items, ARGS.duration, pool, False)
    finally:
        stop.set()
    loaded = collect(threads, out)
    at_end = sizes(cluster, index, pg_data)
    within = sum(1 for x in steady.add_lag if x <= VISIBLE_WITHIN_S)
    errors = len(loaded["errors"]) + len(steady.write_errors) + len(steady.unseen)
    print(
        f"  writes: {len(steady.added)} adds, {len(steady.deleted)} deletes acknowledged; "
        f"errors {errors}; deleted items returned {len(loaded['deleted_hits'])}"
    )
    print(
        f"  add visible on every server: {summary(steady.add_lag)}; "
        f"within {VISIBLE_WITHIN_S} s: {within}/{len(steady.add_lag)}"
    )
    print(
        f"  delete gone on every server: {summary(steady.delete_lag)}; adds deleted before "
        f"every server was polled (not timed): {steady.superseded}"
    )
    ratio = (
        f", x{loaded['p50_ms'] / baseline['p50_ms']:.2f} the baseline's p50"
        if loaded["p50_ms"] and baseline["p50_ms"]
        else ""
    )
    print(
        f"  search under writes: p50 {loaded['p50_ms']} ms, p99 {loaded['p99_ms']} ms "
        f"({loaded['searches']} searches){ratio}"
    )
    print(f"  end: WAL {at_end['wal_bytes']} B, journal {at_end['journal_length']}")
    for line in (loaded["errors"] + steady.write_errors + steady.unseen)[:5]:
        print(f"    error: {line}")

    crash = Ledger()
    kills: list[str] = []
    kill_duration = max(30.0, ARGS.kill_items * ARGS.duration / max(1, ARGS.items))
    print(f"  kill phase: {ARGS.kill_items} adds over {kill_duration:.0f} s, {ARGS.kills} kills")
    rng = random.Random(ARGS.seed)
    k = threading.Thread(target=killer, args=(cluster, ARGS.kills, kill_duration, rng, kills))
    k.start()
    with ThreadPoolExecutor(POLLERS) as pool:
        writer(cluster, images, crash, "crash", ARGS.kill_items, kill_duration, pool, True)
    k.join()
    for server in cluster.servers:  # every server back with all its workers
        if not server.alive:
            server.start(cluster.workers)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(
        len(s.workers()) < cluster.workers for s in cluster.servers
    ):
        time.sleep(0.2)
    merged = Ledger()
    merged.added = {**steady.added, **crash.added}
    merged.deleted = {**steady.deleted, **crash.deleted}
    checked = verify(cluster, merged, images)
    print(
        f"  after the kills: {checked['checked_present']} acknowledged adds and "
        f"{checked['checked_deleted']} deletes checked on every server: "
        f"{len(checked['missing'])} missing, {len(checked['resurrected'])} came back"
    )
    for line in (checked["missing"] + checked["resurrected"])[:5]:
        print(f"    {line}")
    ok = (errors == 0 and not loaded["deleted_hits"] and within == len(steady.add_lag)
          and not checked["missing"] and not checked["resurrected"])  # fmt: skip
    return {
        "backend": backend,
        "ok": ok,
        "errors": errors,
        "adds_acked": len(steady.added),
        "deletes_acked": len(steady.deleted),
        "deleted_returned": len(loaded["deleted_hits"]),
        "add_visible": summary(steady.add_lag),
        "add_visible_within_1s": f"{within}/{len(steady.add_lag)}",
        "delete_gone": summary(steady.delete_lag),
        "adds_deleted_before_polled": steady.superseded,
        "search_p50_ms_baseline": baseline["p50_ms"],
        "search_p50_ms_under_writes": loaded["p50_ms"],
        "search_p50_ratio": (
            round(loaded["p50_ms"] / baseline["p50_ms"], 3)
            if loaded["p50_ms"] and baseline["p50_ms"]
            else None
        ),  # fmt: skip
        "searches": loaded["searches"],
        "wal_bytes": [at_start["wal_bytes"], at_end["wal_bytes"]],
        "journal_length": [at_start["journal_length"], at_end["journal_length"]],
        "kills": kills,
        "kill_phase_adds_acked": len(crash.added),
        "kill_phase_write_failures": len(crash.write_errors),
        "missing_after_kills": len(checked["missing"]),
        "deleted_back_after_kills": len(checked["resurrected"]),
    }


def query_images(index: Path, n: int = 16) -> list[tuple[str, bytes]]:
    from index import read_catalog_csv, read_manifest

    rows = list(read_catalog_csv(read_manifest(index).source["catalog"]).values())
    step = max(1, len(rows) // n)
    return [(Path(r["image"]).name, Path(r["image"]).read_bytes()) for r in rows[::step][:n]]


def main(argv: list[str] | None = None) -> int:
    global ARGS
    ARGS = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    # Absolute: the servers run from the repository, not from where the script was started.
    work = Path(ARGS.workdir or tempfile.mkdtemp(prefix="phonesim-replicas-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not ARGS.workdir:
        # mkdtemp's 0700 would keep the postgres user (PostgreSQL as root) out of its folder.
        work.chmod(0o755)
    try:
        ckpt, index = build_tiny(work, *ARGS.catalog)
        images = query_images(index)
        results = [run_backend(b, ckpt, index, work, images) for b in ARGS.backend]
    finally:
        if not ARGS.workdir:  # a folder of its own: nothing in it is worth keeping
            shutil.rmtree(work, ignore_errors=True)
    figures = {
        "benchmark": "replicas",
        "servers": 2,
        "workers_per_server": ARGS.workers,
        "searchers": ARGS.searchers,
        "items": ARGS.items,
        "duration_s": ARGS.duration,
        "sync_interval_s": ARGS.sync_interval,
        "ok": all(r["ok"] for r in results),
        "results": results,
    }
    print(json.dumps({**figures, "context": run_context()}))
    return 0 if figures["ok"] else 1


ARGS: argparse.Namespace

if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
