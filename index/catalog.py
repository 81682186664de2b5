"""``CatalogIndex``: k-NN search over a catalog of phones that can be updated while in use.

It opens an index folder (:mod:`index.folder`): the catalog store of ids, metadata and journal
(:mod:`index.store`) and this process's FAISS copy (:mod:`index.replica`). Searches are
planned by :mod:`index.filtered_search`.

Durability: ``add``, ``remove`` and ``update_metadata`` commit one store transaction holding
the change *and* a journal record (with the vectors), then apply it to this process's FAISS
copy. Opening replays the journal records newer than the snapshot, so a change that returned
survives SIGKILL or power loss. :meth:`CatalogIndex.compact` (automatic by journal size or
age) folds the journal into a new snapshot.

Concurrency (:mod:`index.following`, index/README.md): any number of processes open the same
store, writable or not; the store's transactions serialise writes, and each process follows
the journal (:meth:`CatalogIndex.sync`). In one process, searches run in parallel and see an
update either entirely or not at all (readers-writer lock).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index import ann
from index.errors import (
    InvalidParamsError,
    InvalidVectorsError,
    ReadOnlyFolderError,
    UnknownIdError,
)
from index.filtered_search import Live, in_tie_order, knn_search
from index.folder import summary
from index.following import Following
from index.inputs import clean_metadata_rows, is_storable, prepare_ids, prepare_vectors
from index.results import Hit, Item, hits_of
from index.store import CatalogStore

log = logging.getLogger(__name__)


# Searches again when items the store has removed came back (see search): each round leaves
# out those found; more rounds only while other processes keep removing the very hits.
GONE_RETRIES = 3
# One add is one journal record, its vectors one value in the store: SQLite holds at most
# 1,000,000,000 bytes in one (200,000 vectors of 1280 floats were a "string or blob too big"
# traceback), PostgreSQL 1 GiB. Bulk loads go through `index build`.
MAX_ADD_BYTES = 900_000_000


@dataclass(frozen=True)
class IndexOptions:
    """Run-time settings of an opened index (not stored in the folder).

    Compaction (folding the journal into a new snapshot) is due when the journal holds
    ``compact_entries`` records, or ``checkpoint_every`` vectors, or its oldest record is
    ``compact_age_s`` seconds old; ``auto_compact=False`` leaves it to :meth:`compact`.
    ``exact_filter_limit``: filters matching at most this many items are answered by exact
    search over just those items. ``sync_on_read``: check the store for changes (a
    microsecond ``PRAGMA data_version`` on SQLite) before each read.
    """

    checkpoint_every: int = 50_000
    exact_filter_limit: int = 50_000
    compact_entries: int = 10_000
    compact_age_s: float = 600.0
    auto_compact: bool = True
    sync_on_read: bool = True

    def __post_init__(self) -> None:
        for name, least in (("checkpoint_every", 1), ("exact_filter_limit", 0),
                            ("compact_entries", 1)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidParamsError(f"IndexOptions.{name} must be an integer >= {least}")
        if not (isinstance(self.compact_age_s, int | float) and self.compact_age_s > 0):
            raise InvalidParamsError("IndexOptions.compact_age_s must be a positive number")


class CatalogIndex(Following):
    """An opened catalog index. Use :meth:`open` (or :func:`index.build.build_index`)."""

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path | None,
        *,
        readonly: bool = False,
        store: str | None = None,
        expect_model: str | None = None,
        expect_checkpoint_hash: str | None = None,
        expect_dim: int | None = None,
        options: IndexOptions | None = None,
    ) -> CatalogIndex:
        """Open an index, checking it against the embedder that will query it.

        ``store``: None for the SQLite store of the index folder ``path``; a
        ``postgresql://`` URL for a PostgreSQL store (``path`` then only names it in
        messages and may be None). Any number of processes may open the same store, writable
        or not: writes serialise in the store, and each process follows the others' changes
        (:meth:`sync`). ``readonly=True`` refuses writes here.
        ``expect_*`` (None: not checked) must match the manifest, else
        :class:`~index.errors.IndexMismatchError` names each difference.
        """
        from index.stores import open_source

        source, manifest, where = open_source(path, store)
        try:
            if not readonly and getattr(source, "frozen", False):
                raise ReadOnlyFolderError(
                    errno.EROFS,
                    "the index folder is on read-only media: it can be searched, served and "
                    "copied ('phonesim index snapshot'), not changed; to change it, copy it to "
                    "a writable place",
                    where,
                )
            manifest.check(
                expect_model=expect_model,
                expect_checkpoint_hash=expect_checkpoint_hash,
                expect_dim=expect_dim,
                where=f"index {where}",
            )
            self = cls(
                Path(path) if path is not None else None,
                manifest,
                source,
                readonly=readonly,
                options=options or IndexOptions(),
            )
            self._start()
        except BaseException:
            source.close()
            raise
        log.debug("opened %s: %d items, kind %s", where, len(self), manifest.kind)
        return self

    # -- basic accessors ----------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def search_defaults(self) -> dict[str, int]:
        """Search parameters used when a query gives none (tuned at build time)."""
        return dict(self.manifest.search_defaults)

    @property
    def filterable_fields(self) -> frozenset[str]:
        """Metadata fields usable in ``search(filter=...)``."""
        self._fresh()
        with self._rw.read():
            self._check_open()
            return self._store.fields()

    @property
    def store(self) -> CatalogStore:
        """The catalog store this process reads (:meth:`CatalogStore.field_values`, ...)."""
        return self._store

    def __len__(self) -> int:
        self._fresh()
        return self._replica.count

    def __contains__(self, id_: object) -> bool:
        if not isinstance(id_, str):
            return False
        self._fresh()
        with self._rw.read():
            self._check_open()
            return self._store.get(id_) is not None

    def ids(self) -> Iterator[str]:
        """Iterate over the catalog ids (in insertion order)."""
        self._check_open()
        self._fresh()
        return self._store.iter_ids()

    def get(self, id_: str) -> Item:
        """The stored item; :class:`~index.errors.UnknownIdError` (a ``KeyError``) if absent."""
        self._fresh()
        with self._rw.read():
            self._check_open()
            row = self._store.get(id_) if isinstance(id_, str) else None
        if row is None:
            raise UnknownIdError([str(id_)], "get")
        return Item(row.id, row.metadata)

    def field_types(self) -> dict[str, str]:
        """Each filterable field's type as filters see it (``number``, ``boolean``, ``text``,
        ``empty``). Stopgap for the server's OpenAPI document (ranges on numeric fields only)."""
        self._fresh()
        with self._rw.read():
            self._check_open()
            return {f: self._store.field_type(f) for f in sorted(self._store.fields())}

    def list_items(
        self, after: str | None = None, limit: int = 100, filter: Mapping[str, Any] | None = None
    ) -> list[Item]:
        """Up to ``limit`` items with ids after ``after`` (None: from the start), in id order:
        page with ``after=<last id of the previous page>``. ``filter`` as in :meth:`search`."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidParamsError(f"limit must be a non-negative integer, got {limit!r}")
        if after is not None and not isinstance(after, str):
            raise InvalidParamsError(f"after must be an id (a string), got {after!r}")
        self._fresh()
        with self._rw.read():
            self._check_open()
            allowed = None if filter is None else self._store.filter_fids(filter)
            rows = self._store.list_items(after, limit, allowed) if limit else []
        return [Item(r.id, r.metadata) for r in rows]

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored unit vectors of ``ids`` (len(ids) x dim float32), e.g. to query by item."""
        ids = list(ids)
        self._fresh()
        with self._rw.read():
            self._check_open()
            found = self._store.fids_for_ids(ids)
            bound = self._replica.id_bound
            missing = [i for i in ids if i not in found or found[i] >= bound]
            if missing:
                raise UnknownIdError(missing, "get vectors of")
            fids = np.array([found[i] for i in ids], np.int64)
            return ann.reconstruct(self._replica.index, fids)

    def info(self) -> dict[str, Any]:
        """A summary for humans and ``phonesim index info --json``."""
        self._fresh()
        with self._rw.read():
            self._check_open()
            r = self._replica
            info = summary(self.path, self.manifest, self._store, r.count, r.pending, r.ck_name)
        return {**info, "hidden_removed": int(len(r.dead))}

    def store_bytes(self) -> int | None:
        """What a PostgreSQL store's catalog takes in its database (a round trip, so not
        part of :meth:`info`, which a server answers from memory); None for a folder."""
        disk = getattr(self._source, "disk_bytes", None)
        return disk() if disk is not None else None

    # -- search -----------------------------------------------------------------------------
    def search(
        self,
        xq: np.ndarray,
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        exclude_ids: Iterable[str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` most similar catalog items to each query, best first: one list per query.

        ``xq``: queries as rows (2-D), or one query as a 1-D vector (still one list of hits
        per query: ``search(v, k)[0]``). Queries are L2-normalised, so ``Hit.score`` is the
        cosine similarity.
        ``k`` larger than the matching items returns all of them; an empty catalog returns
        empty lists. Equal scores come in the order the items were added, so a larger ``k``
        only appends to a smaller one's list (for ties reaching at most
        :data:`~index.filtered_search.TIE_REACH` past ``k``).
        ``filter``: ``{field: value}`` equality, a list for any of,
        ``{field: {"lt": 300, "gte": 100}}`` ranges on numeric fields, ``eq``/``in`` operators;
        several fields mean all of (grammar: :mod:`index.filters`); unknown fields, operators
        or a range on a text field raise :class:`~index.errors.InvalidFilterError`.
        ``exclude_ids``: ids never returned (unknown ones are ignored). ``params``: per-query
        ``nprobe``/``efSearch`` overriding :attr:`search_defaults`. Filters matching at most
        ``options.exact_filter_limit`` items are searched exactly. Results are never silently
        short: when the approximate search cannot supply ``k`` matching items, the rest of the
        search is exact.
        """
        xq = prepare_vectors(xq, self.dim, what="queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidParamsError(f"k must be a positive integer, got {k!r}")
        merged = {**self.manifest.search_defaults, **(params or {})}
        self._fresh()
        with self._rw.read():
            self._check_open()
            r = self._replica
            index = r.index
            self._cache.params(index, merged)  # validate even where the search is exact
            # The store may be a moment ahead of this copy: only fids applied here are asked
            # of FAISS; items removed in the store but not yet here are dropped by lookup.
            bound = r.id_bound
            allowed = None if filter is None else self._store.filter_fids(filter)
            if allowed is not None and len(allowed) and allowed[-1] >= bound:
                allowed = allowed[allowed < bound]
            excluded = np.zeros(0, np.int64)
            if exclude_ids is not None:
                ids = [exclude_ids] if isinstance(exclude_ids, str) else list(exclude_ids)
                excluded = np.unique(np.fromiter(self._store.fids_for_ids(ids).values(), np.int64))

            def live_fids() -> np.ndarray:
                fids = self._store.live_fids()
                return fids[fids < bound]

            live = Live(r.count, live_fids, bound, r.dead)
            for _ in range(GONE_RETRIES + 1):
                D, I = in_tie_order(
                    lambda rows, n, excluded=excluded: knn_search(
                        index,
                        xq[rows],
                        n,
                        live,
                        params=merged,
                        allowed=allowed,
                        excluded=excluded,
                        exact_limit=self.options.exact_filter_limit,
                        cache=self._cache,
                    ),
                    len(xq),
                    int(k),
                )
                found = I[I >= 0]
                rows = self._store.lookup(found)
                # Removed in the store (by another process) since this copy last caught up:
                # searched again without them, or the answer would be short of k.
                gone = np.setdiff1d(found, np.fromiter(rows, np.int64, len(rows)))
                if not len(gone):
                    break
                excluded = np.union1d(excluded, gone)
        return hits_of(D, I, rows)

    # -- updates -----------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        xb: np.ndarray,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Add items durably: when this returns, the change is committed in the store (and
        survives a crash) and this process answers with it.

        ``xb``: ``len(ids) x dim`` floats, re-normalised to unit length. ``metadata``: one
        mapping (field -> str/number/bool/None) per id, or None. Raises
        :class:`~index.errors.DuplicateIdError` if an id is already present or repeated,
        ``ValueError`` subclasses for bad vectors or metadata, and
        :class:`~index.errors.StoreUnavailableError` when the store cannot be reached; on
        error nothing is added, except after its subclass
        :class:`~index.errors.StoreOutcomeUnknownError` (the connection broke during the
        commit: the items may be in the store, and this process follows them if so).
        """
        self._check_writable()
        ids = prepare_ids(ids)
        xb = prepare_vectors(xb, self.dim, n=len(ids))
        mds = clean_metadata_rows(metadata, len(ids), ids)
        if not ids:
            return
        if xb.nbytes > MAX_ADD_BYTES:
            most = MAX_ADD_BYTES // xb[0].nbytes
            raise InvalidVectorsError(
                f"one add takes at most {most:,} vectors of {self.dim} floats (its journal "
                f"record must stay under {MAX_ADD_BYTES / 1e6:,.0f} MB), got {len(ids):,}: "
                "add them in parts, or build the index from them ('phonesim index build')"
            )
        self._applied_own(self._source.commit_add(ids, xb, mds))

    def remove(self, ids: Iterable[str]) -> None:
        """Remove items durably. Unknown ids raise :class:`~index.errors.UnknownIdError`
        (a ``KeyError``) and nothing is removed; repeated ids count once."""
        self._check_writable()
        ids = list(dict.fromkeys([ids] if isinstance(ids, str) else ids))
        if not ids:
            return
        unstorable = [str(i) for i in ids if not isinstance(i, str) or not is_storable(i)]
        if unstorable:  # no store holds such an id (PostgreSQL refuses a NUL in a query)
            raise UnknownIdError(unstorable, "remove")
        self._applied_own(self._source.commit_remove(ids))

    def update_metadata(
        self,
        id_: str,
        metadata: Mapping[str, Any],
        *,
        merge: bool = True,
        check: Callable[[Mapping[str, Any]], None] | None = None,
        keep: Collection[str] = (),
    ) -> Item:
        """Change an item's metadata (vectors untouched), durably and journaled, so every
        process sees it; ``merge=False`` replaces it, but for the ``keep`` fields the item
        has (read in the write's transaction). Returns the item as now stored.
        :class:`~index.errors.UnknownIdError` (a ``KeyError``) for an unknown id.

        ``check`` sees the metadata the item would have, inside the write's transaction (so a
        concurrent update cannot slip between the check and the write); whatever it raises
        leaves the item as it was."""
        self._check_writable()
        if not isinstance(id_, str):  # a list of ids had been "unknown id(s) "['a']""
            raise TypeError(f"update_metadata takes one id (a string), got {type(id_).__name__}")
        if not is_storable(id_):  # then it cannot be stored here
            raise UnknownIdError([id_], "update")
        md = clean_metadata_rows([metadata], 1, [id_])[0]
        rec, row = self._source.commit_meta(id_, md, merge, check, keep)
        self._applied_own(rec)
        return Item(row.id, row.metadata)

    # -- closing ----------------------------------------------------------------------------
    def __enter__(self) -> CatalogIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} items"
        return f"CatalogIndex({self.where!r}, kind={self.kind!r}, {state})"


def open_index(path: str | Path | None, **kwargs: Any) -> CatalogIndex:
    """Shorthand for :meth:`CatalogIndex.open`."""
    return CatalogIndex.open(path, **kwargs)
