"""HTTP load for the server benchmark: drive ``POST`` requests from a separate process at a
fixed concurrency and summarise latencies (p50/p95/p99), requests/s and errors."""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from urllib3 import encode_multipart_formdata

REPO = Path(__file__).resolve().parents[1]
# The demo checkpoint and index the server benchmarks build when given none: one folder, reused
# by every later run (a new temp folder per run left a demo behind each time).
DEMO_WORKDIR = Path(tempfile.gettempdir()) / "phonesim-bench-demo"


def server_env() -> dict[str, str]:
    """The environment of the processes a server benchmark starts: the repository on
    PYTHONPATH, and no API key (its servers are read-only: the load must not change the index)."""
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}
    env.pop("PHONESIM_API_KEY", None)
    return env


def check_demo_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2) for ``--checkpoint`` without ``--index`` or the other way."""
    if bool(args.checkpoint) != bool(args.index):
        parser.error("give both --checkpoint and --index, or neither (the demo's)")


def demo_inputs(
    checkpoint: str | None, index: str | None, workdir: str | None
) -> tuple[Path, Path]:
    """``--checkpoint`` and ``--index``, or the demo's (built into ``workdir``, default
    :data:`DEMO_WORKDIR`, the first time). Absolute: the server and the demo run from the
    repository, not from where the script was started."""
    if checkpoint and index:
        return Path(checkpoint).resolve(), Path(index).resolve()
    work = Path(workdir).resolve() if workdir else DEMO_WORKDIR
    ckpt, idx = work / "checkpoint", work / "index"
    if not (idx / "manifest.json").is_file() or not (ckpt / "config.json").is_file():
        cmd = [sys.executable, "-m", "phonesim", "demo", "--workdir", str(work), "--no-serve"]
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, check=False, cwd=REPO, env=server_env())
        if done.returncode != 0:  # the demo said why above; a traceback would bury it
            sys.exit(f"the demo could not be built in {work} (exit {done.returncode})")
    return ckpt, idx


def multipart_form(fields: dict[str, tuple[str, bytes] | str]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body and its headers: ``(filename, bytes)`` values are files."""
    body, content_type = encode_multipart_formdata(fields)
    return body, {"Content-Type": content_type}


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    """One ``image`` file field, as the load generators post it: (body, content type)."""
    body, headers = multipart_form({"image": (name, data)})
    return body, headers["Content-Type"]


def _drive(port: int, bodies: list, path: str, concurrency: int, duration: float, out) -> None:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    stop_at = start + duration

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = w
        mine, bad = [], []
        while time.perf_counter() < stop_at:
            body, ctype = bodies[i % len(bodies)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    mine.append(time.perf_counter() - t0)
                else:
                    bad.append(f"HTTP {r.status}")
            except (OSError, http.client.HTTPException) as exc:  # count it, keep driving
                bad.append(type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    out.put({"latencies": latencies, "errors": errors, "elapsed": elapsed})


def load(port: int, bodies: list, path: str, concurrency: int, duration: float) -> dict:
    """Drive the server from a separate process; raw latencies (s), errors and elapsed time."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_drive, args=(port, bodies, path, concurrency, duration, q))
    proc.start()
    try:
        result = q.get(timeout=duration + 120)
    finally:  # an interrupt too: the driver would block for ever on the unread queue
        if proc.is_alive():
            proc.terminate()
        proc.join(30)
        q.cancel_join_thread()
    return result


def summarize(concurrency: int, runs: list[dict]) -> dict:
    lat = sorted(x for r in runs for x in r["latencies"])
    errors = [e for r in runs for e in r["errors"]]
    elapsed = sum(r["elapsed"] for r in runs)

    def pct(p: float) -> float | None:
        if not lat:
            return None  # no request: null in the JSON line (NaN is not JSON)
        return round(1000 * lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))], 2)

    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": round(elapsed, 2),
        "rps": round(len(lat) / elapsed, 2) if elapsed else 0.0,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


if __name__ == "__main__":  # `python scripts/<this>.py --help` had printed nothing, exit 0
    raise SystemExit(f"{__file__}: a module the benchmark scripts import, not a command")
