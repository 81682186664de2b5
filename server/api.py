"""The JSON API under ``/v1``: search, embed, item lookup and catalog updates."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.routing import PathConverter

from index.catalog import Hit
from server.auth import require_api_key
from server.errors import ApiError
from server.filters import merge_filters
from server.inputs import (
    VECTOR_FIELD,
    check_query_params,
    decode_cursor,
    encode_cursor,
    is_json,
    json_body,
    parse_limit,
    parse_vector,
    read_image,
)
from server.limits import check_item_id, check_metadata, parse_json
from server.search_options import (
    ITEM_QUERY_OPTIONS,
    OPTION_FIELDS,
    form_options,
    reject_unknown_fields,
    request_options,
    requested_read_text,
    search_with,
)
from server.service import Embedded, LookupService
from server.state import service, state

bp = Blueprint("api", __name__, url_prefix="/v1")


class ItemIdConverter(PathConverter):
    """An item id in a URL: a path that does not end in /similar or /image, so that
    ``DELETE /v1/items/x/image`` is 405 (the URL of a thumbnail) and not the deletion of an
    item "x/image" (which no id may be: see :data:`common.item_ids.ID_PATTERN`); nor is
    ``batch`` an id (``/v1/items/batch`` is the batch add)."""

    regex = r"(?!batch$)[^/](?:(?!/(?:similar|image)$).)*"


bp.record_once(lambda setup: setup.app.url_map.converters.setdefault("item_id", ItemIdConverter))


@bp.before_request
def _catch_up() -> None:
    """Apply the store's changes before answering, so that every write acknowledged before
    this request began (by any worker or replica) is in the answer."""
    svc = state().service
    if svc is not None:
        svc.catch_up()


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def timed_prediction(
    svc: LookupService, embedded: Embedded, exclude_ids: list[str] | None = None
) -> tuple[dict[str, Any], float]:
    """The image's prediction and its time in ms: with kNN fusion on, that includes a search
    of the catalog for the voting neighbours, so ``timing_ms`` reports it as its own stage.
    Reading the photo's text (when the server reads and the prediction is unsure) is its own
    stage too, ``read_text`` in ``embedded.timing_ms``, and not counted here."""
    t0 = time.perf_counter()
    prediction = svc.predict(embedded, exclude_ids)
    predict_ms = _ms_since(t0) - embedded.timing_ms.get("read_text", 0.0)
    return prediction, round(max(predict_ms, 0.0), 3)


def item_json(svc: LookupService, item_id: str, metadata: dict[str, Any], **extra: Any) -> dict:
    """An item as clients see it: id, extra fields, public metadata, thumbnail URL."""
    out: dict[str, Any] = {"id": item_id, **extra}
    for key, value in svc.public_metadata(metadata).items():
        out.setdefault(key, value)
    if svc.has_image(metadata):
        # Versioned by the stored file: the thumbnail is cached for an hour, and an id deleted
        # and added again with another photo must not show the old one meanwhile.
        version = hashlib.sha256(str(metadata["image"]).encode()).hexdigest()[:12]
        out["image_url"] = url_for("api.item_image", item_id=item_id, v=version)
    return out


def hits_json(svc: LookupService, hits: list[Hit]) -> list[dict]:
    return [item_json(svc, h.id, h.metadata, score=round(h.score, 6)) for h in hits]


@bp.post("/search")
def search() -> Response:
    """Nearest catalog phones of an uploaded photo (with its predicted class) or of a vector
    (``vector`` in a JSON body: the embedding of /v1/embed or of the export)."""
    t0 = time.perf_counter()
    svc = service()
    if is_json(request) and VECTOR_FIELD in (body := json_body(request)):
        fields = dict(body)
        vector = parse_vector(fields.pop(VECTOR_FIELD), svc.embedder.dim)
        if "image" in fields:
            raise ApiError(400, "invalid_request", "give either 'image' or 'vector', not both")
        # read_text is checked as for a photo; a vector has nothing to read, so it changes nothing
        reject_unknown_fields(fields, OPTION_FIELDS)
        opts = request_options(svc, fields, request.args).applied(classes=False, svc=svc)
        hits, search_ms = search_with(svc, vector, opts)
        return jsonify(
            prediction=None,
            neighbors=hits_json(svc, hits),
            **opts.echo(),
            timing_ms={"search": search_ms, "total": _ms_since(t0)},
        )
    with svc.arrival() as arrival:  # from the start: the body may still be arriving
        data, fields = read_image(request, svc.config.max_upload_bytes)
        reject_unknown_fields(fields, OPTION_FIELDS)
        if request.mimetype == "multipart/form-data":
            fields = form_options(fields)
        opts = request_options(svc, fields, request.args).applied(classes=True, svc=svc)
        embedded = svc.embed_bytes(data, arrival, text_mode=opts.text_mode)
    # The prediction first: the re-rank believes the text it may read.
    prediction, predict_ms = timed_prediction(svc, embedded)
    belief = svc.ranking_probabilities(embedded)
    hits, search_ms = search_with(svc, embedded.embedding, opts, None, belief)
    timing = {
        **embedded.timing_ms,
        "search": search_ms,
        "predict": predict_ms,
        "total": _ms_since(t0),
    }
    return jsonify(
        prediction=prediction,
        neighbors=hits_json(svc, hits),
        **opts.echo(),
        timing_ms=timing,
    )


@bp.post("/embed")
def embed() -> Response:
    """The embedding and predicted class of an uploaded photo; ``read_text`` (a field or the
    query string, which wins) says when its prediction reads the photo's text."""
    t0 = time.perf_counter()
    svc = service()
    check_query_params(request.args, ("read_text",), filters=False)
    with svc.arrival() as arrival:
        data, fields = read_image(request, svc.config.max_upload_bytes)
        reject_unknown_fields(fields, ("read_text",))
        mode = requested_read_text(svc, fields, request.args)
        embedded = svc.embed_bytes(data, arrival, text_mode=mode or "auto")
    prediction, predict_ms = timed_prediction(svc, embedded)
    return jsonify(
        model=svc.embedder.model_name,
        dim=int(embedded.embedding.shape[0]),
        embedding=[round(float(v), 7) for v in embedded.embedding],
        prediction=prediction,
        timing_ms={**embedded.timing_ms, "predict": predict_ms, "total": _ms_since(t0)},
    )


