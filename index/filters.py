"""The search filter language: parsing, typing fields from the catalog, evaluation to fids.

Grammar (a JSON-like mapping; several fields combine with AND)::

    {field: value}                    equality
    {field: [v1, v2, ...]}            any of (an empty list matches nothing)
    {field: {op: operand, ...}}       operators on one field combine with AND:
        "eq": value                   equality
        "in": [v1, v2, ...]           any of
        "lt" | "lte" | "gt" | "gte": number    range (bounds exclusive / inclusive)

Values are strings, finite numbers or booleans. A field's type comes from the values the catalog
holds: ``boolean`` when every value is true/false, ``number`` when most stored values are
numbers (an int, a float, or text that spells a decimal number, as CSV catalogs give; ranges
skip the items holding a word), else ``text``. Equality on a numeric field compares numbers
(``300`` matches ``"300.0"``) and words as text; on other fields it compares the text form
under which metadata is indexed (``inputs.canonical_value``).

Ranges need a numeric field; their bound is a finite number or a string spelling one
(``"300"``, as query strings give). String ranges are refused rather than compared
lexicographically: text order puts ``"1000"`` before ``"300"``, which silently gives wrong
answers on prices held as text. Numbers compare as 64-bit floats (integers beyond 2**53 round).

Every malformed filter raises :class:`~index.errors.InvalidFilterError` with a message naming
the field: unknown fields (listing the filterable ones), unknown operators, a range on a text
or boolean field (naming its type), wrong operand types (None, dict, bool or NaN/inf where a
number is needed).

Evaluation caches, per field, the numeric column (values sorted, with their fids) and, per
filter, its sorted fids, so a range costs two binary searches and a sort of the matching ids
once per catalog state. When the store's ``generation`` changes (every committed write, every
journal record applied) the columns are updated by the rows that changed and the results of
the fields changed are dropped; where the store cannot say which rows changed, all are.
"""

from __future__ import annotations

import math
import numbers
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from index.errors import InvalidFilterError, InvalidMetadataError
from index.inputs import canonical_value

RANGE_OPS = ("lt", "lte", "gt", "gte")
OPERATORS = ("eq", "in", *RANGE_OPS)
# A decimal number as canonical_value writes it or a CSV holds it; no spaces, no "nan"/"inf".
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_BOOLEANS = frozenset({"true", "false"})
_RESULTS_KEPT = 32  # filter results cached per catalog state
_RESULT_IDS_KEPT = 16_000_000  # ... holding at most this many ids in all (128 MB)


