"""Building an index folder from vectors, or from ``phonesim embed`` output plus a catalog CSV.

A build writes everything into a hidden sibling folder and renames it into place at the end, so
an interrupted build leaves no half-written index behind.
"""

from __future__ import annotations

import csv
import errno
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from common.field_names import FIELD_NAME_RULE, is_api_field_name
from common.fsutil import (
    folder_write_problem,
    fsync_dir,
    fsync_path,
    missing_file_reason,
    replaced_path,
    swap_folder,
    temporary_folder,
)
from common.item_ids import ID_RULES, is_item_id
from common.stamps import utc_now
from common.text import (
    UNNAMED,
    allow_long_csv_cells,
    csv_rows,
    header_hint,
    is_uri,
    name_blank_columns,
    not_utf8_detail,
    repeated_columns,
    unnamed_value,
)
from common.versions import FEATURES_FORMAT, FEATURES_VERSION, PRECISIONS, version_problem
from index import ann
from index.catalog import CatalogIndex, IndexOptions
from index.errors import BuildInputError, CatalogIndexError, IndexLockedError, InvalidKindError
from index.folder import checkpoint_size, faiss_file_name, lock_writer
from index.inputs import clean_metadata_rows, prepare_ids, prepare_vectors
from index.manifest import MANIFEST_NAME, Manifest, write_manifest
from index.store import STORE_NAME, CatalogStore
from index.tuning import tunable_param, tune, tuning_split

log = logging.getLogger(__name__)

#: ``build_index``'s ``replaced`` default: read the replaced index's state itself.
READ_NOW = object()

# More folders than this in a manifest's image_roots are merged into their parents.
MAX_IMAGE_ROOTS = 64


@dataclass(frozen=True)
class Embeddings:
    """The parts of a ``phonesim embed`` HDF5 file that an index needs."""

    ids: list[str]
    xb: np.ndarray
    labels: list[str]
    model_name: str
    checkpoint_hash: str
    label_names: list[str] = field(default_factory=list)
    failed: int = 0
    # The inference runtime that computed them and its precision ("fp32" or "int8"); files
    # from before runtimes existed were torch fp32.
    runtime: str = ""
    precision: str = "fp32"
    # When the file was written (ISO 8601 UTC; "" in files without the attribute).
    created: str = ""

    @property
    def dim(self) -> int:
        return int(self.xb.shape[1])


@dataclass(frozen=True)
class BuildReport:
    """What a build produced and how long its stages took (seconds)."""

    path: Path
    manifest: Manifest
    timings: dict[str, float]


def _attr_str(attrs: Any, name: str, path: Path) -> str:
    if name not in attrs:
        raise BuildInputError(
            f"{path}: attribute {name!r} is missing; is this 'phonesim embed' output?"
        )
    value = attrs[name]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return str(value)


