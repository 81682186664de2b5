"""The class-aware re-rank of neighbours (``serve --class-rerank``): an uploaded photo's most
similar few are reordered by its class probabilities, a catalog item's by its label; vector
queries, the pages past the pool and the hits' scores are not touched."""

from __future__ import annotations

import pytest

from embedder.class_rerank import DEFAULT_POOL, DEFAULT_WEIGHT
from phonesim.cli import build_parser
from server import cli
from server.config import ServerConfig
from server.errors import MAX_MESSAGE
from tests.server.helpers import b64, build_test_index, make_app, upload

K = 8


def _ids(body: dict) -> list[str]:
    return [n["id"] for n in body["neighbors"]]


@pytest.fixture(scope="module")
def plain(tiny_embedder, readonly_index, jpeg_bytes) -> dict:
    """The photo's search by similarity alone, and its prediction."""
    app = make_app(ServerConfig(class_rerank=0.0, knn_fusion=False), tiny_embedder, readonly_index)
    try:
        return app.test_client().post(f"/v1/search?k={K}", data=upload(jpeg_bytes)).get_json()
    finally:
        app.extensions["phonesim"].close()


@pytest.fixture(scope="module")
def misfiled_nearest(tiny_embedder, catalog_rows, plain, tmp_path_factory):
    """The catalog with the photo's most similar item filed under the class the classifier
    finds least likely, and every other item under the class it finds most likely."""
    from index import CatalogIndex

    nearest = _ids(plain)[0]
    believed, outsider = plain["prediction"]["top"][0]["label"], plain["prediction"]["top"][-1]
    rows = {
        item_id: {**row, "label": outsider["label"] if item_id == nearest else believed}
        for item_id, row in catalog_rows.items()
    }
    out = build_test_index(tiny_embedder, rows, tmp_path_factory.mktemp("rerank") / "index")
    ix = CatalogIndex.open(out, readonly=True)
    yield ix
    ix.close()


def _client(tiny_embedder, index, weight: float):
    app = make_app(ServerConfig(class_rerank=weight, knn_fusion=False), tiny_embedder, index)
    return app, app.test_client()


@pytest.fixture
def reranked(tiny_embedder, misfiled_nearest):
    app, client = _client(tiny_embedder, misfiled_nearest, weight=100.0)
    yield client
    app.extensions["phonesim"].close()


def test_the_misfiled_nearest_item_drops_to_the_end_of_the_pool(reranked, jpeg_bytes, plain):
    body = reranked.post(f"/v1/search?k={K}", data=upload(jpeg_bytes)).get_json()
    order = _ids(plain)
    assert _ids(body) == [*order[1:DEFAULT_POOL], order[0], *order[DEFAULT_POOL:]]
    # Scores stay cosine similarities: each item keeps the score similarity gave it.
    before = {n["id"]: n["score"] for n in plain["neighbors"]}
    assert {n["id"]: n["score"] for n in body["neighbors"]} == before


def test_pages_read_from_the_same_reranked_list(reranked, jpeg_bytes):
    whole = _ids(reranked.post(f"/v1/search?k={K}", data=upload(jpeg_bytes)).get_json())
    pages = []
    for offset in range(0, K, 3):
        r = reranked.post(f"/v1/search?k=3&offset={offset}", data=upload(jpeg_bytes))
        pages += _ids(r.get_json())
    assert pages[:K] == whole
    one = reranked.post("/v1/search?k=1", data=upload(jpeg_bytes)).get_json()
    assert _ids(one) == whole[:1]  # a page smaller than the pool still sees the whole pool


def test_vector_queries_keep_similarity_order(reranked, jpeg_bytes, plain):
    embedding = reranked.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["embedding"]
    by_vector = reranked.post("/v1/search", json={"vector": embedding, "k": K}).get_json()
    assert _ids(by_vector) == _ids(plain) and by_vector["ranking"] == "similarity"


