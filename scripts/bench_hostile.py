"""Good clients beside hostile ones: does the server keep answering, and how fast?

Starts ``phonesim serve`` on 127.0.0.1 (the demo's checkpoint and index unless --checkpoint and
--index are given), then runs two phases of --duration seconds each:

1. alone: --good clients (default 8) post a photo to ``/v1/search`` back to back;
2. attack: the same good clients beside --slow connections (default 64; half send their
   headers one line every --slow-interval seconds, half send the headers and then the body a
   few bytes at a time) and --fuzz-clients clients posting the seeded fuzzed files of
   tests/imagefuzz.py and hostile JSON bodies.

Prints the good clients' errors and latency in each phase, the p99 ratio attack/alone (target
<= 2), the number of 5xx answers to anyone (target 0) and the worker's peak RSS in each phase,
then ONE JSON line with every figure. Everything runs over loopback; every process it starts
is stopped by PID.

    python scripts/bench_hostile.py [--duration 60] [--checkpoint CKPT --index INDEX]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from http_load import (
    DEMO_WORKDIR,
    REPO,
    check_demo_inputs,
    demo_inputs,
    free_port,
    multipart_form,
    server_env,
)

from common.argtypes import non_negative_int, positive_float, positive_int
from common.errors import reporting_errors
from common.machine import run_context

sys.path.insert(0, str(REPO))  # tests.imagefuzz: the fuzzed files the test suite uses

TARGET_P99_RATIO = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint folder (with --index; default: the demo's)")
    p.add_argument("--index", help="index folder built from --checkpoint")
    p.add_argument("--workdir", help=f"demo folder to build or reuse (default {DEMO_WORKDIR})")
    p.add_argument(
        "--duration", type=positive_float, default=60.0, help="seconds per phase (default 60)"
    )
    p.add_argument("--good", type=positive_int, default=8, help="good clients (default 8)")
    p.add_argument(
        "--slow", type=non_negative_int, default=64, help="slow connections (default 64)"
    )
    p.add_argument(
        "--slow-interval",
        type=positive_float,
        default=2.0,
        help="seconds between pieces (default 2)",
    )
    p.add_argument(
        "--fuzz-clients",
        type=non_negative_int,
        default=1,
        help="clients sending fuzzed requests (default 1)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=8, help="server request threads (default 8)"
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    check_demo_inputs(p, args)
    return args


def query_image(index: Path) -> bytes:
    from index import read_catalog_csv, read_manifest

    catalog = read_manifest(index).source.get("catalog")
    if not catalog:
        sys.exit(f"{index}: manifest names no catalog CSV to take a query image from")
    return Path(next(iter(read_catalog_csv(catalog).values()))["image"]).read_bytes()


# -- the server ----------------------------------------------------------------------------------
def start_server(ckpt: Path, index: Path, port: int, threads: int, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "phonesim", "serve", "--checkpoint", str(ckpt),
        "--index", str(index), "--port", str(port), "--threads", str(threads),
    ]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=server_env(), stdout=fh, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.25)
    stop(proc)
    sys.exit(f"server not ready within 180 s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRss(threading.Thread):
    """Samples the workers' resident memory every 100 ms; ``peak`` is the largest seen."""

    def __init__(self, server_pid: int) -> None:
        super().__init__(daemon=True)
        self.server_pid, self.peak, self._halt = server_pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            for pid in worker_pids(self.server_pid):
                self.peak = max(self.peak, rss_mb(pid))

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return round(self.peak, 1)


# -- the good clients (their own process, so the attack's threads do not slow their clock) ------
def _good_clients(port: int, image: bytes, clients: int, duration: float, out) -> None:
    body, headers = multipart_form({"image": ("phone.jpg", image)})
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/search?k=5", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                if status == 200:
                    latencies.append(ms)
                else:
                    errors.append(str(status))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"latencies": latencies, "errors": errors})


def good_phase(port: int, image: bytes, clients: int, duration: float) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_good_clients, args=(port, image, clients, duration, queue))
    proc.start()
    try:
        result = queue.get(timeout=duration + 120)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    lat = sorted(result["latencies"])
    errors = result["errors"]

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

    return {
        "requests": len(lat) + len(errors),
        "ok": len(lat),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:10],
        "server_errors": sum(1 for e in errors if e.isdigit() and int(e) >= 500),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": round(statistics.fmean(lat), 2) if lat else None,
        "rps": round(len(lat) / duration, 2),
    }


