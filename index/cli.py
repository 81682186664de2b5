"""``phonesim index build | info`` (and the operations of :mod:`index.ops_cli`): the index
stage on the command line.

``phonesim index query`` embeds an image, which this stage must not do (no torch here): the
``phonesim`` command adds it to the actions that :func:`register` returns.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from common.argtypes import (
    add_index_option,
    add_progress_option,
    add_store_option,
    index_folder,
    show_progress,
    unit_interval,
)


def register(subparsers: Any) -> argparse._SubParsersAction:
    """Add the ``index`` command and its actions to the ``phonesim`` parser; return the
    actions, for commands of higher layers to join them."""
    parser = subparsers.add_parser(
        "index",
        help="build, inspect and query a catalog similarity index",
        description="Build, inspect and query a catalog similarity index (FAISS, with its "
        "catalog in the folder's SQLite file or a shared PostgreSQL store).",
    )
    actions = parser.add_subparsers(dest="index_action", metavar="ACTION", required=True)

    build = actions.add_parser(
        "build",
        help="build an index folder from 'phonesim embed' output",
        description="Build an index folder from an embeddings HDF5 file and catalog metadata.",
    )
    build.add_argument(
        "--embeddings",
        required=True,
        help="HDF5 file written by phonesim embed (or phonesim export: the same datasets)",
    )
    build.add_argument(
        "--catalog", help="catalog CSV (id,image,label,...): its columns become the metadata"
    )
    build.add_argument("--index", "--out", dest="out", required=True, help="index folder to create")
    build.add_argument(
        "--kind",
        default="auto",
        help="auto (flat below 50k items, else ivf), flat, ivf, hnsw, or a FAISS factory string "
        "(default auto)",
    )
    build.add_argument(
        "--target-recall",
        type=unit_interval,
        default=0.95,
        help="recall@10 the tuned search defaults must reach (default %(default)s)",
    )
    build.add_argument(
        "--overwrite", action="store_true", help="replace an existing index (folder and store)"
    )
    add_store_option(
        build,
        "also copy the catalog into this PostgreSQL store (postgresql://user@host:port/dbname); "
        "the folder stays as a local snapshot",
    )
    add_progress_option(build)
    build.add_argument("--json", action="store_true", help="print the result as JSON")
    build.set_defaults(func=cmd_build)

    info = actions.add_parser(
        "info",
        help="show an index's kind, size and embedder",
        description="An index's kind, item count, dimension, the model and checkpoint it was "
        "built from, its filterable fields, journal and size on disk.",
    )
    add_index_option(info, "index folder to describe")
    add_store_option(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info, parser=info)

    from index import ops_cli

    ops_cli.register(actions)
    return actions


def index_folder_or_exit(args: argparse.Namespace) -> str:
    """The index folder of ``args`` (see :func:`common.argtypes.index_folder`), or a usage error."""
    try:
        return index_folder(args)
    except argparse.ArgumentTypeError as exc:
        args.parser.error(str(exc))
        raise  # unreachable: parser.error exits


def _fields_line(fields: list[str]) -> str:
    """The filterable fields, saying which of them a client of the HTTP API cannot use: the
    server keeps an item's image path private (its /v1/info lists the others)."""
    public = [f for f in fields if f != "image"]
    line = ", ".join(public) or "(none)"
    private = " (and image, for the CLI only: the HTTP API keeps it private)"
    return line + (private if "image" in fields else "")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_build(args: argparse.Namespace) -> int:
    from index.build import build_from_files, failed_images
    from index.errors import BuildInputError

    if not args.out.strip():  # Path("") is the working folder: "is the working directory"
        raise BuildInputError("--index is empty; give the folder to create the index in")
    report = build_from_files(
        args.embeddings,
        args.out,
        catalog=args.catalog,
        kind=args.kind,
        target_recall=args.target_recall,
        overwrite=args.overwrite,
        progress=show_progress(args),
        store=args.store,
    )
    m = report.manifest
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(report.path),
                    "kind": m.kind,
                    "factory": m.factory,
                    "count": m.count,
                    "dim": m.dim,
                    "search_defaults": m.search_defaults,
                    "tuned_recall": m.tuning.get("recall"),
                    "timings": report.timings,
                    # as `index add --json` counts them; the manifest keeps the count
                    "failed_images": m.source.get("failed_images", 0),
                }
            )
        )
    else:
        tuned = ", ".join(f"{k}={v}" for k, v in m.search_defaults.items()) or "exact search"
        left_out = failed_images(args.embeddings)
        for line in left_out:
            print(f"not indexed (phonesim embed could not read it): {line}")
        print(
            f"built {report.path}: {m.count} items, {m.kind} ({m.factory}), {tuned}, "
            f"{report.timings['total_s']:.1f} s"
            + (f"; {len(left_out)} unreadable image(s) not indexed" if left_out else "")
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from index.stores import check_one_catalog

    check_one_catalog(args.index_option or args.index_positional, args.store)
    if args.store:
        from index.catalog import CatalogIndex

        with CatalogIndex.open(args.index_option or args.index_positional, store=args.store,
                               readonly=True) as ix:  # fmt: skip
            info = {**ix.info(), "path": ix.where, "disk_bytes": ix.store_bytes() or 0}
    else:
        from index.folder import check_index_files

        # A health check: every page of the store, and the vectors, as a compaction left them.
        info = check_index_files(index_folder_or_exit(args))
    if args.json:
        print(json.dumps(info))
        return 0
    defaults = ", ".join(f"{k}={v}" for k, v in info["search_defaults"].items())
    if info["tuned_recall"] is not None:
        defaults += f" (recall@10 {info['tuned_recall']:.3f} when tuned)"
    rows = [
        ("index", info["path"]),
        ("kind", f"{info['kind']} ({info['factory']})"),
        ("count", f"{info['count']:,}"),
        ("dimension", str(info["dim"])),
        ("metric", f"{info['metric']} (cosine on unit vectors)"),
        ("model", f"{info['model_name']} (checkpoint {info['checkpoint_hash'][:12]})"),
        ("search", defaults or "exact"),
        ("fields", _fields_line(info["filterable_fields"])),
        ("journal", f"{info['journal_pending']} items added or removed since the last compaction"),
        ("disk", _size(info["disk_bytes"])),
    ]
    if info.get("read_only_media"):
        rows.append(("media", "read-only file system: searched and copied, never changed"))
    for name, value in rows:
        print(f"{name:<10} {value}")
    return 0