def read_embeddings(path: str | Path) -> Embeddings:
    """Read ids, embeddings, labels and the model identity from an embeddings HDF5 file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise BuildInputError(f"{path}: embeddings file {missing_file_reason(path)}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise BuildInputError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with h5:
        # The one feature schema (export.schema.FORMAT, docs/export.md) of `phonesim embed` and
        # `phonesim export`; files of older `phonesim embed` have no format attribute but the
        # same datasets, and are read too.
        fmt = h5.attrs.get("format", FEATURES_FORMAT)
        if (fmt.decode() if isinstance(fmt, bytes) else str(fmt)) != FEATURES_FORMAT:
            raise BuildInputError(
                f"{path}: format {fmt!r} is not 'phonesim embed' output; run 'phonesim embed'"
            )
        if "format_version" in h5.attrs:  # older files have none, and are read as version 1
            found = h5.attrs["format_version"]
            found = int(found) if isinstance(found, np.integer) else found
            problem = version_problem(found, (FEATURES_VERSION,), "run 'phonesim embed' again")
            if problem:
                raise BuildInputError(f"{path}: {problem}")
        missing = [name for name in ("ids", "embeddings") if name not in h5]
        if missing:
            raise BuildInputError(f"{path}: dataset(s) {', '.join(missing)} missing")
        emb = h5["embeddings"]
        if not isinstance(emb, h5py.Dataset):
            raise BuildInputError(f"{path}: 'embeddings' must be a 2-D float array, not a group")
        if emb.ndim != 2 or emb.dtype.kind != "f":
            raise BuildInputError(
                f"{path}: 'embeddings' must be a 2-D float array, got {emb.dtype} {emb.shape}"
            )
        # Read after the build to list them: a damaged list fails now, not after the work.
        for name in ("failed", "failed_reasons"):
            if name in h5 and not _is_string_dataset(h5[name]):
                raise BuildInputError(f"{path}: '{name}' must be a string dataset")
        try:
            ids = [str(i) for i in h5["ids"].asstr()[()]]
            labels = (
                [str(x) for x in h5["labels"].asstr()[()]] if "labels" in h5 else [""] * len(ids)
            )
        except (AttributeError, TypeError, ValueError) as exc:  # AttributeError: a group
            raise BuildInputError(f"{path}: 'ids'/'labels' must be string datasets") from exc
        unreachable = [i for i in ids if i and not is_item_id(i)]
        if unreachable:  # written before photo ids kept their suffix, or by hand
            shown = ", ".join(repr(i[:40]) for i in unreachable[:5])
            more = f" and {len(unreachable) - 5} more" if len(unreachable) > 5 else ""
            raise BuildInputError(
                f"{path}: {len(unreachable)} id(s) cannot be addressed as /v1/items/<id> "
                f"({shown}{more}; an id must be "
                f"{ID_RULES}); run 'phonesim embed' again (a photo named image.*, "
                "similar.* or batch.* now keeps its suffix in its id), rename a photo whose "
                "name holds such a character, or fix the id in the CSV"
            )
        if not (len(ids) == emb.shape[0] == len(labels)):
            raise BuildInputError(
                f"{path}: {len(ids)} ids, {emb.shape[0]} embeddings and {len(labels)} labels"
            )
        xb = np.asarray(emb[()], dtype=np.float32)
        model_name = _attr_str(h5.attrs, "model_name", path)
        checkpoint_hash = _attr_str(h5.attrs, "checkpoint_hash", path)
        if "dim" in h5.attrs and int(h5.attrs["dim"]) != xb.shape[1]:
            raise BuildInputError(
                f"{path}: attribute dim={int(h5.attrs['dim'])} but embeddings have {xb.shape[1]}"
            )
        try:
            label_names = json.loads(_attr_str(h5.attrs, "label_names", path))
        except BuildInputError:
            label_names = []
        except json.JSONDecodeError as exc:
            raise BuildInputError(f"{path}: attribute label_names is not JSON") from exc
        failed = len(h5["failed"]) if "failed" in h5 else 0
        runtime = _attr_str(h5.attrs, "runtime", path) if "runtime" in h5.attrs else ""
        precision = _attr_str(h5.attrs, "precision", path) if "precision" in h5.attrs else "fp32"
        created = _attr_str(h5.attrs, "created", path) if "created" in h5.attrs else ""
        if precision not in PRECISIONS:  # "bf16" was taken, and then compared as fp32's kin
            raise BuildInputError(
                f"{path}: attribute precision={precision!r} is none this phonesim knows "
                f"({', '.join(PRECISIONS)}); a newer phonesim may have written it: upgrade, or "
                "embed again with this one"
            )
    if failed:
        log.info("%s: %d images had failed to embed and are not indexed", path, failed)
    return Embeddings(
        ids,
        xb,
        labels,
        model_name,
        checkpoint_hash,
        list(label_names),
        failed,
        runtime,
        precision,
        created,
    )


def _is_string_dataset(obj: object) -> bool:
    import h5py

    return isinstance(obj, h5py.Dataset) and h5py.check_string_dtype(obj.dtype) is not None


def failed_images(path: str | Path) -> list[str]:
    """One ``id: reason`` line per image ``phonesim embed`` could not read (none if the file
    lists none). The export schema keeps the ids in ``failed`` and the reasons beside them in
    ``failed_reasons``; older embed files held ``id: file: reason`` lines in ``failed``."""
    import h5py

    with h5py.File(path, "r") as h5:
        if "failed" not in h5:
            return []
        ids = [str(x) for x in h5["failed"].asstr()[()]]
        if "failed_reasons" not in h5:
            return ids
        reasons = [str(x) for x in h5["failed_reasons"].asstr()[()]]
        return [f"{i}: {r}" for i, r in zip(ids, reasons, strict=False)]


def read_catalog_csv(path: str | Path) -> dict[str, dict[str, str]]:
    """Metadata rows by id from a catalog CSV (``id,image,label,...``).

    Every column except ``id`` is kept as a string, a blank cell as no value (an unknown
    price is no price, not the text ""); ``image`` is resolved against the CSV's folder to an
    absolute path, for the server's thumbnails, unless it is a URL (``https://...``,
    ``s3://...``, ``data:...``), kept as written: resolved, it had become a path that named
    nothing, its double slash gone. Every value is stripped of surrounding spaces
    (``id``, ``image`` and ``label`` as ``phonesim embed`` and ``train`` read them; a number
    written " 300 " is then the number 300 to filters).
    """
    path = Path(path)
    if not path.is_file():
        raise BuildInputError(f"{path}: catalog CSV {missing_file_reason(path)}")
    rows: dict[str, dict[str, str]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            allow_long_csv_cells()
            reader = csv.DictReader(fh, strict=True)
            if not reader.fieldnames or "id" not in reader.fieldnames:
                found = ",".join(reader.fieldnames or []) or "none"
                raise BuildInputError(
                    f"{path}: needs a header row with an 'id' column (found {found[:200]})"
                    + header_hint(reader.fieldnames)
                )
            repeated = repeated_columns(reader.fieldnames)
            if repeated:
                raise BuildInputError(f"{path}: column(s) {repeated} appear twice in the header")
            reader.fieldnames = name_blank_columns(reader.fieldnames)
            _warn_read_only_columns(path, reader.fieldnames)
            for line, row in csv_rows(reader):
                if None in row:
                    raise BuildInputError(f"{path}:{line}: more fields than the header has")
                id_ = (row.pop("id") or "").strip()
                if not id_:
                    raise BuildInputError(f"{path}:{line}: empty id")
                if id_ in rows:
                    raise BuildInputError(f"{path}:{line}: id {id_!r} appears twice")
                unnamed = unnamed_value(row)
                if unnamed is not None:  # a value under a blank header cell has no field name
                    raise BuildInputError(
                        f"{path}:{line}: value {unnamed[:40]!r} is in a column without a name"
                    )
                # Stripped: a hand-edited " 300 " price matched no filter on 300.
                md = {
                    k: v.strip()
                    for k, v in row.items()
                    if not k.startswith(UNNAMED) and v and v.strip()
                }
                if md.get("image"):
                    if "\0" in md["image"]:
                        raise BuildInputError(f"{path}:{line}: image path contains a NUL byte")
                    if not is_uri(md["image"]):  # a URL stays as written
                        md["image"] = str((path.parent / md["image"]).resolve())
                rows[id_] = md
    except UnicodeDecodeError as exc:
        detail = not_utf8_detail(path) or f"byte {exc.start}: {exc.reason}"
        raise BuildInputError(f"{path}: not UTF-8 text ({detail})") from None
    except csv.Error as exc:
        raise BuildInputError(f"{path}: not a readable CSV ({exc})") from None
    _warn_decimal_commas(path, rows)
    return rows


DECIMAL_COMMA_SAMPLE = 10_000  # rows looked at: a million took 3 s
_DECIMAL_COMMA = re.compile(r"^[-+]?\d{1,3}(?:[.\s\u00a0\u202f]?\d{3})*,\d{1,2}$")


def _warn_decimal_commas(path: Path, rows: Mapping[str, Mapping[str, str]]) -> None:
    """Columns of numbers written with a decimal comma ("1138,99", as spreadsheets in many
    locales save them) are text to filters: `price < 500` was refused only at query time."""
    counts: dict[str, list[int]] = {}
    for md in itertools.islice(rows.values(), DECIMAL_COMMA_SAMPLE):
        for name, value in md.items():
            seen = counts.setdefault(name, [0, 0])
            seen[0] += 1
            seen[1] += bool(_DECIMAL_COMMA.match(value))
    fields = [f for f, (n, commas) in counts.items() if commas and commas * 2 >= n]
    if fields:
        example = next(
            value for md in rows.values() if _DECIMAL_COMMA.match(value := md.get(fields[0], ""))
        )
        log.warning(
            "%s: column(s) %s hold numbers written with a decimal comma (%r): filters take them "
            "as text, so a range such as price < 500 is refused; write them with a decimal "
            "point (1138.99)",
            path, ", ".join(repr(f) for f in fields), example,
        )  # fmt: skip


def _warn_read_only_columns(path: Path, columns: Sequence[str]) -> None:
    """Columns the index keeps and filters on, but that a client of the HTTP API cannot write
    (``RAM (GB)``: a PATCH of it is a 400): said once, while the header can still change."""
    fields = [c for c in columns if c not in ("id", "image") and not c.startswith(UNNAMED)]
    read_only = [c for c in fields if not is_api_field_name(c)]
    if read_only:
        log.warning(
            "%s: column(s) %s can be searched and filtered on, but the HTTP API cannot write "
            "them (a field name there is %s); rename them to let clients update them",
            path,
            ", ".join(repr(c) for c in read_only[:5]) + (", ..." if len(read_only) > 5 else ""),
            FIELD_NAME_RULE,
        )


def join_metadata(
    ids: Sequence[str], labels: Sequence[str], catalog: Mapping[str, Mapping[str, str]] | None
) -> list[dict[str, Any]]:
    """Per id: its catalog row, else ``{"label": <HDF5 label>}`` (no label when unknown)."""
    out: list[dict[str, Any]] = []
    unmatched = 0
    for id_, label in zip(ids, labels, strict=True):
        row = None if catalog is None else catalog.get(id_)
        if row is None:
            unmatched += catalog is not None
            out.append({"label": label} if label else {})
        else:
            md = dict(row)
            if label and not md.get("label"):
                md["label"] = label
            out.append(md)
    if catalog is not None and ids and unmatched == len(ids):
        # Ids of another form (folder paths against a CSV's own ids): the index would carry
        # no metadata at all, which a warning scrolled past would not stop.
        raise BuildInputError(
            f"none of the {len(ids)} embedded ids has a row in the catalog CSV (embedded: "
            f"{ids[0]!r}, ...; catalog: "
            + (f"{next(iter(catalog))!r}, ...)" if catalog else "no rows)")
            + "; embed the catalog's own manifest, or leave --catalog out"
        )
    if unmatched:
        log.warning("%d embedded id(s) have no row in the catalog CSV", unmatched)
    if catalog is not None and len(catalog) > len(ids) - unmatched:
        log.info("%d catalog row(s) have no embedding", len(catalog) - (len(ids) - unmatched))
    return out


def labels_unknown(labels: Iterable[Any], names: Sequence[str]) -> list[str]:
    """The labels (non-blank strings) that are none of the checkpoint's class ``names``."""
    known = set(names)
    found = {x for x in labels if isinstance(x, str) and x.strip() and x not in known}
    return sorted(found)


