"""The class-aware re-rank of an uploaded photo's neighbours (``serve --class-rerank``): the
most similar few are reordered by the photo's class probabilities; vector and item queries,
the pages past the pool and the hits' scores are not touched."""

from __future__ import annotations

import base64

import pytest

from embedder.class_rerank import DEFAULT_POOL, DEFAULT_WEIGHT
from phonesim.cli import build_parser
from server import cli
from server.config import ServerConfig
from tests.server.helpers import build_test_index, make_app, upload

K = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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


def test_vector_and_item_queries_keep_similarity_order(
    reranked, tiny_embedder, misfiled_nearest, jpeg_bytes, plain
):
    embedding = reranked.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["embedding"]
    by_vector = reranked.post("/v1/search", json={"vector": embedding, "k": K}).get_json()
    assert _ids(by_vector) == _ids(plain)
    nearest = _ids(plain)[0]
    similar = reranked.get(f"/v1/items/{nearest}/similar?k=4").get_json()
    plain_app, plain_client = _client(tiny_embedder, misfiled_nearest, weight=0.0)
    try:
        assert similar == {
            **plain_client.get(f"/v1/items/{nearest}/similar?k=4").get_json(),
            "timing_ms": similar["timing_ms"],
        }
    finally:
        plain_app.extensions["phonesim"].close()


def test_a_batch_reranks_its_image_queries_only(reranked, jpeg_bytes, plain):
    embedding = reranked.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["embedding"]
    r = reranked.post(
        "/v1/search/batch",
        json={"queries": [{"image": _b64(jpeg_bytes)}, {"vector": embedding}], "k": K},
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
