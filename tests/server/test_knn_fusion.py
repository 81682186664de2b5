"""Predictions that use the catalog (``serve --knn-fusion``): the classifier's probabilities
fused with the labels of the image's nearest catalog items, on every endpoint that predicts."""

from __future__ import annotations

import pytest

from common.errors import UserError
from embedder.knn_vote import DEFAULT_K, DEFAULT_TEMPERATURE, DEFAULT_WEIGHT, FUSE_BY_DEFAULT
from phonesim.cli import build_parser
from server import cli
from server.config import ServerConfig
from tests.server.helpers import API_KEY, b64, build_test_index, make_app, upload


def _index_with_labels(tiny_embedder, catalog_rows, out, label_of):
    """The tiny catalog indexed with each row's label replaced by ``label_of(row)`` (None:
    the row has no label field)."""
    rows = {}
    for item_id, row in catalog_rows.items():
        row = {k: v for k, v in row.items() if k != "label"}
        label = label_of(row)
        rows[item_id] = row if label is None else {**row, "label": label}
    return build_test_index(tiny_embedder, rows, out)


@pytest.fixture(scope="module")
def classifier_alone(tiny_embedder, readonly_index, jpeg_bytes) -> dict:
    """The prediction of ``jpeg_bytes`` without fusion (the default app)."""
    app = make_app(ServerConfig(knn_fusion=False), tiny_embedder, readonly_index)
    try:
        return (
            app.test_client().post("/v1/search", data=upload(jpeg_bytes)).get_json()["prediction"]
        )
    finally:
        app.extensions["phonesim"].close()


@pytest.fixture(scope="module")
def outsider(classifier_alone) -> str:
    """The class the classifier finds least likely for the query image."""
    return classifier_alone["top"][-1]["label"]


@pytest.fixture(scope="module")
def all_outsider_index(tiny_embedder, catalog_rows, outsider, tmp_path_factory):
    """A catalog whose every item is labelled ``outsider``."""
    from index import CatalogIndex

    out = tmp_path_factory.mktemp("knn") / "index"
    _index_with_labels(tiny_embedder, catalog_rows, out, lambda row: outsider)
    ix = CatalogIndex.open(out, readonly=True)
    yield ix
    ix.close()


def _client(tiny_embedder, index, **settings):
    app = make_app(ServerConfig(**settings), tiny_embedder, index)
    return app, app.test_client()


@pytest.fixture
def fused(tiny_embedder, all_outsider_index):
    app, client = _client(tiny_embedder, all_outsider_index, knn_fusion=True, knn_weight=1.0)
    yield client
    app.extensions["phonesim"].close()


def test_without_fusion_every_prediction_says_classifier(
    tiny_embedder, all_outsider_index, jpeg_bytes, classifier_alone
):
    assert classifier_alone["source"] == "classifier"
    app, client = _client(tiny_embedder, all_outsider_index, knn_fusion=False, knn_weight=1.0)
    try:
        single = client.post("/v1/search", data=upload(jpeg_bytes)).get_json()["prediction"]
        embedded = client.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["prediction"]
        batch = client.post("/v1/search/batch", json={"queries": [{"image": b64(jpeg_bytes)}]})
    finally:
        app.extensions["phonesim"].close()
    # The catalog says `outsider` everywhere, yet off means off.
    assert single == embedded == batch.get_json()["results"][0]["prediction"] == classifier_alone


def test_the_vote_alone_predicts_the_catalogs_label(fused, jpeg_bytes, outsider):
    """weight 1: a catalog that says ``outsider`` everywhere outvotes the classifier."""
    body = fused.post("/v1/search?k=3", data=upload(jpeg_bytes)).get_json()
    pred = body["prediction"]
    assert pred["source"] == "classifier+knn"
    assert (pred["label"], pred["score"]) == (outsider, 1.0)
    assert len(body["neighbors"]) == 3  # the listing itself is unchanged


