"""Request filters: the filter. prefix and filter=<json> in the query string, shape checks,
and a field given in both the query string and the body (both must match)."""

from __future__ import annotations

import pytest

from server.errors import ApiError
from server.filters import both, check_filter, merge_filters, query_filter

FIELDS = ["brand", "label", "price"]


def test_query_string_filters():
    args = [("filter.brand", ["apple"]), ("filter.label", ["a", "b"]), ("k", ["3"])]
    assert query_filter(args) == {"brand": "apple", "label": ["a", "b"]}
    parsed = query_filter([("filter", ['{"price": {"lt": 300}}'])])
    assert parsed == {"price": {"lt": 300}}
    for bad in ([("filter", ["[1]"])], [("filter", ["{"])], [("filter.", ["x"])]):
        with pytest.raises(ApiError) as err:
            query_filter(bad)
        assert err.value.status == 400 and err.value.code == "invalid_filter"


@pytest.mark.parametrize(
    "flt",
    [
        {"colour": "red"},
        {"price": {"between": 1}},
        {"price": {}},
        {"price": {"lt": "300"}},
        {"price": {"lt": True}},
        {"label": {"in": "x"}},
        {"label": {"in": []}},
        {"label": []},
        {"label": None},
        {"label": {"eq": [1]}},
        {"label": "x" * 1001},
    ],
)
def test_shapes_refused(flt):
    with pytest.raises(ApiError) as err:
        check_filter(flt, FIELDS)
    assert err.value.status == 400


def test_a_field_in_both_places_must_match_both():
    assert both("a", "a") == {"in": ["a"]}
    assert both("a", "b") == {"in": []}
    assert both(["a", "b"], ["b", "c"]) == {"in": ["b"]}
    assert both({"lt": 300, "gte": 10}, {"lt": 200, "gte": 50}) == {"lt": 200, "gte": 50}
    assert both({"eq": "a", "in": ["a", "b"]}, "b") == {"in": []}
    # As the index matches them: a query string's text and a JSON body's number or boolean.
    assert both(218.99, "218.99") == {"in": [218.99]}
    assert both([True, "x"], "true") == {"in": [True]}
    assert both(True, 1) == {"in": []}
    # Not by number: on a text field "007" and 7 are two values (the index compares texts).
    assert both(7, "007") == {"in": []} and both("1.0", 1) == {"in": []}
    args = [("filter.label", ["a"])]
    assert merge_filters(args, {"price": {"lt": 3}}, FIELDS) == {"price": {"lt": 3}, "label": "a"}
    assert merge_filters(args, {"label": "a"}, FIELDS) == {"label": {"in": ["a"]}}
    assert merge_filters([], None, FIELDS) is None


def test_a_filter_is_bounded_in_characters_as_answers_repeat_it():
    """A batch repeats its filter in each of its 64 results: a 600 KB request of long values
    had drawn a 115 MB answer."""
    from server.limits import MAX_FILTER_TEXT

    wide = {f: ["é" * 1000] * 100 for f in ("brand", "label")}
    with pytest.raises(ApiError, match=f"at most {MAX_FILTER_TEXT}") as err:
        check_filter(wide, FIELDS)
    assert err.value.code == "invalid_filter"
    skus = {"label": [f"sku-{i:06d}-{'x' * 100}" for i in range(100)]}  # 100 long ids: fine
    assert check_filter(skus, FIELDS) == skus
    assert check_filter({"price": {"gte": 10, "lt": 300}, "brand": "a"}, FIELDS)
