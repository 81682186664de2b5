"""Benchmark the lookup server end to end: gunicorn subprocess, load from another process.

Builds the demo (``phonesim demo --no-serve``) in --workdir unless --checkpoint/--index are
given, measures the in-process time to decode, embed and search one image, starts
``phonesim serve``, drives ``POST /v1/search`` at each concurrency for a fixed time and prints
p50/p95/p99 latency, requests/s and errors, then ONE JSON line with every figure.

    python scripts/bench_server.py [--workdir DIR | --checkpoint CKPT --index INDEX]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Targets from the issue.
TARGET_P50_RATIO = 1.5  # p50 at concurrency 1 <= 1.5 x in-process time
TARGET_RPS_RATIO = 1.5  # requests/s at concurrency 8 >= 1.5 x concurrency 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint folder (with --index; default: the demo's)")
    p.add_argument("--index", help="index folder built from --checkpoint")
    p.add_argument("--workdir", help="demo folder to build or reuse (default: a temp folder)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the measurements")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up load")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument(
        "--torch-threads", type=int, default=None, help="per worker (default: cores / workers)"
    )
    p.add_argument("--baseline-runs", type=int, default=40)
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=_env())


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def resolve_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.checkpoint or args.index:
        if not (args.checkpoint and args.index):
            sys.exit("give both --checkpoint and --index, or neither")
        return Path(args.checkpoint), Path(args.index)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="phonesim-bench-"))
    ckpt, index = work / "checkpoint", work / "index"
    if not (index / "manifest.json").is_file() or not (ckpt / "config.json").is_file():
        run([sys.executable, "-m", "phonesim", "demo", "--workdir", str(work), "--no-serve"])
    return ckpt, index


def query_images(index: Path, n: int = 16) -> list[tuple[str, bytes]]:
    """A spread of catalog images (every len/n-th row of the catalog the index came from)."""
    from index import read_catalog_csv, read_manifest

    catalog = read_manifest(index).source.get("catalog")
    if not catalog:
        sys.exit(f"{index}: manifest names no catalog CSV to take query images from")
    rows = list(read_catalog_csv(catalog).values())
    step = max(1, len(rows) // n)
    picked = [r["image"] for r in rows[::step][:n]]
    return [(Path(p).name, Path(p).read_bytes()) for p in picked]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


# -- in-process baseline ------------------------------------------------------------------------
class InProcess:
    """Decode + embed + search of one image in this process: what a request must add to.

    Runs on one worker thread, as the server's model does: on a busy machine, torch's OpenMP
    forward called from the main thread was measured several times slower than from another.
    """

    def __init__(self, ckpt: Path, index: Path, images: list[tuple[str, bytes]], k: int) -> None:
        from embedder.inference import Embedder
        from index import CatalogIndex

        self.embedder = Embedder.from_checkpoint(ckpt)
        self.index = CatalogIndex.open(index, readonly=True)
        self.images, self.k = images, k
        self.times: list[float] = []
        self._i = 0
        self._thread = ThreadPoolExecutor(1)  # one thread, like the server's batcher
        self.measure(5, keep=False)  # warm-up

    def _loop(self, runs: int, keep: bool) -> None:
        from embedder.images import load_image

        for _ in range(runs):
            data = self.images[self._i % len(self.images)][1]
            self._i += 1
            t0 = time.perf_counter()
            img = load_image(data, min_side=self.embedder.decode_side)
            out = self.embedder.embed_images([img])
            self.index.search(out.embeddings[0], self.k)
            if keep:
                self.times.append((time.perf_counter() - t0) * 1000)

    def measure(self, runs: int, keep: bool = True) -> None:
        self._thread.submit(self._loop, runs, keep).result()

    def summary(self, torch_threads: int) -> dict:
        return {
            "p50_ms": round(statistics.median(self.times), 2),
            "mean_ms": round(statistics.fmean(self.times), 2),
            "min_ms": round(min(self.times), 2),
            "runs": len(self.times),
            "torch_threads": torch_threads,
        }

    def close(self) -> None:
        self._thread.shutdown()
        self.index.close()


# -- load generator (runs in its own process) -----------------------------------------------------
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
    result = q.get(timeout=duration + 120)
    proc.join(30)
    return result


def summarize(concurrency: int, runs: list[dict]) -> dict:
    lat = sorted(x for r in runs for x in r["latencies"])
    errors = [e for r in runs for e in r["errors"]]
    elapsed = sum(r["elapsed"] for r in runs)

    def pct(p: float) -> float:
        if not lat:
            return float("nan")
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
        "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else float("nan"),
    }


# -- server ---------------------------------------------------------------------------------------
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


def batch_stats(port: int) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    text = get(port, "/metrics")[1].decode()
    s = re.search(r"^phonesim_model_batch_size_sum (\S+)$", text, re.M)
    c = re.search(r"^phonesim_model_batch_size_count (\S+)$", text, re.M)
    return (float(s.group(1)) if s else 0.0, float(c.group(1)) if c else 0.0)


def start_server(ckpt: Path, index: Path, port: int, args: argparse.Namespace, log: Path):
    cmd = [
        sys.executable, "-m", "phonesim", "serve",
        "--checkpoint", str(ckpt), "--index", str(index), "--port", str(port),
        "--workers", str(args.workers), "--threads", str(args.threads),
        "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
    ]  # fmt: skip
    if args.torch_threads:
        cmd += ["--torch-threads", str(args.torch_threads)]
    print("$", " ".join(cmd), flush=True)
    env = {k: v for k, v in _env().items() if k != "PHONESIM_API_KEY"}
    with log.open("wb") as fh:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if get(port, "/readyz")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.25)
    proc.kill()
    sys.exit(f"server not ready within 180 s:\n{log.read_text()[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt, index = resolve_inputs(args)
    images = query_images(index)
    bodies = [multipart(name, data) for name, data in images]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch_threads = args.torch_threads or max(1, (cores or 1) // args.workers)

    from server.serve import configure_threads

    configure_threads(torch_threads)  # as each server worker does by default
    inproc = InProcess(ckpt, index, images, args.k)
    port = free_port()
    rounds = max(1, args.rounds)
    raw: dict[int, list[dict]] = {c: [] for c in args.concurrency}
    batches: dict[int, list[float]] = {c: [0.0, 0.0] for c in args.concurrency}
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        proc = start_server(ckpt, index, port, args, log)
        path = f"/v1/search?k={args.k}"
        try:
            print(f"warm-up {args.warmup:g} s at concurrency {max(args.concurrency)}", flush=True)
            load(port, bodies, path, max(args.concurrency), args.warmup)
            # Rounds alternate the measurements, so that the load of a shared machine weighs
            # on the baseline and on each concurrency alike.
            for r in range(rounds):
                inproc.measure(max(1, args.baseline_runs // rounds))
                for c in args.concurrency:
                    s0, n0 = batch_stats(port)
                    res = load(port, bodies, path, c, args.duration / rounds)
                    s1, n1 = batch_stats(port)
                    batches[c][0] += s1 - s0
                    batches[c][1] += n1 - n0
                    raw[c].append(res)
                    part = summarize(c, [res])
                    print(
                        f"  round {r + 1}/{rounds} concurrency {c}: {part['rps']} req/s, "
                        f"p50 {part['p50_ms']} ms, errors {part['errors']}",
                        flush=True,
                    )
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            inproc.close()

    baseline = inproc.summary(torch_threads)
    print(
        f"in-process decode + embed + search: p50 {baseline['p50_ms']} ms, "
        f"mean {baseline['mean_ms']} ms ({baseline['runs']} runs)",
        flush=True,
    )
    results = {}
    for c in args.concurrency:
        res = summarize(c, raw[c])
        s_sum, n_sum = batches[c]
        res["mean_batch_size"] = round(s_sum / n_sum, 2) if n_sum else None
        results[c] = res
        print(
            f"concurrency {c:>2}: {res['requests']:>5} requests, {res['errors']} errors, "
            f"{res['rps']:7.2f} req/s, p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms, "
            f"p99 {res['p99_ms']} ms, mean batch {res['mean_batch_size']}",
            flush=True,
        )

    lo, hi = min(args.concurrency), max(args.concurrency)
    p50_ratio = round(results[lo]["p50_ms"] / baseline["p50_ms"], 3)
    rps_ratio = round(results[hi]["rps"] / results[lo]["rps"], 3) if results[lo]["rps"] else None
    errors = sum(r["errors"] for r in results.values())
    targets = {
        "zero_errors": errors == 0,
        f"p50_c{lo}_le_{TARGET_P50_RATIO}x_inprocess": p50_ratio <= TARGET_P50_RATIO,
        f"rps_c{hi}_ge_{TARGET_RPS_RATIO}x_c{lo}": bool(
            rps_ratio and rps_ratio >= TARGET_RPS_RATIO
        ),
    }
    print(
        f"p50 c{lo} / in-process = {p50_ratio} (target <= {TARGET_P50_RATIO}); "
        f"req/s c{hi} / c{lo} = {rps_ratio} (target >= {TARGET_RPS_RATIO}); errors {errors}",
        flush=True,
    )
    summary = {
        "checkpoint": str(ckpt),
        "index": str(index),
        "cores": cores,
        "workers": args.workers,
        "threads": args.threads,
        "torch_threads": torch_threads,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "duration_s": args.duration,
        "rounds": rounds,
        "k": args.k,
        "baseline_inprocess": baseline,
        "load": {f"c{c}": r for c, r in results.items()},
        f"p50_ratio_c{lo}_over_inprocess": p50_ratio,
        f"rps_ratio_c{hi}_over_c{lo}": rps_ratio,
        "errors": errors,
        "targets": targets,
        "targets_met": all(targets.values()),
    }
    print(json.dumps(summary), flush=True)
    return 1 if args.strict and not summary["targets_met"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
