"""The OpenAPI 3 document of the server (a test keeps it in step with the app's routes)."""

from __future__ import annotations

from typing import Any

from server.auth import API_KEY_HEADER
from server.inputs import DEFAULT_LIMIT, MAX_LIMIT


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "bad request: no or empty image, not an image, truncated, unsupported format, "
        "decompression bomb, bad base64 or JSON, bad k, unknown filter field, bad limit or "
        "cursor",
        401: "API key missing",
        403: "API key wrong, or writes disabled",
        404: "unknown item",
        409: "item id already exists",
        413: "upload larger than the limit",
        415: "unsupported content type",
        503: "model not loaded, overloaded or shutting down",
    }
    return {str(s): _json(_ref("Error"), text[s]) for s in statuses}


K_PARAM = {
    "name": "k",
    "in": "query",
    "description": "number of neighbours (default 10, at most 100)",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
}
FILTER_PARAM = {
    "name": "filter",
    "in": "query",
    "description": "metadata equality filters as query parameters, e.g. `label=xiaomi`; a "
    "repeated parameter means any of its values. Fields: see /v1/info `filterable_fields`.",
    "style": "form",
    "explode": True,
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
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
    "schema": {"type": "string"},
}
ITEM_ID = {
    "name": "item_id",
    "in": "path",
    "required": True,
    "description": "catalog item id (URL-encoded)",
    "schema": {"type": "string"},
}


def _image_body(**json_fields: dict[str, Any]) -> dict[str, Any]:
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
                    "properties": {"image": {"type": "string", "format": "binary"}},
                    "additionalProperties": False,
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "byte", "description": "base64"},
                        **json_fields,
                    },
                    "additionalProperties": False,
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }


SEARCH_BODY = _image_body(
    k={"type": "integer"}, filter={"type": "object", "additionalProperties": True}
)
EMBED_BODY = _image_body()

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
            "top": {"type": "array", "items": _ref("ClassScore")},
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
            "items": {"type": "array", "items": _ref("Item")},
            "next_cursor": {
                "type": "string",
                "nullable": True,
                "description": "pass as `cursor` for the next page; null on the last page",
            },
        },
    },
    "Neighbor": {
        "allOf": [
            _ref("Item"),
            {"type": "object", "properties": {"score": {"type": "number"}}},
        ]
    },
    "Timing": {"type": "object", "additionalProperties": {"type": "number"}},
    "SearchResult": {
        "type": "object",
        "required": ["prediction", "neighbors", "timing_ms"],
        "properties": {
            "prediction": _ref("Prediction"),
            "neighbors": {"type": "array", "items": _ref("Neighbor")},
            "k": {"type": "integer"},
            "filter": {"type": "object", "nullable": True},
            "timing_ms": _ref("Timing"),
        },
    },
    "SimilarResult": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "neighbors": {"type": "array", "items": _ref("Neighbor")},
            "timing_ms": _ref("Timing"),
        },
    },
    "EmbedResult": {
        "type": "object",
        "properties": {
            "model": {"type": "string"},
            "dim": {"type": "integer"},
            "embedding": {"type": "array", "items": {"type": "number"}},
            "prediction": _ref("Prediction"),
            "timing_ms": _ref("Timing"),
        },
    },
}


def openapi_spec() -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    paths: dict[str, Any] = {
        "/v1/search": {
            "post": {
                "summary": "Predicted class and nearest catalog phones of a photo",
                "parameters": [K_PARAM, FILTER_PARAM],
                "requestBody": SEARCH_BODY,
                "responses": {
                    "200": _json(_ref("SearchResult"), "prediction and neighbours"),
                    **_errors(400, 413, 415, 503),
                },
            }
        },
        "/v1/embed": {
            "post": {
                "summary": "Embedding and predicted class of a photo",
                "requestBody": EMBED_BODY,
                "responses": {
                    "200": _json(_ref("EmbedResult"), "embedding and prediction"),
                    **_errors(400, 413, 415, 503),
                },
            }
        },
        "/v1/items": {
            "get": {
                "summary": "A page of catalog items (to browse the catalog)",
                "parameters": [LIMIT_PARAM, CURSOR_PARAM],
                "responses": {
                    "200": _json(_ref("ItemPage"), "items and the cursor of the next page"),
                    **_errors(400, 503),
                },
            },
            "post": {
                "summary": "Embed a photo and add it to the catalog (durable)",
                "security": SECURITY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image", "id"],
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    "id": {"type": "string"},
                                    "metadata": {
                                        "type": "string",
                                        "description": "JSON object; other form fields are "
                                        "added to it as strings",
                                    },
                                },
                            }
                        },
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["image", "id"],
                                "properties": {
                                    "image": {"type": "string", "format": "byte"},
                                    "id": {"type": "string"},
                                    "metadata": {"type": "object", "additionalProperties": True},
                                },
                            }
                        },
                    },
                },
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "properties": {
                                "item": _ref("Item"),
                                "prediction": _ref("Prediction"),
                                "timing_ms": _ref("Timing"),
                            },
                        },
                        "the item as stored",
                    ),
                    **_errors(400, 401, 403, 409, 413, 415, 503),
                },
            },
        },
        "/v1/items/{item_id}": {
            "parameters": [ITEM_ID],
            "get": {
                "summary": "A catalog item",
                "responses": {"200": _json(_ref("Item"), "the item"), **_errors(404, 503)},
            },
            "delete": {
                "summary": "Remove an item from the catalog (durable)",
                "security": SECURITY,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "deleted": {"type": "boolean"},
                            },
                        },
                        "removed",
                    ),
                    **_errors(401, 403, 404, 503),
                },
            },
        },
        "/v1/items/{item_id}/similar": {
            "get": {
                "summary": "Nearest neighbours of a catalog item (itself excluded)",
                "parameters": [ITEM_ID, K_PARAM, FILTER_PARAM],
                "responses": {
                    "200": _json(_ref("SimilarResult"), "neighbours"),
                    **_errors(400, 404, 503),
                },
            }
        },
        "/v1/items/{item_id}/image": {
            "get": {
                "summary": "JPEG thumbnail of a catalog item's own image",
                "parameters": [ITEM_ID],
                "responses": {
                    "200": {
                        "description": "thumbnail",
                        "content": {
                            "image/jpeg": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    **_errors(404, 503),
                },
            }
        },
        "/v1/info": {
            "get": {
                "summary": "Model, classes, index kind and size, limits",
                "responses": {
                    "200": _json({"type": "object", "additionalProperties": True}, "info"),
                    **_errors(503),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "responses": {"200": _json({"type": "object"}, "alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: model and index loaded",
                "responses": {
                    "200": _json({"type": "object"}, "ready"),
                    "503": _json({"type": "object"}, "not ready"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "text exposition", "content": {"text/plain": {}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")},
            }
        },
        "/": {
            "get": {
                "summary": "Web page to try a search",
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
            }
        },
        "/static/{filename}": {
            "get": {
                "summary": "Files of the web page (CSS, JS)",
                "parameters": [
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {"200": {"description": "file"}, **_errors(404)},
            }
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "phonesim lookup server",
            "version": "1",
            "description": "Upload a phone photo, get its predicted class and the nearest "
            'catalog phones. Every error is JSON: {"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
        },
    }
