"""Every bad request gets a 4xx JSON error, and the server goes on answering."""

from __future__ import annotations

import pytest

from tests.server.helpers import assert_error, bad_requests, upload


@pytest.fixture
def corpus(jpeg_bytes):  # not shared: the uploads are streams, read once
    return bad_requests(jpeg_bytes)


def test_bad_input_corpus_is_large_enough(corpus):
    assert len(corpus) >= 25
    assert len({name for name, _, _ in corpus}) == len(corpus)


def test_every_bad_input_gets_a_4xx_json_error_and_the_server_keeps_answering(
    client, corpus, jpeg_bytes
):
    for name, kwargs, status in corpus:
        kwargs = dict(kwargs)
        response = client.open(kwargs.pop("path"), **kwargs)
        assert response.status_code == status, (name, response.get_data(as_text=True)[:300])
        assert 400 <= response.status_code < 500
        error = assert_error(response, status)
        # One code for "too large", whichever limit refused the body.
        assert (error["code"] == "payload_too_large") == (status == 413), name
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/search", data=upload(jpeg_bytes))
    assert ok.status_code == 200 and ok.get_json()["neighbors"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'status="500"' not in metrics


@pytest.mark.parametrize("name", ["score", "image_url"])
def test_a_metadata_name_the_server_adds_is_refused_as_such(name):
    """The name "score" was refused as if its characters were wrong ("must be 1-64 letters")."""
    from server.errors import ApiError
    from server.limits import check_metadata

    with pytest.raises(ApiError, match=f"'{name}' is the server's own"):
        check_metadata({name: 1})
