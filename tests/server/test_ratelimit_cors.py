"""Opt-in per-client rate limit (429 + Retry-After) and CORS (preflight included)."""

from __future__ import annotations

from server.config import ServerConfig
from server.ratelimit import TokenBucket
from tests.server.helpers import API_KEY, assert_error, make_app


def test_token_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a", now=0.0) == 0.5  # one token back after 0.5 s
    assert bucket.take("b", now=0.0) == 0.0  # another client has its own bucket
    assert bucket.take("a", now=1.0) == 0.0


def test_token_bucket_forgets_the_oldest_clients():
    bucket = TokenBucket(rate=1.0, burst=1, max_keys=2)
    for key in ("a", "b", "c"):
        bucket.take(key, now=0.0)
    assert bucket.take("a", now=0.0) == 0.0  # forgotten: a fresh bucket


def test_rate_limit_answers_429_with_retry_after(tiny_embedder, readonly_index):
    app = make_app(ServerConfig(rate_limit=1.0, rate_burst=2), tiny_embedder, readonly_index)
    client = app.test_client()
    try:
        assert [client.get("/v1/info").status_code for _ in range(2)] == [200, 200]
        error = assert_error(response := client.get("/v1/info"), 429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1 and "per second" in error["message"]
        assert client.get("/healthz").status_code == 200  # probes are never limited
        assert client.get("/readyz").status_code == 200
        # Nor the web page and its files: at --rate-limit 1 app.js itself had been a 429, and
        # the page stayed at "connecting" for good.
        for path in ("/", "/static/app.js", "/static/style.css", "/", "/static/app.js"):
            assert client.get(path).status_code == 200, path
        other = client.get("/v1/info", environ_base={"REMOTE_ADDR": "10.0.0.2"})
        assert other.status_code == 200
    finally:
        app.extensions["phonesim"].close()


def test_no_cors_headers_unless_asked(client):
    response = client.get("/v1/info", headers={"Origin": "https://shop.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_for_listed_origins_with_preflight(tiny_embedder, readonly_index):
    config = ServerConfig(api_key=API_KEY, cors_origins=("https://shop.example",))
    app = make_app(config, tiny_embedder, readonly_index)
    client = app.test_client()
    try:
        ok = client.get("/v1/info", headers={"Origin": "https://shop.example"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert "Origin" in ok.headers["Vary"]
        other = client.get("/v1/info", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
        # Vary on every answer, so a shared cache never gives the allowed origin one of these
        for answer in (other, client.get("/v1/info")):
            assert "Origin" in answer.headers["Vary"]
        preflight = client.options(
            "/v1/items",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key, Content-Type",
            },
        )
        assert preflight.status_code == 204 and preflight.data == b""
        assert "Content-Type" not in preflight.headers
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "X-API-Key" in preflight.headers["Access-Control-Allow-Headers"]
        assert int(preflight.headers["Access-Control-Max-Age"]) > 0
        nowhere = client.options(
            "/v1/nowhere",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"},
        )
        assert nowhere.status_code == 404 and nowhere.get_json()["error"]["code"]
        assert "Access-Control-Allow-Methods" not in nowhere.headers
        error = client.post("/v1/items", headers={"Origin": "https://shop.example"})
        assert error.status_code == 401  # errors carry the header too, so pages can read them
        assert error.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    finally:
        app.extensions["phonesim"].close()


def test_cors_any_origin(tiny_embedder, readonly_index):
    app = make_app(ServerConfig(cors_origins=("*",)), tiny_embedder, readonly_index)
    try:
        r = app.test_client().get("/healthz", headers={"Origin": "https://a.example"})
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    finally:
        app.extensions["phonesim"].close()


def test_an_answer_to_an_unparsed_request_names_the_origin_only_when_it_can_be_known():
    """gunicorn's parser refuses a request before its Origin header is read."""
    from server.cors_headers import allowed_origins, unread_origin_headers

    assert unread_origin_headers(allowed_origins([])) == []
    anyone = dict(unread_origin_headers(allowed_origins(["*"])))
    assert anyone["Access-Control-Allow-Origin"] == "*"
    one = dict(unread_origin_headers(allowed_origins(["https://shop.example/"])))
    assert one["Access-Control-Allow-Origin"] == "https://shop.example"
    assert one["Vary"] == "Origin"
    several = unread_origin_headers(allowed_origins(["https://a.example", "https://b.example"]))
    assert several == [("Vary", "Origin")]  # which one asked is unknown: none may read it


def test_a_plain_options_answers_no_content_and_counts_against_the_rate(
    tiny_embedder, readonly_index
):
    """It answered an empty text/html 200 (the one API answer not JSON), and every OPTIONS was
    exempt from the rate limit, where the README exempts CORS preflights only."""
    app = make_app(ServerConfig(rate_limit=1, rate_burst=2), tiny_embedder, readonly_index)
    try:
        client = app.test_client()
        answers = [client.options("/v1/info") for _ in range(3)]
        assert answers[0].status_code == 204 and "Content-Type" not in answers[0].headers
        assert "GET" in answers[0].headers["Allow"] and answers[0].data == b""
        assert [r.status_code for r in answers] == [204, 204, 429]
        preflight = {"Origin": "https://a.example", "Access-Control-Request-Method": "GET"}
        assert client.options("/v1/info", headers=preflight).status_code != 429
    finally:
        app.extensions["phonesim"].close()
