"""Bookkeeping of the replica benchmark: what the writer was told (:class:`Ledger`), the
servers (:class:`Cluster`), how long a write takes to show on every server, kill -9 of server
processes, and the final check that acknowledged writes survived and deletions stayed."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

from http_load import multipart_form
from replica_cluster import Server, request

POLL_LIMIT_S = 15.0  # give up polling one server for one write after this long


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))], 4)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_s": pct(values, 50), "p99_s": pct(values, 99),
            "max_s": round(max(values), 4) if values else None}  # fmt: skip


class Ledger:
    """What the writer was told: acknowledged adds and deletes, with their times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.added: dict[str, float] = {}
        self.deleted: dict[str, float] = {}  # id -> monotonic time the delete was acknowledged
        self.add_lag: list[float] = []
        self.delete_lag: list[float] = []
        self.unseen: list[str] = []  # an acknowledged write some server never showed in time
        self.superseded = 0  # adds deleted again before the poll reached every server
        self.write_errors: list[str] = []

    def deleted_before(self, t: float) -> set[str]:
        with self.lock:
            return {i for i, at in self.deleted.items() if at < t}


class Cluster:
    def __init__(self, servers: list[Server], workers: int) -> None:
        self.servers, self.workers = servers, workers
        self.lock = threading.Lock()  # held while a server restarts

    def up(self) -> list[Server]:
        return [s for s in self.servers if s.alive]


def poll_visible(
    cluster: Cluster, item_id: str, want: int, since: float, ledger: Ledger, lags: list[float]
) -> None:
    """Time until every server answers GET item with ``want`` (200: added, 404: deleted)."""
    worst = 0.0
    for server in cluster.servers:
        while True:
            status, _ = request(server.port, "GET", f"/v1/items/{item_id}")
            now = time.monotonic()
            if status == want:
                worst = max(worst, now - since)
                break
            if want == 200 and status == 404 and item_id in ledger.deleted:
                # The writer deleted it before this poll reached this server: nothing to time.
                with ledger.lock:
                    ledger.superseded += 1
                return
            if now - since > POLL_LIMIT_S:
                with ledger.lock:
                    ledger.unseen.append(f"{item_id} on {server.name}: {status}")
                return
            time.sleep(0.005)
    with ledger.lock:
        lags.append(worst)


def killer(cluster: Cluster, kills: int, duration: float, rng: random.Random, log: list) -> None:
    """kill -9 a random process of a random server, ``kills`` times spread over ``duration``;
    a killed master is started again (gunicorn restarts a killed worker itself)."""

    for _ in range(kills):
        time.sleep(duration / (kills + 1))
        server = rng.choice(cluster.servers)
        pids = server.pids()
        if not pids:
            continue
        pid = rng.choice(pids)
        role = "master" if pid == pids[0] else "worker"
        os.kill(pid, signal.SIGKILL)
        log.append(f"kill -9 {server.name} {role} {pid}")
        print(f"  kill -9 {server.name} {role} (pid {pid})", flush=True)
        if role == "master":
            server.proc.wait()
            folder = server.instance_folder()  # the killed master could not remove it:
            server.start(cluster.workers)  # the next start does
            if folder is not None and folder.exists():
                log.append(f"stale instance folder left: {folder}")
        else:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (
                pid in server.workers() or len(server.workers()) < cluster.workers
            ):
                time.sleep(0.1)


def verify(cluster: Cluster, ledger: Ledger, images) -> dict:
    """Every acknowledged add present on every server; every acknowledged delete gone."""
    missing, resurrected = [], []
    with ledger.lock:
        present = [i for i in ledger.added if i not in ledger.deleted]
        gone = list(ledger.deleted)
    for server in cluster.servers:
        for item_id in present:
            if request(server.port, "GET", f"/v1/items/{item_id}")[0] != 200:
                missing.append(f"{item_id} on {server.name}")
        for item_id in gone:
            if request(server.port, "GET", f"/v1/items/{item_id}")[0] != 404:
                resurrected.append(f"{item_id} on {server.name}")
        for name, data in images[:4]:
            body, headers = multipart_form({"image": (name, data)})
            status, raw = request(server.port, "POST", "/v1/search?k=100", body=body,
                                  headers=headers)  # fmt: skip
            if status == 200:
                hits = {h["id"] for h in json.loads(raw)["neighbors"]}
                resurrected += [f"{i} in a search on {server.name}" for i in hits & set(gone)]
    return {"checked_present": len(present), "checked_deleted": len(gone),
            "missing": missing, "resurrected": resurrected}  # fmt: skip


if __name__ == "__main__":  # `python scripts/<this>.py --help` had printed nothing, exit 0
    raise SystemExit(f"{__file__}: a module the benchmark scripts import, not a command")
