"""The OpenAPI document matches the app's routes and the fields each endpoint accepts."""

from __future__ import annotations

import json
import re


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_documents_exactly_the_routes(app):
    spec = app.test_client().get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    verbs = {"get", "post", "put", "delete", "patch"}
    documented = {
        (path, method.upper())
        for path, ops in spec["paths"].items()
        for method in ops
        if method in verbs
    }
    routed = {
        (_openapi_path(rule.rule), method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routed
    for ops in spec["paths"].values():  # every $ref resolves
        for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(ops)):
            assert ref in spec["components"]["schemas"]


def test_openapi_request_bodies_list_exactly_the_accepted_fields(app):
    spec = app.test_client().get("/openapi.json").get_json()

    def json_fields(path: str) -> set[str]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return set(body["schema"]["properties"])

    assert json_fields("/v1/search") == {
        "image",
        "vector",
        "k",
        "filter",
        "score_threshold",
        "offset",
        "ranking",
        "read_text",
    }
    assert json_fields("/v1/embed") == {"image", "read_text"}  # k or filter there is a 400
    # The form takes the same options (it had listed only the image).
    form = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(form["schema"]["properties"]) == json_fields("/v1/search") - {"vector"}
    assert form["encoding"]["filter"]["contentType"] == "application/json"


def test_openapi_metadata_bounds_match_the_server(app):
    """A JSON add or PATCH takes 32 fields; the schema said 16 (the multipart form's share)."""
    from server.limits import MAX_METADATA_FIELDS

    spec = app.test_client().get("/openapi.json").get_json()
    add = spec["paths"]["/v1/items"]["post"]["requestBody"]["content"]
    assert add["application/json"]["schema"]["properties"]["metadata"]["maxProperties"] == 32
    form = add["multipart/form-data"]["schema"]
    assert form["properties"]["metadata"]["maxProperties"] == MAX_METADATA_FIELDS // 2 == 16
    patch = spec["paths"]["/v1/items/{item_id}"]["patch"]["requestBody"]["content"]
    assert patch["application/json"]["schema"]["properties"]["metadata"]["maxProperties"] == 32


def test_openapi_offers_the_ranking_to_every_search(app):
    spec = app.test_client().get("/openapi.json").get_json()

    def params(path: str, verb: str) -> set[str]:
        return {p["name"] for p in spec["paths"][path][verb]["parameters"]}

    assert "ranking" in params("/v1/search", "post")
    assert "ranking" in params("/v1/items/{item_id}/similar", "get")
    # The batch takes its default options from the query string too.
    assert params("/v1/search/batch", "post") == params("/v1/search", "post")
    entry = spec["components"]["schemas"]["SearchQuery"]["properties"]
    assert entry["ranking"]["enum"] == ["class", "similarity"]


def test_openapi_offers_the_text_reading_where_a_photo_is_uploaded(app):
    spec = app.test_client().get("/openapi.json").get_json()

    def params(path: str, verb: str) -> set[str]:
        return {p["name"] for p in spec["paths"][path][verb].get("parameters", [])}

    assert "read_text" in params("/v1/search", "post")
    assert params("/v1/embed", "post") == {"read_text"}
    assert "read_text" not in params("/v1/items/{item_id}/similar", "get")
    # This server does not read text: "always" is a 400 here, so it is not offered.
    entry = spec["components"]["schemas"]["SearchQuery"]["properties"]
    assert entry["read_text"]["enum"] == ["auto", "never"]


def test_openapi_documents_the_catalog_pages(app):
    from server.inputs import DEFAULT_LIMIT, MAX_LIMIT

    spec = app.test_client().get("/openapi.json").get_json()
    op = spec["paths"]["/v1/items"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {"limit", "cursor", "filter"}
    assert params["limit"]["schema"]["maximum"] == MAX_LIMIT
    assert params["limit"]["schema"]["default"] == DEFAULT_LIMIT
    assert {"200", "400", "429", "503"} == set(op["responses"])
    page = spec["components"]["schemas"]["ItemPage"]
    assert set(page["required"]) == {"items", "next_cursor"}


def test_an_unknown_query_parameter_answers_a_documented_status(writable, first_id):
    """GET /v1/info?zz=1 (and the item endpoints) answered a 400 their operations did not
    list: a client generated from the document had no type for it."""
    from tests.server.helpers import API_KEY

    app, _ = writable
    c = app.test_client()
    spec = c.get("/openapi.json").get_json()
    checked = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method not in {"get", "post", "delete", "patch"} or not path.startswith("/v1/"):
                continue
            url = path.replace("{item_id}", first_id) + "?zz=1"
            r = c.open(url, method=method.upper(), headers={"X-API-Key": API_KEY}, json={})
            assert str(r.status_code) in op["responses"], (method, path, r.status_code)
            checked += 1
    assert checked >= 10


def test_every_operation_has_a_unique_id_and_both_key_headers_are_documented(writable, jpeg_bytes):
    """13 of 18 operations had no operationId (generated clients name them by path), the
    Bearer header the server takes was not a security scheme, nor the 201's Location header."""
    from tests.server.helpers import API_KEY, upload

    app, _ = writable
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()
    ids = [
        op["operationId"]
        for ops in spec["paths"].values()
        for method, op in ops.items()
        if method in {"get", "post", "put", "delete", "patch"}
    ]
    assert len(ids) == len(set(ids)) == 18
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    add = spec["paths"]["/v1/items"]["post"]
    assert {"Bearer": []} in add["security"] and "Location" in add["responses"]["201"]["headers"]
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    r = client.post("/v1/items", data={**upload(jpeg_bytes), "id": "doc-1"}, headers=bearer)
    assert r.status_code == 201 and r.headers["Location"].endswith("/v1/items/doc-1")
