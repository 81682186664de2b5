"""``phonesim index build | info | query``: the index stage on the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from index.build import build_from_files
from index.catalog import CatalogIndex
from index.errors import CatalogIndexError, InvalidFilterError, InvalidParamsError
from index.folder import describe
from index.manifest import read_manifest


def register(subparsers: Any) -> None:
    """Add the ``index`` command and its actions to the ``phonesim`` parser."""
    parser = subparsers.add_parser(
        "index",
        help="build, inspect and query a catalog similarity index",
        description="Build, inspect and query a catalog similarity index (FAISS + SQLite).",
    )
    actions = parser.add_subparsers(dest="index_action", metavar="ACTION", required=True)

    build = actions.add_parser(
        "build",
        help="build an index folder from 'phonesim embed' output",
        description="Build an index folder from an embeddings HDF5 file and catalog metadata.",
    )
    build.add_argument("--embeddings", required=True, help="HDF5 file written by phonesim embed")
    build.add_argument(
        "--catalog", help="catalog CSV (id,image,label,...): its columns become the metadata"
    )
    build.add_argument("--out", required=True, help="index folder to create")
    build.add_argument(
        "--kind",
        default="auto",
        help="auto (flat below 50k items, else ivf), flat, ivf, hnsw, or a FAISS factory string",
    )
    build.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall@10 the tuned search defaults must reach (default %(default)s)",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing index")
    build.add_argument("--no-progress", action="store_true", help="hide progress bars")
    build.add_argument("--json", action="store_true", help="print the result as JSON")
    build.set_defaults(func=cmd_build)

    info = actions.add_parser("info", help="show an index's kind, size and embedder")
    info.add_argument("index", metavar="INDEX_DIR")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    query = actions.add_parser(
        "query",
        help="print the catalog items most similar to an image",
        description="Embed one image with a checkpoint and print its nearest catalog items.",
    )
    query.add_argument("index", metavar="INDEX_DIR")
    query.add_argument("--checkpoint", required=True, help="checkpoint folder of the embedder")
    query.add_argument("--image", required=True, help="image file to look up")
    query.add_argument("-k", type=int, default=10, help="results to show (default %(default)s)")
    query.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="only items whose metadata FIELD equals VALUE (repeat a field for any-of)",
    )
    query.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="search parameter such as nprobe=32 or efSearch=64",
    )
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(func=cmd_query)


def parse_filter(pairs: list[str]) -> dict[str, Any] | None:
    """``["label=xiaomi", "label=apple"]`` -> ``{"label": ["xiaomi", "apple"]}``."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise InvalidFilterError(f"--filter expects FIELD=VALUE, got {pair!r}")
        out.setdefault(field.strip(), []).append(value)
    if not out:
        return None
    return {f: v[0] if len(v) == 1 else v for f, v in out.items()}


def parse_params(pairs: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            out[name.strip()] = int(value)
        except ValueError:
            sep = ""
        if not sep:
            raise InvalidParamsError(f"--param expects NAME=INTEGER, got {pair!r}")
    return out


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_build(args: argparse.Namespace) -> int:
    report = build_from_files(
        args.embeddings,
        args.out,
        catalog=args.catalog,
        kind=args.kind,
        target_recall=args.target_recall,
        overwrite=args.overwrite,
        progress=not args.no_progress,
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
                }
            )
        )
    else:
        tuned = ", ".join(f"{k}={v}" for k, v in m.search_defaults.items()) or "exact search"
        print(
            f"built {report.path}: {m.count} items, {m.kind} ({m.factory}), {tuned}, "
            f"{report.timings['total_s']:.1f} s"
        )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = describe(args.index)
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
        ("fields", ", ".join(info["filterable_fields"]) or "(none)"),
        ("journal", f"{info['journal_pending']} vectors since the last checkpoint"),
        ("disk", _size(info["disk_bytes"])),
    ]
    for name, value in rows:
        print(f"{name:<10} {value}")
    return 0


def _load_embedder(checkpoint: str) -> Any:
    try:
        from embedder.inference import Embedder
    except ImportError as exc:
        raise CatalogIndexError(f"cannot load the embedder ({exc}); is torch installed?") from exc
    return Embedder.from_checkpoint(checkpoint)


def cmd_query(args: argparse.Namespace) -> int:
    flt = parse_filter(args.filter)
    params = parse_params(args.param)
    read_manifest(args.index)  # a missing or broken index fails before the model loads
    if not Path(args.image).is_file():
        raise CatalogIndexError(f"{args.image}: image file does not exist")
    embedder = _load_embedder(args.checkpoint)
    with CatalogIndex.open(
        args.index,
        readonly=True,
        expect_model=embedder.model_name,
        expect_checkpoint_hash=embedder.checkpoint_hash,
        expect_dim=embedder.dim,
    ) as ix:
        batch = embedder.embed_paths([args.image])
        hits = ix.search(batch.embeddings[0], args.k, filter=flt, params=params or None)
    predicted = None
    names = list(getattr(embedder, "label_names", []) or [])
    if len(batch.probabilities) and names:
        top = int(batch.probabilities[0].argmax())
        predicted = {"label": names[top], "probability": float(batch.probabilities[0][top])}
    if args.json:
        print(
            json.dumps(
                {
                    "image": str(args.image),
                    "predicted": predicted,
                    "hits": [{"id": h.id, "score": h.score, "metadata": h.metadata} for h in hits],
                }
            )
        )
        return 0
    if predicted:
        print(f"predicted class: {predicted['label']} ({predicted['probability']:.1%})")
    if not hits:
        print("no matching catalog items")
    for rank, h in enumerate(hits, 1):
        extra = " ".join(
            f"{k}={v}" for k, v in h.metadata.items() if k not in ("image",) and v not in ("", None)
        )
        print(f"{rank:>3}  {h.score:.4f}  {h.id}  {extra}")
    return 0