@bp.get("/items")
def list_items() -> Response:
    """A page of catalog items (matching the filter) in a stable order; ``next_cursor`` fetches
    the next page."""
    svc = service()
    check_query_params(request.args, ("limit", "cursor"), filters=True)
    limit = parse_limit(request.args.get("limit"))
    after = decode_cursor(request.args.get("cursor"))
    flt = merge_filters(request.args.lists(), None, svc.filterable_fields)
    items, last = svc.list_items(limit, after, flt)
    return jsonify(
        items=[item_json(svc, item.id, item.metadata) for item in items],
        next_cursor=None if last is None else encode_cursor(last),
        filter=flt,
    )


@bp.get("/items/<item_id:item_id>")
def get_item(item_id: str) -> Response:
    svc = service()
    check_query_params(request.args, (), filters=False)
    return jsonify(item_json(svc, item_id, svc.item(item_id)))


@bp.get("/items/<path:item_id>/similar")
def similar(item_id: str) -> Response:
    """Nearest neighbours of a catalog item (the item itself excluded), the most similar few
    re-ranked by the item's label where the server re-ranks."""
    t0 = time.perf_counter()
    svc = service()
    if "read_text" in request.args:  # not one of this endpoint's parameters
        raise ApiError(400, "invalid_request", "read_text applies to an uploaded image")
    options = request_options(svc, {}, request.args, ITEM_QUERY_OPTIONS)
    vector, classes = svc.item_vector(item_id), svc.item_classes(item_id)
    opts = options.applied(classes=classes is not None, svc=svc)
    hits, search_ms = search_with(svc, vector, opts, [item_id], classes)
    return jsonify(
        id=item_id,
        neighbors=hits_json(svc, hits),
        **opts.echo(),
        timing_ms={"search": search_ms, "total": _ms_since(t0)},
    )


