"""Pieces of the OpenAPI document (:mod:`server.openapi`): schemas, parameters and request
bodies, with the bounds of :mod:`server.limits` written into them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from common.field_names import FIELD_NAME_PATTERN
from common.item_ids import ID_PATTERN
from server.inputs import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, RANKINGS, TEXT_UNREAD
from server.limits import (
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
        413: "request body larger than the limit (4/3 of --max-upload-mb, one base64 image): a "
        "batch's images count together",
        415: "unsupported content type",
        429: "over the per-client rate limit (--rate-limit); Retry-After says when to retry",
        502: "the connection to the catalog store broke while the change was committing: it "
        "may have been made; read the item before sending the change again",
        503: "model not loaded, overloaded, shutting down, out of memory or file descriptors "
        "(out_of_resources), or (writes) the catalog store cannot be reached; Retry-After says "
        "when to retry",
        507: "the server cannot keep the added item's image (--image-dir full or not "
        "writable); nothing was added",
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
    "'..', no leading or trailing space, not ending in /similar or /image, not 'batch'",
}
_METADATA_VALUES = (
    "names of ASCII letters, digits, '_', '.', '-'; values: strings of at most "
    f"{MAX_STRING_LENGTH} characters, numbers within ±9.2e18, booleans or null"
)
# In a JSON body the metadata may hold every field an item can have.
METADATA = {
    "type": "object",
    "maxProperties": MAX_METADATA_FIELDS,
    "propertyNames": {"pattern": FIELD_NAME_PATTERN},
    "additionalProperties": {"anyOf": [TEXT, NUMBER, {"type": "boolean"}, {"type": "null"}]},
    "description": f"at most {MAX_METADATA_FIELDS} fields; {_METADATA_VALUES}",
}
# In a multipart form the other fields count too: half each keeps any valid form under the
# limit (a schema cannot bound the sum of two objects' sizes).
FORM_METADATA = {
    **METADATA,
    "maxProperties": MAX_METADATA_FIELDS // 2,
    "description": f"at most {MAX_METADATA_FIELDS} fields together with the other form fields; "
    + _METADATA_VALUES,
}


FORM_FIELD_PATTERN = "^(?!(?:image_url|score)$)[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
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


def condition_schema(numeric: bool) -> dict[str, Any]:
    """One field's condition in a JSON filter: a value (equality), a list (any of) or an
    object of operators; ranges only on numeric fields (elsewhere they are a 400 naming the
    field's type)."""
    many = {"type": "array", "minItems": 1, "maxItems": MAX_FILTER_VALUES, "items": SCALAR}
    ops: dict[str, Any] = {"eq": SCALAR, "in": many}
    if numeric:
        ops.update({op: NUMBER for op in ("lt", "lte", "gt", "gte")})
    operators = {
        "type": "object",
        "properties": ops,
        "minProperties": 1,
        "additionalProperties": False,
    }
    return {"anyOf": [TEXT, NUMBER, {"type": "boolean"}, many, operators]}


FILTER_DESCRIPTION = (
    "metadata filter: {field: value} (equality), {field: [v1, v2]} (any of), "
    '{field: {"eq"|"in"|"lt"|"lte"|"gt"|"gte": ...}} (ranges need a numeric field: a range '
    "on a text field is a 400 naming its type); several fields must all match. Fields: "
    "/v1/info `filterable_fields`; any other is a 400."
)


def filter_schema(
    fields: Iterable[str], json_values: bool, numeric: Iterable[str] = ()
) -> dict[str, Any]:
    """Filters name only the index's filterable fields (any other is a 400)."""
    numeric = set(numeric)
    if not json_values:
        props = {f"filter.{name}": TEXT for name in sorted(fields)}
    else:
        props = {name: condition_schema(name in numeric) for name in sorted(fields)}
    return {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "description": FILTER_DESCRIPTION,
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
        "description": "equality filters under the reserved prefix `filter.`, e.g. "
        "`filter.label=xiaomi`; a repeated parameter means any of its values (at most "
        f"{MAX_FILTER_VALUES}). A whole JSON filter may be given as `filter=<json>` (see the "
        "body's `filter`). Fields: /v1/info `filterable_fields`; any other is a 400, as is any "
        "other query parameter.",
        "style": "form",
        "explode": True,
        "schema": filter_schema(fields, json_values=False),
    }


OFFSET_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}
THRESHOLD_SCHEMA = {"type": "number", "minimum": -1, "maximum": 1}
OFFSET_PARAM = {
    "name": "offset",
    "in": "query",
    "description": "best neighbours to skip before the k returned (paging through results)",
    "schema": OFFSET_SCHEMA,
}
THRESHOLD_PARAM = {
    "name": "score_threshold",
    "in": "query",
    "description": "least cosine similarity a neighbour must have (fewer than k may come back)",
    "schema": THRESHOLD_SCHEMA,
}

