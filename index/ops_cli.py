"""``phonesim index add | remove | compact | snapshot | restore``: operating a live catalog.

Each works while servers run on the same store: writes go through the store's transactions
and the servers pick them up within a second (index/README.md, "Consistency model").
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from common.argtypes import add_store_option
from common.errors import UserError
from common.kept_images import kept_image
from common.text import not_utf8_detail
from index.errors import DuplicateIdError, InvalidParamsError
from index.stores import check_one_catalog

log = logging.getLogger(__name__)


def _target(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--index", metavar="INDEX_DIR", help=f"index folder {what}")
    add_store_option(parser)


def _where(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(folder, store URL)``: a folder is needed unless a store URL is given. Not both:
    with a store these commands work on it alone, so a folder given beside it was ignored
    (`restore --index DIR` with ``$PHONESIM_STORE`` set replaced the shared catalog)."""
    if not args.index and not args.store:
        args.parser.error("give the index as --index INDEX_DIR (or --store URL)")
    try:
        check_one_catalog(args.index, args.store)
    except InvalidParamsError as e:
        args.parser.error(str(e))
    return args.index, args.store


def register(actions: argparse._SubParsersAction) -> None:
    """Add the operations to the actions of ``phonesim index``."""
    add = actions.add_parser(
        "add",
        help="add the items of a 'phonesim embed' file to a live index",
        description="Add every item of an embeddings HDF5 file (with metadata from a catalog "
        "CSV) to an index, durably; servers on the same store answer with them within 1 s.",
    )
    _target(add, "to add to")
    add.add_argument(
        "--embeddings",
        required=True,
        help="HDF5 file written by phonesim embed (or phonesim export: the same datasets)",
    )
    add.add_argument("--catalog", help="catalog CSV (id,image,label,...) for the metadata")
    add.add_argument("--json", action="store_true", help="print the result as JSON")
    add.set_defaults(func=cmd_add, parser=add, interrupted=_add_interrupted)

    remove = actions.add_parser(
        "remove",
        help="remove items from a live index",
        description="Remove items by id, durably; unknown ids remove nothing and fail.",
    )
    _target(remove, "to remove from")
    remove.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=[],
        metavar="ID",
        help="id (repeatable); an id that starts with '-' as --id=-ID",
    )
    remove.add_argument(
        "--ids-file", metavar="FILE", help="text file with one id per line ('-': standard input)"
    )
    remove.add_argument(
        "--image-dir",
        metavar="DIR",
        help="the --image-dir of the servers on this index: also delete the photos they kept "
        "there for the removed items (added through the API), as a delete through the API "
        "does; other files are never touched",
    )
    remove.add_argument("--json", action="store_true", help="print the result as JSON")
    remove.set_defaults(func=cmd_remove, parser=remove)

    compact = actions.add_parser(
        "compact",
        help="fold the journal into a new FAISS snapshot when it is due (--force: now)",
        description="Fold the journal into a new FAISS snapshot when it has outgrown its "
        "limits (size or age), or now with --force (servers keep answering; they also do "
        "this by themselves). Also upgrades older index folders. Refused while another "
        "process compacts the same index.",
    )
    _target(compact, "to compact")
    compact.add_argument(
        "--force", action="store_true", help="compact even if the journal is below the limits"
    )
    compact.add_argument("--json", action="store_true", help="print the result as JSON")
    compact.set_defaults(func=cmd_compact, parser=compact)

    snap = actions.add_parser(
        "snapshot",
        help="copy a live index consistently into a new index folder",
        description="Copy the catalog, as of one committed change, into a new index folder "
        "while servers run (SQLite's backup API; from PostgreSQL, a replica's state).",
    )
    _target(snap, "to copy")
    snap.add_argument("--out", required=True, help="new folder to write the snapshot to")
    snap.add_argument("--json", action="store_true", help="print the result as JSON")
    snap.set_defaults(func=cmd_snapshot, parser=snap)

    restore = actions.add_parser(
        "restore",
        help="bring back a snapshot as an index folder or into a PostgreSQL store",
        description="Bring back a snapshot folder: as an index folder (no server may have it "
        "open) or into a PostgreSQL store (running replicas reload from it).",
    )
    restore.add_argument("--from", dest="source", required=True, help="snapshot folder")
    _target(restore, "to restore into")
    restore.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the index (or PostgreSQL catalog) there; a folder that is not an index "
        "is never replaced",
    )
    restore.add_argument("--json", action="store_true", help="print the result as JSON")
    restore.set_defaults(func=cmd_restore, parser=restore)