@bp.get("/items/<path:item_id>/image")
def item_image(item_id: str) -> Response:
    """JPEG thumbnail of a catalog item's own image (looked up by id, never by path); ``v``,
    the version in the item's ``image_url``, only keys caches."""
    check_query_params(request.args, ("v",), filters=False)
    data = service().thumbnail(item_id)
    response = Response(data, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


def _metadata_from(fields: dict[str, Any], is_json: bool) -> dict[str, Any]:
    """Item metadata: a JSON object in ``metadata`` (a string in multipart form data); in
    multipart, other non-empty form fields are added as strings."""
    if not is_json:  # a form field left blank is not given (a text "" would be a value)
        fields = {key: value for key, value in fields.items() if value != ""}
    given = "metadata" in fields
    raw = fields.pop("metadata", None)
    if not given:
        metadata: Any = {}
    elif is_json:
        metadata = raw
    else:
        metadata = parse_json(raw, "'metadata'", code="invalid_metadata")
    if not isinstance(metadata, dict):
        raise ApiError(400, "invalid_metadata", "'metadata' must be a JSON object")
    if is_json:
        if fields:
            unknown = ", ".join(sorted(map(repr, fields)))
            raise ApiError(400, "invalid_request", f"unknown field(s) {unknown}")
    else:
        both = sorted(set(fields) & set(metadata))
        if both:
            names = ", ".join(map(repr, both))
            raise ApiError(400, "invalid_metadata", f"{names} given in 'metadata' and as a field")
        metadata.update(fields)
    return check_metadata(metadata)


@bp.post("/items")
@require_api_key
def add_item() -> tuple[Response, int, dict[str, str]]:
    """Embed an image and add it to the catalog with its metadata (durable)."""
    t0 = time.perf_counter()
    svc = service()
    check_query_params(request.args, (), filters=False)
    as_json = is_json(request)
    if not as_json and request.mimetype != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content type {request.mimetype or '(none)'!r} is not accepted here; send "
            "multipart/form-data or a JSON object (application/json)",
        )
    data, fields = read_image(request, svc.config.max_upload_bytes)
    item_id = check_item_id(fields.pop("id", None))
    metadata = _metadata_from(fields, as_json)
    embedded, stored = svc.add(item_id, data, metadata)
    # The new item is in the catalog now: it must not vote for its own label.
    prediction, predict_ms = timed_prediction(svc, embedded, exclude_ids=[item_id])
    body = {
        # What was stored, not a fresh read: a delete racing in must not turn a done add
        # into "unknown item".
        "item": item_json(svc, item_id, stored),
        "prediction": prediction,
        "timing_ms": {**embedded.timing_ms, "predict": predict_ms, "total": _ms_since(t0)},
    }
    return jsonify(body), 201, {"Location": url_for("api.get_item", item_id=item_id)}


@bp.patch("/items/<item_id:item_id>")
@require_api_key
def update_item(item_id: str) -> Response:
    """Change an item's metadata without embedding its image again (durable). Body:
    ``{"metadata": {...}, "merge": true}``; ``merge: false`` replaces every field."""
    svc = service()
    check_query_params(request.args, (), filters=False)
    if not is_json(request):
        raise ApiError(415, "unsupported_media_type", "send a JSON object")
    body = json_body(request)
    reject_unknown_fields(body, ("metadata", "merge"))
    merge = body.get("merge", True)
    if not isinstance(merge, bool):
        raise ApiError(400, "invalid_request", "'merge' must be true or false")
    if not isinstance(body.get("metadata"), dict):
        raise ApiError(400, "invalid_metadata", "the body needs a 'metadata' object")
    metadata = _metadata_from({"metadata": body["metadata"]}, True)
    item = svc.update(item_id, metadata, merge=merge)
    return jsonify(item=item_json(svc, item.id, item.metadata))


@bp.delete("/items/<item_id:item_id>")
@require_api_key
def delete_item(item_id: str) -> Response:
    """Remove an item from the catalog (durable)."""
    check_query_params(request.args, (), filters=False)
    service().remove(item_id)
    return jsonify(id=item_id, deleted=True)


@bp.get("/info")
def info() -> Response:
    """Model, classes, index kind and size, limits."""
    check_query_params(request.args, (), filters=False)
    return jsonify(service().info())
