"""The filter language: grammar, typing from the catalog, evaluation against brute force, caches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from index import InvalidFilterError, build_index, open_index
from index.filters import Condition, FilterEngine, make_column, parse_filter
from index.inputs import clean_metadata_rows
from index.store import CatalogStore
from tests.index.synthetic import HASH, MODEL, make_catalog


def make_store(tmp_path, metadata: list[dict]) -> CatalogStore:
    store = CatalogStore(tmp_path / "catalog.sqlite", create=True)
    with store.transaction():
        store.insert_items(
            list(range(len(metadata))),
            [f"sku-{i}" for i in range(len(metadata))],
            clean_metadata_rows(metadata, len(metadata)),
        )
    return store


PRICES = [1, 2.5, 3, 299.99, 300, 300.01, -4]


@pytest.fixture
def engine(tmp_path):
    """A store of PRICES and other fields: its filter_fids runs a FilterEngine."""
    md = [
        {
            "price": p,
            "brand": "Acme" if i % 2 else "Other",
            "in_stock": i % 3 == 0,
            "csv_price": f"{p:.2f}",  # numbers held as text, as a CSV catalog gives them
            "mixed": "cheap" if i == 0 else str(i),
        }
        for i, p in enumerate(PRICES)
    ]
    store = make_store(tmp_path, md)
    yield store
    store.close()


def ids(store: CatalogStore, flt: dict) -> list[int]:
    return store.filter_fids(flt).tolist()


def test_parse_folds_operators_per_field_and_sorts_fields():
    conds = parse_filter({"z": "a", "price": {"gt": 1, "gte": 1, "lt": 9, "lte": "5"}})
    assert [c.field for c in conds] == ["price", "z"]
    price = conds[0]
    assert (price.low, price.low_inclusive, price.high, price.high_inclusive) == (1, False, 5, True)
    assert price.values is None and price.range_op == "gt"
    assert conds[1] == Condition("z", values=("a",))
    both = parse_filter({"b": {"in": ["x", "y", 3], "eq": "y"}})[0]
    assert both.values == ("y",)  # eq AND in: their intersection
    assert parse_filter({"b": [True, 2.0, "t"]})[0].values == ("2", "t", "true")


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (None, "non-empty mapping"),
        ({}, "non-empty mapping"),
        ([("a", 1)], "non-empty mapping"),
        ({"": 1}, "non-empty strings"),
        ({3: 1}, "non-empty strings"),
        ({"price": {"below": 3}}, "unknown operator 'below'; use eq, in, lt, lte, gt, gte"),
        ({"price": {}}, "empty operator object"),
        ({"price": {"in": 3}}, r"\['in'\]: expected a list"),
        ({"price": {"eq": [1, 2]}}, "use 'in' for a list"),
        ({"price": None}, "got null"),
        ({"price": [1, {"a": 1}]}, "got {'a': 1} \\(object\\)"),
        ({"price": [[1]]}, "expected a string, number or boolean"),
        ({"price": math.nan}, "non-finite"),
        (
            {"price": {"lt": None}},
            r"filter\['price'\]\['lt'\]: a range bound must be a number, got null",
        ),
        ({"price": {"lt": True}}, "got True \\(boolean\\)"),
        ({"price": {"gte": {"x": 1}}}, "must be a number"),
        ({"price": {"lt": [1]}}, "must be a number"),
        ({"price": {"lt": math.inf}}, "must be finite"),
        ({"price": {"lt": -math.inf}}, "must be finite"),
        ({"price": {"lt": math.nan}}, "must be finite"),
        ({"price": {"lt": "cheap"}}, "string ranges are not supported"),
        ({"price": {"lt": "1e999"}}, "must be finite"),
    ],
)
def test_malformed_filters_raise_with_a_clear_message(flt, message):
    with pytest.raises(InvalidFilterError, match=message):
        parse_filter(flt)


def test_numeric_ranges_with_inclusive_and_exclusive_bounds(engine):
    # PRICES = [1, 2.5, 3, 299.99, 300, 300.01, -4]
    assert ids(engine, {"price": {"lt": 300}}) == [0, 1, 2, 3, 6]
    assert ids(engine, {"price": {"lte": 300}}) == [0, 1, 2, 3, 4, 6]
    assert ids(engine, {"price": {"gt": 300}}) == [5]
    assert ids(engine, {"price": {"gte": 300}}) == [4, 5]
    assert ids(engine, {"price": {"gt": 1, "lt": 3}}) == [1]
    assert ids(engine, {"price": {"gte": "2.5", "lte": 3.0}}) == [1, 2]
    assert ids(engine, {"price": {"gte": 300, "lte": 300}}) == [4]
    assert ids(engine, {"price": {"gt": 300, "lt": 300}}) == []
    assert ids(engine, {"price": {"lt": 0}}) == [6]
    assert ids(engine, {"price": {"gt": -1e300}}) == list(range(7))


def test_numbers_held_as_text_are_numeric_and_equality_compares_numbers(engine):
    assert engine.field_type("csv_price") == "number"
    assert ids(engine, {"csv_price": {"lt": 300}}) == [0, 1, 2, 3, 6]
    assert ids(engine, {"csv_price": 300}) == [4]  # "300.00" equals 300
    assert ids(engine, {"price": "300.0"}) == ids(engine, {"price": 300}) == [4]
    assert ids(engine, {"price": {"in": [2.5, "3", "x", True]}}) == [1, 2]
    assert ids(engine, {"price": "x"}) == []


def test_a_word_among_numbers_leaves_the_field_numeric_and_ranges_skip_it(engine):
    """One listing's "cheap" must not turn every range on the field into an error."""
    assert engine.field_type("mixed") == "number"
    assert ids(engine, {"mixed": {"gte": 0}}) == [1, 2, 3, 4, 5, 6]
    assert ids(engine, {"mixed": {"lt": 3}}) == [1, 2]
    assert ids(engine, {"mixed": "cheap"}) == [0]
    assert ids(engine, {"mixed": ["cheap", 3]}) == ids(engine, {"mixed": {"in": [3, "cheap"]}})
    assert ids(engine, {"mixed": ["cheap", 3]}) == [0, 3]
    assert ids(engine, {"mixed": {"eq": "cheap", "lt": 9}}) == []  # a word is in no range


