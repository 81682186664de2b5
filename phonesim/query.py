"""``phonesim index query``: embed one image and print its nearest catalog items.

It embeds with a checkpoint and searches an index, so it lives here above both stages (the
index stage never imports the embedder) and joins the ``index`` command's actions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common.argtypes import add_index_option, add_store_option, positive_int
from common.errors import UserError
from common.fsutil import missing_file_reason
from embedder.engine_options import EngineOptions, add_engine_options
from embedder.knn_options import add_knn_fusion_options, knn_fusion_from_args
from embedder.knn_vote import fuse_with_neighbours
from index.cli import index_folder_or_exit
from index.errors import InvalidFilterError, InvalidParamsError


def register(index_actions: argparse._SubParsersAction) -> None:
    """Add ``query`` to the actions of ``phonesim index`` (see :func:`index.cli.register`)."""
    query = index_actions.add_parser(
        "query",
        help="print the catalog items most similar to an image",
        description="Embed one image with a checkpoint and print its nearest catalog items.",
    )
    add_index_option(query, "index folder to search (built with the same checkpoint)")
    add_store_option(query, "search the catalog in this PostgreSQL store (instead of --index)")
    query.add_argument("--checkpoint", required=True, help="checkpoint folder of the embedder")
    query.add_argument("--image", required=True, help="image file to look up")
    query.add_argument(
        "-k", type=positive_int, default=10, help="results to show (default %(default)s)"
    )
    query.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="JSON|FIELD=VALUE",
        help="only matching items: a JSON object such as "
        '\'{"price": {"lt": 300}, "brand": ["Acme", "Zeta"]}\' '
        '({field: value} equality, {field: [values]} any of, {field: {"eq"|"in"|"lt"|"lte"|'
        '"gt"|"gte": ...}} operators, ranges on numeric fields only; fields combine with AND), '
        "or FIELD=VALUE equality (repeat a field for any of). Repeatable: all must hold",
    )
    query.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="search parameter such as nprobe=32 or efSearch=64",
    )
    add_knn_fusion_options(query, "catalog items, as serve predicts")
    add_engine_options(query, threads_help="model threads (default: every core)")
    query.add_argument("--json", action="store_true", help="print JSON")
    query.set_defaults(func=run, parser=query)


def parse_filter(args: list[str]) -> dict[str, Any] | None:
    """The ``--filter`` arguments as one filter (grammar: :mod:`index.filters`).

    ``'{"price": {"lt": 300}}'`` is a JSON filter; ``["label=xiaomi", "label=apple"]`` ->
    ``{"label": ["xiaomi", "apple"]}``. Every argument must hold; a field named by two
    arguments (other than FIELD=VALUE pairs, which mean any of) is refused.
    """
    out: dict[str, Any] = {}
    pairs: dict[str, list[str]] = {}
    for arg in args:
        if arg.lstrip().startswith("{"):
            for field, spec in _json_filter(arg).items():
                if field in out:
                    raise InvalidFilterError(f"--filter: field {field!r} is given twice")
                out[field] = spec
            continue
        field, sep, value = arg.partition("=")
        if not sep or not field.strip():
            raise InvalidFilterError(f"--filter expects a JSON object or FIELD=VALUE, got {arg!r}")
        if _is_json_container(value):
            # price={"lt": 300} had been equality with that text: no item, no word why.
            raise InvalidFilterError(
                f"--filter {arg!r}: FIELD=VALUE takes a plain value; give operators as one "
                f"JSON filter, such as '{{{json.dumps(field.strip())}: {value.strip()}}}'"
            )
        pairs.setdefault(field.strip(), []).append(value)
    for field, values in pairs.items():
        if field in out:
            raise InvalidFilterError(f"--filter: field {field!r} is given twice")
        out[field] = values[0] if len(values) == 1 else values
    return out or None


def _is_json_container(text: str) -> bool:
    """Whether ``text`` reads as a JSON object or list."""
    if not text.lstrip().startswith(("{", "[")):
        return False
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def _json_filter(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidFilterError(f"--filter: not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict) or not value:
        raise InvalidFilterError(f"--filter: expected a non-empty JSON object, got {text!r}")
    return value


def parse_params(pairs: list[str]) -> dict[str, int]:
    """``["nprobe=32"]`` -> ``{"nprobe": 32}``."""
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


def _open_store(args: argparse.Namespace, engine: EngineOptions) -> tuple[Any, Any]:
    """The embedder and the catalog of ``--store`` (a PostgreSQL URL), checked against it."""
    from dataclasses import asdict

    from embedder.inference import Embedder
    from index.catalog import CatalogIndex
    from server.loading import warn_if_classes_renamed

    embedder = Embedder.from_checkpoint(args.checkpoint, **asdict(engine))
    index = CatalogIndex.open(
        args.index_option or args.index_positional,
        store=args.store,
        readonly=True,
        expect_model=embedder.model_name,
        expect_checkpoint_hash=embedder.checkpoint_hash,
        expect_dim=embedder.dim,
    )
    warn_if_classes_renamed(f"store {args.store}", index.manifest, embedder.label_names)
    return embedder, index


def run(args: argparse.Namespace) -> int:
    # Imported here: the model stack loads only when a query runs, not for 'phonesim --help'.
    from index.stores import check_one_catalog
    from server.loading import open_for_serving

    check_one_catalog(args.index_option or args.index_positional, args.store)
    flt = parse_filter(args.filter)
    params = parse_params(args.param)
    if not Path(args.image).is_file():
        raise UserError(f"{args.image}: image file {missing_file_reason(args.image)}")
    engine = EngineOptions.from_args(args)
    if args.store:
        embedder, index = _open_store(args, engine)
    else:
        embedder, index = open_for_serving(
            args.checkpoint, index_folder_or_exit(args), engine=engine
        )
    fusion = knn_fusion_from_args(args)
    with index:
        batch = embedder.embed_paths([args.image])
        hits = index.search(batch.embeddings[0], args.k, filter=flt, params=params or None)[0]
        probabilities, source = batch.probabilities, "classifier"
        if fusion is not None and len(probabilities):
            # As serve predicts: the nearest items vote, whatever the filter lists.
            near = index.search(batch.embeddings[0], fusion.k, params=params or None)[0]
            pairs = [[(h.score, h.metadata.get("label")) for h in near]]
            probabilities, voted = fuse_with_neighbours(
                probabilities, pairs, embedder.label_names, fusion
            )
            source = "classifier+knn" if voted[0] else "classifier"
    predicted = None
    if len(probabilities) and embedder.label_names:
        top = int(probabilities[0].argmax())
        predicted = {
            "label": embedder.label_names[top],
            "probability": float(probabilities[0][top]),
            "source": source,
        }
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
        print(
            f"predicted class: {predicted['label']} ({predicted['probability']:.1%}, "
            f"{predicted['source']})"
        )
    if not hits:
        print("no matching catalog items")
    for rank, h in enumerate(hits, 1):
        extra = " ".join(
            f"{k}={v}" for k, v in h.metadata.items() if k not in ("image",) and v not in ("", None)
        )
        print(f"{rank:>3}  {h.score:.4f}  {h.id}  {extra}")
    return 0
