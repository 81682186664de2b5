"""Search by vector, score_threshold, offset, JSON and range filters, the filter. prefix and
/v1/search/batch, through Flask's test client."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from server.config import ServerConfig
from tests.server.helpers import API_KEY, assert_error, b64, make_app, upload


def _ids(body: dict) -> list[str]:
    return [n["id"] for n in body["neighbors"]]


def _prices(catalog_rows) -> list[float]:
    return sorted({float(r["price"]) for r in catalog_rows.values()})


# -- vector ------------------------------------------------------------------------------------
def test_search_by_the_embedding_of_embed_gives_the_image_search(client, jpeg_bytes):
    # By similarity: a vector has no class to rank with, as an image's default does.
    by_image = client.post("/v1/search?k=7&ranking=similarity", data=upload(jpeg_bytes)).get_json()
    vector = client.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["embedding"]
    r = client.post("/v1/search", json={"vector": vector, "k": 7})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["prediction"] is None
    assert _ids(body) == _ids(by_image)
    scaled = client.post("/v1/search", json={"vector": [v * 1e-6 for v in vector], "k": 7})
    assert _ids(scaled.get_json()) == _ids(by_image)  # normalised: the scale does not matter


def test_search_by_a_stored_vector_finds_that_item_first(client, readonly_index, first_id):
    vector = readonly_index.get_vectors([first_id])[0].tolist()
    body = client.post("/v1/search", json={"vector": vector, "k": 3}).get_json()
    assert body["neighbors"][0]["id"] == first_id
    assert body["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("vector", "needle"),
    [
        ("wrong-dim", "dimensions"),
        ("zeros", "all zeros"),
        ("strings", "list of"),
        ("bools", "list of"),
        ("not-a-list", "list of"),
    ],
)
def test_bad_vectors_are_400_naming_the_problem(client, tiny_embedder, vector, needle):
    dim = tiny_embedder.dim
    value = {
        "wrong-dim": [0.1] * (dim + 1),
        "zeros": [0.0] * dim,
        "strings": ["1"] * dim,
        "bools": [True] * dim,
        "not-a-list": 3,
    }[vector]
    error = assert_error(client.post("/v1/search", json={"vector": value}), 400, "invalid_vector")
    assert needle in error["message"]


def test_nan_and_infinity_in_a_vector_are_400(client, tiny_embedder):
    dim = tiny_embedder.dim
    for word in ("NaN", "Infinity", "-Infinity"):
        body = '{"vector": [' + ", ".join(["0.5"] * (dim - 1) + [word]) + "]}"
        r = client.post("/v1/search", data=body, content_type="application/json")
        assert "not a JSON number" in assert_error(r, 400, "invalid_json")["message"]
    from server.errors import ApiError
    from server.inputs import parse_vector

    with pytest.raises(ApiError, match="NaN or infinite"):
        parse_vector([float("nan")] + [1.0] * (dim - 1), dim)


def test_image_and_vector_together_are_400(client, jpeg_bytes, tiny_embedder):
    body = {"image": b64(jpeg_bytes), "vector": [1.0] * tiny_embedder.dim}
    assert_error(client.post("/v1/search", json=body), 400, "invalid_request")


# -- threshold and offset ----------------------------------------------------------------------
def test_offset_pages_through_the_neighbours(client, jpeg_bytes):
    ten = _ids(client.post("/v1/search?k=10", data=upload(jpeg_bytes)).get_json())
    later = client.post("/v1/search?k=5&offset=5", data=upload(jpeg_bytes)).get_json()
    assert _ids(later) == ten[5:] and later["offset"] == 5
    body = {"image": b64(jpeg_bytes), "k": 3, "offset": 2}
    assert _ids(client.post("/v1/search", json=body).get_json()) == ten[2:5]


def test_pages_reach_every_copy_of_one_photo(writable, jpeg_bytes):
    """Six listings of one photo score the same: pages of two list all six, each once."""
    app, _ = writable
    c = app.test_client()
    copies = [f"copy-{i}" for i in range(6)]
    for item_id in copies:
        form = {**upload(jpeg_bytes), "id": item_id}
        assert c.post("/v1/items", data=form, headers={"X-API-Key": API_KEY}).status_code == 201
    pages = [
        _ids(
            c.post(
                f"/v1/search?k=2&offset={o}&ranking=similarity", data=upload(jpeg_bytes)
            ).get_json()
        )
        for o in (0, 2, 4)
    ]
    assert sorted(i for page in pages for i in page) == copies
    similar = [_ids(c.get(f"/v1/items/copy-0/similar?k=1&offset={o}").get_json()) for o in range(5)]
    assert [i for page in similar for i in page] == copies[1:]


def test_score_threshold_drops_the_neighbours_below_it(client, jpeg_bytes):
    full = client.post("/v1/search?k=18", data=upload(jpeg_bytes)).get_json()["neighbors"]
    scores = sorted(n["score"] for n in full)
    mid = len(scores) // 2
    cut = (scores[mid] + scores[mid + 1]) / 2  # between two scores: rounding cannot matter
    r = client.post(f"/v1/search?k=18&score_threshold={cut}", data=upload(jpeg_bytes))
    kept = r.get_json()["neighbors"]
    assert 0 < len(kept) < len(full)
    assert all(n["score"] >= cut for n in kept)
    assert [n["id"] for n in kept] == [n["id"] for n in full if n["score"] >= cut]
    body = client.post("/v1/search", json={"image": b64(jpeg_bytes), "score_threshold": 1.0})
    assert body.get_json()["neighbors"] == [] or body.get_json()["neighbors"][0]["score"] >= 1.0


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("score_threshold=1.5", "invalid_score_threshold"),
        ("score_threshold=nan", "invalid_score_threshold"),
        ("score_threshold=high", "invalid_score_threshold"),
        ("offset=-1", "invalid_offset"),
        ("offset=1001", "invalid_offset"),
        ("label=x", "invalid_request"),  # no longer read as a filter field
        ("kk=3", "invalid_request"),
    ],
)
def test_bad_search_options_are_400(client, jpeg_bytes, query, code):
    error = assert_error(client.post(f"/v1/search?{query}", data=upload(jpeg_bytes)), 400, code)
    if query == "label=x":
        assert "filter.<field>" in error["message"]


# -- filters -----------------------------------------------------------------------------------
def test_range_filters_on_a_numeric_field(client, jpeg_bytes, catalog_rows):
    low, mid, high = _prices(catalog_rows)
    body = {"image": b64(jpeg_bytes), "k": 50, "filter": {"price": {"lt": high}}}
    got = client.post("/v1/search", json=body).get_json()["neighbors"]
    assert {float(n["price"]) for n in got} == {low, mid}
    assert len(got) == sum(1 for r in catalog_rows.values() if float(r["price"]) < high)
    body["filter"] = {"price": {"gte": mid, "lte": mid}}
    got = client.post("/v1/search", json=body).get_json()["neighbors"]
    assert {float(n["price"]) for n in got} == {mid}
    as_query = json.dumps({"price": {"gt": low}})
    query = {"filter": as_query, "k": 50}
    r = client.post("/v1/search", query_string=query, data=upload(jpeg_bytes))
    assert {float(n["price"]) for n in r.get_json()["neighbors"]} == {mid, high}


def test_the_options_of_a_multipart_upload_are_form_fields(client, jpeg_bytes, catalog_rows):
    """The form's filter is the text of a JSON object: it had been refused as "must be a JSON
    object" while the error for an unknown field listed it as taken."""
    low, mid, high = _prices(catalog_rows)
    form = {**upload(jpeg_bytes), "filter": json.dumps({"price": {"gt": low}}), "k": "50"}
    r = client.post("/v1/search", data=form)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert {float(n["price"]) for n in r.get_json()["neighbors"]} == {mid, high}
    assert r.get_json()["k"] == 50
    bad = {**upload(jpeg_bytes), "filter": "{price"}
    assert_error(client.post("/v1/search", data=bad), 400, "invalid_filter")