def test_a_batch_reranks_its_image_queries_only(reranked, jpeg_bytes, plain):
    embedding = reranked.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["embedding"]
    r = reranked.post(
        "/v1/search/batch",
        json={"queries": [{"image": b64(jpeg_bytes)}, {"vector": embedding}], "k": K},
    )
    assert r.status_code == 200, r.get_json()
    image, vector = r.get_json()["results"]
    single = reranked.post(f"/v1/search?k={K}", data=upload(jpeg_bytes)).get_json()
    assert _ids(image) == _ids(single) != _ids(plain)
    assert _ids(vector) == _ids(plain)


def test_weight_zero_is_similarity_order(tiny_embedder, misfiled_nearest, jpeg_bytes, plain):
    app, client = _client(tiny_embedder, misfiled_nearest, weight=0.0)
    try:
        body = client.post(f"/v1/search?k={K}", data=upload(jpeg_bytes)).get_json()
        info = client.get("/v1/info").get_json()["ranking"]
    finally:
        app.extensions["phonesim"].close()
    assert _ids(body) == _ids(plain)
    assert info == {"class_rerank": 0.0, "class_rerank_pool": DEFAULT_POOL}


def test_an_unlabelled_catalog_keeps_similarity_order(
    tiny_embedder, readonly_index, catalog_rows, jpeg_bytes, plain, tmp_path
):
    from index import CatalogIndex

    rows = {i: {k: v for k, v in row.items() if k != "label"} for i, row in catalog_rows.items()}
    ix = CatalogIndex.open(build_test_index(tiny_embedder, rows, tmp_path / "index"))
    app, client = _client(tiny_embedder, ix, weight=100.0)
    try:
        body = client.post(f"/v1/search?k={K}", data=upload(jpeg_bytes)).get_json()
    finally:
        app.extensions["phonesim"].close()
        ix.close()
    assert _ids(body) == _ids(plain)


# -- the per-request ranking ----------------------------------------------------------------------
def test_a_photo_is_reranked_by_default_and_the_answer_says_so(reranked, jpeg_bytes, plain):
    body = reranked.post(f"/v1/search?k={K}", data=upload(jpeg_bytes)).get_json()
    assert body["ranking"] == "class" and _ids(body) != _ids(plain)
    assert plain["ranking"] == "similarity"  # a server started with --class-rerank 0


@pytest.mark.parametrize("how", ["query", "form", "json"])
def test_a_client_can_ask_for_similarity_order(reranked, jpeg_bytes, plain, how):
    if how == "query":
        r = reranked.post(f"/v1/search?k={K}&ranking=similarity", data=upload(jpeg_bytes))
    elif how == "form":
        r = reranked.post(f"/v1/search?k={K}", data={**upload(jpeg_bytes), "ranking": "similarity"})
    else:
        r = reranked.post(
            "/v1/search", json={"image": b64(jpeg_bytes), "k": K, "ranking": "similarity"}
        )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["ranking"] == "similarity"
    assert _ids(body) == _ids(plain)
    assert body["prediction"] == plain["prediction"]  # the prediction does not depend on it


def test_the_query_string_ranking_wins_over_the_body(reranked, jpeg_bytes, plain):
    r = reranked.post(
        "/v1/search?ranking=similarity",
        json={"image": b64(jpeg_bytes), "k": K, "ranking": "class"},
    )
    assert r.get_json()["ranking"] == "similarity" and _ids(r.get_json()) == _ids(plain)


def test_class_ranking_applies_only_where_the_server_reranks_photos(
    reranked, tiny_embedder, misfiled_nearest, jpeg_bytes, plain
):
    embedding = reranked.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["embedding"]
    by_vector = reranked.post(
        "/v1/search", json={"vector": embedding, "k": K, "ranking": "class"}
    ).get_json()
    assert by_vector["ranking"] == "similarity" and _ids(by_vector) == _ids(plain)
    app, client = _client(tiny_embedder, misfiled_nearest, weight=0.0)
    try:
        body = client.post(f"/v1/search?k={K}&ranking=class", data=upload(jpeg_bytes)).get_json()
    finally:
        app.extensions["phonesim"].close()
    assert body["ranking"] == "similarity" and _ids(body) == _ids(plain)


