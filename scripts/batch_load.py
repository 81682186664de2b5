"""Batch search against single requests, for ``bench_server.py --batch-search``: the same
images through ``POST /v1/search`` (one image a request, at a concurrency) and through
``POST /v1/search/batch`` (``size`` images a request), each driven from a separate process;
images/s of each and the neighbour ids of every image."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from http_load import free_port, multipart


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, ctype: str) -> dict:
    conn.request("POST", path, body=body, headers={"Content-Type": ctype})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
    return json.loads(data)


def _drive(port: int, mode: str, images: list, k: int, size: int, concurrency: int, out) -> None:
    """Every image once; ``out`` gets elapsed seconds, neighbour ids per image, errors."""
    local = threading.local()

    def conn() -> http.client.HTTPConnection:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        return local.conn

    if mode == "single":
        bodies = [multipart(name, data) for name, data in images]
        groups = [[i] for i in range(len(images))]

        def send(group: list[int]) -> list:
            body, ctype = bodies[group[0]]
            return [_post(conn(), f"/v1/search?k={k}", body, ctype)]
    else:
        b64 = [base64.b64encode(data).decode() for _, data in images]
        groups = [list(range(i, min(i + size, len(images)))) for i in range(0, len(images), size)]

        def send(group: list[int]) -> list:
            body = json.dumps({"queries": [{"image": b64[i]} for i in group], "k": k}).encode()
            return _post(conn(), "/v1/search/batch", body, "application/json")["results"]

    errors: list[str] = []
    neighbours: list = [None] * len(images)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for group, answers in zip(groups, pool.map(_guard(send, errors), groups), strict=True):
            for i, answer in zip(group, answers or [], strict=False):
                neighbours[i] = [n["id"] for n in answer.get("neighbors", [])] or None
    out.put({"elapsed": time.perf_counter() - t0, "neighbours": neighbours, "errors": errors})


def _guard(send, errors: list):
    def run(group: list[int]):
        try:
            return send(group)
        except (OSError, RuntimeError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            return None

    return run


def measure(
    port: int, mode: str, images: list, k: int, size: int = 1, concurrency: int = 1
) -> dict:
    """One pass over ``images`` (``mode`` ``single`` or ``batch``) from a separate process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_drive, args=(port, mode, images, k, size, concurrency, q))
    proc.start()
    result = q.get(timeout=600)
    proc.join(30)
    result["images_per_s"] = round(len(images) / result["elapsed"], 2)
    return result


TARGET_BATCH_RATIO = 1.5  # images/s through /v1/search/batch >= 1.5 x single requests


def batch_search(args: argparse.Namespace, images: list, start: Callable) -> int:
    """Single requests (baseline) and batch requests over the same images, alternating rounds
    on one server (``start(port, log)`` starts it); both throughputs, their ratio, identical
    neighbours, one JSON line."""
    n, size = len(images), args.batch_size
    single, batch = [], []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start(port, Path(tmp) / "server.log")
        try:
            measure(port, "single", images[:32], args.k, 1, args.batch_single_concurrency)
            measure(port, "batch", images[:64], args.k, size, args.batch_concurrency)  # warm-up
            for r in range(max(1, args.rounds)):
                single.append(
                    measure(port, "single", images, args.k, 1, args.batch_single_concurrency)
                )
                batch.append(measure(port, "batch", images, args.k, size, args.batch_concurrency))
                print(
                    f"  round {r + 1}: single {single[-1]['images_per_s']} images/s, batch "
                    f"{batch[-1]['images_per_s']} images/s",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)
    s_rate = round(n * len(single) / sum(x["elapsed"] for x in single), 2)
    b_rate = round(n * len(batch) / sum(x["elapsed"] for x in batch), 2)
    ratio = round(b_rate / s_rate, 3)
    pairs = [
        (a, b)
        for s, b_ in zip(single, batch, strict=True)
        for a, b in zip(s["neighbours"], b_["neighbours"], strict=True)
    ]
    same = sum(1 for a, b in pairs if a is not None and a == b)
    errors = sum(len(x["errors"]) for x in single + batch)
    print(
        f"{n} images, k={args.k}: single requests at concurrency "
        f"{args.batch_single_concurrency}: {s_rate} images/s; /v1/search/batch of {size} at "
        f"concurrency {args.batch_concurrency}: {b_rate} images/s; ratio {ratio} (target >= "
        f"{TARGET_BATCH_RATIO}); identical neighbours {same}/{len(pairs)}; errors {errors}",
        flush=True,
    )
    targets = {
        f"batch_ge_{TARGET_BATCH_RATIO}x_single": ratio >= TARGET_BATCH_RATIO,
        "identical_neighbours": same == len(pairs),
        "zero_errors": errors == 0,
    }
    summary = {
        "mode": "batch_search",
        "images": n,
        "k": args.k,
        "rounds": len(single),
        "batch_size": size,
        "batch_concurrency": args.batch_concurrency,
        "single_concurrency": args.batch_single_concurrency,
        "max_batch": args.max_batch,
        "runtime": args.runtime[0],
        "single_images_per_s": s_rate,
        "batch_images_per_s": b_rate,
        "batch_over_single": ratio,
        "identical_neighbours": same,
        "compared": len(pairs),
        "errors": errors,
        "targets": targets,
        "targets_met": all(targets.values()),
    }
    print(json.dumps(summary), flush=True)
    return 1 if args.strict and not summary["targets_met"] else 0


if __name__ == "__main__":  # `python scripts/<this>.py --help` had printed nothing, exit 0
    raise SystemExit(f"{__file__}: a module the benchmark scripts import, not a command")
