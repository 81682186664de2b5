"""Batch endpoints: ``POST /v1/search/batch`` and ``POST /v1/items/batch``.

Both answer 200 with one result per entry, in the order given: a bad entry gets its own
``{"status", "error": {"code", "message"}}`` and does not fail the others. What fails the whole
request: a body that is not a batch, more than ``max_batch_entries`` entries, bad batch-wide
options, a missing API key (writes), and the server's own trouble (503).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, request

from server.api import hits_json, item_json
from server.auth import require_api_key
from server.bulk import NewItem, add_many, embed_many
from server.errors import ApiError, entry_error
from server.inputs import (
    IMAGE_FIELD,
    VECTOR_FIELD,
    check_query_params,
    decode_base64_image,
    is_json,
    json_body,
    parse_vector,
)
from server.limits import (
    check_item_id,
    check_json_size,
    check_metadata,
    json_values_for,
    parse_json,
)
from server.search_options import (
    OPTION_FIELDS,
    SearchOptions,
    entry_options,
    reject_unknown_fields,
    request_options,
)
from server.service import Embedded, LookupService
from server.state import service

bp = Blueprint("api_batch", __name__, url_prefix="/v1")

QUERY_KINDS = (IMAGE_FIELD, VECTOR_FIELD, "id")
NDJSON = "application/x-ndjson"


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _entries(value: Any, name: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "invalid_request", f"'{name}' must be a non-empty list")
    if len(value) > limit:
        raise ApiError(
            400,
            "too_many_entries",
            f"'{name}' has {len(value)} entries; at most {limit} per request (--max-batch-entries)",
        )
    return value


def _query(
    svc: LookupService, entry: Any, defaults: SearchOptions
) -> tuple[str, Any, SearchOptions]:
    """(kind, image bytes / unit vector / item id, options) of one entry (ApiError if bad);
    an item's ranking is applied once its label is read (see ``search_batch``)."""
    if not isinstance(entry, dict):
        raise ApiError(400, "invalid_request", "an entry must be a JSON object")
    kinds = [k for k in QUERY_KINDS if k in entry]
    if len(kinds) != 1:
        raise ApiError(
            400, "invalid_request", "an entry needs exactly one of 'image', 'vector', 'id'"
        )
    kind = kinds[0]
    reject_unknown_fields(entry, (kind, *OPTION_FIELDS))
    opts = entry_options(svc, entry, defaults)
    if kind != "id":
        opts = opts.applied(classes=kind == IMAGE_FIELD, svc=svc)
    if kind == IMAGE_FIELD:
        return kind, decode_base64_image(entry[kind], svc.config.max_upload_bytes), opts
    if kind == VECTOR_FIELD:
        return kind, parse_vector(entry[kind], svc.embedder.dim), opts
    if not isinstance(entry["id"], str) or not entry["id"]:
        raise ApiError(400, "invalid_id", "'id' must be a non-empty string")
    return kind, entry["id"], opts


def _answer(exc: Exception) -> dict:
    found = entry_error(exc)
    if found is None:
        raise exc
    return found


