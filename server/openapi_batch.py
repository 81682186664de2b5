"""OpenAPI pieces of search by vector, the batch endpoints and metadata updates
(:mod:`server.openapi` assembles the document)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.limits import MAX_ABS_NUMBER, MAX_JSON_DEPTH, MAX_JSON_MEMBERS, TEXT_PATTERN
from server.openapi_parts import (
    ID_SCHEMA,
    K_SCHEMA,
    METADATA,
    OFFSET_SCHEMA,
    RANKING_ECHO,
    RANKING_SCHEMA,
    SECURITY,
    THRESHOLD_SCHEMA,
    error_responses,
    json_content,
    read_text_schema,
    ref,
)

BASE64_IMAGE = {"type": "string", "format": "byte", "minLength": 1, "description": "base64"}


def vector_schema(dim: int | None) -> dict[str, Any]:
    """A query vector: ``dim`` finite numbers, not all zero (normalised by the server)."""
    schema: dict[str, Any] = {
        "type": "array",
        "items": {"type": "number", "minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER},
        "contains": {"type": "number", "not": {"const": 0}},
        "description": "an embedding (of /v1/embed or the export): the index's dimension, "
        "finite, not all zero; normalised to unit length",
    }
    if dim is not None:
        schema.update(minItems=dim, maxItems=dim)
    return schema


def options(flt: dict[str, Any], text_modes: Sequence[str]) -> dict[str, Any]:
    return {
        "k": K_SCHEMA,
        "filter": flt,
        "score_threshold": THRESHOLD_SCHEMA,
        "offset": OFFSET_SCHEMA,
        "ranking": RANKING_SCHEMA,
        "read_text": read_text_schema(text_modes),
    }


def search_json_body(
    flt: dict[str, Any], dim: int | None, text_modes: Sequence[str]
) -> dict[str, Any]:
    """``POST /v1/search`` as JSON: a base64 image or a vector, and the search options."""
    return {
        "type": "object",
        "properties": {
            "image": BASE64_IMAGE,
            "vector": vector_schema(dim),
            **options(flt, text_modes),
        },
        "oneOf": [{"required": ["image"]}, {"required": ["vector"]}],
        "additionalProperties": False,
    }


def query_schema(flt: dict[str, Any], dim: int | None, text_modes: Sequence[str]) -> dict[str, Any]:
    """One entry of a batch search (components ``SearchQuery``)."""
    return {
        "type": "object",
        "description": "exactly one of image (base64), vector or id (a catalog item: its "
        "neighbours, itself excluded); its own options replace the batch's",
        "properties": {
            "image": BASE64_IMAGE,
            "vector": vector_schema(dim),
            "id": {"type": "string", "minLength": 1, "maxLength": 256},
            **options(flt, text_modes),
        },
        "oneOf": [{"required": [k]} for k in ("image", "vector", "id")],
        "additionalProperties": False,
    }


def any_json(levels: int) -> dict[str, Any]:
    """Any JSON value the body bounds of :mod:`server.limits` let through, nesting at most
    ``levels`` more arrays or objects."""
    scalars: list[dict[str, Any]] = [
        {"type": "string", "pattern": TEXT_PATTERN},
        {"type": "number", "minimum": -MAX_ABS_NUMBER, "maximum": MAX_ABS_NUMBER},
        {"type": "boolean"},
        {"type": "null"},
    ]
    if levels > 0:
        inner = any_json(levels - 1)
        scalars += [
            {"type": "array", "items": inner},
            {
                "type": "object",
                "maxProperties": MAX_JSON_MEMBERS,
                "propertyNames": {"pattern": TEXT_PATTERN},
                "additionalProperties": inner,
            },
        ]
    return {"anyOf": scalars}


# Entries are checked one by one (a bad one gets its own error in a 200 answer), so the body
# schema takes any entry within the body's bounds and names the schema an entry should follow.
def _entry(name: str, depth: int) -> dict[str, Any]:
    return {
        **any_json(MAX_JSON_DEPTH - depth + 1),
        "description": f"an entry as components/schemas/{name} describes; an entry that is "
        "not gets its own error, the others are answered",
    }


def batch_search_path(
    flt: dict[str, Any],
    dim: int | None,
    max_entries: int,
    params: list[dict[str, Any]],
    text_modes: Sequence[str],
) -> dict[str, Any]:
    """``POST /v1/search/batch``; ``params``: the search options also taken from the query
    string (they set the batch's defaults, as the body's options do)."""
    entry = _entry("SearchQuery", 3)  # body -> queries -> entry
    body = {
        "type": "object",
        "required": ["queries"],
        "properties": {
            "queries": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_entries,
                "items": entry,
            },
            **options(flt, text_modes),
        },
        "additionalProperties": False,
    }
    return {
        "post": {
            "summary": "Neighbours of many images, vectors or catalog ids in one call",
            "description": f"At most {max_entries} queries (--max-batch-entries); the images "
            "run through the model together. Answered in the same order, one result or one "
            "error per entry: a bad entry does not fail the others.",
            "parameters": params,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": json_content(ref("BatchSearchResult"), "one result per query"),
                **error_responses(400, 413, 415, 429, 503),
            },
        }
    }


NEW_ITEM = {
    "type": "object",
    "required": ["id", "image"],
    "properties": {"id": ID_SCHEMA, "image": BASE64_IMAGE, "metadata": METADATA},
    "additionalProperties": False,
}


def items_batch_path(max_entries: int) -> dict[str, Any]:
    item = _entry("NewItem", 3)  # body -> items -> entry
    items = {"type": "array", "minItems": 1, "maxItems": max_entries, "items": item}
    return {
        "post": {
            "summary": "Embed and add many items (durable), each acknowledged",
            "description": f"At most {max_entries} items (--max-batch-entries), as "
            '{"items": [...]} or as `application/x-ndjson`: one NewItem object a line (each line '
            "a JSON document within the body bounds, else the request is a 400; not listed as "
            "a content type here because a schema cannot say what is not NDJSON). Each item "
            "gets status 201 or its own error (an id that exists or repeats: 409); the others "
            "are added all the same.",
            "security": SECURITY,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": items},
                            "additionalProperties": False,
                        }
                    },
                },
            },
            "responses": {
                "200": json_content(ref("BatchAddResult"), "one acknowledgement per item"),
                **error_responses(400, 401, 403, 413, 415, 429, 502, 503, 507),
            },
        }
    }


PATCH_ITEM = {
    "summary": "Change an item's metadata without embedding it again (durable)",
    "operationId": "update_item",
    "security": SECURITY,
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["metadata"],
                    "properties": {
                        "metadata": METADATA,
                        "merge": {
                            "type": "boolean",
                            "default": True,
                            "description": "true: fields not given keep their value; false: "
                            "the metadata replaces every field",
                        },
                    },
                    "additionalProperties": False,
                }
            }
        },
    },
    "responses": {
        "200": json_content(
            {"type": "object", "properties": {"item": ref("Item")}}, "the item as stored"
        ),
        **error_responses(400, 401, 403, 404, 413, 415, 429, 502, 503),
    },
}

BATCH_SCHEMAS: dict[str, Any] = {
    "EntryError": {
        "type": "object",
        "required": ["status", "error"],
        "description": "the error of one entry (the request as a whole succeeded)",
        "properties": {
            "id": {"type": "string", "description": "the catalog id queried, for an id query"},
            "status": {"type": "integer", "minimum": 400, "maximum": 499},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "BatchHit": {
        "type": "object",
        "required": ["status", "neighbors"],
        "properties": {
            "status": {"type": "integer", "enum": [200]},
            "id": {"type": "string", "description": "the catalog id queried"},
            "prediction": ref("Prediction"),
            "neighbors": {"type": "array", "items": ref("Neighbor")},
            "k": {"type": "integer"},
            "filter": {"type": ["object", "null"]},
            "offset": {"type": "integer"},
            "score_threshold": {"type": ["number", "null"]},
            "ranking": RANKING_ECHO,
        },
    },
    "BatchSearchResult": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {"anyOf": [ref("BatchHit"), ref("EntryError")]},
            },
            "timing_ms": ref("Timing"),
        },
    },
    "NewItem": NEW_ITEM,
    "BatchAddResult": {
        "type": "object",
        "required": ["results", "added", "failed"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "status"],
                    "properties": {
                        "id": {"type": ["string", "null"]},
                        "status": {"type": "integer"},
                        "item": ref("Item"),
                    },
                },
            },
            "added": {"type": "integer"},
            "failed": {"type": "integer"},
            "timing_ms": ref("Timing"),
        },
    },
}