def test_a_file_part_besides_the_image_is_400_not_dropped(client, jpeg_bytes):
    """curl's `-F metadata=@m.json` or `-F k=@k.txt` were dropped without a word."""
    form = {**upload(jpeg_bytes), "k": (io.BytesIO(b"3"), "k.txt")}
    error = assert_error(client.post("/v1/search", data=form), 400, "invalid_request")
    assert "'k'" in error["message"] and "text field" in error["message"]


def test_range_on_a_text_field_is_400_naming_its_type(client, jpeg_bytes):
    body = {"image": b64(jpeg_bytes), "filter": {"label": {"lt": 300}}}
    error = assert_error(client.post("/v1/search", json=body), 400, "invalid_filter")
    assert "text" in error["message"] and "label" in error["message"]


def test_a_number_in_the_query_string_and_the_body_is_one_value(client, jpeg_bytes, catalog_rows):
    """The query string's "1298.99" and the body's 1298.99 were compared as Python values: the
    two filters together matched nothing, where each alone matched the items at that price."""
    price = max(float(r["price"]) for r in catalog_rows.values())
    priced = sum(1 for r in catalog_rows.values() if float(r["price"]) == price)
    body = {"image": b64(jpeg_bytes), "k": 50, "filter": {"price": price}}
    both_ways = client.post(f"/v1/search?filter.price={price}", json=body).get_json()
    body_only = client.post("/v1/search", json=body).get_json()
    assert len(both_ways["neighbors"]) == len(body_only["neighbors"]) == priced > 0
    body["filter"] = {"price": round(price)}  # another price: both must hold, none does
    assert client.post(f"/v1/search?filter.price={price}", json=body).get_json()["neighbors"] == []


