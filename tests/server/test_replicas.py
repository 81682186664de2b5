"""Several workers and several servers on one catalog store answer alike: live gunicorn
servers on 127.0.0.1, each with two workers, every write accepted anywhere and seen
everywhere within a deadline (polled, never a fixed sleep), one metrics view per server, one
control socket per server, and a master process that never loads torch."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.helpers import API_KEY, build_test_index
from tests.server.live import Live, multipart, running_server, stop, wait_for, worker_pids

# A hang guard, not a timing: scripts/bench_replicas.py measures the 1 s the README promises.
VISIBLE_WITHIN_S = 30.0
SERVER_ARGS = ("--workers", "2", "--threads", "2", "--sync-interval", "0.2")
KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def store_index(tiny_embedder, catalog_rows, tiny_catalog, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("replica-index") / "index"
    source = {"catalog": str(tiny_catalog / "catalog.csv")}
    return build_test_index(tiny_embedder, catalog_rows, out, source=source)


@pytest.fixture(scope="module")
def pair(tiny_checkpoint, store_index, tmp_path_factory):
    """Two servers with two workers each, on one index folder, both taking writes."""
    work = tmp_path_factory.mktemp("replicas")
    env = {"PHONESIM_API_KEY": API_KEY}
    args = (*SERVER_ARGS, "--image-dir", str(work / "uploads"))
    with (
        running_server(tiny_checkpoint, store_index, work, *args, env=env, name="a") as a,
        running_server(tiny_checkpoint, store_index, work, *args, env=env, name="b") as b,
    ):
        for server in (a, b):
            wait_for("two booted workers", lambda s=server: len(per_worker(s, "/readyz")) == 2)
        yield a, b


@pytest.fixture(scope="module")
def image(tiny_catalog) -> bytes:
    return sorted(tiny_catalog.rglob("*.jpg"))[0].read_bytes()


def per_worker(server: Live, path: str, tries: int = 300) -> dict[int, tuple[int, bytes]]:
    """``path`` asked of each worker of ``server``: {pid: (status, body)}.

    A connection stays with the worker that accepted it, so ``/readyz`` (which names the
    worker) and then ``path`` on the same connection come from one process; new connections
    until every worker has answered.
    """
    want = len(worker_pids(server))
    seen: dict[int, tuple[int, bytes]] = {}
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", "/readyz")
            ready = conn.getresponse()
            pid = json.loads(ready.read())["worker"]
            conn.request("GET", path)
            r = conn.getresponse()
            seen[pid] = (r.status, r.read())
        except (OSError, http.client.HTTPException, KeyError, ValueError):
            pass  # a worker restarting: try another connection
        finally:
            conn.close()
        if len(seen) >= want:
            break
    return seen


def add(server: Live, item_id: str, image: bytes) -> int:
    body, headers = multipart({"image": ("p.jpg", image), "id": item_id})
    return server.request("POST", "/v1/items", body=body, headers={**headers, **KEY})[0]


def every_worker(servers: list[Live], path: str, accept: Callable[[int, bytes], bool]) -> bool:
    """Every worker of every server answers ``path`` with a status and body ``accept`` takes."""
    for server in servers:
        answers = per_worker(server, path)
        if len(answers) < len(worker_pids(server)):
            return False
        if not all(accept(status, body) for status, body in answers.values()):
            return False
    return True


def seen_by_all(servers: list[Live], path: str, status: int) -> bool:
    """Every worker of every server answers ``path`` with ``status``."""
    return every_worker(servers, path, lambda answered, _: answered == status)


def sizes(servers: list[Live]) -> set[int]:
    return {
        json.loads(body)["index"]["size"]
        for server in servers
        for _, body in per_worker(server, "/v1/info").values()
    }


def test_a_write_on_one_server_is_seen_by_every_worker_of_the_other(pair, image):
    a, b = pair
    assert add(a, "rep-1", image) == 201
    wait_for("rep-1 on every worker", lambda: seen_by_all([a, b], "/v1/items/rep-1", 200),
             timeout=VISIBLE_WITHIN_S)  # fmt: skip
    assert b.request("DELETE", "/v1/items/rep-1", headers=KEY)[0] == 200
    wait_for("rep-1 gone everywhere", lambda: seen_by_all([a, b], "/v1/items/rep-1", 404),
             timeout=VISIBLE_WITHIN_S)  # fmt: skip
    body, headers = multipart({"image": ("p.jpg", image)})
    for server in (a, b):  # a deleted item is never a search result
        status, result = server.json("POST", "/v1/search?k=50", body=body, headers=headers)
        assert status == 200 and "rep-1" not in {n["id"] for n in result["neighbors"]}


def test_writes_with_two_workers_each_land_once(pair, image):
    a, b = pair
    before = sizes([a, b])
    assert len(before) == 1
    ids = [f"w2-{i}" for i in range(6)]
    for i, item_id in enumerate(ids):  # new connection each time: both workers take writes
        assert add((a, b)[i % 2], item_id, image) == 201
    assert add(b, ids[0], image) == 409  # the store refuses a duplicate, whoever took it
    expected = before.pop() + len(ids)
    wait_for("same size on every worker", lambda: sizes([a, b]) == {expected},
             timeout=VISIBLE_WITHIN_S)  # fmt: skip
    status, page = a.json("GET", "/v1/items?limit=100")
    assert status == 200 and set(ids) <= {item["id"] for item in page["items"]}


def _counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_are_one_view_over_all_workers(pair):
    a, _ = pair
    made, last = 0, -1.0
    for _ in range(10):
        for _ in range(3):
            assert a.request("GET", "/v1/info")[0] == 200
            made += 1
        text = a.request("GET", "/metrics")[2].decode()
        count = _counter(text, "phonesim_http_requests_total", endpoint="/v1/info", status="200")
        assert count >= last  # never goes back, whichever worker answers the scrape
        last = count
    assert last >= made  # every worker's requests are in every scrape
    for gauge in (
        "phonesim_replica_lag_entries",
        "phonesim_replica_lag_seconds",
        "phonesim_index_journal_length",
        "phonesim_index_items",
        "phonesim_store_up",
    ):
        assert re.search(rf"^{gauge}(\{{[^}}]*\}})? ", text, re.M), gauge
    size = json.loads(a.request("GET", "/v1/info")[2])["index"]["size"]
    assert _counter(text, "phonesim_index_items") == size
    assert _counter(text, "phonesim_store_up") == 1


def test_a_killed_worker_comes_back_agreeing_with_the_others(pair, image):
    a, b = pair
    text = a.request("GET", "/metrics")[2].decode()
    before = _counter(text, "phonesim_http_requests_total", endpoint="/v1/info")
    victim = worker_pids(a)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for("a new worker", lambda: victim not in worker_pids(a) and len(worker_pids(a)) == 2)
    assert add(b, "after-kill", image) == 201
    wait_for(
        "after-kill on every worker",
        lambda: seen_by_all([a, b], "/v1/items/after-kill", 200),
        timeout=VISIBLE_WITHIN_S + 60,
    )  # fmt: skip  (the new worker loads the model first)
    assert len(sizes([a, b])) == 1  # the new worker agrees with the others
    text = a.request("GET", "/metrics")[2].decode()
    assert _counter(text, "phonesim_http_requests_total", endpoint="/v1/info") >= before


def _control_socket(server: Live) -> Path:
    found = re.search(r"control socket (\S+)", server.log.read_text())
    assert found, server.log.read_text()[-2000:]
    return Path(found.group(1))


def test_the_master_holds_no_model(pair):
    for server in pair:
        pid = server.proc.pid
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "faiss" not in maps
        rss = next(
            int(line.split()[1]) // 1024
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        assert rss < 300, f"master {pid} holds {rss} MB"


def test_each_server_has_its_own_control_socket_and_stopping_one_spares_the_other(pair, image):
    a, b = pair
    sock_a, sock_b = _control_socket(a), _control_socket(b)
    assert sock_a != sock_b and sock_a.exists() and sock_b.exists()
    metrics_a = Path(os.path.dirname(sock_a)) / "metrics"
    assert metrics_a.is_dir() and any(metrics_a.iterdir())  # the workers' shared counters
    assert stop(a) == 0
    assert not sock_a.parent.exists()  # the instance folder goes with its server
    assert sock_b.exists()
    assert b.request("GET", "/readyz")[0] == 200
    assert add(b, "after-stop", image) == 201


# -- PostgreSQL: replicas on several machines, and what they do while the database is down ---
@pytest.fixture(scope="module")
def pg():
    from tests.pg import PgServer, pg_bin

    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (Debian package 'postgresql') are not installed")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install psycopg)")
    server = PgServer(bindir)
    server.start()
    yield server
    server.stop()


def pg_ctl(server, action: str) -> None:
    """Stop or start the test's PostgreSQL server, keeping its data."""
    import subprocess

    from tests.pg import _as_postgres

    opts = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.tmp} -c fsync=off"
    extra = ["-m", "fast"] if action == "stop" else ["-o", opts, "-l", str(server.tmp / "log")]
    cmd = [str(server.bindir / "pg_ctl"), "-D", str(server.data), *extra, "-w", "-t", "60"]
    subprocess.run(_as_postgres([*cmd, action]), check=True, capture_output=True, timeout=90)