def _open(args: argparse.Namespace) -> Any:
    from index.catalog import CatalogIndex
    from index.folder import check_index_files

    path, store = _where(args)
    if store is None:
        # Opening reads the store's first pages only: add, remove and compact had written to
        # a damaged store, exit 0, that `index info` then refused. Every page is read first
        # (quick_check: 0.15 s for a 62 MB store of 200,000 items).
        check_index_files(path)
    return CatalogIndex.open(path, store=store)


def _print(args: argparse.Namespace, result: dict[str, Any], text: str) -> int:
    print(json.dumps(result) if args.json else text)
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from index.build import (
        failed_images,
        join_metadata,
        read_catalog_csv,
        read_embeddings,
        warn_labels_unknown,
    )

    _where(args)  # a usage error before the embeddings are read
    emb = read_embeddings(args.embeddings)
    rows = read_catalog_csv(args.catalog) if args.catalog else None
    metadata = join_metadata(emb.ids, emb.labels, rows)
    where = f"catalog {args.catalog or args.embeddings}"
    warn_labels_unknown(where, (md.get("label") for md in metadata), emb.label_names)
    with _open(args) as ix:
        ix.manifest.check(
            expect_model=emb.model_name,
            expect_checkpoint_hash=emb.checkpoint_hash,
            expect_dim=emb.dim,
            where=f"index {ix.where}",
            from_checkpoint=False,  # an embeddings file's
            # The index is the thing to keep: it is the new embeddings that are wrong.
            fix=f"Embed the new items with the checkpoint the index was built from "
            f"(hash {ix.manifest.checkpoint_hash[:12]}…), then add them again.",
            other="the new embeddings':",  # the index is right; "expected" read the other way
        )
        stored = ix.manifest.source.get("embedding_precision") or "fp32"
        if emb.precision != stored:  # allowed: they agree closely, but scores across them shift
            log.warning(
                "index %s holds %s embeddings and %s holds %s ones (runtime %s): the two agree "
                "to a cosine of about 0.99, so scores between old and new items shift "
                "slightly; embed with the runtime the index was built from",
                ix.where,
                stored,
                args.embeddings,
                emb.precision,
                emb.runtime or "torch",
            )
        try:
            ix.add(emb.ids, emb.xb, metadata)
        except DuplicateIdError as exc:
            if len(ix.store.fids_for_ids(emb.ids)) == len(emb.ids):
                # "remove them first" was wrong advice after a run killed once it committed.
                raise DuplicateIdError(
                    f"all {len(emb.ids)} ids of {args.embeddings} are in the index already: an "
                    "earlier or concurrent run of this add (one stopped or killed after it "
                    "committed, or one running beside this) may have added them, and then "
                    "nothing is left to do; to replace them, remove them first"
                ) from exc
            raise
        n = len(ix)
    # As `index build` says them: they were only an INFO line, hidden by -q and the JSON.
    left_out = failed_images(args.embeddings)
    if not args.json:
        for line in left_out:
            print(f"not indexed (phonesim embed could not read it): {line}")
    unread = f"; {len(left_out)} unreadable image(s) not indexed" if left_out else ""
    result = {"added": len(emb.ids), "count": n, "failed_images": len(left_out)}
    return _print(args, result, f"added {len(emb.ids)}; {n} items{unread}")