class FilterSource(Protocol):
    """What evaluation needs of a catalog store; an int ``generation`` attribute, changed at
    each write, lets the engine cache (without one it re-reads at every call), and a
    ``row_changes_since(generation)`` (:class:`RowChanges` per change, None where not known)
    lets it update its caches rather than drop them."""

    def fields(self) -> frozenset[str]: ...

    def field_values(self, field: str) -> tuple[np.ndarray, list[str]]: ...

    def equal_fids(self, field: str, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Condition:
    """What one field of a filter asks, its operators folded together.

    ``values``: canonical texts of which the field must equal one (None: no equality asked).
    ``low``/``high``: the range (infinite: open), each end inclusive or not.
    """

    field: str
    values: tuple[str, ...] | None = None
    low: float = -math.inf
    low_inclusive: bool = True
    high: float = math.inf
    high_inclusive: bool = True
    range_op: str | None = None  # the first range operator given, for messages

    def numeric_values(self) -> list[float]:
        """The equality values that spell numbers, as floats."""
        return [float(v) for v in self.values or () if _is_number_text(v)]


def parse_filter(flt: Any) -> tuple[Condition, ...]:
    """The conditions of a filter, one per field, sorted by field (usable as a cache key).

    Checks the grammar only; field names and types are checked against the catalog later.
    """
    if not isinstance(flt, Mapping) or not flt:
        raise InvalidFilterError("a filter must be a non-empty mapping of field to value")
    out = []
    for name, spec in flt.items():
        if not isinstance(name, str) or not name:
            raise InvalidFilterError(f"filter field names must be non-empty strings, got {name!r}")
        out.append(_parse_field(name, spec))
    return tuple(sorted(out, key=lambda c: c.field))


def _parse_field(name: str, spec: Any) -> Condition:
    where = f"filter[{name!r}]"
    if not isinstance(spec, Mapping):
        return Condition(name, values=_equality_values(spec, where))
    if not spec:
        raise InvalidFilterError(f"{where}: empty operator object; use {_ops_list()}")
    values: set[str] | None = None
    low, low_inc, high, high_inc = -math.inf, True, math.inf, True
    range_op = None
    for op, operand in spec.items():
        if op in ("eq", "in"):
            if (op == "in") != _is_sequence(operand):
                want = "a list of values" if op == "in" else "one value (use 'in' for a list)"
                raise InvalidFilterError(
                    f"{where}[{op!r}]: expected {want}, got {_describe(operand)}"
                )
            got = set(_equality_values(operand, f"{where}[{op!r}]"))
            values = got if values is None else values & got
        elif op in RANGE_OPS:
            bound = _number(operand, f"{where}[{op!r}]")
            range_op = range_op or op
            if op in ("gt", "gte"):
                inclusive = op == "gte"
                if bound > low or (bound == low and not inclusive):
                    low, low_inc = bound, inclusive
            else:
                inclusive = op == "lte"
                if bound < high or (bound == high and not inclusive):
                    high, high_inc = bound, inclusive
        else:
            raise InvalidFilterError(f"{where}: unknown operator {op!r}; use {_ops_list()}")
    return Condition(
        name,
        values=None if values is None else tuple(sorted(values)),
        low=low,
        low_inclusive=low_inc,
        high=high,
        high_inclusive=high_inc,
        range_op=range_op,
    )


def _equality_values(spec: Any, where: str) -> tuple[str, ...]:
    """Canonical texts of an equality operand: one scalar or a list of them."""
    items = list(spec) if _is_sequence(spec) else [spec]
    texts = set()
    for v in items:
        if v is None or isinstance(v, Mapping) or _is_sequence(v):
            raise InvalidFilterError(
                f"{where}: expected a string, number or boolean, got {_describe(v)}"
            )
        try:
            texts.add(canonical_value(v, where))
        except InvalidMetadataError as exc:
            raise InvalidFilterError(str(exc)) from exc
    return tuple(sorted(t for t in texts if t is not None))


def _number(operand: Any, where: str) -> float:
    """A range bound: a finite number, or a string spelling one."""
    is_real = isinstance(operand, numbers.Real) and not isinstance(operand, bool | np.bool_)
    if is_real or (isinstance(operand, str) and _NUMBER.fullmatch(operand)):
        value = float(operand)
    else:
        raise InvalidFilterError(
            f"{where}: a range bound must be a number, got {_describe(operand)} "
            "(string ranges are not supported)"
        )
    if not math.isfinite(value):
        raise InvalidFilterError(f"{where}: a range bound must be finite, got {operand!r}")
    return value


def _is_number_text(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None and math.isfinite(float(text))


def _is_sequence(v: Any) -> bool:
    return isinstance(v, list | tuple | set | frozenset)


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    kind = {bool: "boolean", dict: "object", list: "list"}.get(type(v), type(v).__name__)
    return f"{v!r} ({kind})" if len(repr(v)) <= 40 else kind


def _ops_list() -> str:
    return ", ".join(OPERATORS)


@dataclass(frozen=True)
class Column:
    """One field's values as the catalog holds them now.

    ``kind``: ``number`` (most values spell numbers), ``boolean``, ``text`` or
    ``empty`` (no live item has the field). ``values``: the values that spell a number,
    sorted ascending, and their ``fids`` in the same order; ``others``: the sorted fids of
    the items holding a value that is not a number, ``bools`` those holding true or false
    (the counts that type the field, kept so that a write can update them);
    ``example``: the value of ``others[0]``, ``example_fid`` (the first word by fid, as a
    fresh read gives it), for messages; None where a change made another item first and its
    value is not known here: read again when a message needs one.
    """

    kind: str
    values: np.ndarray
    fids: np.ndarray
    others: np.ndarray
    bools: np.ndarray
    example: str | None = None
    example_fid: int | None = None


def make_column(fids: np.ndarray, texts: Sequence[str]) -> Column:
    """Type a field from its stored ``(fids, texts)`` and sort the values that are numbers.

    Numeric when most values are numbers: one that is not ("call us" for a price) leaves the
    field numeric and ranges skip that item, so one listing (one client's write) cannot turn
    every client's range filter on it into an error. A field of mostly words ("128GB") with
    a stray number stays text, and a range on it is an error rather than an answer about
    that one number.
    """
    fids = np.asarray(fids, np.int64)
    is_number = np.fromiter((_is_number_text(t) for t in texts), bool, len(texts))
    is_bool = np.fromiter((t in _BOOLEANS for t in texts), bool, len(texts))
    numeric = np.flatnonzero(is_number)
    values = np.array([texts[i] for i in numeric], dtype=np.float64)
    order = np.argsort(values, kind="stable")
    words = np.flatnonzero(~is_number)
    first = int(words[0]) if len(words) else None
    return _typed(
        values[order],
        fids[numeric][order],
        np.sort(fids[words]),
        np.sort(fids[is_bool]),
        None if first is None else texts[first],
        None if first is None else int(fids[first]),
    )


def _typed(
    values: np.ndarray,
    fids: np.ndarray,
    others: np.ndarray,
    bools: np.ndarray,
    example: str | None,
    example_fid: int | None,
) -> Column:
    n = len(fids) + len(others)
    if n == 0:
        kind = "empty"
    elif len(bools) == n:
        kind = "boolean"
    else:
        kind = "number" if 2 * len(fids) > n else "text"
    return Column(kind, values, fids, others, bools, example, example_fid)


def updated_column(
    col: Column, gone: np.ndarray, fids: np.ndarray, texts: Sequence[str]
) -> Column | None:
    """``col`` after its field lost the rows of the items ``gone`` and gained the rows
    ``(fids, texts)``, typed again: what a write changed, followed in O(items) array work
    instead of reading and parsing every value again (0.45 s at 200,000 items). None where
    an added item still holds a value here (an item has one value per field: the change is
    not what it says, and the column must be read anew)."""
    values, held, others, bools = col.values, col.fids, col.others, col.bools
    example, example_fid = col.example, col.example_fid  # others[0]'s, as make_column's
    if len(gone):
        keep = ~np.isin(held, gone)
        values, held = values[keep], held[keep]
        others, bools = others[~np.isin(others, gone)], bools[~np.isin(bools, gone)]
        if example_fid is not None and np.isin(example_fid, gone):
            example = example_fid = None
    if len(fids):
        fids = np.asarray(fids, np.int64)
        # (the small array second: numpy then compares, without sorting the column)
        clash = np.isin(held, fids).any() or np.isin(others, fids).any()
        if clash or len(np.unique(fids)) < len(fids):
            return None
        is_number = np.fromiter((_is_number_text(t) for t in texts), bool, len(texts))
        new = np.array([t for t, n in zip(texts, is_number, strict=True) if n], np.float64)
        order = np.argsort(new, kind="stable")
        at = np.searchsorted(values, new[order], "right")  # ascending: each lands in order
        values = np.insert(values, at, new[order])
        held = np.insert(held, at, fids[is_number][order])
        others = np.union1d(others, fids[~is_number])
        bools = np.union1d(bools, [f for f, t in zip(fids, texts, strict=True) if t in _BOOLEANS])
    else:
        fids, texts = _NO_FIDS, ()
    first = int(others[0]) if len(others) else None
    if first != example_fid:
        known = {int(f): t for f, t in zip(fids.tolist(), texts, strict=True) if f == first}
        example, example_fid = (known[first], first) if first in known else (None, None)
    return _typed(values, held, others, bools.astype(np.int64), example, example_fid)


@dataclass(frozen=True)
class RowChanges:
    """How a store's filter rows changed at one ``generation`` bump: each field lost the rows
    of the fids ``gone[field]`` and of ``gone_everywhere``, then gained the rows
    ``added[field] = (fids, texts)``. An item holds at most one row per field, so a fid
    gains a row only where it lost it first or had none."""

    gone: Mapping[str, np.ndarray]
    gone_everywhere: np.ndarray
    added: Mapping[str, tuple[np.ndarray, tuple[str, ...]]]

    @property
    def fields(self) -> frozenset[str] | None:
        """The fields changed; None: any (items lost their rows in every field)."""
        if len(self.gone_everywhere):
            return None
        return frozenset(f for f, g in self.gone.items() if len(g)) | frozenset(
            f for f, (a, _) in self.added.items() if len(a)
        )

    def gone_in(self, name: str) -> np.ndarray:
        """The sorted fids whose row in ``name`` went."""
        gone = self.gone.get(name)
        if gone is None or not len(gone):
            return self.gone_everywhere
        return np.union1d(gone, self.gone_everywhere) if len(self.gone_everywhere) else gone

    def added_in(self, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
        return self.added.get(name, (_NO_FIDS, ()))

    @property
    def size(self) -> int:
        """Rows held, for the memory a store keeps them in."""
        gone = sum(len(g) for g in self.gone.values())
        return gone + len(self.gone_everywhere) + sum(len(a) for a, _ in self.added.values())


_NO_FIDS = np.zeros(0, np.int64)


class FilterEngine:
    """Evaluates filters against one catalog store (which owns it: ``store.filter_fids``);
    thread-safe. Its caches hold while the store's ``generation`` stays the same. It never
    holds its lock while the store could wait for it (the store only bumps a counter)."""

    def __init__(self, store: FilterSource) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._generation: Any = object()
        self._columns: dict[str, Column] = {}
        self._results: OrderedDict[tuple[Condition, ...], np.ndarray] = OrderedDict()

    def fids(self, flt: Any) -> np.ndarray:
        """Sorted fids of the live items matching ``flt`` (the same array object for the same
        filter until the store changes, so callers may key caches on it)."""
        conds = parse_filter(flt)
        fields = self._store.fields()
        unknown = sorted(c.field for c in conds if c.field not in fields)
        if unknown:
            raise InvalidFilterError(
                f"unknown filter field(s) {', '.join(map(repr, unknown))}; "
                f"filterable fields are: {', '.join(sorted(fields)) or '(none)'}"
            )
        with self._lock:
            self._sync()
            cached = self._results.get(conds)
            if cached is not None:
                self._results.move_to_end(conds)
                return cached
            result: np.ndarray | None = None
            for cond in sorted(conds, key=lambda c: c.range_op is not None):  # equality first
                fids = self._condition(cond)
                result = fids if result is None else intersect_sorted(result, fids)
                if len(result) == 0:
                    break
            assert result is not None
            self._remember(conds, result)
            return result

    def field_type(self, field: str) -> str:
        """``number``, ``boolean``, ``text`` or ``empty`` for a filterable field."""
        if field not in self._store.fields():
            raise InvalidFilterError(f"unknown filter field {field!r}")
        with self._lock:
            self._sync()
            return self._column(field).kind

    def holds_caches(self) -> bool:
        """Whether a column or a result is cached: if not, a store need not read what changed
        (asked without the lock: a race only costs the caches of the change it races)."""
        return bool(self._columns or self._results)

    def _sync(self) -> None:
        """Follow the store's changes since the caches were made: each numeric column is
        updated by the rows that changed (``row_changes_since``) and the results of the
        fields changed go; where the changes are not known (another process's bulk write, a
        store without ``generation``), every cache goes."""
        gen = getattr(self._store, "generation", None)
        if gen is not None and gen == self._generation:
            return
        since = getattr(self._store, "row_changes_since", None)
        changes = since(self._generation) if gen is not None and since is not None else None
        if changes is None:
            self._columns.clear()
            self._results.clear()
        else:
            for change in changes:
                self._follow(change)
        self._generation = gen if gen is not None else object()

    def _follow(self, change: RowChanges) -> None:
        for name, col in list(self._columns.items()):
            gone, (fids, texts) = change.gone_in(name), change.added_in(name)
            if len(gone) or len(fids):
                new = updated_column(col, gone, fids, texts)
                if new is None:
                    del self._columns[name]
                else:
                    self._columns[name] = new
        fields = change.fields
        if fields is None:
            self._results.clear()
        else:
            for conds in [c for c in self._results if any(x.field in fields for x in c)]:
                del self._results[conds]

    def _column(self, field: str) -> Column:
        col = self._columns.get(field)
        if col is None:
            col = make_column(*self._store.field_values(field))
            self._columns[field] = col
        return col

    def _condition(self, cond: Condition) -> np.ndarray:
        numeric_eq = cond.values is not None and len(cond.numeric_values()) > 0
        if cond.range_op is None and not numeric_eq:
            return self._text_equal(cond.field, cond.values or ())
        col = self._column(cond.field)
        if col.kind == "number":
            found = numeric_fids(col, cond)
            # Words among the values asked for match the items holding those words.
            words = tuple(v for v in cond.values or () if not _is_number_text(v))
            if words and cond.range_op is None:
                found = np.union1d(found, self._text_equal(cond.field, words))
            return found
        if cond.range_op is not None:
            if col.kind == "empty":
                return np.zeros(0, np.int64)
            if col.kind == "text" and col.example is None:  # the item it named went: read again
                del self._columns[cond.field]
                col = self._column(cond.field)
            held = f" (it holds {col.example!r}, not a number)" if col.kind == "text" else ""
            raise InvalidFilterError(
                f"filter[{cond.field!r}]: {cond.range_op!r} needs a numeric field, but "
                f"{cond.field!r} is a {col.kind} field{held}"
            )
        return self._text_equal(cond.field, cond.values or ())

    def _text_equal(self, field: str, texts: tuple[str, ...]) -> np.ndarray:
        if not texts:
            return np.zeros(0, np.int64)
        return self._store.equal_fids(field, texts)

    def _remember(self, key: tuple[Condition, ...], result: np.ndarray) -> None:
        self._results[key] = result
        while len(self._results) > _RESULTS_KEPT or (
            len(self._results) > 1
            and sum(len(r) for r in self._results.values()) > _RESULT_IDS_KEPT
        ):
            self._results.popitem(last=False)


def numeric_fids(col: Column, cond: Condition) -> np.ndarray:
    """Sorted fids of a numeric column within ``cond``'s range and equal to one of its values."""
    v = col.values
    lo = (
        0
        if cond.low == -math.inf
        else int(np.searchsorted(v, cond.low, "left" if cond.low_inclusive else "right"))
    )
    hi = (
        len(v)
        if cond.high == math.inf
        else int(np.searchsorted(v, cond.high, "right" if cond.high_inclusive else "left"))
    )
    if cond.values is None:
        return sort_ids(col.fids[lo:hi])
    pieces = []
    for x in sorted(set(cond.numeric_values())):
        a = max(lo, int(np.searchsorted(v, x, "left")))
        b = min(hi, int(np.searchsorted(v, x, "right")))
        if a < b:
            pieces.append(col.fids[a:b])
    return sort_ids(np.concatenate(pieces)) if pieces else np.zeros(0, np.int64)


def sort_ids(fids: np.ndarray) -> np.ndarray:
    """``fids`` (distinct, non-negative) sorted: through a bitmap when they are many."""
    if len(fids) < 4096:
        return np.sort(fids)
    bound = int(fids.max()) + 1
    if len(fids) * 16 < bound:  # sparse: sorting beats scanning the bitmap
        return np.sort(fids)
    mask = np.zeros(bound, dtype=bool)
    mask[fids] = True
    return np.flatnonzero(mask).astype(np.int64, copy=False)


def intersect_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The ids in both sorted, distinct arrays ``a`` and ``b``, sorted."""
    if len(a) > len(b):
        a, b = b, a
    if len(a) == 0:
        return a
    return a[np.isin(a, b, assume_unique=True, kind="table")]