def warn_labels_unknown(
    where: str, labels: Iterable[Any], names: Sequence[str], more: bool = False
) -> None:
    """Say which catalog labels the checkpoint does not know (a class renamed or added since
    it was trained): its predictions never name them, its items' neighbours leave their share
    of the kNN vote to the classifier and get no class re-rank bonus. No checkpoint names
    (an older features file): nothing to compare. ``more``: ``labels`` were cut short."""
    unknown = labels_unknown(labels, names) if names else []
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        log.warning(
            "%s labels items with %d%s class(es) the checkpoint does not know (%s): it never "
            "predicts them, and their photos do not vote for a class in its predictions; "
            "retrain with them, or relabel the items with the checkpoint's classes",
            where,
            len(unknown),
            " or more" if more else "",
            shown,
        )


def _warn_images_changed_since(
    metadata: Sequence[Mapping[str, Any]], created: str, embeddings: Path
) -> None:
    """Catalog photos modified after their embeddings were written: the index would show the
    new photo (its thumbnail) beside the old photo's vector, without a word (a review replaced
    a photo in place after embedding). A row pointed at another, older photo is not seen."""
    try:
        since = datetime.fromisoformat(created).timestamp()
    except ValueError:  # an older file without the attribute
        return
    changed = []
    for md in metadata:
        image = md.get("image")
        if not image or is_uri(image):
            continue
        try:
            if os.stat(image).st_mtime > since + 1:  # the attribute keeps whole seconds
                changed.append(image)
        except OSError:
            continue  # gone: the server says so for its thumbnail
    if changed:
        log.warning(
            "%d catalog photo(s) changed (or were copied) after %s was written (%s%s): their "
            "vectors are of the photos as they were then; embed the catalog again to index the "
            "photos as they are",
            len(changed), embeddings, changed[0], ", ..." if len(changed) > 1 else "",
        )  # fmt: skip


