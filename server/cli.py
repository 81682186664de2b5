"""``phonesim serve``: the lookup server under gunicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from common.argtypes import (
    add_store_option,
    host,
    int_between,
    number_between,
    port,
    positive_float,
    positive_int,
    seconds_between,
    thread_count,
    worker_count,
)
from common.errors import UserError, run_reporting_errors
from common.fsutil import folder_write_problem
from embedder.engine_options import add_engine_options
from embedder.knn_options import (
    add_class_rerank_option,
    add_knn_fusion_options,
    add_text_cue_options,
    check_text_cue_options,
)
from index.stores import check_one_catalog
from server.config import (
    API_KEY_ENV,
    LOG_FORMATS,
    MAX_BATCH,
    MAX_BATCH_ENTRIES,
    MAX_SYNC_INTERVAL_S,
    MAX_UPLOAD_MB,
    MAX_WAIT_MS,
    MIN_SYNC_INTERVAL_S,
    MIN_UPLOAD_MB,
    GunicornSettings,
    ServerConfig,
)

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model checkpoint folder")
    p.add_argument(
        "--index",
        default=None,
        help="index folder (built from this checkpoint), or give a PostgreSQL --store instead",
    )
    add_store_option(p)
    p.add_argument(
        "--host", type=host, default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    p.add_argument("--port", type=port, default=8000, help="port (default 8000)")
    p.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        help="worker processes (default 1; at most 4 per core); each loads its own copy of "
        "the model",
    )
    p.add_argument(
        "--threads",
        type=int_between(1, MAX_REQUEST_THREADS),
        default=8,
        help=f"request threads per worker (default 8, at most {MAX_REQUEST_THREADS})",
    )
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key-file",
        default=None,
        metavar="FILE",
        help="file holding the key that the write endpoints require (without one: the key "
        f"itself in ${API_KEY_ENV}; neither: writes off)",
    )
    key.add_argument(
        "--api-key",
        default=None,
        help="the key itself; other users of the machine can read it in the process list, so "
        f"prefer --api-key-file or ${API_KEY_ENV}",
    )
    p.add_argument(
        "--rate-limit",
        type=positive_float,
        default=None,
        metavar="PER_SECOND",
        help="requests per second each client address may make (429 beyond; default: no limit)",
    )
    p.add_argument(
        "--rate-burst",
        type=positive_int,
        default=None,
        help="requests a client may make at once under --rate-limit (default: 2 x the rate)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        type=web_origin,
        default=[],
        metavar="ORIGIN",
        help="web origin allowed to call the API from a browser, e.g. https://shop.example "
        "(repeatable; '*' for any; default: none)",
    )
    p.add_argument(
        "--header-timeout",
        type=positive_float,
        default=10.0,
        help="seconds a connection may take to send its request headers (default 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=positive_float,
        default=60.0,
        help="seconds a request may take to send its body (default 60)",
    )
    p.add_argument(
        "--model-timeout",
        type=number_between(1, MAX_MODEL_TIMEOUT_S, "s"),
        default=30.0,
        metavar="SECONDS",
        help="how long a request waits for the model (or a large-image decode slot) before it "
        "is answered 503, "
        f"1-{MAX_MODEL_TIMEOUT_S} (default 30)",
    )
    p.add_argument(
        "--graceful-timeout",
        type=int_between(1, MAX_GRACEFUL_TIMEOUT_S),
        default=30,
        metavar="SECONDS",
        help="how long a stopping or reloading worker may finish the requests it holds before "
        f"it is killed, 1-{MAX_GRACEFUL_TIMEOUT_S} (default 30)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=number_between(MIN_UPLOAD_MB, MAX_UPLOAD_MB, "MB"),
        default=10.0,
        help=f"largest image a request may carry, {MIN_UPLOAD_MB:g}-{MAX_UPLOAD_MB:g} (default 10)",
    )
    p.add_argument(
        "--max-batch",
        type=int_between(1, MAX_BATCH),
        default=16,
        help=f"images per forward pass, 1-{MAX_BATCH} (default 16)",
    )
    p.add_argument(
        "--max-batch-entries",
        type=int_between(1, MAX_BATCH_ENTRIES),
        default=64,
        help="queries of one /v1/search/batch and items of one /v1/items/batch, "
        f"1-{MAX_BATCH_ENTRIES} (default 64)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=number_between(0, MAX_WAIT_MS, "ms"),
        default=10.0,
        help="how long a batch may wait for requests on their way to the model, "
        f"0-{MAX_WAIT_MS} (default 10)",
    )
    add_engine_options(p)
    p.add_argument(
        "--model-threads",
        "--torch-threads",
        dest="torch_threads",
        type=thread_count,
        default=None,
        metavar="N",
        help="model threads per worker, torch or ONNX Runtime (default: CPU cores / workers)",
    )
    p.add_argument(
        "--faiss-threads",
        type=thread_count,
        default=1,
        help="OpenMP threads per worker for index searches (default 1)",
    )
    p.add_argument(
        "--image-dir",
        default=None,
        help="keep images of items added through the API here, for thumbnails (without it, "
        "such an item has no image_url and its thumbnail is a 404; several replicas: one "
        "shared folder, or only the one that took an add serves its thumbnail)",
    )
    p.add_argument(
        "--image-root",
        action="append",
        default=[],
        metavar="DIR",
        help="another folder catalog thumbnails may be read from (repeatable); the folders "
        "the index was built from are always allowed",
    )
    p.add_argument(
        "--sync-interval",
        type=seconds_between(MIN_SYNC_INTERVAL_S, MAX_SYNC_INTERVAL_S),
        default=0.5,
        metavar="SECONDS",
        help="how often each worker follows the catalog store in the background, besides the "
        "check before every request (default 0.5)",
    )
    add_knn_fusion_options(
        p, "catalog items (their 'label' field; searched without the request's filters)"
    )
    add_class_rerank_option(
        p, also="; a catalog item's neighbours (/similar) likewise, by its own label"
    )
    add_text_cue_options(
        p,
        "an uploaded photo is read after its prediction when --text-gate says so, about "
        "0.25 s per rotation on 2 cores where a whole search otherwise takes tens of ms, so "
        "keep it for catalogs whose photos carry text",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="'json': every log line one JSON object (time, level, logger, pid, message, "
        "request_id; the access log's fields), for a log collector (default: text)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve similar-phone lookups over HTTP (JSON API + web page)",
        description="Run the lookup server under gunicorn: POST a photo to /v1/search for its "
        "predicted class and nearest catalog phones, or open / in a browser. "
        "Concurrent requests share micro-batched forward passes.",
    )
    add_arguments(p)
    p.set_defaults(func=run, own_signals=True)


def settings_from_args(args: argparse.Namespace) -> tuple[ServerConfig, GunicornSettings]:
    """What the app serves and how its processes run, from the parsed flags (read once here)."""
    if not args.index and not args.store:
        raise UserError("serve needs --index (or a PostgreSQL --store)")
    check_one_catalog(args.index, args.store)
    check_text_cue_options(args)
    if args.rate_burst is not None and args.rate_limit is None:
        raise UserError("--rate-burst needs --rate-limit (the burst is of that rate)")
    for root in args.image_root:  # a mistyped folder would only show as missing thumbnails
        if not root.strip():  # an unset $VAR: not the working directory
            raise UserError("--image-root is empty; give a folder")
        try:
            found = Path(root).is_dir()
        except OSError as exc:  # a folder above it this user may not enter
            raise UserError(f"--image-root {root}: {exc.strerror}") from None
        if not found:
            what = "is a file, not a folder" if Path(root).exists() else "does not exist"
            raise UserError(f"--image-root {root}: {what}")
    try:
        config = ServerConfig(
            checkpoint=args.checkpoint,
            index=args.index,
            api_key=api_key_from(args),
            max_upload_mb=args.max_upload_mb,
            max_batch=args.max_batch,
            max_batch_entries=args.max_batch_entries,
            max_wait_ms=args.max_wait_ms,
            request_timeout_s=args.model_timeout,
            image_dir=args.image_dir,
            image_roots=tuple(args.image_root),
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
            cors_origins=tuple(args.cors_origin),
            runtime=args.runtime,
            device=args.device,
            sync_interval_s=args.sync_interval,
            store=args.store,
            knn_fusion=args.knn_fusion,
            knn_k=args.knn_k,
            knn_weight=args.knn_weight,
            knn_temperature=args.knn_temperature,
            class_rerank=args.class_rerank,
            read_text=args.read_text,
            text_cues=args.text_cues,
            text_weight=args.text_weight,
            text_rotations=args.text_rotations,
            text_gate=args.text_gate,
        ).validate()
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if config.writes_enabled and config.image_dir:  # checked now: every add had been a 500
        problem = folder_write_problem(config.image_dir, created=True)
        if problem:  # read-only replicas only read thumbnails there: not asked to write
            raise UserError(
                f"--image-dir {config.image_dir}: {problem}; added items' images cannot be "
                "kept there"
            )
    settings = GunicornSettings(
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        torch_threads=args.torch_threads,
        faiss_threads=args.faiss_threads,
        access_log=args.access_log,
        log_format=args.log_format,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        graceful_timeout_s=args.graceful_timeout,
    )
    return config, settings


MAX_REQUEST_THREADS = 1024
MAX_MODEL_TIMEOUT_S = 600
MAX_GRACEFUL_TIMEOUT_S = 3600


def web_origin(text: str) -> str:
    """A browser's Origin: ``scheme://host[:port]`` (http or https, nothing after), or ``*``.
    Anything else ("shop.example", "https://x/path") could never equal an Origin header."""
    if text == "*":
        return text
    parts = urlsplit(text.rstrip("/"))
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # "https://x:abc", or out of range
        port_ok = False
    if (
        not port_ok
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path
        or (parts.query or parts.fragment or parts.username)
    ):
        raise argparse.ArgumentTypeError(
            f"must be an origin such as https://shop.example or http://localhost:3000 "
            f"(scheme, host, optional port; nothing after), or '*'; got {text!r}"
        )
    return text.rstrip("/")


#: Shorter keys are said in a warning: a guessable key opens every write endpoint.
MIN_KEY_LENGTH = 16


def api_key_from(args: argparse.Namespace) -> str | None:
    """The write key: --api-key-file, else --api-key, else $PHONESIM_API_KEY (None: no key)."""
    key = _given_key(args)
    if key is not None and len(key) < MIN_KEY_LENGTH:
        log.warning(
            "the API key has %d characters; use at least %d random ones (for example: "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))')",
            len(key),
            MIN_KEY_LENGTH,
        )
    return key


def _given_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from exc
        if not key:
            raise UserError(f"--api-key-file {args.api_key_file} is empty")
        mode = Path(args.api_key_file).stat().st_mode
        if mode & 0o077:
            log.warning(
                "--api-key-file %s can be read by other users of this machine (mode %o); "
                "chmod 600 it",
                args.api_key_file,
                mode & 0o777,
            )
        return key
    if args.api_key is not None and not args.api_key.strip():
        # An empty key would quietly turn the write endpoints off: say so instead.
        raise UserError("--api-key is empty; give a key, or leave the flag out to turn writes off")
    # Stripped as the file's key is: HTTP drops a header value's outer whitespace, so a key
    # kept with the newline of a secret file could never be sent.
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if key and not key.strip():  # "" reads as unset (compose files do that); "  " is a slip
        raise UserError(
            f"${API_KEY_ENV} holds only whitespace; give a key, or unset it to turn writes off"
        )
    return (key or "").strip() or None


def hide_key_from_process_list(key: str) -> None:
    """Run this command again with the key moved from the arguments to the environment.

    Arguments are world-readable (``ps``, /proc/PID/cmdline), the environment is not; the
    gunicorn workers are forked from this process and inherit its arguments, so this is the
    one place to drop them. The same process id goes on (``exec``).
    """
    argv = list(getattr(sys, "orig_argv", []))
    cleaned: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--api-key":
            skip = True
            continue
        if token.startswith("--api-key="):
            continue
        cleaned.append(token)
    if not argv or len(cleaned) == len(argv):
        # Not the command line we were started with (called from Python). The key may still
        # be part of another argument (a path holding "demo"); it no longer says it is a key.
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *cleaned[1:]], {**os.environ, API_KEY_ENV: key})


def check_working_directory() -> None:
    """gunicorn reads the current directory as it is imported and its processes change back
    into it: one deleted since (a release folder replaced under a shell) was "error: No such
    file or directory", and one this user may not enter failed in gunicorn's chdir."""
    try:
        cwd = os.getcwd()
    except OSError as exc:
        raise UserError(
            "the current directory no longer exists; cd to one that does before serving "
            "(gunicorn runs its processes there)"
        ) from exc
    if not os.access(cwd, os.X_OK):
        raise UserError(
            f"this user may not enter the current directory ({cwd}); cd to one it may before "
            "serving (gunicorn runs its processes there)"
        )


def run(args: argparse.Namespace) -> int:
    check_working_directory()
    # Imported here, not at the top: gunicorn, torch and FAISS load only when serving, so
    # 'phonesim --help' stays quick.
    from server.serve import serve

    if args.log_format == "json":  # before the settings' own warnings (a short API key)
        from server.json_logs import use_json_logs

        use_json_logs()
    if args.api_key:
        log.warning(
            "--api-key on the command line is visible to other users of this machine (ps); "
            "use --api-key-file or $%s. Restarting with the key in the environment.",
            API_KEY_ENV,
        )
        hide_key_from_process_list(args.api_key)
    return serve(*settings_from_args(args))


def main(argv: list[str] | None = None) -> int:
    """``python -m server``: the serve command alone (same flags as ``phonesim serve``)."""
    parser = argparse.ArgumentParser(prog="python -m server", description="phonesim serve")
    add_arguments(parser)
    talk = parser.add_mutually_exclusive_group()  # as phonesim's own -v/-q
    talk.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    talk.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    return run_reporting_errors(
        "phonesim serve", run, args, verbose=args.verbose, quiet=args.quiet, own_signals=True
    )