def replica(server: Live) -> dict:
    status, body = server.json("GET", "/readyz")
    return {"http": status, **body}


def outage_seen(server: Live) -> bool:
    """Every worker of ``server`` reports that it cannot reach the store."""
    return every_worker(
        [server], "/readyz", lambda _, body: bool(json.loads(body)["replica"]["store_error"])
    )


def test_postgresql_replicas_follow_and_answer_reads_while_the_database_is_down(
    pg, tiny_checkpoint, tiny_embedder, catalog_rows, tiny_catalog, tmp_path, image
):
    url = pg.create_db()
    source = {"catalog": str(tiny_catalog / "catalog.csv")}
    build_test_index(tiny_embedder, catalog_rows, tmp_path / "index", source=source, store=url)
    env = {"PHONESIM_API_KEY": API_KEY}
    query, headers = multipart({"image": ("p.jpg", image)})
    with (
        running_server(tiny_checkpoint, None, tmp_path, "--store", url, *SERVER_ARGS,
                       env=env, name="pg-a") as a,
        running_server(tiny_checkpoint, None, tmp_path, "--store", url, *SERVER_ARGS,
                       env=env, name="pg-b") as b,
    ):  # fmt: skip
        assert add(a, "pg-1", image) == 201
        wait_for("pg-1 on every worker", lambda: seen_by_all([a, b], "/v1/items/pg-1", 200),
                 timeout=VISIBLE_WITHIN_S)  # fmt: skip
        pg_ctl(pg, "stop")
        try:
            # Every worker follows the store on its own: wait until each has noticed.
            for server in (a, b):
                wait_for("the outage seen by every worker", lambda s=server: outage_seen(s))
            status, response_headers, body = a.request(
                "POST", "/v1/items", *multipart_add("pg-2", image)
            )
            assert status == 503, body[:300]
            assert json.loads(body)["error"]["code"] == "store_unavailable"
            assert int(response_headers["retry-after"]) >= 1
            for server in (a, b):  # reads go on from the last state
                status, result = server.json("POST", "/v1/search?k=5", body=query, headers=headers)
                assert status == 200 and result["neighbors"]
                assert server.request("GET", "/v1/items/pg-1")[0] == 200
                ready = replica(server)
                assert ready["http"] == 200 and ready["status"] == "degraded"
                assert ready["replica"]["behind_seconds"] > 0
            metrics = a.request("GET", "/metrics")[2].decode()
            assert _counter(metrics, "phonesim_store_up") == 0
        finally:
            pg_ctl(pg, "start")
        wait_for("writes again", lambda: add(b, "pg-2", image) in (201, 409), timeout=60)
        wait_for(
            "pg-2 on every worker",
            lambda: seen_by_all([a, b], "/v1/items/pg-2", 200),
            timeout=VISIBLE_WITHIN_S + 5,
        )  # fmt: skip  (a follow tick after reconnecting)
        assert replica(a)["status"] == "ready"


def multipart_add(item_id: str, image: bytes) -> tuple[bytes, dict[str, str]]:
    body, headers = multipart({"image": ("p.jpg", image), "id": item_id})
    return body, {**headers, **KEY}