def test_fusion_moves_the_prediction_towards_the_catalog_by_its_weight(
    tiny_embedder, all_outsider_index, jpeg_bytes, classifier_alone, outsider
):
    app, client = _client(tiny_embedder, all_outsider_index, knn_fusion=True, knn_weight=0.3)
    try:
        pred = client.post("/v1/search", data=upload(jpeg_bytes)).get_json()["prediction"]
    finally:
        app.extensions["phonesim"].close()
    before = {c["label"]: c["score"] for c in classifier_alone["top"]}
    after = {c["label"]: c["score"] for c in pred["top"]}
    # Every neighbour votes for the outsider: fused = 0.7 * classifier + 0.3 * one-hot.
    for label, score in before.items():
        assert after[label] == pytest.approx(0.7 * score + 0.3 * (label == outsider), abs=2e-6)
    assert after[outsider] > before[outsider]


def test_the_requests_filter_offset_and_threshold_do_not_reach_the_vote(
    fused, jpeg_bytes, outsider, catalog_rows
):
    other = next(r["label"] for r in catalog_rows.values() if r["label"] != outsider)
    body = fused.post(
        f"/v1/search?filter.label={other}&offset=5&score_threshold=0.999",
        data=upload(jpeg_bytes),
    ).get_json()
    assert body["neighbors"] == []  # nothing is labelled `other` in this catalog
    assert body["prediction"]["label"] == outsider
    assert body["prediction"]["source"] == "classifier+knn"


def test_embed_and_batch_search_predict_the_same_way(fused, jpeg_bytes, outsider):
    embedded = fused.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["prediction"]
    r = fused.post(
        "/v1/search/batch",
        json={"queries": [{"image": b64(jpeg_bytes)}, {"image": b64(jpeg_bytes), "k": 1}]},
    )
    assert r.status_code == 200, r.get_json()
    batch = [res["prediction"] for res in r.get_json()["results"]]
    single = fused.post("/v1/search", data=upload(jpeg_bytes)).get_json()["prediction"]
    assert embedded == batch[0] == batch[1] == single
    assert single["source"] == "classifier+knn" and single["label"] == outsider


def test_a_catalog_without_known_labels_leaves_the_classifier_alone(
    tiny_embedder, catalog_rows, jpeg_bytes, classifier_alone, tmp_path
):
    from index import CatalogIndex

    # Half the items have no label, the others one the checkpoint does not know.
    names = iter(range(len(catalog_rows)))
    out = _index_with_labels(
        tiny_embedder,
        catalog_rows,
        tmp_path / "index",
        lambda row: None if next(names) % 2 else "no-such-phone",
    )
    ix = CatalogIndex.open(out, readonly=True)
    app, client = _client(tiny_embedder, ix, knn_fusion=True, knn_weight=1.0)
    try:
        r = client.post("/v1/search", data=upload(jpeg_bytes))
        assert r.status_code == 200
        pred = r.get_json()["prediction"]
    finally:
        app.extensions["phonesim"].close()
        ix.close()
    assert pred == {**classifier_alone, "source": "classifier"}


def test_an_empty_catalog_still_predicts(
    tiny_embedder, index_dir, jpeg_bytes, classifier_alone, tmp_path
):
    import shutil

    from index import CatalogIndex

    shutil.copytree(index_dir, tmp_path / "index")
    ix = CatalogIndex.open(tmp_path / "index")
    ix.remove(list(ix.ids()))
    assert len(ix) == 0
    app, client = _client(tiny_embedder, ix, knn_fusion=True, knn_weight=1.0)
    try:
        pred = client.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["prediction"]
    finally:
        app.extensions["phonesim"].close()
        ix.close()
    assert pred == {**classifier_alone, "source": "classifier"}


def test_an_added_item_does_not_vote_for_its_own_label(
    tiny_embedder, catalog_rows, jpeg_bytes, outsider, tmp_path
):
    from index import CatalogIndex

    out = _index_with_labels(tiny_embedder, catalog_rows, tmp_path / "index", lambda row: outsider)
    ix = CatalogIndex.open(out)
    config = {"knn_fusion": True, "knn_weight": 1.0, "knn_k": 1, "api_key": API_KEY}
    app, client = _client(tiny_embedder, ix, **config)
    try:
        other = next(n for n in tiny_embedder.label_names if n != outsider)
        r = client.post(
            "/v1/items",
            json={"id": "new", "image": b64(jpeg_bytes), "metadata": {"label": other}},
            headers={"X-API-Key": API_KEY},
        )
        assert r.status_code == 201, r.get_json()
        # k 1: were the new item its own nearest neighbour, it would vote `other`.
        assert r.get_json()["prediction"]["label"] == outsider
        # Once added, it is the nearest catalog item of its own photo for a search.
        assert (
            client.post("/v1/search", data=upload(jpeg_bytes)).get_json()["prediction"]["label"]
            == other
        )
    finally:
        app.extensions["phonesim"].close()
        ix.close()