@pytest.mark.parametrize(
    ("field", "kind", "held"),
    [
        ("brand", "text", " \\(it holds '"),
        ("in_stock", "boolean", ""),
    ],
)
def test_a_range_on_a_field_that_is_not_numeric_names_the_field_and_its_type(
    engine, field, kind, held
):
    assert engine.field_type(field) == kind
    with pytest.raises(InvalidFilterError, match=f"'{field}' is a {kind} field{held}"):
        engine.filter_fids({field: {"gte": 3}})
    with pytest.raises(InvalidFilterError, match="'lt' needs a numeric field"):
        engine.filter_fids({"price": {"gt": 1}, field: {"lt": 3}})


def test_equality_and_any_of_combine_with_ranges(engine):
    assert ids(engine, {"brand": "Acme"}) == [1, 3, 5]
    assert ids(engine, {"brand": "Acme", "price": {"lt": 300}}) == [1, 3]
    assert ids(engine, {"brand": ["Acme", "Other"], "price": {"gte": 300}}) == [4, 5]
    assert ids(engine, {"in_stock": True, "price": {"gt": 0}}) == [0, 3]
    assert ids(engine, {"brand": {"in": []}}) == []
    assert ids(engine, {"price": {"in": [1, 300], "lt": 300}}) == [0]
    assert ids(engine, {"brand": "Nobody", "price": {"lt": 5}}) == []


def test_unknown_fields_list_the_filterable_ones(engine):
    with pytest.raises(
        InvalidFilterError, match="'colour'.*brand, csv_price, in_stock, mixed, price"
    ):
        engine.filter_fids({"colour": "red", "price": {"lt": 3}})
    with pytest.raises(InvalidFilterError, match="unknown filter field 'colour'"):
        engine.field_type("colour")


def test_column_typing():
    fids = np.array([5, 2, 9])
    col = make_column(fids, ["10", "2.5", "-1e3"])
    assert col.kind == "number"
    assert col.values.tolist() == [-1000.0, 2.5, 10.0] and col.fids.tolist() == [9, 2, 5]
    assert make_column(fids, ["true", "false", "true"]).kind == "boolean"
    # Padded numbers, "nan" and numbers beyond a float are not numbers: ranges skip them.
    for odd in (" 2", "nan", "1e999"):
        col = make_column(fids, ["1", odd, "3"])
        assert col.kind == "number" and col.fids.tolist() == [5, 9], odd
    assert make_column(fids, [" 2", "nan", "1e999"]).kind == "text"
    assert make_column(fids, ["nan", "x", "y"]).example == "nan"
    # Mostly words with a stray number: text, so a range is an error, not an answer about
    # that one number ("128GB", "256GB", "512GB" and one "64").
    storage = make_column(np.arange(4), ["128GB", "256GB", "512GB", "64"])
    assert storage.kind == "text" and storage.example == "128GB"
    assert make_column(np.arange(2), ["10", "call us"]).kind == "text"  # half is not most
    assert make_column(fids[:0], []).kind == "empty"