def image_roots(paths: Sequence[str], limit: int = MAX_IMAGE_ROOTS) -> list[str]:
    """The fewest folders holding every image in ``paths`` (symlinks resolved).

    A sharded image store (``store/ab/cd/x.jpg``) would give thousands of folders: above
    ``limit`` the deepest ones are replaced by their parents, but never by a top-level folder's
    parent, the filesystem root.
    """
    roots = {os.path.realpath(os.path.dirname(os.path.abspath(p))) for p in paths}
    while True:
        kept: list[str] = []
        for root in sorted(roots, key=lambda r: r.split(os.sep)):  # parents before children
            if not kept or not root.startswith(kept[-1].rstrip(os.sep) + os.sep):
                kept.append(root)
        deepest = max((r.count(os.sep) for r in kept), default=0)
        if len(kept) <= limit or deepest <= 1:
            return kept
        roots = {os.path.dirname(r) if r.count(os.sep) == deepest else r for r in kept}


def _working_directory() -> Path:
    try:
        return Path.cwd()
    except FileNotFoundError:  # deleted under us: it is no index folder's either
        return Path("/")


def check_index_target(
    out: Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()
) -> None:
    """Refuse, before any work, an ``out`` that a new index folder may not take the place of:
    a file, a folder that is not an index (even with ``overwrite``), an index a writer has
    open, an index holding one of the ``inputs`` the new one is made from (replacing it would
    delete them), or a path whose parent folder is missing or not writable."""
    if out.exists() and not out.is_dir():
        raise BuildInputError(f"{out}: exists and is not a folder")
    if out.is_dir() and _working_directory().is_relative_to(out.resolve()):
        # The new folder cannot take the place of the one the command runs in.
        raise BuildInputError(f"{out}: is the working directory; run the command from outside it")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise BuildInputError(
                f"{out}: already exists and is not empty; use --overwrite (in Python, "
                "overwrite=True)"
            )
        if not (out / MANIFEST_NAME).is_file():
            # --overwrite replaces an index, never an arbitrary folder that happens to be named.
            raise BuildInputError(
                f"{out}: not an index folder (no {MANIFEST_NAME}); not replacing it"
            )
        for given in inputs:
            if given is not None and Path(given).resolve().is_relative_to(out.resolve()):
                raise BuildInputError(
                    f"{given}: inside {out}, which --overwrite would replace (and delete it "
                    "with the old index); move it out of the folder first"
                )
        os.close(lock_writer(out))  # fail now, not after the build, if a writer has it open
    problem = folder_write_problem(out.parent)
    if problem:
        raise BuildInputError(f"{out.parent}: {problem}")


