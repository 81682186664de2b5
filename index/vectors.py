"""Checking and normalising vectors and ids at the library boundary."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

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


def prepare_ids(ids: Iterable[str], what: str = "ids") -> list[str]:
    """The ids as a list of unique non-empty strings (``ValueError`` subclasses otherwise)."""
    if isinstance(ids, str | bytes):
        raise InvalidMetadataError(f"{what} must be a sequence of strings, not one string")
    out = list(ids)
    for i in out:
        if not isinstance(i, str) or not i:
            raise InvalidMetadataError(f"{what} must be non-empty strings, got {i!r}")
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dups = [i for i in out if i in seen or seen.add(i)]
        raise DuplicateIdError(f"{what} repeat within the batch: {', '.join(map(repr, dups[:5]))}")
    return out


def _rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:5])
    return shown + (f" (and {len(rows) - 5} more)" if len(rows) > 5 else "")