def _reference(md: dict, flt: dict) -> bool:
    """Brute force: does one item's metadata match ``flt`` (numeric fields compare numbers)."""
    for field, spec in flt.items():
        value = md.get(field)
        if value is None:
            return False
        ops = spec if isinstance(spec, dict) else {"in": spec if isinstance(spec, list) else [spec]}
        for op, operand in ops.items():
            if op in ("eq", "in"):
                wanted = operand if op == "in" else [operand]
                if field in ("price", "qty"):
                    ok = any(float(value) == float(w) for w in wanted)
                else:
                    ok = any(str(value) == str(w) for w in wanted)
            else:
                x, b = float(value), float(operand)
                ok = {"lt": x < b, "lte": x <= b, "gt": x > b, "gte": x >= b}[op]
            if not ok:
                return False
    return True


def _random_filter(rng: np.random.Generator) -> dict:
    flt: dict = {}
    if rng.random() < 0.5:
        brands = [f"b{i}" for i in rng.choice(6, size=rng.integers(1, 4), replace=False)]
        flt["brand"] = brands[0] if len(brands) == 1 and rng.random() < 0.5 else brands
    for field in ("price", "qty"):
        if rng.random() < 0.6:
            ops = rng.choice(["lt", "lte", "gt", "gte"], size=rng.integers(1, 3), replace=False)
            flt[field] = {str(op): float(np.round(rng.uniform(-10, 110), 1)) for op in ops}
            if rng.random() < 0.2:
                flt[field]["in"] = [int(v) for v in rng.integers(0, 100, 5)]
    return flt or {"qty": {"gte": 50}}


def test_filters_equal_brute_force_on_a_random_catalog(tmp_path):
    rng = np.random.default_rng(0)
    md = []
    for i in range(2000):
        m = {"brand": f"b{rng.integers(6)}", "price": float(np.round(rng.uniform(0, 100), 1))}
        if i % 7:
            m["qty"] = int(rng.integers(0, 100))  # some items lack the field
        md.append(m)
    store = make_store(tmp_path, md)
    for _ in range(200):
        flt = _random_filter(rng)
        expected = [i for i, m in enumerate(md) if _reference(m, flt)]
        assert ids(store, flt) == expected, flt
    store.close()


def test_caches_follow_adds_and_removes(tmp_path):
    xb, xq, item_ids, md = make_catalog(300, seed=3)
    build_index(tmp_path / "ix", item_ids, xb, md, model_name=MODEL, checkpoint_hash=HASH)
    flt = {"price": {"gte": 105}}
    with open_index(tmp_path / "ix") as ix:
        store = ix._store
        first = store.filter_fids(flt)
        assert store.filter_fids(flt) is first  # one array per filter and catalog state
        before = {h.id for h in ix.search(xq[0], 1000, filter=flt)[0]}
        assert before == {f"sku-{i}" for i, m in enumerate(md) if m["price"] >= 105}
        ix.add(["new-1", "new-2"], xb[:2], [{"price": 999}, {"price": 1}])
        after = {h.id for h in ix.search(xq[0], 1000, filter=flt)[0]}
        assert after == before | {"new-1"}
        assert store.filter_fids(flt) is not first
        ix.remove(["new-1", sorted(before)[0]])
        again = {h.id for h in ix.search(xq[0], 1000, filter=flt)[0]}
        assert again == after - {"new-1", sorted(before)[0]}
        ix.add(["text-price"], xb[2:3], [{"price": "call us"}])
        # One price in words: ranges go on, without that item.
        assert {h.id for h in ix.search(xq[0], 1000, filter=flt)[0]} == again
        assert [h.id for h in ix.search(xq[0], 5, filter={"price": "call us"})[0]] == ["text-price"]


def test_the_engine_rereads_after_the_store_changes_and_without_a_generation(tmp_path):
    store = make_store(tmp_path, [{"price": 1}, {"price": 5}])
    flt = {"price": {"lt": 3}}
    first = store.filter_fids(flt)
    assert first.tolist() == [0] and store.filter_fids(flt) is first
    with store.transaction():
        store.insert_items([2], ["sku-2"], [{"price": 2}])
    assert store.filter_fids(flt).tolist() == [0, 2]

    class NoGeneration:  # a store that cannot say when it changed: never cached
        fields, field_values, equal_fids = store.fields, store.field_values, store.equal_fids

    engine = FilterEngine(NoGeneration())
    assert engine.fids(flt) is not engine.fids(flt)
    assert engine.field_type("price") == "number"
    store.close()


