"""Metadata filters of a request: a JSON object (body field ``filter`` or query ``filter=<json>``)
and simple equality under the reserved query prefix ``filter.`` (``filter.brand=apple``).

A filter maps a field to a value (equality), a list (any of) or an object of operators
(``eq``, ``in``, ``lt``, ``lte``, ``gt``, ``gte``). The shape is checked here, unknown fields
are refused here; value types (a range on a text field) are checked by the index, typed from
the catalog (:class:`~index.errors.InvalidFilterError`, answered 400 ``invalid_filter``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from index.inputs import canonical_value
from server.errors import ApiError
from server.limits import (
    MAX_FILTER_TEXT,
    MAX_FILTER_VALUES,
    check_scalar,
    check_text,
    parse_json,
)

FILTER_PARAM = "filter"
FILTER_PREFIX = "filter."
RANGE_OPS = ("lt", "lte", "gt", "gte")
OPERATORS = ("eq", "in", *RANGE_OPS)


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_filter", message)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _check_values(key: str, values: list[Any]) -> None:
    if not values:
        raise _bad(f"filter {key!r}: a list of values must not be empty")
    if len(values) > MAX_FILTER_VALUES:
        raise _bad(f"filter {key!r} has more than {MAX_FILTER_VALUES} values")
    for v in values:
        if not _is_scalar(v):
            raise _bad(f"filter {key!r}: values must be strings, numbers or booleans")
        check_scalar(v, f"filter {key!r}", "invalid_filter")


def _check_condition(key: str, value: Any) -> Any:
    """One field's condition, checked for shape (not for the field's type)."""
    if isinstance(value, list):
        _check_values(key, value)
        return value
    if isinstance(value, Mapping):
        if not value:
            raise _bad(f"filter {key!r}: an operator object must not be empty")
        unknown = sorted(set(value) - set(OPERATORS))
        if unknown:
            raise _bad(
                f"filter {key!r}: unknown operator(s) {', '.join(map(repr, unknown))}; "
                f"use {', '.join(OPERATORS)}"
            )
        for op, operand in value.items():
            if op == "in":
                if not isinstance(operand, list):
                    raise _bad(f"filter {key!r}: 'in' takes a list of values")
                _check_values(key, operand)
            elif op == "eq" and not _is_scalar(operand):
                raise _bad(f"filter {key!r}: 'eq' takes a string, number or boolean")
            elif op != "eq" and (isinstance(operand, bool) or not isinstance(operand, int | float)):
                raise _bad(f"filter {key!r}: {op!r} takes a number")
            else:
                check_scalar(operand, f"filter {key!r}", "invalid_filter")
        return dict(value)
    if not _is_scalar(value):
        raise _bad(
            f"filter {key!r} must be a value, a non-empty list of values or an object of "
            f"operators ({', '.join(OPERATORS)})"
        )
    check_scalar(value, f"filter {key!r}", "invalid_filter")
    return value


def _values(condition: Any) -> list[Any]:
    """The values of one field's (checked) condition."""
    if isinstance(condition, list):
        return condition
    if isinstance(condition, dict):
        return [x for v in condition.values() for x in (v if isinstance(v, list) else [v])]
    return [condition]


def check_filter(value: Any, allowed: Iterable[str], where: str = "'filter'") -> dict[str, Any]:
    """A filter object checked for shape and field names (unknown field: 400)."""
    if not isinstance(value, Mapping):
        raise _bad(f"{where} must be a JSON object of field -> condition")
    out = {
        check_text(str(k), "filter field"): _check_condition(str(k), v) for k, v in value.items()
    }
    text = sum(len(k) + sum(len(str(v)) for v in _values(c)) for k, c in out.items())
    if text > MAX_FILTER_TEXT:
        raise _bad(
            f"{where} holds {text} characters of names and values; at most {MAX_FILTER_TEXT}"
        )
    known = set(allowed)
    unknown = sorted(k for k in out if k not in known)
    if unknown:
        raise _bad(
            f"unknown filter field(s) {', '.join(map(repr, unknown))}; "
            f"filterable fields are: {', '.join(sorted(known)) or '(none)'}"
        )
    return out


def query_filter(args: Iterable[tuple[str, list[str]]]) -> dict[str, Any]:
    """The filter a query string carries: ``filter=<json object>`` and ``filter.<field>=v``
    (repeated: any of). Not checked against the fields (see :func:`merge_filters`)."""
    flt: dict[str, Any] = {}
    for key, values in args:
        if key == FILTER_PARAM:
            if len(values) != 1:  # which object? answered as any option given twice
                raise ApiError(
                    400, "invalid_request", "query parameter(s) 'filter' given more than once"
                )
            parsed = parse_json(values[0], "query parameter 'filter'", code="invalid_filter")
            if not isinstance(parsed, dict):
                raise _bad("query parameter 'filter' must be a JSON object")
            for field, cond in parsed.items():
                _add(flt, field, cond)
        elif key.startswith(FILTER_PREFIX):
            field = key[len(FILTER_PREFIX) :]
            if not field:
                raise _bad("'filter.' needs a field name, e.g. filter.brand=apple")
            _add(flt, field, values[0] if len(values) == 1 else list(values))
    return flt


def _add(flt: dict[str, Any], field: str, cond: Any) -> None:
    if field in flt:
        raise _bad(f"filter field {field!r} is given twice")
    flt[field] = cond


def merge_filters(
    args: Iterable[tuple[str, list[str]]], body_filter: Any, allowed: Iterable[str]
) -> dict[str, Any] | None:
    """The request's filter (query string and JSON body together: a field in both must match
    both), checked; None when there is none."""
    query = check_filter(query_filter(args), allowed, "the query string's filter")
    if body_filter is None:
        return query or None
    body = check_filter(body_filter, allowed)
    for field, cond in query.items():
        body[field] = both(body[field], cond) if field in body else cond
    return body or None


def _as_ops(cond: Any) -> dict[str, Any]:
    if isinstance(cond, Mapping):
        return dict(cond)
    return {"in": list(cond)} if isinstance(cond, list) else {"eq": cond}


def both(a: Any, b: Any) -> dict[str, Any]:
    """One condition meaning ``a`` and ``b`` (checked conditions of one field)."""
    left, right = _as_ops(a), _as_ops(b)
    out = {op: v for op, v in left.items() if op not in ("eq", "in")}
    for op, v in right.items():
        if op in ("eq", "in"):
            continue
        if op not in out:
            out[op] = v
        else:  # the tighter bound of the two
            pick = min if op in ("lt", "lte") else max
            out[op] = pick(out[op], v)
    sets = [[c["eq"]] if "eq" in c else c["in"] for c in (left, right) if "eq" in c or "in" in c]
    extra = [c["in"] for c in (left, right) if "eq" in c and "in" in c]
    if sets:
        # By canonical text, as the index intersects "eq" and "in" of one field: a query
        # string's "218.99" is the body's 218.99, "true" is true, but "007" is not 7.
        values = sets[0]
        for other in sets[1:] + extra:
            texts = {canonical_value(v) for v in other}
            values = [v for v in values if canonical_value(v) in texts]
        out["in"] = values  # empty: nothing matches
    return out


def is_filter_param(name: str) -> bool:
    return name == FILTER_PARAM or name.startswith(FILTER_PREFIX)