@bp.post("/search/batch")
def search_batch() -> Response:
    """Neighbours of many images, vectors or catalog ids (``queries``), in the same order."""
    t0 = time.perf_counter()
    svc = service()
    if not is_json(request):
        raise ApiError(415, "unsupported_media_type", "send a JSON object with 'queries'")
    body = json_body(request, json_values_for(svc.config.max_batch_entries, svc.embedder.dim))
    reject_unknown_fields(body, ("queries", *OPTION_FIELDS))
    queries = _entries(body.get("queries"), "queries", svc.config.max_batch_entries)
    options = {k: v for k, v in body.items() if k != "queries"}
    defaults = request_options(svc, options, request.args)
    results: list[dict | None] = [None] * len(queries)
    parsed: list[tuple[str, Any, SearchOptions] | None] = [None] * len(queries)
    for i, entry in enumerate(queries):
        try:
            parsed[i] = _query(svc, entry, defaults)
        except ApiError as exc:
            results[i] = _answer(exc)
    images = [i for i, p in enumerate(parsed) if p is not None and p[0] == IMAGE_FIELD]
    datas = [p[1] for p in parsed if p is not None and p[0] == IMAGE_FIELD]
    modes = [p[2].text_mode for p in parsed if p is not None and p[0] == IMAGE_FIELD]
    embedded = embed_many(svc, datas, text_modes=modes) if datas else []
    predictions: dict[int, Any] = {}
    vectors: dict[int, Any] = {}
    # The classes of the readable photos and of the labelled items, for a "class" ranking.
    probabilities: dict[int, Any] = {}
    readable: list[tuple[int, Embedded]] = []
    for i, emb in zip(images, embedded, strict=True):
        if isinstance(emb, Embedded):
            vectors[i] = emb.embedding
            readable.append((i, emb))
        else:
            results[i] = emb
    if readable:  # one prediction call (one catalog search under kNN fusion) for all images
        found = svc.predict_many([emb for _, emb in readable])
        predictions = {i: p for (i, _), p in zip(readable, found, strict=True)}
    for i, emb in readable:  # after the prediction: the re-rank believes the text it read
        probabilities[i] = svc.ranking_probabilities(emb)
    # Queries with the same options share one index call; an item's query excludes itself.
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(parsed):
        if p is not None and results[i] is None:
            if p[0] == "id":
                try:
                    vectors[i], classes = svc.item_vector(p[1]), svc.item_classes(p[1])
                except Exception as exc:  # entry errors only; others re-raised
                    results[i] = _answer(exc)
                    continue
                p = parsed[i] = (p[0], p[1], p[2].applied(classes is not None, svc=svc))
                if classes is not None:
                    probabilities[i] = classes
            else:
                vectors.setdefault(i, p[1])
            # The options carry the ranking: "class" groups queries with classes only.
            key = json.dumps([p[1] if p[0] == "id" else None, p[2].echo()], sort_keys=True)
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        kind, value, opts = parsed[members[0]]  # type: ignore[misc]
        exclude = [value] if kind == "id" else None
        try:
            found, _ = svc.search_many(
                np.stack([vectors[i] for i in members]),
                opts.k,
                opts.flt,
                exclude,
                opts.offset,
                opts.threshold,
                probabilities=(
                    np.stack([probabilities[i] for i in members])
                    if opts.ranking == "class"
                    else None
                ),
            )
        except Exception as exc:  # entry errors only (a filter the index refuses)
            for i in members:
                results[i] = _answer(exc)
            continue
        for i, hits in zip(members, found, strict=True):
            result: dict[str, Any] = {"status": 200}
            if kind == "id":
                result["id"] = value
            if i in predictions:
                result["prediction"] = predictions[i]
            result.update(neighbors=hits_json(svc, hits), **opts.echo())
            results[i] = result
    for i, p in enumerate(parsed):  # an id query's error names it, as its result does
        if p is not None and p[0] == "id" and results[i] is not None and "id" not in results[i]:
            results[i] = {"id": p[1], **results[i]}
    return jsonify(results=results, timing_ms={"total": _ms_since(t0)})


def _item_lines(limit: int) -> list[Any]:
    """The entries of a batch add: NDJSON lines or ``{"items": [...]}``. A line that is not
    JSON within the body bounds fails the request, as a JSON body would."""
    mimetype = request.mimetype or ""
    if mimetype == NDJSON:
        raw = request.get_data(cache=False)
        check_json_size(raw, "request body")  # before parsing, as for one JSON document
        lines = [line for line in raw.splitlines() if line.strip()]
        _entries(lines, "items", limit)  # counted before any line is parsed
        return [parse_json(line, f"NDJSON line {n}") for n, line in enumerate(lines, 1)]
    if is_json(request):
        body = json_body(request)
        reject_unknown_fields(body, ("items",))
        items = body.get("items")
        if not isinstance(items, list):
            raise ApiError(400, "invalid_request", "'items' must be a non-empty list")
        return items
    raise ApiError(415, "unsupported_media_type", f"send {NDJSON} or a JSON object with 'items'")


def _new_item(svc: LookupService, entry: Any) -> NewItem:
    if not isinstance(entry, dict):
        bad = ApiError(400, "invalid_request", "an item must be a JSON object")
        return NewItem(None, error=_answer(bad))
    raw_id = entry.get("id")
    try:
        reject_unknown_fields(entry, ("id", IMAGE_FIELD, "metadata"))
        item_id = check_item_id(raw_id)
        metadata = entry.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ApiError(400, "invalid_metadata", "'metadata' must be a JSON object")
        check_metadata(metadata)
        svc.check_new_metadata(metadata)
        if IMAGE_FIELD not in entry:
            raise ApiError(400, "missing_image", f"the item has no '{IMAGE_FIELD}' (base64)")
        data = decode_base64_image(entry[IMAGE_FIELD], svc.config.max_upload_bytes)
    except ApiError as exc:
        return NewItem(raw_id if isinstance(raw_id, str) else None, error=_answer(exc))
    return NewItem(item_id, data, metadata)


@bp.post("/items/batch")
@require_api_key
def add_items_batch() -> Response:
    """Embed and add many items (durable), each acknowledged: status 201 or its error."""
    t0 = time.perf_counter()
    svc = service()
    check_query_params(request.args, (), filters=False)
    lines = _entries(
        _item_lines(svc.config.max_batch_entries), "items", svc.config.max_batch_entries
    )
    answers = add_many(svc, [_new_item(svc, e) for e in lines])
    for answer in answers:
        if answer["status"] == 201:
            # What was stored, not a fresh read, which a delete racing in could beat.
            answer["item"] = item_json(svc, answer["id"], answer.pop("metadata"))
    added = sum(1 for a in answers if a["status"] == 201)
    return jsonify(
        results=answers,
        added=added,
        failed=len(answers) - added,
        timing_ms={"total": _ms_since(t0)},
    )