@pytest.mark.parametrize(
    "flt",
    [
        {"colour": "red"},
        {"label": {"between": [1, 2]}},
        {"label": {}},
        {"label": {"in": "x"}},
        {"price": {"lt": None}},
        {"label": [{"a": 1}]},
    ],
)
def test_malformed_or_unknown_filters_are_400(client, jpeg_bytes, flt):
    body = {"image": b64(jpeg_bytes), "filter": flt}
    assert_error(client.post("/v1/search", json=body), 400)


def test_a_field_in_the_query_and_the_body_must_match_both(client, jpeg_bytes, catalog_rows):
    labels = sorted({r["label"] for r in catalog_rows.values()})
    low, mid, high = _prices(catalog_rows)
    body = {"image": b64(jpeg_bytes), "k": 50, "filter": {"label": labels[0]}}
    r = client.post(f"/v1/search?filter.label={labels[1]}", json=body)
    assert r.status_code == 200 and r.get_json()["neighbors"] == []
    r = client.post(f"/v1/search?filter.label={labels[0]}", json=body)
    assert {n["label"] for n in r.get_json()["neighbors"]} == {labels[0]}
    body["filter"] = {"price": {"lt": high}}
    query = {"filter": json.dumps({"price": {"gt": low}})}
    got = client.post("/v1/search", query_string=query, json=body).get_json()["neighbors"]
    assert {float(n["price"]) for n in got} == {mid}


def test_similar_takes_range_filters_offset_and_threshold(client, first_id, catalog_rows):
    low = _prices(catalog_rows)[0]
    flt = json.dumps({"price": {"gt": low}})
    r = client.get(f"/v1/items/{first_id}/similar", query_string={"filter": flt, "k": 50})
    got = r.get_json()["neighbors"]
    assert got and all(float(n["price"]) > low for n in got)
    assert first_id not in [n["id"] for n in got]
    error = assert_error(client.get(f"/v1/items/{first_id}/similar?x=1"), 400)
    assert "read_text" not in error["message"]  # it is refused here: not listed as taken
    two = client.get(f"/v1/items/{first_id}/similar?k=4").get_json()["neighbors"]
    off = client.get(f"/v1/items/{first_id}/similar?k=2&offset=2").get_json()["neighbors"]
    assert [n["id"] for n in off] == [n["id"] for n in two][2:]


# -- batch -------------------------------------------------------------------------------------
def test_batch_answers_in_order_one_result_or_error_per_entry(
    client, jpeg_bytes, readonly_index, first_id, tiny_embedder
):
    vector = readonly_index.get_vectors([first_id])[0].tolist()
    single = client.post("/v1/search?k=4", data=upload(jpeg_bytes)).get_json()
    similar = client.get(f"/v1/items/{first_id}/similar?k=4").get_json()
    queries = [
        {"image": b64(jpeg_bytes)},
        {"vector": vector},
        {"id": first_id},
        {"id": "no-such-phone"},
        {"image": b64(b"not an image at all")},
        {"vector": [0.0] * tiny_embedder.dim},
        {"image": b64(jpeg_bytes), "vector": vector},
        {"image": b64(jpeg_bytes), "k": 2},
        {"image": b64(jpeg_bytes), "filter": {"label": {"lt": 3}}},
        "not an object",
    ]
    r = client.post("/v1/search/batch", json={"queries": queries, "k": 4})
    assert r.status_code == 200, r.get_json()
    results = r.get_json()["results"]
    assert len(results) == len(queries)
    assert _ids(results[0]) == _ids(single)
    assert results[0]["prediction"]["label"] == single["prediction"]["label"]
    assert results[1]["neighbors"][0]["id"] == first_id
    assert _ids(results[2]) == _ids(similar) and results[2]["id"] == first_id
    expected = [
        (3, 404, "unknown_item"),
        (4, 400, "invalid_image"),
        (5, 400, "invalid_vector"),
        (6, 400, "invalid_request"),
        (8, 400, "invalid_filter"),
        (9, 400, "invalid_request"),
    ]
    for i, status, code in expected:
        assert results[i]["status"] == status and results[i]["error"]["code"] == code, i
    assert _ids(results[7]) == _ids(single)[:2]


