"""Checking and normalising what callers hand the library: vectors, ids and metadata.

Everything is checked before anything is written, so a bad batch changes nothing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from common.item_ids import ID_RULES, MAX_ID_BYTES, is_item_id
from common.text import is_utf8
from index.errors import DuplicateIdError, InvalidMetadataError, InvalidVectorsError


def prepare_vectors(
    x: np.ndarray, dim: int, *, n: int | None = None, what: str = "vectors"
) -> np.ndarray:
    """A C-contiguous float32 copy of ``x`` (n x dim), each row scaled to unit L2 norm.

    Accepts any floating dtype (float64 and float16 are cast) and a 1-D vector as one row.
    Raises :class:`InvalidVectorsError` for other dtypes, other shapes or dimensions, a row
    count other than ``n``, NaN or infinite values, and all-zero rows (no direction).
    Re-normalising makes scores cosine similarities even for inputs that drifted off unit norm.
    """
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise InvalidVectorsError(f"{what} must be floating point, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidVectorsError(f"{what} must be 1-D or 2-D (n x {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise InvalidVectorsError(f"{what} have dimension {arr.shape[1]}, the index expects {dim}")
    if n is not None and arr.shape[0] != n:
        raise InvalidVectorsError(f"got {arr.shape[0]} {what} for {n} ids")
    out = np.array(arr, dtype=np.float32, order="C", copy=True)
    if out.size == 0:
        return out.reshape(arr.shape[0], dim)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InvalidVectorsError(f"{what} hold NaN or infinite values in row(s) {_rows(bad)}")
    norms = np.linalg.norm(out, axis=1)
    if (norms < 1e-12).any():
        zero = np.flatnonzero(norms < 1e-12)
        raise InvalidVectorsError(f"{what} are all zero in row(s) {_rows(zero)}")
    out /= norms[:, None]
    return out


def storable_text(text: str, what: str) -> None:
    """Refuse text no store can hold as it is: a NUL (PostgreSQL's text refuses it) or a lone
    surrogate (not UTF-8)."""
    if "\x00" in text:
        raise InvalidMetadataError(f"{what} must not contain a NUL character: {text[:40]!r}")
    if not is_utf8(text):
        raise InvalidMetadataError(f"{what} is not valid Unicode (a lone surrogate): {text[:40]!r}")


def is_storable(text: str) -> bool:
    """Whether every store can hold ``text`` (see :func:`storable_text`)."""
    try:
        storable_text(text, "text")
    except InvalidMetadataError:
        return False
    return True


def prepare_ids(ids: Iterable[str], what: str = "ids") -> list[str]:
    """The ids as a list of unique non-empty strings (``ValueError`` subclasses otherwise)."""
    if isinstance(ids, str | bytes):
        raise InvalidMetadataError(f"{what} must be a sequence of strings, not one string")
    out = list(ids)
    for i in out:
        if not isinstance(i, str) or not i:
            raise InvalidMetadataError(f"{what} must be non-empty strings, got {i!r}")
        storable_text(i, f"id {i[:40]!r}")
        if not is_item_id(i):  # the server could neither show, change nor remove it
            raise InvalidMetadataError(
                f"id {i[:40]!r} cannot be addressed as /v1/items/<id>: an id must be {ID_RULES}"
            )
        if len(i.encode("utf-8")) > MAX_ID_BYTES:
            raise InvalidMetadataError(
                f"ids must be at most {MAX_ID_BYTES} bytes of UTF-8, got one of "
                f"{len(i.encode('utf-8'))}: {i[:40]!r}..."
            )
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dups = [i for i in out if i in seen or seen.add(i)]
        raise DuplicateIdError(f"{what} repeat within the batch: {', '.join(map(repr, dups[:5]))}")
    return out


def _rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:5])
    return shown + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")


def canonical_value(value: Any, where: str = "metadata") -> str | None:
    """The text form under which a scalar is indexed and matched by filters (None: not indexed)."""
    if value is None:
        return None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            raise InvalidMetadataError(f"{where}: non-finite number {value!r}")
        return str(int(f)) if f.is_integer() else repr(f)
    raise InvalidMetadataError(
        f"{where}: values must be strings, numbers, booleans or None, got {type(value).__name__}"
    )


def clean_metadata(metadata: Mapping[str, Any] | None, where: str = "metadata") -> dict[str, Any]:
    """Copy one item's metadata into plain JSON types, rejecting what cannot be stored."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"{where}: expected a mapping, got {type(metadata).__name__}")
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidMetadataError(f"{where}: field names must be non-empty strings: {key!r}")
        storable_text(key, f"{where}: field name")
        if isinstance(value, str):
            storable_text(value, f"{where}[{key!r}]")
        canonical_value(value, f"{where}[{key!r}]")
        if isinstance(value, bool | np.bool_):
            out[key] = bool(value)
        elif value is None or isinstance(value, str):
            out[key] = value if value is None else str(value)
        elif isinstance(value, numbers.Integral):
            out[key] = int(value)
        else:
            out[key] = float(value)
    return out


def clean_metadata_rows(
    metadata: Sequence[Mapping[str, Any] | None] | None,
    n: int,
    ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One cleaned metadata mapping per item of a batch of ``n`` (empty for None); an error
    names the item's id when ``ids`` are given (a row number alone was hard to find in a
    catalog CSV)."""
    if metadata is None:
        return [{} for _ in range(n)]
    metadata = list(metadata)
    if len(metadata) != n:
        raise InvalidMetadataError(f"got {len(metadata)} metadata rows for {n} ids")
    return [
        clean_metadata(m, f"metadata of {ids[i]!r}" if ids is not None else f"metadata[{i}]")
        for i, m in enumerate(metadata)
    ]