def test_a_write_drops_only_the_caches_of_the_fields_it_touched(tmp_path):
    """Every write dropped every field's column: at 80,000 items a price range took 258 ms
    again after a stock update (6 ms cached)."""
    store = make_store(tmp_path, [{"price": 1, "brand": "A"}, {"price": 5, "brand": "B"}])
    cheap, brand_a = {"price": {"lt": 3}}, {"brand": "A"}
    first_price, first_brand = store.filter_fids(cheap), store.filter_fids(brand_a)
    with store.transaction():  # a stock field added to a new item: neither field touched
        store.insert_items([2], ["sku-2"], [{"stock": 4}])
    assert store.filter_fids(cheap) is first_price and store.filter_fids(brand_a) is first_brand
    with store.transaction():  # a new brand-A item: brand's caches go, price's stay
        store.insert_items([3], ["sku-3"], [{"brand": "A"}])
    assert store.filter_fids(cheap) is first_price
    assert store.filter_fids(brand_a).tolist() == [0, 3]
    with store.transaction():  # item 1's metadata replaced, its brand and price as they were
        store.delete_items([1])
        store.insert_items([1], ["sku-1"], [{"price": 5, "brand": "B", "stock": 0}])
    assert store.filter_fids(cheap) is first_price
    with store.transaction():  # item 0 removed: both of its fields go
        store.delete_items([0])
    assert store.filter_fids(cheap).tolist() == [] and store.filter_fids(brand_a).tolist() == [3]
    kept = store.filter_fids(cheap)
    store.invalidate_caches()  # another process wrote: any field may have changed
    assert store.filter_fids(cheap) is not kept and store.filter_fids(cheap).tolist() == []
    kept = store.filter_fids(cheap)
    with store.transaction():  # 110,000 items without fields write no filter rows
        store.insert_items(range(10, 110_010), [f"n-{i}" for i in range(110_000)], [{}] * 110_000)
        store.insert_items([5], ["sku-5"], [{"stock": 1}])
    assert store.filter_fids(cheap) is kept
    with store.transaction():  # more filter rows than are tracked: any field, all caches go
        rows = [{"stock": i} for i in range(100_001)]
        store.insert_items(range(200_000, 300_001), [f"m-{i}" for i in range(100_001)], rows)
    assert store.filter_fids(cheap) is not kept
    store.close()


def test_a_rolled_back_or_undone_change_never_hides_a_later_real_one(tmp_path):
    """A failed metadata update deleted and re-inserted brand=A of item 0 before rolling back;
    the tracked rows then cancelled the next write's real removal of it, and brand=A kept
    answering item 0 until a restart."""
    store = make_store(tmp_path, [{"brand": "A", "price": 1}, {"brand": "A"}])
    brand_a = {"brand": "A"}
    assert store.filter_fids(brand_a).tolist() == [0, 1]
    with pytest.raises(RuntimeError), store.transaction():
        store.delete_items([0])
        store.insert_items([0], ["sku-0"], [{"brand": "A", "price": 5}])
        raise RuntimeError("the disk filled up")
    with store.transaction():  # replaced without its brand
        store.delete_items([0])
        store.insert_items([0], ["sku-0"], [{"price": 100}])
    assert store.filter_fids(brand_a).tolist() == [1]
    with store.transaction():  # inserted, deleted and inserted again in one bump
        store.insert_items([2], ["sku-2"], [{"brand": "A"}])
        store.delete_items([2])
        store.insert_items([2], ["sku-2"], [{"brand": "A"}])
    assert store.filter_fids(brand_a).tolist() == [1, 2]
    with store.transaction():  # deleted and put back as it was: brand's caches may stay
        kept = store.filter_fids(brand_a)
        store.delete_items([1])
        store.insert_items([1], ["sku-1"], [{"brand": "A"}])
    assert store.filter_fids(brand_a) is kept
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_range_filters_follow_metadata_updates_on_both_stores(tmp_path, request, backend):
    xb, xq, item_ids, md = make_catalog(300, seed=4)
    build_index(tmp_path / "ix", item_ids, xb, md, model_name=MODEL, checkpoint_hash=HASH)
    url = None
    if backend == "postgresql":
        from index.pg_admin import push_folder

        url = request.getfixturevalue("pg_url")
        push_folder(tmp_path / "ix", url)
    flt = {"price": {"gt": 105}, "brand": ["Acme", "Rare"]}
    with open_index(None if url else tmp_path / "ix", store=url) as ix:
        expected = {
            f"sku-{i}" for i, m in enumerate(md) if m["price"] > 105 and m["brand"] != "Other"
        }
        assert {h.id for h in ix.search(xq[0], 1000, filter=flt)[0]} == expected
        cheap = sorted(expected)[0]
        ix.update_metadata(cheap, {"price": 5})
        ix.update_metadata("sku-0", {"price": 1000, "brand": "Rare"})
        got = {h.id for h in ix.search(xq[0], 1000, filter=flt)[0]}
        assert got == (expected - {cheap}) | {"sku-0"}
        assert {i.id for i in ix.list_items(None, 1000, filter=flt)} == got