def _add_interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C during `index add` leaves: the add is one transaction, in or not."""
    where = f"--index {args.index}" if getattr(args, "index", None) else "--store URL"
    return (
        "interrupted; an add is all or nothing, so its items are either all in or none: "
        f"check with 'phonesim index info {where}' before running it again"
    )


def cmd_remove(args: argparse.Namespace) -> int:
    ids = list(args.ids)
    if args.ids_file:
        try:
            data = (
                sys.stdin.buffer.read()
                if args.ids_file == "-"
                else Path(args.ids_file).read_bytes()
            )
            text = data.decode("utf-8-sig")  # a BOM is no id
        except OSError as exc:
            raise UserError(f"{args.ids_file}: cannot read ids ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            detail = not_utf8_detail(Path(args.ids_file), data)
            raise UserError(f"{args.ids_file}: the ids are not UTF-8 text ({detail})") from None
        listed = [line.strip() for line in text.splitlines() if line.strip()]
        if not listed:
            raise UserError(f"{args.ids_file}: holds no ids (one id per line); nothing removed")
        ids += listed
    if not ids:
        args.parser.error("give ids to remove with --id ID or --ids-file FILE")
    if args.image_dir and Path(args.image_dir).exists() and not Path(args.image_dir).is_dir():
        raise UserError(f"--image-dir {args.image_dir}: is not a folder; nothing removed")
    if args.image_dir and not Path(args.image_dir).exists():
        # A server makes it at its first upload: none yet, or a mistyped path. Say which.
        log.warning("--image-dir %s does not exist: no kept photo is deleted", args.image_dir)
    with _open(args) as ix:
        kept = _kept_images(ix, ids, args.image_dir) if args.image_dir else []
        ix.remove(ids)
        n = len(ix)
    for path in kept:  # after the removal is durable: a failed removal keeps its photos
        path.unlink(missing_ok=True)
    unique = len(set(ids))
    result = {"removed": unique, "count": n}
    text = f"removed {unique}; {n} items"
    if args.image_dir:
        result["images_deleted"] = len(kept)
        text += f"; deleted {len(kept)} kept photo(s) from {args.image_dir}"
    return _print(args, result, text)


def _kept_images(ix: Any, ids: list[str], folder: str) -> list[Path]:
    """The photos a server kept in ``folder`` for those of ``ids`` in the catalog ``ix``."""
    from index.errors import UnknownIdError

    kept = []
    for item_id in dict.fromkeys(ids):
        try:
            image = ix.get(item_id).metadata.get("image")
        except UnknownIdError:
            continue  # the removal names every unknown id
        path = kept_image(folder, item_id, image)
        if path is not None:
            kept.append(path)
    return kept


def cmd_compact(args: argparse.Namespace) -> int:
    with _open(args) as ix:
        # Another compactor is an error here: the operator asked for this one.
        done = ix.compact(force=args.force, refuse_busy=True)
        st = ix.sync_status
    if done:
        text = f"compacted at journal record {st.applied_seq}"
    elif args.force:
        text = "nothing to compact: the snapshot already holds every journal record"
    else:
        text = "nothing to compact: the journal is below the limits (--force compacts anyway)"
    return _print(args, {"compacted": done, **st.as_dict()}, text)


def cmd_snapshot(args: argparse.Namespace) -> int:
    from index.snapshot import snapshot

    path, store = _where(args)
    info = snapshot(path, args.out, store=store)
    return _print(args, info, f"snapshot of {info['store']} (journal record {info['seq']}) "
                  f"in {info['out']}")  # fmt: skip


def cmd_restore(args: argparse.Namespace) -> int:
    from index.snapshot import restore

    path, store = _where(args)
    info = restore(args.source, path=None if store else path, store=store, overwrite=args.overwrite)
    where = info.get("store") or info["path"]
    return _print(args, info, f"restored {info['count']} items into {where}")
