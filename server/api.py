"""The JSON API under ``/v1``: search, embed, item lookup and catalog updates."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.routing import PathConverter

from index.catalog import Hit
from server.auth import require_api_key
from server.errors import ApiError
from server.inputs import (
    decode_cursor,
    encode_cursor,
    parse_filter,
    parse_k,
    parse_limit,
    read_image,
)
from server.limits import check_item_id, check_metadata, parse_json
from server.service import LookupService
from server.state import service, state

bp = Blueprint("api", __name__, url_prefix="/v1")


class ItemIdConverter(PathConverter):
    """An item id in a URL: a path that does not end in /similar or /image, so that
    ``DELETE /v1/items/x/image`` is 405 (the URL of a thumbnail) and not the deletion of an
    item "x/image" (which no id may be: see :data:`server.limits.ID_PATTERN`)."""

    regex = r"[^/](?:(?!/(?:similar|image)$).)*"


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


def item_json(svc: LookupService, item_id: str, metadata: dict[str, Any], **extra: Any) -> dict:
    """An item as clients see it: id, extra fields, public metadata, thumbnail URL."""
    out: dict[str, Any] = {"id": item_id, **extra}
    for key, value in svc.public_metadata(metadata).items():
        out.setdefault(key, value)
    if svc.has_image(metadata):
        out["image_url"] = url_for("api.item_image", item_id=item_id)
    return out


def hits_json(svc: LookupService, hits: list[Hit]) -> list[dict]:
    return [item_json(svc, h.id, h.metadata, score=round(h.score, 6)) for h in hits]


def _reject_unknown_fields(
    fields: dict[str, Any], allowed: tuple[str, ...], what: str = "field"
) -> None:
    """A misspelt field ("filters") must not be silently ignored."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        takes = ", ".join(map(repr, allowed)) or "no fields besides 'image'"
        raise ApiError(
            400,
            "invalid_request",
            f"unknown {what}(s) {', '.join(map(repr, unknown))}; this endpoint takes {takes}",
        )


def _search_options(svc: LookupService, body: dict[str, Any]) -> tuple[int, dict | None]:
    _reject_unknown_fields(body, ("k", "filter"))
    for key in ("k", "filter"):
        if key in body and body[key] is None:
            raise ApiError(400, f"invalid_{key}", f"'{key}' must not be null; leave it out")
    cfg = svc.config
    body_k = parse_k(body.get("k"), cfg.default_k, cfg.max_k)  # checked even when overridden
    k = parse_k(request.args.get("k"), body_k, cfg.max_k)
    flt = parse_filter(request.args.lists(), body.get("filter"), svc.filterable_fields)
    return k, flt


@bp.post("/search")
def search() -> Response:
    """Predicted class and nearest catalog phones of an uploaded photo."""
    t0 = time.perf_counter()
    svc = service()
    with svc.arrival() as arrival:  # from the start: the body may still be arriving
        data, fields = read_image(request, svc.config.max_upload_bytes)
        k, flt = _search_options(svc, fields)
        embedded = svc.embed_bytes(data, arrival)
    hits, search_ms = svc.search(embedded.embedding, k, flt)
    timing = {**embedded.timing_ms, "search": search_ms, "total": _ms_since(t0)}
    return jsonify(
        prediction=svc.predict(embedded.probabilities),
        neighbors=hits_json(svc, hits),
        k=k,
        filter=flt,
        timing_ms=timing,
    )


@bp.post("/embed")
def embed() -> Response:
    """The embedding and predicted class of an uploaded photo."""
    t0 = time.perf_counter()
    svc = service()
    with svc.arrival() as arrival:
        data, fields = read_image(request, svc.config.max_upload_bytes)
        _reject_unknown_fields(fields, ())
        embedded = svc.embed_bytes(data, arrival)
    return jsonify(
        model=svc.embedder.model_name,
        dim=int(embedded.embedding.shape[0]),
        embedding=[round(float(v), 7) for v in embedded.embedding],
        prediction=svc.predict(embedded.probabilities),
        timing_ms={**embedded.timing_ms, "total": _ms_since(t0)},
    )


@bp.get("/items")
def list_items() -> Response:
    """A page of catalog items in a stable order; ``next_cursor`` fetches the next page."""
    svc = service()
    _reject_unknown_fields(dict(request.args), ("limit", "cursor"), "query parameter")
    limit = parse_limit(request.args.get("limit"))
    after = decode_cursor(request.args.get("cursor"))
    items, last = svc.list_items(limit, after)
    return jsonify(
        items=[item_json(svc, item.id, item.metadata) for item in items],
        next_cursor=None if last is None else encode_cursor(last),
    )


@bp.get("/items/<item_id:item_id>")
def get_item(item_id: str) -> Response:
    svc = service()
    return jsonify(item_json(svc, item_id, svc.item(item_id)))


@bp.get("/items/<path:item_id>/similar")
def similar(item_id: str) -> Response:
    """Nearest neighbours of a catalog item (the item itself excluded)."""
    t0 = time.perf_counter()
    svc = service()
    k, flt = _search_options(svc, {})
    hits, search_ms = svc.similar(item_id, k, flt)
    return jsonify(
        id=item_id,
        neighbors=hits_json(svc, hits),
        k=k,
        filter=flt,
        timing_ms={"search": search_ms, "total": _ms_since(t0)},
    )


@bp.get("/items/<path:item_id>/image")
def item_image(item_id: str) -> Response:
    """JPEG thumbnail of a catalog item's own image (looked up by id, never by path)."""
    data = service().thumbnail(item_id)
    response = Response(data, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


def _metadata_from(fields: dict[str, Any], is_json: bool) -> dict[str, Any]:
    """Item metadata: a JSON object in ``metadata`` (a string in multipart form data); in
    multipart, other form fields are added as strings."""
    raw = fields.pop("metadata", None)
    if raw is None:
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
        for key, value in fields.items():
            metadata.setdefault(key, value)
    return check_metadata(metadata)


@bp.post("/items")
@require_api_key
def add_item() -> tuple[Response, int, dict[str, str]]:
    """Embed an image and add it to the catalog with its metadata (durable)."""
    t0 = time.perf_counter()
    svc = service()
    is_json = (request.mimetype or "").endswith("json")
    if not is_json and request.mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data or a JSON object")
    data, fields = read_image(request, svc.config.max_upload_bytes)
    item_id = check_item_id(fields.pop("id", None))
    metadata = _metadata_from(fields, is_json)
    embedded = svc.add(item_id, data, metadata)
    body = {
        "item": item_json(svc, item_id, svc.item(item_id)),
        "prediction": svc.predict(embedded.probabilities),
        "timing_ms": {**embedded.timing_ms, "total": _ms_since(t0)},
    }
    return jsonify(body), 201, {"Location": url_for("api.get_item", item_id=item_id)}


@bp.delete("/items/<item_id:item_id>")
@require_api_key
def delete_item(item_id: str) -> Response:
    """Remove an item from the catalog (durable)."""
    service().remove(item_id)
    return jsonify(id=item_id, deleted=True)


@bp.get("/info")
def info() -> Response:
    """Model, classes, index kind and size, limits."""
    return jsonify(service().info())