RANKING_SCHEMA = {
    "type": "string",
    "enum": list(RANKINGS),
    "description": "`class`: the most similar few are re-ranked by each item's `label`, where "
    "the server does so (GET /v1/info: ranking; its default): an uploaded photo's by the "
    "classifier's probability of that label, a catalog item's by whether it is the item's own "
    "label (one of the model's classes); `similarity`: cosine order. Vectors, and items "
    "without such a label, are always in similarity order; the answer's `ranking` says which "
    "order it has.",
}
RANKING_PARAM = {
    "name": "ranking",
    "in": "query",
    "description": RANKING_SCHEMA["description"],
    "schema": {k: v for k, v in RANKING_SCHEMA.items() if k != "description"},
}
RANKING_ECHO = {
    "type": "string",
    "enum": list(RANKINGS),
    "description": "the order of `neighbors`: re-ranked by class, or by similarity alone",
}

# What a server that does not read text takes: "always" is refused there (400).
UNREAD_TEXT_MODES = ("auto", "never")


def read_text_schema(modes: Sequence[str]) -> dict[str, Any]:
    """``read_text``, with the ``modes`` this server takes (READ_TEXT_MODES where it reads
    text, UNREAD_TEXT_MODES where it does not)."""
    return {
        "type": "string",
        "enum": list(modes),
        "default": "auto",
        "description": "when the prediction reads the text on the uploaded photo, on a server "
        "that reads text (GET /v1/info: prediction.read_text; elsewhere `always` is a 400 "
        "`text_reading_off`): `auto` when the prediction without it gives its top class less "
        "than the server's text gate, `always`, or `never` (no reading: the fastest answer). "
        "A vector or a catalog item has no photo to read.",
    }


def read_text_param(modes: Sequence[str]) -> dict[str, Any]:
    schema = read_text_schema(modes)
    return {
        "name": "read_text",
        "in": "query",
        "description": schema.pop("description"),
        "schema": schema,
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


def embed_body(text_modes: Sequence[str]) -> dict[str, Any]:
    """``POST /v1/embed``: an image, and ``read_text`` as a JSON or form field."""
    body = image_body(read_text=read_text_schema(text_modes))
    form = body["content"]["multipart/form-data"]["schema"]
    form["properties"]["read_text"] = read_text_schema(text_modes)
    return body


# Either header carries the key (server/auth.py): alternatives, so either alone suffices.
SECURITY = [{"ApiKey": []}, {"Bearer": []}]

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
        "required": ["label", "score", "top", "source"],
        "properties": {
            "label": {"type": "string"},
            "score": {"type": "number"},
            "top": {"type": "array", "items": ref("ClassScore")},
            "source": {
                "type": "string",
                "enum": ["classifier", "classifier+knn", "classifier+text", "classifier+knn+text"],
                "description": "`classifier+knn`: the classifier's probabilities fused with a "
                "similarity-weighted vote of the `label` fields of the image's nearest catalog "
                "items, searched without the request's filter, offset and score threshold "
                "(server started with --knn-fusion, and some neighbour's label is a class of "
                "the model); `classifier`: the classifier alone; `+text`: the classes named by "
                "the text read on the photo were added (server started with --read-text)",
            },
            "text_cues": {
                "type": "array",
                "items": {"type": "string"},
                "description": "the classes the text read on the photo names (by their labels "
                "or the server's --text-cues words) or, when it names none, those whose "
                "examples of read text it is like (a cue file from `phonesim learn-text`); "
                "empty when it was not read; present only when the server reads text",
            },
            "text_read": {
                "type": "boolean",
                "description": "whether the text on the photo was read: only photos whose "
                "prediction without it gives its top class less than the server's --text-gate "
                "are, unless the request's `read_text` says always or never; false too where "
                "the reading failed, or the request's photos had been read for 10 s already; "
                "present only when the server reads text",
            },
            "text_unread": {
                "type": "string",
                "enum": list(TEXT_UNREAD),
                "description": "why the text was not read, present when `text_read` is false: "
                "`sure` (the prediction without it was sure enough), `never` (the request's "
                "`read_text`), `failed` (the reader failed on the photo), `budget` (the "
                "request's photos had been read for 10 s already)",
            },
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
            "filter": {"type": ["object", "null"]},
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
            "prediction": {
                "anyOf": [ref("Prediction"), {"type": "null"}],
                "description": "null when the query is a vector",
            },
            "neighbors": {
                "type": "array",
                "items": ref("Neighbor"),
                "description": "most similar first (score: cosine similarity); for an "
                "uploaded photo or a labelled catalog item the server may re-rank the most "
                "similar few by each item's label (`ranking`: class)",
            },
            "k": {"type": "integer"},
            "filter": {"type": ["object", "null"]},
            "offset": {"type": "integer"},
            "score_threshold": {"type": ["number", "null"]},
            "ranking": RANKING_ECHO,
            "timing_ms": ref("Timing"),
        },
    },
    "SimilarResult": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "neighbors": {"type": "array", "items": ref("Neighbor")},
            "ranking": RANKING_ECHO,
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
