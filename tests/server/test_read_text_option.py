"""The per-request ``read_text`` option on a server that does not read text: "auto" and
"never" change nothing, "always" is refused (the client asked for what it cannot get), and a
bad value is a 400 wherever it is given. The reading server's side is in test_text_cues.py."""

from __future__ import annotations

import pytest

from tests.server.helpers import assert_error, b64, upload


def test_auto_and_never_are_answered_without_text(client, jpeg_bytes) -> None:
    plain = client.post("/v1/search", data=upload(jpeg_bytes)).get_json()["prediction"]
    for mode in ("auto", "never"):
        searched = client.post(f"/v1/search?read_text={mode}", data=upload(jpeg_bytes))
        embedded = client.post("/v1/embed", json={"image": b64(jpeg_bytes), "read_text": mode})
        for response in (searched, embedded):
            assert response.status_code == 200, response.get_json()
            prediction = response.get_json()["prediction"]
            assert prediction["label"] == plain["label"]
            assert "text_read" not in prediction and "text_cues" not in prediction


def test_always_is_refused_where_no_text_is_read(client, jpeg_bytes) -> None:
    image = b64(jpeg_bytes)
    for response in (
        client.post("/v1/search?read_text=always", data=upload(jpeg_bytes)),
        client.post("/v1/search", json={"image": image, "read_text": "always"}),
        client.post("/v1/embed?read_text=always", data=upload(jpeg_bytes)),
        client.post(
            "/v1/search/batch", json={"queries": [{"image": image}], "read_text": "always"}
        ),
    ):
        body = assert_error(response, 400, "text_reading_off")
        assert "--read-text" in body["message"]
    entry = {"image": image, "read_text": "always"}
    batch = client.post("/v1/search/batch", json={"queries": [entry, {"image": image}]})
    assert batch.status_code == 200
    refused, answered = batch.get_json()["results"]
    assert refused["error"]["code"] == "text_reading_off"
    assert answered["status"] == 200 and answered["prediction"]["label"]


@pytest.mark.parametrize("value", ["sometimes", "", "ALWAYS", 1, True, ["auto"]])
def test_a_bad_read_text_is_a_400_wherever_it_is_given(client, jpeg_bytes, value) -> None:
    image = b64(jpeg_bytes)
    assert_error(
        client.post("/v1/search", json={"image": image, "read_text": value}),
        400,
        "invalid_read_text",
    )
    assert_error(
        client.post("/v1/embed", json={"image": image, "read_text": value}),
        400,
        "invalid_read_text",
    )
    batch = client.post(
        "/v1/search/batch", json={"queries": [{"image": image, "read_text": value}]}
    )
    assert batch.get_json()["results"][0]["error"]["code"] == "invalid_read_text"
    if isinstance(value, str):
        assert_error(
            client.post("/v1/search", query_string={"read_text": value}, data=upload(jpeg_bytes)),
            400,
            "invalid_read_text",
        )
        # The body is checked even when the query string sets the mode.
        assert_error(
            client.post("/v1/embed?read_text=auto", json={"image": image, "read_text": value}),
            400,
            "invalid_read_text",
        )


def test_null_read_text_is_a_400(client, jpeg_bytes) -> None:
    for path in ("/v1/search", "/v1/embed"):
        response = client.post(path, json={"image": b64(jpeg_bytes), "read_text": None})
        assert_error(response, 400, "invalid_read_text")


def test_read_text_with_a_vector_changes_nothing(client, jpeg_bytes) -> None:
    vector = client.post("/v1/embed", data=upload(jpeg_bytes)).get_json()["embedding"]
    plain = client.post("/v1/search", json={"vector": vector}).get_json()
    asked = client.post("/v1/search", json={"vector": vector, "read_text": "never"})
    assert asked.status_code == 200
    assert asked.get_json()["neighbors"] == plain["neighbors"]
    assert asked.get_json()["prediction"] is None


def test_a_catalog_items_neighbours_take_no_read_text(client, catalog_rows) -> None:
    item = next(iter(catalog_rows))
    assert client.get(f"/v1/items/{item}/similar").status_code == 200
    assert_error(client.get(f"/v1/items/{item}/similar?read_text=never"), 400, "invalid_request")


def test_embed_refuses_unknown_query_parameters(client, jpeg_bytes) -> None:
    assert_error(client.post("/v1/embed?k=3", data=upload(jpeg_bytes)), 400, "invalid_request")