def build_index(
    out: str | Path,
    ids: Sequence[str],
    xb: np.ndarray,
    metadata: Sequence[Mapping[str, Any] | None] | None = None,
    *,
    model_name: str,
    checkpoint_hash: str,
    dim: int | None = None,
    kind: str = "auto",
    target_recall: float = 0.95,
    overwrite: bool = False,
    progress: bool = False,
    source: Mapping[str, Any] | None = None,
    store: str | None = None,
    replaced: IndexState | None | object = READ_NOW,
) -> BuildReport:
    """Build an index folder at ``out`` from ``ids``, vectors ``xb`` and per-id metadata.

    ``kind``: ``auto`` (flat below :data:`~index.ann.AUTO_FLAT_MAX` items, else ivf),
    ``flat``, ``ivf``, ``hnsw`` or a FAISS factory string. Approximate kinds get their
    ``nprobe``/``efSearch`` default tuned to reach ``target_recall`` (recall@10).
    ``out`` must not exist or be empty unless ``overwrite``. ``store``: a PostgreSQL URL to
    copy the built catalog into (:func:`index.pg_admin.push_folder`; ``overwrite`` also
    applies there); ``out`` then stays as a local snapshot of it. ``replaced``: the
    :func:`index_state` of ``out`` when the caller read its inputs (by default, read now).
    """
    t_start = time.perf_counter()
    out = Path(out)
    check_index_target(out, overwrite=overwrite)
    # Which index is being replaced and what it has journalled so far: a change by another
    # process while this build runs would be lost with it (an `index add` said "added 30000",
    # then the swap dropped them), as would another build or restore landing first, so the
    # swap refuses either.
    if replaced is READ_NOW:
        replaced = index_state(out) if overwrite else None
    try:
        if store is not None:
            from index.pg_admin import refuse_existing

            refuse_existing(store, overwrite=overwrite)  # fail now, not after the build
        if not isinstance(model_name, str) or not model_name:
            raise BuildInputError("model_name must be a non-empty string")
        ids = prepare_ids(ids)
        if dim is None:
            if np.ndim(xb) != 2:
                raise BuildInputError("pass dim= when xb is not a 2-D array")
            dim = int(np.shape(xb)[1])
        xb = prepare_vectors(xb, dim, n=len(ids))
        mds = clean_metadata_rows(metadata, len(ids), ids)
        n = len(ids)
        fids = np.arange(n, dtype=np.int64)
        kind, factory = ann.resolve_kind(kind, n)
        log.info("building the %s index (%s) of %d x %d vectors", kind, factory, n, dim)
        timings: dict[str, float] = {}

        t = time.perf_counter()
        index = ann.create(factory, dim)
        if not index.is_trained and n == 0:
            raise InvalidKindError(f"{factory!r} needs training vectors; build it from a catalog")
        ann.train(index, xb)
        timings["train_s"] = time.perf_counter() - t
        t = time.perf_counter()
        held = tuning_split(n) if tunable_param(index) else np.zeros(0, np.int64)
        mask = np.ones(n, dtype=bool)
        mask[held] = False
        rest = np.flatnonzero(mask)
        with tqdm(total=n, desc="indexing vectors", unit="vec", disable=not progress) as bar:
            ann.add(index, xb, fids, rows=rest, progress=bar)
            timings["add_s"] = time.perf_counter() - t
            t = time.perf_counter()
            defaults, tuning = tune(index, xb, fids, held, target_recall=target_recall)
            timings["tune_s"] = time.perf_counter() - t
            ann.add(index, xb, fids, rows=held, progress=bar)

        manifest = Manifest(
            model_name=model_name,
            checkpoint_hash=str(checkpoint_hash),
            dim=dim,
            kind=kind,
            factory=factory,
            count=n,
            search_defaults=defaults,
            tuning=tuning,
            # When: a server's /v1/info names the build it serves.
            source={"built": utc_now(), **(source or {})},
            image_roots=image_roots(
                [
                    m["image"]
                    for m in mds
                    if isinstance(m.get("image"), str) and not is_uri(m["image"])
                ]
            ),
        )
        out = replaced_path(out)  # a link: the index it names
        # A unique hidden sibling: same filesystem (the swap is a rename), never another build's.
        tmp = temporary_folder(out, "building-")
        try:
            t = time.perf_counter()
            ann.write(index, tmp / faiss_file_name(0))
            timings["write_s"] = time.perf_counter() - t
            t = time.perf_counter()
            size = (tmp / faiss_file_name(0)).stat().st_size
            _write_store(tmp / STORE_NAME, ids, mds, fids, progress, size)
            timings["store_s"] = time.perf_counter() - t
            t = time.perf_counter()
            write_manifest(tmp, manifest)
            fsync_dir(tmp)
            timings["write_s"] += time.perf_counter() - t
            move_into_place(tmp, out, overwrite=overwrite, expect=replaced)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if store is not None:
            from index.pg_admin import push_folder

            t = time.perf_counter()
            push_folder(out, store, overwrite=overwrite)
            timings["store_s"] += time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        log.info(
            "built %s: %d items, kind %s, %s in %.1f s",
            out,
            n,
            kind,
            ", ".join(f"{k}={v}" for k, v in defaults.items()) or "exact",
            timings["total_s"],
        )
        return BuildReport(out, manifest, timings)
    finally:
        if isinstance(replaced, IndexState):
            replaced.close()  # the replaced folder, held open since the start