def test_a_reader_votes_with_the_labels_the_store_has_now(
    tiny_embedder, catalog_rows, jpeg_bytes, outsider, tmp_path
):
    """A read-only process over a store another process writes (a replica) predicts from the
    catalog as it is when the request comes, not as it was when the process opened it."""
    from index import CatalogIndex

    out = _index_with_labels(tiny_embedder, catalog_rows, tmp_path / "index", lambda row: outsider)
    writer = CatalogIndex.open(out)
    reader = CatalogIndex.open(out, readonly=True)
    app, client = _client(tiny_embedder, reader, knn_fusion=True, knn_weight=1.0)
    try:

        def predicted() -> str:
            return client.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["prediction"][
                "label"
            ]

        assert predicted() == outsider
        other = next(n for n in tiny_embedder.label_names if n != outsider)
        for item_id in list(writer.ids()):
            writer.update_metadata(item_id, {"label": other})
        assert predicted() == other
    finally:
        app.extensions["phonesim"].close()
        reader.close()
        writer.close()


def test_info_reports_the_fusion_settings(fused):
    assert fused.get("/v1/info").get_json()["prediction"] == {
        "knn_fusion": True,
        "knn_k": DEFAULT_K,
        "knn_weight": 1.0,
        "knn_temperature": DEFAULT_TEMPERATURE,
        "read_text": False,
        "text_weight": None,
        "text_rotations": None,
        "text_gate": None,
        "text_examples": None,
    }


# -- flags and settings ---------------------------------------------------------------------------
def _parse(*argv: str):
    return build_parser().parse_args(["serve", "--checkpoint", "c", "--index", "i", *argv])


def test_serve_flags_reach_the_config_and_default_to_the_product_default():
    config, _ = cli.settings_from_args(_parse())
    assert config.knn_fusion is FUSE_BY_DEFAULT
    assert (config.knn_k, config.knn_weight, config.knn_temperature) == (
        DEFAULT_K,
        DEFAULT_WEIGHT,
        DEFAULT_TEMPERATURE,
    )
    assert ServerConfig().knn_fusion is FUSE_BY_DEFAULT
    config, _ = cli.settings_from_args(
        _parse("--knn-fusion", "--knn-k", "7", "--knn-weight", "0.5", "--knn-temperature", "0.1")
    )
    assert config.fusion is not None
    assert (config.fusion.k, config.fusion.weight, config.fusion.temperature) == (7, 0.5, 0.1)
    assert cli.settings_from_args(_parse("--no-knn-fusion"))[0].fusion is None


@pytest.mark.parametrize(
    "flags",
    [
        ["--knn-k", "0"],
        ["--knn-k", "-3"],
        ["--knn-k", "many"],
        ["--knn-weight", "1.01"],
        ["--knn-weight", "-0.5"],
        ["--knn-weight", "nan"],
        ["--knn-temperature", "0"],
        ["--knn-temperature", "-1"],
        ["--knn-temperature", "nan"],
        ["--knn-fusion=yes"],
    ],
)
def test_serve_refuses_bad_fusion_flags(flags):
    with pytest.raises(SystemExit):
        _parse(*flags)


@pytest.mark.parametrize(
    "settings",
    [
        {"knn_k": 0},
        {"knn_k": 2.5},
        {"knn_k": True},
        {"knn_weight": 1.5},
        {"knn_temperature": 0.0},
        {"knn_temperature": float("inf")},
    ],
)
def test_bad_fusion_settings_are_refused(settings):
    with pytest.raises(ValueError):
        ServerConfig.from_mapping(settings)


def test_settings_from_args_turns_a_bad_config_into_a_usage_error():
    args = _parse("--knn-fusion")
    args.knn_k = 0  # past the flag's own check, as a caller building the namespace could
    with pytest.raises(UserError, match="k must be"):
        cli.settings_from_args(args)