def test_batch_images_run_through_the_model_together(client, jpeg_bytes):
    queries = [{"image": b64(jpeg_bytes)} for _ in range(5)]
    results = client.post("/v1/search/batch", json={"queries": queries}).get_json()["results"]
    assert len({tuple(_ids(r)) for r in results}) == 1
    svc = client.application.extensions["phonesim"].service
    samples = {s.name: s.value for m in svc.metrics.batch_size.collect() for s in m.samples}
    # One forward pass of the five rows (no other request ran on this app).
    assert samples["phonesim_model_batch_size_count"] == 1
    assert samples["phonesim_model_batch_size_sum"] == 5


def test_batch_limits_and_shape(tiny_embedder, readonly_index, jpeg_bytes):
    app = make_app(
        ServerConfig(api_key=API_KEY, max_batch_entries=3), tiny_embedder, readonly_index
    )
    try:
        c = app.test_client()
        many = {"queries": [{"image": b64(jpeg_bytes)}] * 4}
        error = assert_error(c.post("/v1/search/batch", json=many), 400, "too_many_entries")
        assert "3" in error["message"]
        assert_error(c.post("/v1/search/batch", json={"queries": []}), 400)
        assert_error(c.post("/v1/search/batch", json={"queries": [], "kk": 1}), 400)
        assert_error(c.post("/v1/search/batch", json={"queries": "x"}), 400)
        assert_error(c.post("/v1/search/batch", data=b"x", content_type="text/plain"), 415)
        body = json.dumps({"queries": [{"image": b64(jpeg_bytes)}]})
        for mimetype in ("application/x-ndjson", "text/json", "application/notjson"):
            assert_error(c.post("/v1/search/batch", data=body, content_type=mimetype), 415)
        ok = c.post("/v1/search/batch", data=body, content_type="application/vnd.x+json")
        assert ok.status_code == 200
        bad_k = {"queries": [{"image": b64(jpeg_bytes)}], "k": 0}
        assert_error(c.post("/v1/search/batch", json=bad_k), 400, "invalid_k")
        assert app.test_client().get("/v1/info").get_json()["batching"]["max_batch_entries"] == 3
    finally:
        app.extensions["phonesim"].close()


def test_batch_filters_apply_per_entry(client, jpeg_bytes, catalog_rows):
    low, mid, high = _prices(catalog_rows)
    queries = [
        {"image": b64(jpeg_bytes)},
        {"image": b64(jpeg_bytes), "filter": {"price": {"gte": high}}},
    ]
    body = {"queries": queries, "k": 50, "filter": {"price": {"lte": low}}}
    results = client.post("/v1/search/batch", json=body).get_json()["results"]
    assert {float(n["price"]) for n in results[0]["neighbors"]} == {low}
    assert {float(n["price"]) for n in results[1]["neighbors"]} == {high}
    assert np.isclose(results[1]["filter"]["price"]["gte"], high)


def test_a_batch_holds_no_decoded_photo_until_its_forward_pass(app, monkeypatch):
    """A batch's photos wait for one forward pass; each was held whole meanwhile (64
    decoded 6000 x 6600 PNGs: about 10 GB), though a server that reads no text needs only
    the model's input."""
    from tests.server.helpers import large_png, watch_batch_held_images

    svc = app.extensions["phonesim"].service
    held = watch_batch_held_images(svc, (3000, 2000), monkeypatch)
    queries = [{"image": b64(large_png())} for _ in range(3)]
    answered = app.test_client().post("/v1/search/batch", json={"queries": queries})
    assert answered.status_code == 200, answered.get_json()
    assert held == [0]


def test_a_batch_id_query_that_fails_names_its_id(client, first_id):
    """An id entry's error had no "id", where its result and every batch add error had one:
    a client matching answers to ids could not tell which id failed."""
    body = {"queries": [{"id": first_id}, {"id": "no-such-item"}], "k": 2}
    found, missing = client.post("/v1/search/batch", json=body).get_json()["results"]
    assert found["id"] == first_id and found["status"] == 200
    assert missing["id"] == "no-such-item" and missing["status"] == 404
    assert missing["error"]["code"] == "unknown_item"


def test_a_batch_with_a_filter_too_long_to_repeat_is_refused(client, first_id):
    """Its filter is repeated in every result: 600 KB in had drawn 115 MB out."""
    wide = {"label": [f"{i}" + "x" * 200 for i in range(100)]}  # 20,000 characters
    body = {"queries": [{"id": first_id}] * 64, "k": 100, "filter": wide}
    r = client.post("/v1/search/batch", json=body)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_filter"
    assert len(r.data) < 1000
