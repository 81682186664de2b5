"""``phonesim serve``: the lookup server under gunicorn."""

from __future__ import annotations

import argparse
import os

from common.argtypes import port, positive_float, positive_int
from server.config import API_KEY_ENV


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model checkpoint folder")
    p.add_argument("--index", required=True, help="index folder (built from this checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="worker processes (default 1); each loads its own copy of the model",
    )
    p.add_argument(
        "--threads", type=positive_int, default=8, help="request threads per worker (default 8)"
    )
    p.add_argument(
        "--api-key",
        default=None,
        help=f"key that the write endpoints require (default: ${API_KEY_ENV}; none: writes off)",
    )
    p.add_argument(
        "--max-upload-mb", type=positive_float, default=10.0, help="upload limit (default 10)"
    )
    p.add_argument(
        "--max-batch", type=positive_int, default=16, help="images per forward pass (default 16)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=10.0,
        help="how long a batch may wait for requests on their way to the model (default 10)",
    )
    p.add_argument(
        "--torch-threads",
        type=positive_int,
        default=None,
        help="intra-op threads per worker (default: CPU cores / workers)",
    )
    p.add_argument(
        "--faiss-threads",
        type=positive_int,
        default=1,
        help="OpenMP threads per worker for index searches (default 1)",
    )
    p.add_argument(
        "--image-dir",
        default=None,
        help="keep images of items added through the API here, for thumbnails",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve similar-phone lookups over HTTP (JSON API + web page)",
        description="Run the lookup server under gunicorn: POST a photo to /v1/search for its "
        "predicted class and nearest catalog phones, or open / in a browser. "
        "Concurrent requests share micro-batched forward passes.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.serve import serve

    return serve(
        args.checkpoint,
        args.index,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_upload_mb=args.max_upload_mb,
        torch_threads=args.torch_threads,
        faiss_threads=args.faiss_threads,
        access_log=args.access_log,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        image_dir=args.image_dir,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m server``: the serve command alone (same flags as ``phonesim serve``)."""
    import logging
    import sys

    from common.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m server", description="phonesim serve")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return run(args)
    except UserError as exc:
        print(f"phonesim serve: error: {exc}", file=sys.stderr)
        return 2
