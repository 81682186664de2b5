"""Pieces of the OpenAPI document (:mod:`server.openapi`): schemas, parameters and request
bodies, with the bounds of :mod:`server.limits` written into them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.inputs import DEFAULT_LIMIT, MAX_LIMIT
from server.limits import (
    FIELD_NAME_PATTERN,
    ID_PATTERN,
    MAX_ABS_NUMBER,
    MAX_FILTER_VALUES,
    MAX_ID_LENGTH,
    MAX_METADATA_FIELDS,
    MAX_STRING_LENGTH,
    TEXT_PATTERN,
)


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_responses(*statuses: int) -> dict[str, Any]:
    text = {
        400: "bad request: no or empty image, not an image, truncated, unsupported format, "
        "decompression bomb, bad base64 or JSON, JSON nested too deep, a number out of range, "
        "a string with NUL or a lone surrogate, bad k, unknown filter field, bad limit or "
        "cursor, an id or metadata outside the limits (see the schemas)",
        401: "API key missing",
        403: "API key wrong, or writes disabled",
        404: "unknown item",
        409: "item id already exists",
        413: "upload larger than the limit",
        415: "unsupported content type",
        429: "over the per-client rate limit (--rate-limit); Retry-After says when to retry",
        503: "model not loaded, overloaded, shutting down, or (writes) the catalog store "
        "cannot be reached; Retry-After says when to retry",
    }
    out = {str(s): json_content(ref("Error"), text[s]) for s in statuses}
    for status in {429, 503} & set(statuses):
        out[str(status)]["headers"] = {
            "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
        }
    return out


TEXT = {"type": "string", "maxLength": MAX_STRING_LENGTH, "pattern": TEXT_PATTERN}
NUMBER = {"type": "number", "minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER}
SCALAR = {"anyOf": [TEXT, NUMBER, {"type": "boolean"}]}
ID_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_LENGTH,
    "pattern": ID_PATTERN,
    "description": "printable characters, '/' between non-empty segments other than '.' and "
    "'..', no leading or trailing space, not ending in /similar or /image",
}
METADATA = {
    "type": "object",
    "maxProperties": MAX_METADATA_FIELDS // 2,
    "propertyNames": {"pattern": FIELD_NAME_PATTERN},
    "additionalProperties": {"anyOf": [TEXT, NUMBER, {"type": "boolean"}, {"type": "null"}]},
    "description": f"at most {MAX_METADATA_FIELDS} fields together with the multipart form "
    "fields; names of letters, digits, '_', '.', '-'; values: strings of at most "
    f"{MAX_STRING_LENGTH} characters, numbers within ±9.2e18, booleans or null",
}


FORM_FIELD_PATTERN = "^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
# The id an add returns feeds the item's own URLs (stateful testing follows these links).
ITEM_LINKS = {
    name: {"operationId": op, "parameters": {"item_id": "$response.body#/item/id"}}
    for name, op in [
        ("GetItem", "get_item"),
        ("SimilarItems", "similar"),
        ("ItemImage", "item_image"),
        ("DeleteItem", "delete_item"),
    ]
}


def filter_schema(fields: Iterable[str], json_values: bool) -> dict[str, Any]:
    """Filters name only the index's filterable fields (any other is a 400)."""
    value: dict[str, Any] = TEXT
    if json_values:
        many = {"type": "array", "minItems": 1, "maxItems": MAX_FILTER_VALUES, "items": SCALAR}
        value = {"anyOf": [TEXT, NUMBER, {"type": "boolean"}, many]}
    return {
        "type": "object",
        "properties": {name: value for name in sorted(fields)},
        "additionalProperties": False,
    }


K_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}
K_PARAM = {
    "name": "k",
    "in": "query",
    "description": "number of neighbours (default 10, at most 100)",
    "schema": K_SCHEMA,
}


def filter_param_of(fields: Iterable[str]) -> dict[str, Any]:
    return {
        "name": "filter",
        "in": "query",
        "description": "metadata equality filters as query parameters, e.g. `label=xiaomi`; a "
        "repeated parameter means any of its values (at most "
        f"{MAX_FILTER_VALUES}). Fields: /v1/info `filterable_fields`; any other is a 400.",
        "style": "form",
        "explode": True,
        "schema": filter_schema(fields, json_values=False),
    }


LIMIT_PARAM = {
    "name": "limit",
    "in": "query",
    "description": f"items per page (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}
CURSOR_PARAM = {
    "name": "cursor",
    "in": "query",
    "description": "`next_cursor` of the previous page (opaque); absent for the first page",
    "schema": {"type": "string", "format": "cursor"},
}
ITEM_ID = {
    "name": "item_id",
    "in": "path",
    "required": True,
    "description": "catalog item id (URL-encoded)",
    "schema": ID_SCHEMA,
}
IMAGE = {"type": "string", "format": "binary", "minLength": 1}


def image_body(**json_fields: dict[str, Any]) -> dict[str, Any]:
    """An uploaded image (multipart, base64 JSON or raw), plus the JSON fields an endpoint takes.

    Unknown fields are refused with 400, hence ``additionalProperties: false``.
    """
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": IMAGE},
                    "additionalProperties": False,
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "byte",
                            "minLength": 1,
                            "description": "base64",
                        },
                        **json_fields,
                    },
                    "additionalProperties": False,
                }
            },
            "image/*": {"schema": IMAGE},
        },
    }


EMBED_BODY = image_body()

SECURITY = [{"ApiKey": []}]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "ClassScore": {
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    },
    "Prediction": {
        "type": "object",
        "required": ["label", "score", "top"],
        "properties": {
            "label": {"type": "string"},
            "score": {"type": "number"},
            "top": {"type": "array", "items": ref("ClassScore")},
        },
    },
    "Item": {
        "type": "object",
        "required": ["id"],
        "description": "an item's id, its catalog metadata (label, title, brand, price, ...) "
        "and the URL of its thumbnail",
        "properties": {"id": {"type": "string"}, "image_url": {"type": "string"}},
        "additionalProperties": True,
    },
    "ItemPage": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "description": "items in a stable order (by id): a page never skips nor repeats an "
        "item that stays in the catalog while paging",
        "properties": {
            "items": {"type": "array", "items": ref("Item")},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "pass as `cursor` for the next page; null on the last page",
            },
        },
    },
    "Neighbor": {
        "allOf": [
            ref("Item"),
            {"type": "object", "properties": {"score": {"type": "number"}}},
        ]
    },
    "Timing": {"type": "object", "additionalProperties": {"type": "number"}},
    "SearchResult": {
        "type": "object",
        "required": ["prediction", "neighbors", "timing_ms"],
        "properties": {
            "prediction": ref("Prediction"),
            "neighbors": {"type": "array", "items": ref("Neighbor")},
            "k": {"type": "integer"},
            "filter": {"type": ["object", "null"]},
            "timing_ms": ref("Timing"),
        },
    },
    "SimilarResult": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "neighbors": {"type": "array", "items": ref("Neighbor")},
            "timing_ms": ref("Timing"),
        },
    },
    "EmbedResult": {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "dim": {"type": "integer"},
            "embedding": {"type": "array", "items": {"type": "number"}},
            "prediction": ref("Prediction"),
            "timing_ms": ref("Timing"),
        },
    },
}