def _write_store(
    path: Path,
    ids: list[str],
    mds: list[dict[str, Any]],
    fids: np.ndarray,
    progress: bool,
    faiss_bytes: int,
) -> None:
    store = CatalogStore(path, create=True)
    try:
        store.set_synchronous("OFF")  # a fresh folder: fsynced once below, then renamed
        chunk = 20_000
        with (
            store.transaction(),
            tqdm(total=len(ids), desc="storing metadata", unit="item", disable=not progress) as bar,
        ):
            for start in range(0, len(ids), chunk):
                stop = start + chunk
                store.insert_items(fids[start:stop], ids[start:stop], mds[start:stop])
                bar.update(len(ids[start:stop]))
            store.set_state(
                next_fid=len(ids),
                checkpoint_file=faiss_file_name(0),
                checkpoint_seq=0,
                # what check_index_files compares the file with
                checkpoint_size=checkpoint_size(faiss_file_name(0), faiss_bytes),
            )
        store.checkpoint_wal(truncate=True)
    finally:
        store.close()
    fsync_path(path)


class IndexState:
    """Which index a folder holds and how far its journal reached: what a build or restore
    that replaces it checks again before its swap. The folder is held open meanwhile (``fd``;
    None where no index was there): a swap puts in another folder, and an open folder's inode
    cannot be reused, so another build or restore that landed meanwhile shows whatever its
    journal says (comparing inode numbers alone, ext4 gave a folder made after two swaps the
    first one's number in 20 of 20 tries). ``head``: None where not compared."""

    def __init__(self, fd: int | None, head: int | None) -> None:
        self.fd, self.head = fd, head

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` is still the index held (or still none, where none was)."""
        if self.fd is None:
            return not (folder / MANIFEST_NAME).is_file()
        try:
            now, held = os.stat(folder), os.fstat(self.fd)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()


def index_state(folder: Path, *, journal: bool = True) -> IndexState:
    """The :class:`IndexState` of ``folder`` now (``journal``: with its journal head)."""
    if not (folder / MANIFEST_NAME).is_file():
        return IndexState(None, None)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return IndexState(None, None)
    return IndexState(fd, journal_head(folder) if journal else None)


def journal_head(folder: Path) -> int | None:
    """The last journal record's seq of the index at ``folder`` (it only grows), or None
    where no index store can be read there."""
    if not (folder / MANIFEST_NAME).is_file():
        return None
    try:
        store = CatalogStore(folder / STORE_NAME)
    except (CatalogIndexError, sqlite3.Error, OSError):
        return None
    try:
        return store.journal_head()
    except (CatalogIndexError, sqlite3.Error):
        return None
    finally:
        store.close()


def rename_unless_taken(tmp: Path, out: Path, refusal: str) -> None:
    """Rename ``tmp`` to ``out``, absent or an empty folder: one rename, so a folder another
    command filled meanwhile stays (ENOTEMPTY, never a swap) and ``refusal`` is raised."""
    try:
        os.rename(tmp, out)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise BuildInputError(f"{out}: {refusal}") from None


def move_into_place(
    tmp: Path, out: Path, *, overwrite: bool = True, expect: IndexState | None = None
) -> None:
    """Swap the finished build in for ``out``, holding the old index's lock exclusively
    meanwhile (so no process has it open). Without ``overwrite`` it only takes an absent or
    empty ``out``, in one rename: an index another command put there meanwhile stays.
    ``expect``: ``out``'s :func:`index_state` when the build or restore began; another index
    put there since, or changes (items added or removed meanwhile, which the swap would
    lose), are refused. ``out`` is no link (see :func:`common.fsutil.replaced_path`): a
    rename replaces a link, not the folder it names."""
    if not overwrite:
        rename_unless_taken(
            tmp, out, "another index was put there while this one was made; not replacing it "
            "(use --overwrite, or overwrite=True)",
        )  # fmt: skip
        fsync_dir(out.parent)
        return
    try:
        lock = lock_writer(out) if (out / MANIFEST_NAME).is_file() else None
    except IndexLockedError as exc:  # checked before the work began: opened since
        raise IndexLockedError(
            f"{exc}. It was opened while the new index was made, which is discarded: run "
            "this again once it is closed"
        ) from None
    try:
        if expect is not None and not expect.holds(out):  # a build or restore landed
            raise BuildInputError(
                f"{out}: another index was put there while this one was made; not replacing "
                "it (run this again to replace that one)"
            )
        now = journal_head(out) if expect is not None and expect.head is not None else None
        if now is not None and now != expect.head:
            raise BuildInputError(
                f"{out}: {now - expect.head} change(s) (adds, removes or metadata updates) "
                "reached this index while the build ran, and replacing it would lose them; "
                "not replaced. Build again from embeddings that hold them, or stop the "
                "writers first"
            )
        swap_folder(tmp, out, out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}")
    finally:
        if lock is not None:
            os.close(lock)


def build_from_files(
    embeddings: str | Path,
    out: str | Path,
    *,
    catalog: str | Path | None = None,
    kind: str = "auto",
    target_recall: float = 0.95,
    overwrite: bool = False,
    progress: bool = True,
    store: str | None = None,
) -> BuildReport:
    """``phonesim index build``: embeddings HDF5 (+ optional catalog CSV) to an index folder
    (and into the PostgreSQL ``store``, if given)."""
    # Before reading: an input inside the index it replaces would be deleted with it.
    check_index_target(Path(out), overwrite=overwrite, inputs=(embeddings, catalog))
    # Before reading too: an add to the old index while a large file is read is one the
    # new index lacks as well.
    replaced = index_state(Path(out)) if overwrite else None
    try:
        emb = read_embeddings(embeddings)
        rows = read_catalog_csv(catalog) if catalog is not None else None
        metadata = join_metadata(emb.ids, emb.labels, rows)
        _warn_images_changed_since(metadata, emb.created, Path(embeddings))
        warn_labels_unknown(
            f"catalog {catalog or embeddings}",
            (md.get("label") for md in metadata),
            emb.label_names,
        )
        source = {
            "embeddings": str(Path(embeddings).resolve()),
            "catalog": str(Path(catalog).resolve()) if catalog is not None else None,
            "label_names": emb.label_names,
            "failed_images": emb.failed,
            "embedding_runtime": emb.runtime,
            "embedding_precision": emb.precision,
        }
        return build_index(
            out,
            emb.ids,
            emb.xb,
            metadata,
            model_name=emb.model_name,
            checkpoint_hash=emb.checkpoint_hash,
            kind=kind,
            target_recall=target_recall,
            overwrite=overwrite,
            progress=progress,
            source=source,
            store=store,
            replaced=replaced,
        )
    finally:
        if replaced is not None:
            replaced.close()  # build_index closed it, unless reading the inputs failed


def create_index(
    path: str | Path,
    dim: int,
    *,
    model_name: str,
    checkpoint_hash: str,
    kind: str = "flat",
    options: IndexOptions | None = None,
) -> CatalogIndex:
    """An empty index (``flat``, ``hnsw`` or an untrained-OK factory), opened for writing."""
    build_index(
        path,
        [],
        np.zeros((0, dim), np.float32),
        model_name=model_name,
        checkpoint_hash=checkpoint_hash,
        dim=dim,
        kind="flat" if kind == "auto" else kind,
    )
    return CatalogIndex.open(path, options=options)
