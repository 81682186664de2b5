"""Hostile input through every endpoint (Flask's test client): each answer is 2xx where the
request is legitimate, else a 4xx with the JSON error body; never a 5xx; a refused write leaves
the catalog exactly as it was. The seeded fuzzer sends 500+ mutated image files through
``POST /v1/search`` and ``POST /v1/items``."""

from __future__ import annotations

import json

import pytest

from tests.imagefuzz import foreign_files, mutated_files
from tests.server.helpers import assert_error, b64, upload
from tests.server.hostile_cases import KEY, cases


def snapshot(index) -> list[tuple[str, str]]:
    """Every item and its metadata: what a refused write must leave unchanged."""
    return sorted((i, json.dumps(index.get(i).metadata, sort_keys=True)) for i in index.ids())


def test_hostile_requests_get_2xx_or_4xx_json_and_refused_writes_change_nothing(
    writable, jpeg_bytes
):
    app, _ = writable
    index = app.extensions["phonesim"].service.index
    client = app.test_client()
    before = snapshot(index)
    all_cases = cases(b64(jpeg_bytes))
    assert len(all_cases) >= 60
    failures = []
    for name, method, path, kwargs, status, code in all_cases:
        response = client.open(path, method=method, **kwargs)
        got = response.get_json(silent=True) if status >= 400 else None
        got_code = (got or {}).get("error", {}).get("code")
        if response.status_code != status or (code is not None and got_code != code):
            failures.append((name, response.status_code, response.get_data()[:200]))
            continue
        if status >= 400 and method != "HEAD":
            error = assert_error(response, status, code)
            assert len(error["message"]) < 1000, name  # never echoes a whole hostile body
        if method in ("POST", "DELETE") and status >= 400 and "/v1/items" in path:
            assert snapshot(index) == before, name
    assert failures == [], "\n".join(map(repr, failures))
    assert snapshot(index) == before


def test_legitimate_unusual_items_are_accepted(writable, jpeg_bytes):
    app, _ = writable
    client = app.test_client()
    unusual = {
        "ünïcödé/ок 1": {"title": "Ünïcødé 📱", "price": 2**62, "rating": -0.5, "used": False},
        "a b/c.d_e-f": {"title": "t" * 1000, "note": None},
    }
    for item_id, metadata in unusual.items():
        body = {"id": item_id, "image": b64(jpeg_bytes), "metadata": metadata}
        r = client.post("/v1/items", json=body, headers=KEY)
        assert r.status_code == 201, r.get_json()
        location = r.headers["Location"]
        assert client.get(location).get_json()["title"] == metadata["title"]
        assert client.get(location + "/similar?k=2").status_code == 200
        assert client.delete(location, headers=KEY).status_code == 200


def test_foreign_formats_are_refused_on_every_image_endpoint(writable):
    app, _ = writable
    client = app.test_client()
    for name, data in foreign_files().items():
        for path, extra, headers in [
            ("/v1/search", {}, {}),
            ("/v1/embed", {}, {}),
            ("/v1/items", {"id": f"foreign-{name}"}, KEY),
        ]:
            response = client.post(
                path, data={**upload(data, f"x.{name}"), **extra}, headers=headers
            )
            assert_error(response, 400, "invalid_image")


@pytest.mark.parametrize("endpoint", ["/v1/search", "/v1/items"])
def test_fuzzed_files_never_get_a_5xx(writable, endpoint):
    """570+ seeded mutations of every accepted format (bit flips, truncations, header edits,
    repeated chunks): decoded and answered, or refused as invalid_image; nothing else."""
    app, _ = writable
    index = app.extensions["phonesim"].service.index
    client = app.test_client()
    before = len(index)
    statuses: dict[int, int] = {}
    added = 0
    for n, (name, data) in enumerate(mutated_files(per_seed=30, seed=7)):
        extra = {"id": f"fuzz-{n}"} if endpoint == "/v1/items" else {}
        response = client.post(
            endpoint, data={**upload(data, name), **extra}, headers=KEY if extra else {}
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code in (200, 201):
            added += response.status_code == 201
            continue
        assert_error(response, 400, "invalid_image")
        if extra:
            assert extra["id"] not in index, name
    total = sum(statuses.values())
    print(f"\n{endpoint}: {total} fuzzed files -> {statuses}")
    assert total >= 500
    assert len(index) == before + added