def test_batch_entries_choose_their_own_ranking(reranked, jpeg_bytes, plain):
    photo = b64(jpeg_bytes)
    r = reranked.post(
        "/v1/search/batch",
        json={
            "queries": [{"image": photo}, {"image": photo, "ranking": "class"}],
            "k": K,
            "ranking": "similarity",
        },
    )
    assert r.status_code == 200, r.get_json()
    batch_default, own = r.get_json()["results"]
    assert batch_default["ranking"] == "similarity" and _ids(batch_default) == _ids(plain)
    assert own["ranking"] == "class" and _ids(own) != _ids(plain)
    by_query = reranked.post(
        f"/v1/search/batch?ranking=similarity&k={K}", json={"queries": [{"image": photo}]}
    )
    assert by_query.get_json()["results"][0]["ranking"] == "similarity"


@pytest.mark.parametrize("value", ["Class", "", "x" * 5000, 1, True, ["class"], None])
def test_a_bad_ranking_is_a_400(reranked, jpeg_bytes, value):
    r = reranked.post("/v1/search", json={"image": b64(jpeg_bytes), "ranking": value})
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == "invalid_ranking"
    assert len(r.get_json()["error"]["message"]) <= MAX_MESSAGE
    q = reranked.post("/v1/search?ranking=best", data=upload(jpeg_bytes))
    assert q.status_code == 400 and q.get_json()["error"]["code"] == "invalid_ranking"
    entry = reranked.post(
        "/v1/search/batch", json={"queries": [{"image": b64(jpeg_bytes), "ranking": value}]}
    )
    assert entry.status_code == 200
    assert entry.get_json()["results"][0]["error"]["code"] == "invalid_ranking"


# -- a catalog item's neighbours, re-ranked by its label ----------------------------------------
def _filed_apart(catalog_rows, label_names, odd_one: str) -> dict:
    """The catalog with ``odd_one`` filed under the model's second class, every other item
    under its first."""
    own, other = label_names[:2]
    return {i: {**row, "label": other if i == odd_one else own} for i, row in catalog_rows.items()}


@pytest.fixture(scope="module")
def item_case(tiny_embedder, readonly_index, catalog_rows, tmp_path_factory):
    """(item id, its neighbours by similarity, an index where the item and all but its most
    similar neighbour are filed under one class and that neighbour under another)."""
    from index import CatalogIndex

    item = sorted(catalog_rows)[0]
    app = make_app(ServerConfig(class_rerank=0.0), tiny_embedder, readonly_index)
    try:
        order = _ids(app.test_client().get(f"/v1/items/{item}/similar?k={K}").get_json())
    finally:
        app.extensions["phonesim"].close()
    rows = _filed_apart(catalog_rows, tiny_embedder.label_names, order[0])
    out = build_test_index(tiny_embedder, rows, tmp_path_factory.mktemp("item-rerank") / "index")
    ix = CatalogIndex.open(out, readonly=True)
    yield item, order, ix
    ix.close()


@pytest.fixture
def item_client(tiny_embedder, item_case):
    app, client = _client(tiny_embedder, item_case[2], weight=100.0)
    yield client
    app.extensions["phonesim"].close()


def test_an_items_neighbours_of_another_label_drop_to_the_end_of_the_pool(item_case, item_client):
    item, order, _ = item_case
    body = item_client.get(f"/v1/items/{item}/similar?k={K}").get_json()
    assert body["ranking"] == "class"
    assert _ids(body) == [*order[1:DEFAULT_POOL], order[0], *order[DEFAULT_POOL:]]
    pages = []
    for offset in range(0, K, 3):
        page = item_client.get(f"/v1/items/{item}/similar?k=3&offset={offset}").get_json()
        pages += _ids(page)
    assert pages[:K] == _ids(body)