# -- the attack ----------------------------------------------------------------------------------
class Attack:
    """Slow connections and a stream of fuzzed requests until :meth:`stop`."""

    def __init__(self, port: int, slow: int, interval: float, fuzz_clients: int) -> None:
        self.port, self.interval = port, interval
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"slow_opened": 0, "slow_answered": 0, "fuzz_requests": 0, "fuzz_5xx": 0}
        self.fuzz_statuses: dict[str, int] = {}
        slow_threads = [
            threading.Thread(target=self._slow, args=(i % 2 == 0,), daemon=True)
            for i in range(slow)
        ]
        fuzz_threads = [
            threading.Thread(target=self._fuzz, args=(i,), daemon=True) for i in range(fuzz_clients)
        ]
        self.threads = slow_threads + fuzz_threads

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> dict:
        self.done.set()
        for t in self.threads:
            t.join(30)
        return {**self.counts, "fuzz_statuses": dict(sorted(self.fuzz_statuses.items()))}

    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def _slow(self, headers_only: bool) -> None:
        """Keep one slow connection open: trickle the headers (or the body) until answered."""
        while not self.done.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                self.done.wait(self.interval)
                continue
            self._count("slow_opened")
            pieces = (
                [b"X-Slow-%d: %s\r\n" % (i, b"a" * 20) for i in range(1000)]
                if headers_only
                else [b"\r\n"] + [b"0123456789" * 4] * 1000
            )
            head = b"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            if not headers_only:
                head += b"Content-Type: image/jpeg\r\nContent-Length: 40000\r\n"
            try:
                sock.sendall(head)
                for piece in pieces:
                    if self.done.wait(self.interval):
                        break
                    sock.sendall(piece)
                    if _answered(sock):
                        self._count("slow_answered")
                        break
            except OSError:
                self._count("slow_answered")  # closed by the server (its timeouts)
            finally:
                sock.close()

    def _fuzz(self, seed: int) -> None:
        from tests.imagefuzz import mutated_files

        bodies = hostile_bodies() + [
            ("POST", "/v1/search", *multipart_form({"image": (name, data)}))
            for name, data in mutated_files(30, seed)
        ]
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = 0
        while not self.done.is_set():
            method, path, body, headers = bodies[i % len(bodies)]
            i += 1
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = str(response.status)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            with self.lock:
                self.counts["fuzz_requests"] += 1
                self.fuzz_statuses[status] = self.fuzz_statuses.get(status, 0) + 1
                if status.isdigit() and int(status) >= 500:
                    self.counts["fuzz_5xx"] += 1
        conn.close()


def _answered(sock: socket.socket) -> bool:
    """Whether the server has answered (or closed) the connection, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) is not None
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def hostile_bodies() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """A few hostile JSON requests beside the fuzzed files."""
    js = {"Content-Type": "application/json"}
    deep = b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        ("POST", "/v1/search", deep, js),
        ("POST", "/v1/search", b'{"image": "AAAA", "filter": {"label": "\\ud800"}}', js),
        ("POST", "/v1/search", b'{"image": "AAAA", "k": ' + b"9" * 5000 + b"}", js),
        ("POST", "/v1/embed", b"\x00" * 1000, {"Content-Type": "image/png"}),
        ("GET", "/v1/items/" + "x" * 2000, b"", {}),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt, index = demo_inputs(args.checkpoint, args.index, args.workdir)
    image = query_image(index)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="phonesim-hostile-log-")) / "server.log"
    try:
        return run(args, ckpt, index, image, port, log)
    finally:
        shutil.rmtree(log.parent, ignore_errors=True)  # its tail is printed on a failed start


def run(
    args: argparse.Namespace, ckpt: Path, index: Path, image: bytes, port: int, log: Path
) -> int:
    """Both phases against a server of its own; prints the figures, returns the exit code."""
    server = start_server(ckpt, index, port, args.threads, log)
    try:
        good_phase(port, image, args.good, min(5.0, args.duration))  # warm-up
        sampler = PeakRss(server.pid)
        sampler.start()
        alone = good_phase(port, image, args.good, args.duration)
        alone["worker_peak_rss_mb"] = sampler.stop()
        print("alone:", json.dumps(alone), flush=True)

        sampler = PeakRss(server.pid)
        sampler.start()
        attack = Attack(port, args.slow, args.slow_interval, args.fuzz_clients)
        attack.start()
        time.sleep(min(args.slow_interval * 2, args.duration / 4))  # slow connections in place
        beside = good_phase(port, image, args.good, args.duration)
        hostile = attack.stop()
        beside["worker_peak_rss_mb"] = sampler.stop()
        print("attack:", json.dumps(beside), flush=True)
        print("attackers:", json.dumps(hostile), flush=True)
        alive = server.poll() is None
    finally:
        stop(server)
    # None (null in the JSON line) when a phase answered nothing: NaN and inf are not JSON.
    ratio = beside["p99_ms"] / alone["p99_ms"] if alone["p99_ms"] and beside["p99_ms"] else None
    server_errors = alone["server_errors"] + beside["server_errors"] + hostile["fuzz_5xx"]
    figures = {
        "benchmark": "hostile",
        "duration_s": args.duration,
        "good_clients": args.good,
        "slow_connections": args.slow,
        "good_errors_alone": alone["errors"],
        "good_errors_attack": beside["errors"],
        "p50_ms_alone": alone["p50_ms"],
        "p99_ms_alone": alone["p99_ms"],
        "p50_ms_attack": beside["p50_ms"],
        "p99_ms_attack": beside["p99_ms"],
        "p99_ratio": None if ratio is None else round(ratio, 3),
        "rps_alone": alone["rps"],
        "rps_attack": beside["rps"],
        "answers_5xx": server_errors,
        "fuzz_requests": hostile["fuzz_requests"],
        "fuzz_statuses": hostile["fuzz_statuses"],
        "slow_connections_opened": hostile["slow_opened"],
        "worker_peak_rss_mb_alone": alone["worker_peak_rss_mb"],
        "worker_peak_rss_mb_attack": beside["worker_peak_rss_mb"],
        "server_alive": alive,
        "target_p99_ratio": TARGET_P99_RATIO,
    }
    met = (
        figures["good_errors_attack"] == 0
        and server_errors == 0
        and ratio is not None
        and ratio <= TARGET_P99_RATIO
        and alive
    )
    figures["targets_met"] = met
    print(f"p99 under attack / alone: {figures['p99_ratio']} (target <= {TARGET_P99_RATIO})")
    print(json.dumps({**figures, "context": run_context()}), flush=True)
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
