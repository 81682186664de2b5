"""Errors raised by the index package.

Every error here subclasses :class:`common.errors.UserError`, so the ``phonesim`` command
prints it as one line. Errors about bad arguments also subclass ``ValueError`` (or ``KeyError``
for unknown ids), so library callers and the server can catch the usual built-in types.
"""

from __future__ import annotations

from common.errors import MachineError, UserError


class CatalogIndexError(UserError):
    """Base class for every error raised by the index package."""


class IndexNotFoundError(CatalogIndexError):
    """The index folder, or a file it must hold, does not exist."""


class ManifestError(CatalogIndexError):
    """``manifest.json`` is missing a field, malformed, or written by an unknown format version."""


class IndexMismatchError(CatalogIndexError):
    """The index was built with another embedder (model, checkpoint) or another dimension."""


class IndexLockedError(CatalogIndexError):
    """Another process holds the index folder's lock (a build replacing it, a compaction)."""


class StoreUnavailableError(CatalogIndexError):
    """The catalog store (the SQLite file or the PostgreSQL server) cannot be reached.

    Writes raise it and change nothing; reads keep answering from the last state this process
    holds, and :attr:`index.catalog.CatalogIndex.sync_status` carries the error.
    """


#: SQLite's primary result code for a full disk (``index.store.machine_failure`` reads it too).
SQLITE_FULL = 13


class StoreMachineError(StoreUnavailableError, MachineError):
    """The machine failed the catalog store (a full disk, an I/O error): nothing was changed,
    and the command exits 1, not 2 as for bad input."""

    @classmethod
    def of(cls, where: object, exc: Exception) -> StoreMachineError:
        return cls(
            f"{where}: the machine failed the catalog store ({exc}); nothing was changed: "
            "free some space (or mend the disk) and run it again"
        )

    @property
    def disk_full(self) -> bool:
        cause = self.__cause__
        code = getattr(cause, "sqlite_errorcode", 0) & 0xFF
        return code == SQLITE_FULL or "disk is full" in str(self)


class StoreOutcomeUnknownError(StoreUnavailableError):
    """The connection to the store broke while a write was committing: the write may have
    been made or not, so unlike the other :class:`StoreUnavailableError` it is not "nothing
    changed". Read the item back before sending the write again."""


class CatalogReplacedError(StoreUnavailableError):
    """A write reached a catalog other than the one this process loaded (replaced by ``index
    restore`` or ``build --overwrite`` since): nothing was written, and the process reloads the
    new catalog at its next sync (or, built with another embedder, reports it unusable)."""


class StoreRefusedError(CatalogIndexError, ValueError):
    """The catalog store refused a write for what it holds (a value beyond one of its limits):
    retrying the same write cannot help, unlike :class:`StoreUnavailableError`."""


class ReadOnlyIndexError(CatalogIndexError):
    """A write (add, remove, checkpoint) was attempted on an index opened read-only."""


class ReadOnlyFolderError(ReadOnlyIndexError, PermissionError):
    """The index folder cannot be written here (read-only media, another user's folder):
    a usage error (exit 2) as every other refusal of such a folder is, and still a
    ``PermissionError`` for callers that read what they can without the lock."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class IndexCorruptError(CatalogIndexError):
    """The FAISS file and the catalog store disagree, or a file cannot be decoded."""


_READS = ("look up", "get", "get vectors of")


class UnknownIdError(CatalogIndexError, KeyError):
    """One or more catalog ids are not in the index."""

    def __init__(self, ids: list[str], action: str = "look up") -> None:
        self.ids = list(ids)
        shown = ", ".join(repr(i) for i in self.ids[:5])
        more = f" (and {len(self.ids) - 5} more)" if len(self.ids) > 5 else ""
        # A write that names an unknown id changes nothing; a read has nothing to change.
        changed = "" if action in _READS else "; nothing was changed"
        super().__init__(f"cannot {action}: unknown id(s) {shown}{more}{changed}")

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


#: The name the HTTP API uses for an unknown id (same class).
ItemNotFoundError = UnknownIdError


class DuplicateIdError(CatalogIndexError, ValueError):
    """An add repeats an id that is already in the index or twice in the same batch."""


class InvalidVectorsError(CatalogIndexError, ValueError):
    """Vectors have the wrong shape, dimension or dtype, or hold NaN, inf or all-zero rows."""


class InvalidMetadataError(CatalogIndexError, ValueError):
    """Metadata is not a mapping of field names to strings, numbers, booleans or None."""


class InvalidFilterError(CatalogIndexError, ValueError):
    """A search filter names an unknown field or has a malformed value."""


class InvalidParamsError(CatalogIndexError, ValueError):
    """A search parameter (``nprobe``, ``efSearch``, ...) does not apply to this index kind."""


class InvalidKindError(CatalogIndexError, ValueError):
    """An index kind or FAISS factory string cannot be built."""


class BuildInputError(CatalogIndexError):
    """The embeddings HDF5 file or the catalog CSV given to a build is missing or malformed."""