def test_an_item_query_can_ask_for_similarity_order(item_case, item_client):
    item, order, _ = item_case
    body = item_client.get(f"/v1/items/{item}/similar?k={K}&ranking=similarity").get_json()
    assert body["ranking"] == "similarity" and _ids(body) == order
    bad = item_client.get(f"/v1/items/{item}/similar?ranking=nearest")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_ranking"


def test_a_batch_ranks_an_item_entry_as_its_own_endpoint_does(item_case, item_client):
    item, order, _ = item_case
    r = item_client.post(
        "/v1/search/batch",
        json={"queries": [{"id": item}, {"id": item, "ranking": "similarity"}], "k": K},
    )
    assert r.status_code == 200, r.get_json()
    by_class, by_similarity = r.get_json()["results"]
    single = item_client.get(f"/v1/items/{item}/similar?k={K}").get_json()
    assert by_class["ranking"] == "class" and _ids(by_class) == _ids(single) != order
    assert by_similarity["ranking"] == "similarity" and _ids(by_similarity) == order


@pytest.mark.parametrize("label", [None, "not-a-class-of-the-model", ""])
def test_an_item_without_a_known_label_keeps_similarity_order(
    tiny_embedder, catalog_rows, item_case, tmp_path, label
):
    from index import CatalogIndex

    item, order, _ = item_case
    rows = _filed_apart(catalog_rows, tiny_embedder.label_names, order[0])
    rows[item] = {k: v for k, v in rows[item].items() if k != "label"}
    if label is not None:
        rows[item]["label"] = label
    ix = CatalogIndex.open(build_test_index(tiny_embedder, rows, tmp_path / "index"))
    app, client = _client(tiny_embedder, ix, weight=100.0)
    try:
        body = client.get(f"/v1/items/{item}/similar?k={K}&ranking=class").get_json()
        batch = client.post("/v1/search/batch", json={"queries": [{"id": item}], "k": K})
    finally:
        app.extensions["phonesim"].close()
        ix.close()
    assert body["ranking"] == "similarity" and _ids(body) == order
    assert batch.get_json()["results"][0]["ranking"] == "similarity"


def test_a_server_that_does_not_rerank_keeps_an_items_similarity_order(tiny_embedder, item_case):
    item, order, index = item_case
    app, client = _client(tiny_embedder, index, weight=0.0)
    try:
        body = client.get(f"/v1/items/{item}/similar?k={K}&ranking=class").get_json()
    finally:
        app.extensions["phonesim"].close()
    assert body["ranking"] == "similarity" and _ids(body) == order


# -- flags and settings ---------------------------------------------------------------------------
def _parse(*argv: str):
    return build_parser().parse_args(["serve", "--checkpoint", "c", "--index", "i", *argv])


def test_the_flag_reaches_the_config_with_the_product_default():
    config, _ = cli.settings_from_args(_parse())
    assert config.class_rerank == ServerConfig().class_rerank == DEFAULT_WEIGHT
    assert config.rerank is not None and config.rerank.pool == DEFAULT_POOL
    assert cli.settings_from_args(_parse("--class-rerank", "0.3"))[0].rerank.weight == 0.3
    assert cli.settings_from_args(_parse("--class-rerank", "0"))[0].rerank is None


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf", "much"])
def test_bad_flag_values_are_refused(value):
    with pytest.raises(SystemExit):
        _parse("--class-rerank", value)


@pytest.mark.parametrize("value", [-1.0, float("nan"), True, "0.1"])
def test_bad_settings_are_refused(value):
    with pytest.raises(ValueError, match="class"):
        ServerConfig.from_mapping({"class_rerank": value}).validate()
