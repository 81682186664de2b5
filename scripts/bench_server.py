"""Benchmark the lookup server end to end: gunicorn subprocess, load from another process.

Builds the demo (``phonesim demo --no-serve``) in --workdir unless --checkpoint/--index are
given, measures the in-process time to decode, embed and search one image, starts
``phonesim serve``, drives ``POST /v1/search`` at each concurrency for a fixed time and prints
p50/p95/p99 latency, requests/s and errors, then ONE JSON line with every figure.

``--runtime torch onnx`` measures both runtimes in one run (one server each, the rounds
alternating between them so the load of a shared machine weighs on both alike) and compares
them: c1 p50 with onnx <= 0.6x torch's, c8 throughput >= 1.8x torch's, no errors.

``--read-text`` adds, for each runtime, a server that reads the text on the photos it predicts
below ``--text-gate`` (``serve --read-text``, measured in the same rounds as
``<runtime>+text``) and prints what the reading costs: its c1 p50 and mean and its c8
requests/s over the plain server's, and the share of photos it read (no target: the price of
an opt-in).

    python scripts/bench_server.py [--workdir DIR | --checkpoint CKPT --index INDEX]
        [--runtime torch onnx]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from http_load import (
    DEMO_WORKDIR,
    REPO,
    check_demo_inputs,
    demo_inputs,
    free_port,
    get,
    load,
    multipart,
    server_env,
    summarize,
)

from common.argtypes import non_negative_float, positive_float, positive_int
from common.errors import reporting_errors
from common.machine import run_context
from embedder.knn_options import gate
from embedder.text_cues import DEFAULT_GATE as TEXT_GATE

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")

# Targets from the issues.
TARGET_P50_RATIO = 1.5  # p50 at concurrency 1 <= 1.5 x in-process time
TARGET_RPS_RATIO = 1.5  # requests/s at concurrency 8 >= 1.5 x concurrency 1
TARGET_ONNX_P50 = 0.6  # c1 p50 with onnx <= 0.6 x torch's
TARGET_ONNX_RPS = 1.8  # c8 requests/s with onnx >= 1.8 x torch's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint folder (with --index; default: the demo's)")
    p.add_argument("--index", help="index folder built from --checkpoint")
    p.add_argument("--workdir", help=f"demo folder to build or reuse (default {DEMO_WORKDIR})")
    p.add_argument(
        "--runtime",
        nargs="+",
        choices=RUNTIMES,
        default=["auto"],
        help="one server per runtime, measured in the same rounds (default auto)",
    )
    p.add_argument("--device", help="model device of the servers (default: theirs)")
    p.add_argument(
        "--duration", type=positive_float, default=15.0, help="seconds per concurrency (default 15)"
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="alternations of the measurements (default 3)",
    )
    p.add_argument(
        "--warmup", type=non_negative_float, default=3.0, help="seconds of warm-up load (default 3)"
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        nargs="+",
        default=[1, 8],
        help="client concurrencies to measure (default 1 8)",
    )
    p.add_argument("--k", type=positive_int, default=10, help="neighbours per search (default 10)")
    p.add_argument("--workers", type=positive_int, default=1, help="server workers (default 1)")
    p.add_argument(
        "--threads", type=positive_int, default=8, help="request threads per worker (default 8)"
    )
    p.add_argument(
        "--max-batch", type=positive_int, default=16, help="server micro-batch size (default 16)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=10.0,
        help="server micro-batch wait (default 10)",
    )
    p.add_argument(
        "--model-threads", type=int, default=None, help="per worker (default: cores / workers)"
    )
    p.add_argument(
        "--baseline-runs",
        type=positive_int,
        default=40,
        help="single in-process searches timed as the baseline, in all, split over the rounds "
        "(at least one a round; default 40)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument(
        "--batch-search",
        action="store_true",
        help="instead: --batch-images catalog images through /v1/search/batch against single "
        "requests at --batch-single-concurrency (throughputs, ratio, identical neighbours)",
    )
    p.add_argument(
        "--batch-images",
        type=positive_int,
        default=256,
        help="images sent per --batch-search measurement (default 256)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per batch request (default 32)"
    )
    p.add_argument(
        "--batch-concurrency", type=positive_int, default=1, help="batch requests at once"
    )
    p.add_argument(
        "--batch-single-concurrency",
        type=positive_int,
        default=8,
        help="concurrency of the single-image requests compared with batches (default 8)",
    )
    p.add_argument(
        "--read-text",
        action="store_true",
        help="also a server per runtime that reads the text on the photos it is unsure of "
        "(needs phonesim[ocr]); prints its latency and throughput over the plain server's",
    )
    p.add_argument(
        "--text-gate",
        type=gate,
        default=TEXT_GATE,
        help=f"the text server's --text-gate (default {TEXT_GATE:g}, serve's; 1 reads every photo)",
    )
    p.add_argument(
        "--request-read-text",
        choices=("auto", "always", "never"),
        help="the read_text option the text server's requests carry (default: none sent, "
        "which is auto); e.g. never prices a reading server asked to skip the reading",
    )
    args = p.parse_args(argv)
    check_demo_inputs(p, args)
    if args.text_gate != TEXT_GATE and not args.read_text:
        p.error("--text-gate needs --read-text")
    if args.request_read_text and not args.read_text:
        p.error("--request-read-text needs --read-text")
    return args


def query_images(index: Path, n: int = 16) -> list[tuple[str, bytes]]:
    """A spread of catalog images (every len/n-th row of the catalog the index came from;
    repeated when the catalog has fewer than n)."""
    from index import read_catalog_csv, read_manifest

    catalog = read_manifest(index).source.get("catalog")
    if not catalog:
        sys.exit(f"{index}: manifest names no catalog CSV to take query images from")
    rows = list(read_catalog_csv(catalog).values())
    step = max(1, len(rows) // n)
    picked = [r["image"] for r in rows[::step][:n]]
    picked = (picked * (n // max(1, len(picked)) + 1))[:n]
    return [(Path(p).name, Path(p).read_bytes()) for p in picked]


# -- in-process baseline ------------------------------------------------------------------------
class InProcess:
    """Decode + embed + search of one image in this process: what a request must add to.

    Runs on one worker thread, as the server's model does: on a busy machine, torch's OpenMP
    forward called from the main thread was measured several times slower than from another.
    """

    def __init__(
        self,
        ckpt: Path,
        index: Path,
        images: list[tuple[str, bytes]],
        k: int,
        args: argparse.Namespace,
        runtime: str,
        threads: int,
    ) -> None:
        from embedder.inference import Embedder
        from index import CatalogIndex

        self.embedder = Embedder.from_checkpoint(ckpt, runtime, args.device, threads)
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

    def summary(self) -> dict:
        return {
            "p50_ms": round(statistics.median(self.times), 2),
            "mean_ms": round(statistics.fmean(self.times), 2),
            "min_ms": round(min(self.times), 2),
            "runs": len(self.times),
            "engine": self.embedder.engine.describe(),
        }

    def close(self) -> None:
        self._thread.shutdown()
        self.index.close()


# -- server ---------------------------------------------------------------------------------------
def batch_stats(port: int) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    text = get(port, "/metrics")[1].decode()
    s = re.search(r"^phonesim_model_batch_size_sum (\S+)$", text, re.M)
    c = re.search(r"^phonesim_model_batch_size_count (\S+)$", text, re.M)
    return (float(s.group(1)) if s else 0.0, float(c.group(1)) if c else 0.0)


def text_read_share(port: int) -> float | None:
    """The share of the photos a text-reading server read, of all it predicted (warm-up
    included), from its phonesim_text_photos counter; None before any."""
    text = get(port, "/metrics")[1].decode()
    counts = dict(re.findall(r'^phonesim_text_photos_total\{read="(yes|no)"\} (\S+)$', text, re.M))
    total = sum(float(v) for v in counts.values())
    return round(float(counts.get("yes", 0.0)) / total, 4) if total else None


def start_server(
    ckpt: Path, index: Path, port: int, args: argparse.Namespace, variant: str, log: Path
):
    """``variant``: a runtime, or ``<runtime>+text`` for a server that reads text."""
    runtime, _, text = variant.partition("+")
    cmd = [
        sys.executable, "-m", "phonesim", "serve",
        "--checkpoint", str(ckpt), "--index", str(index), "--port", str(port),
        "--workers", str(args.workers), "--threads", str(args.threads),
        "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
        "--runtime", runtime,
    ]  # fmt: skip
    if text:
        cmd += ["--read-text"]
        cmd += ["--text-gate", str(args.text_gate)]
    if args.model_threads:
        cmd += ["--model-threads", str(args.model_threads)]
    if args.device:
        cmd += ["--device", args.device]
    print("$", " ".join(cmd), flush=True)
    env = server_env()
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


def ratio(a: float | None, b: float | None, digits: int) -> float | None:
    """a / b rounded, or None (null in the JSON line) when a run answered nothing."""
    return round(a / b, digits) if a is not None and b else None


def compare_runtimes(results: dict[str, dict], lo: int, hi: int) -> dict:
    """onnx against torch from the same run: c1 p50 ratio and c8 throughput ratio."""
    torch_, onnx = results["torch"]["load"], results["onnx"]["load"]
    p50 = ratio(onnx[f"c{lo}"]["p50_ms"], torch_[f"c{lo}"]["p50_ms"], 3)
    rps = ratio(onnx[f"c{hi}"]["rps"], torch_[f"c{hi}"]["rps"], 3)
    return {
        f"onnx_over_torch_p50_c{lo}": p50,
        f"onnx_over_torch_rps_c{hi}": rps,
        "targets": {
            f"onnx_p50_c{lo}_le_{TARGET_ONNX_P50}x_torch": p50 is not None
            and p50 <= TARGET_ONNX_P50,
            f"onnx_rps_c{hi}_ge_{TARGET_ONNX_RPS}x_torch": rps is not None
            and rps >= TARGET_ONNX_RPS,
        },
    }


def read_text_cost(
    results: dict[str, dict], texts: dict[str, str], shares: dict, lo: int, hi: int
) -> dict:
    """Each text-reading server against the plain one of its runtime, from the same run, and
    the share of the photos its gate read."""
    out = {}
    for plain, text in texts.items():
        a, b = results[plain]["load"], results[text]["load"]
        p50 = ratio(b[f"c{lo}"]["p50_ms"], a[f"c{lo}"]["p50_ms"], 2)
        mean = ratio(b[f"c{lo}"]["mean_ms"], a[f"c{lo}"]["mean_ms"], 2)
        rps = ratio(b[f"c{hi}"]["rps"], a[f"c{hi}"]["rps"], 3)
        out[plain] = {
            f"text_over_plain_p50_c{lo}": p50,
            f"text_over_plain_mean_c{lo}": mean,
            f"text_over_plain_rps_c{hi}": rps,
            "share_read": shares.get(text),
        }
        print(
            f"[{text}] reading text, same run: c{lo} p50 x{p50} the plain server's "
            f"({b[f'c{lo}']['p50_ms']} ms against {a[f'c{lo}']['p50_ms']} ms), mean x{mean} "
            f"({b[f'c{lo}']['mean_ms']} ms against {a[f'c{lo}']['mean_ms']} ms), c{hi} req/s "
            f"x{rps}; photos read {shares.get(text)}",
            flush=True,
        )
    return out


def runtime_summary(
    runtime: str, inproc: InProcess, raw: dict[int, list[dict]], batches: dict, lo: int, hi: int
) -> dict:
    """Figures of one runtime's server, printed as they are read."""
    baseline = inproc.summary()
    print(
        f"[{runtime}] in-process decode + embed + search on {baseline['engine']}: "
        f"p50 {baseline['p50_ms']} ms, mean {baseline['mean_ms']} ms ({baseline['runs']} runs)",
        flush=True,
    )
    results = {}
    for c, runs in raw.items():
        res = summarize(c, runs)
        s_sum, n_sum = batches[c]
        res["mean_batch_size"] = round(s_sum / n_sum, 2) if n_sum else None
        results[c] = res
        print(
            f"[{runtime}] concurrency {c:>2}: {res['requests']:>5} requests, {res['errors']} "
            f"errors, {res['rps']:7.2f} req/s, p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms, "
            f"p99 {res['p99_ms']} ms, mean batch {res['mean_batch_size']}",
            flush=True,
        )
    p50_ratio = round(results[lo]["p50_ms"] / baseline["p50_ms"], 3)
    rps_ratio = round(results[hi]["rps"] / results[lo]["rps"], 3) if results[lo]["rps"] else None
    errors = sum(r["errors"] for r in results.values())
    print(
        f"[{runtime}] p50 c{lo} / in-process = {p50_ratio} (target <= {TARGET_P50_RATIO}); "
        f"req/s c{hi} / c{lo} = {rps_ratio} (target >= {TARGET_RPS_RATIO}); errors {errors}",
        flush=True,
    )
    return {
        "baseline_inprocess": baseline,
        "load": {f"c{c}": r for c, r in results.items()},
        f"p50_ratio_c{lo}_over_inprocess": p50_ratio,
        f"rps_ratio_c{hi}_over_c{lo}": rps_ratio,
        "errors": errors,
        "targets": {
            f"p50_c{lo}_le_{TARGET_P50_RATIO}x_inprocess": p50_ratio <= TARGET_P50_RATIO,
            f"rps_c{hi}_ge_{TARGET_RPS_RATIO}x_c{lo}": bool(
                rps_ratio and rps_ratio >= TARGET_RPS_RATIO
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtimes = list(dict.fromkeys(args.runtime))
    if args.read_text:  # each runtime beside a server of it that reads text
        runtimes = [v for rt in runtimes for v in (rt, f"{rt}+text")]
    ckpt, index = demo_inputs(args.checkpoint, args.index, args.workdir)
    if args.batch_search:
        from batch_load import batch_search

        def start(port: int, log: Path) -> subprocess.Popen:
            return start_server(ckpt, index, port, args, args.runtime[0], log)

        return batch_search(args, query_images(index, args.batch_images), start)
    images = query_images(index)
    bodies = [multipart(name, data) for name, data in images]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model_threads = args.model_threads or max(1, (cores or 1) // args.workers)

    from server.serve import configure_threads

    configure_threads(model_threads)  # as each server worker does by default
    # One in-process baseline per runtime: a text server shares its plain twin's, so the
    # model loads once and both servers are compared with the same baseline.
    baselines = {
        plain: InProcess(ckpt, index, images, args.k, args, plain, model_threads)
        for plain in dict.fromkeys(rt.partition("+")[0] for rt in runtimes)
    }
    inproc = {rt: baselines[rt.partition("+")[0]] for rt in runtimes}
    ports = {rt: free_port() for rt in runtimes}
    rounds = max(1, args.rounds)
    raw = {rt: {c: [] for c in args.concurrency} for rt in runtimes}
    batches = {rt: {c: [0.0, 0.0] for c in args.concurrency} for rt in runtimes}
    paths = {rt: f"/v1/search?k={args.k}" for rt in runtimes}
    for rt in runtimes:
        if "+text" in rt and args.request_read_text:
            paths[rt] += f"&read_text={args.request_read_text}"
    procs = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for rt in runtimes:
                log = Path(tmp) / f"server-{rt}.log"
                procs[rt] = start_server(ckpt, index, ports[rt], args, rt, log)
            for rt in runtimes:
                print(f"[{rt}] warm-up {args.warmup:g} s at concurrency {max(args.concurrency)}")
                load(ports[rt], bodies, paths[rt], max(args.concurrency), args.warmup)
            # Rounds alternate the measurements (runtimes, baseline, concurrencies), so that
            # the load of a shared machine weighs on each alike.
            for r in range(rounds):
                for rt in runtimes:
                    if "+text" not in rt:  # measured once per round, for both twins
                        inproc[rt].measure(max(1, args.baseline_runs // rounds))
                    for c in args.concurrency:
                        s0, n0 = batch_stats(ports[rt])
                        res = load(ports[rt], bodies, paths[rt], c, args.duration / rounds)
                        s1, n1 = batch_stats(ports[rt])
                        batches[rt][c][0] += s1 - s0
                        batches[rt][c][1] += n1 - n0
                        raw[rt][c].append(res)
                        part = summarize(c, [res])
                        print(
                            f"  round {r + 1}/{rounds} [{rt}] concurrency {c}: {part['rps']} "
                            f"req/s, p50 {part['p50_ms']} ms, errors {part['errors']}",
                            flush=True,
                        )
            shares = {rt: text_read_share(ports[rt]) for rt in runtimes if "+text" in rt}
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for baseline in baselines.values():
                baseline.close()

    lo, hi = min(args.concurrency), max(args.concurrency)
    results = {rt: runtime_summary(rt, inproc[rt], raw[rt], batches[rt], lo, hi) for rt in runtimes}
    targets = {"zero_errors": all(r["errors"] == 0 for r in results.values())}
    for rt, r in results.items():
        if "+text" not in rt:  # reading text is priced, not held to the model's targets
            targets.update({f"{rt}_{name}": ok for name, ok in r["targets"].items()})
    summary = {
        "checkpoint": str(ckpt),
        "index": str(index),
        "cores": cores,
        "workers": args.workers,
        "threads": args.threads,
        "model_threads": model_threads,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "duration_s": args.duration,
        "rounds": rounds,
        "k": args.k,
        "runtimes": results,
    }
    texts = {rt: f"{rt}+text" for rt in runtimes if f"{rt}+text" in results}
    if texts:
        summary["read_text_cost"] = read_text_cost(results, texts, shares, lo, hi)
        summary["text_gate"] = args.text_gate
        summary["request_read_text"] = args.request_read_text
    if {"torch", "onnx"} <= set(runtimes):
        comparison = compare_runtimes(results, lo, hi)
        targets.update(comparison.pop("targets"))
        summary["onnx_vs_torch"] = comparison
        print(
            f"onnx vs torch, same run: c{lo} p50 x{comparison[f'onnx_over_torch_p50_c{lo}']} "
            f"(target <= {TARGET_ONNX_P50}), c{hi} req/s "
            f"x{comparison[f'onnx_over_torch_rps_c{hi}']} (target >= {TARGET_ONNX_RPS})",
            flush=True,
        )
    summary["targets"] = targets
    summary["targets_met"] = all(targets.values())
    print(json.dumps({**summary, "context": run_context()}), flush=True)
    return 1 if args.strict and not summary["targets_met"] else 0


if __name__ == "__main__":
    raise SystemExit(reporting_errors(Path(__file__).name, main))
