"""The OpenAPI 3 document of the server (a test keeps it in step with the app's routes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server.auth import API_KEY_HEADER
from server.inputs import READ_TEXT_MODES
from server.limits import MAX_METADATA_FIELDS
from server.openapi_batch import (
    BATCH_SCHEMAS,
    PATCH_ITEM,
    batch_search_path,
    items_batch_path,
    options,
    query_schema,
    search_json_body,
)
from server.openapi_parts import (
    CURSOR_PARAM,
    FORM_FIELD_PATTERN,
    FORM_METADATA,
    ID_SCHEMA,
    IMAGE,
    ITEM_ID,
    ITEM_LINKS,
    K_PARAM,
    LIMIT_PARAM,
    METADATA,
    OFFSET_PARAM,
    RANKING_PARAM,
    SCHEMAS,
    SECURITY,
    TEXT,
    THRESHOLD_PARAM,
    UNREAD_TEXT_MODES,
    embed_body,
    error_responses,
    filter_param_of,
    filter_schema,
    image_body,
    json_content,
    read_text_param,
    ref,
)

_METHODS = ("get", "post", "put", "patch", "delete")

#: The operations whose path builders name none.
OPERATION_IDS = {
    ("post", "/v1/search"): "search",
    ("post", "/v1/embed"): "embed",
    ("post", "/v1/items"): "add_item",
    ("post", "/v1/search/batch"): "search_batch",
    ("post", "/v1/items/batch"): "add_items",
    ("get", "/v1/info"): "info",
    ("get", "/healthz"): "health",
    ("get", "/readyz"): "ready",
    ("get", "/metrics"): "metrics",
    ("get", "/openapi.json"): "openapi",
    ("get", "/"): "web_page",
    ("get", "/static/{filename}"): "static_file",
}


def openapi_spec(
    filterable_fields: Iterable[str] = (),
    *,
    dim: int | None = None,
    numeric_fields: Iterable[str] = (),
    max_batch_entries: int = 64,
    reads_text: bool = False,
) -> dict[str, Any]:
    """The document served at ``/openapi.json``; filters name ``filterable_fields`` (ranges on
    ``numeric_fields``), vectors have ``dim`` numbers; ``read_text`` may be "always" only where
    the server ``reads_text``."""
    fields = list(filterable_fields)
    filter_param = filter_param_of(fields)
    json_filter = filter_schema(fields, json_values=True, numeric=numeric_fields)
    text_modes = READ_TEXT_MODES if reads_text else UNREAD_TEXT_MODES
    search_body = image_body()
    search_body["content"]["application/json"]["schema"] = search_json_body(
        json_filter, dim, text_modes
    )
    # The same options as form fields, the filter a JSON object in its field.
    search_form = search_body["content"]["multipart/form-data"]
    search_form["schema"]["properties"].update(options(json_filter, text_modes))
    search_form["encoding"] = {"filter": {"contentType": "application/json"}}
    item_params = [K_PARAM, THRESHOLD_PARAM, OFFSET_PARAM, RANKING_PARAM, filter_param]
    search_params = [*item_params, read_text_param(text_modes)]
    paths: dict[str, Any] = {
        "/v1/search": {
            "post": {
                "summary": "Nearest catalog phones of a photo (and its predicted class) or of a "
                "vector (JSON `vector`; `prediction` is then null)",
                "parameters": search_params,
                "requestBody": search_body,
                "responses": {
                    "200": json_content(ref("SearchResult"), "prediction and neighbours"),
                    **error_responses(400, 413, 415, 429, 503),
                },
            }
        },
        "/v1/embed": {
            "post": {
                "summary": "Embedding and predicted class of a photo",
                "parameters": [read_text_param(text_modes)],
                "requestBody": embed_body(text_modes),
                "responses": {
                    "200": json_content(ref("EmbedResult"), "embedding and prediction"),
                    **error_responses(400, 413, 415, 429, 503),
                },
            }
        },
        "/v1/items": {
            "get": {
                "summary": "A page of catalog items (to browse the catalog)",
                "operationId": "list_items",
                "parameters": [LIMIT_PARAM, CURSOR_PARAM, filter_param],
                "responses": {
                    "200": {
                        **json_content(ref("ItemPage"), "items and the cursor of the next page"),
                        "links": {
                            "NextPage": {
                                "operationId": "list_items",
                                "parameters": {"cursor": "$response.body#/next_cursor"},
                            }
                        },
                    },
                    **error_responses(400, 429, 503),
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
                                    "image": IMAGE,
                                    "id": ID_SCHEMA,
                                    "metadata": FORM_METADATA,
                                },
                                "maxProperties": 3 + MAX_METADATA_FIELDS // 2,
                                "propertyNames": {"pattern": FORM_FIELD_PATTERN},
                                "additionalProperties": TEXT,
                                "description": "metadata is a JSON object; other form fields "
                                "are added to it as strings",
                            },
                            "encoding": {"metadata": {"contentType": "application/json"}},
                        },
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["image", "id"],
                                "properties": {
                                    "image": {"type": "string", "format": "byte", "minLength": 1},
                                    "id": ID_SCHEMA,
                                    "metadata": METADATA,
                                },
                                "additionalProperties": False,
                            }
                        },
                    },
                },
                "responses": {
                    "201": json_content(
                        {
                            "type": "object",
                            "properties": {
                                "item": ref("Item"),
                                "prediction": ref("Prediction"),
                                "timing_ms": ref("Timing"),
                            },
                        },
                        "the item as stored",
                    )
                    | {
                        "links": ITEM_LINKS,
                        "headers": {
                            "Location": {
                                "description": "the new item's URL (/v1/items/{id})",
                                "schema": {"type": "string"},
                            }
                        },
                    },
                    **error_responses(400, 401, 403, 409, 413, 415, 429, 502, 503, 507),
                },
            },
        },
        "/v1/search/batch": batch_search_path(
            json_filter, dim, max_batch_entries, search_params, text_modes
        ),
        "/v1/items/batch": items_batch_path(max_batch_entries),
        "/v1/items/{item_id}": {
            "parameters": [ITEM_ID],
            "patch": PATCH_ITEM,
            "get": {
                "summary": "A catalog item",
                "operationId": "get_item",
                "responses": {
                    "200": json_content(ref("Item"), "the item"),
                    **error_responses(400, 404, 429, 503),
                },
            },
            "delete": {
                "summary": "Remove an item from the catalog (durable)",
                "operationId": "delete_item",
                "security": SECURITY,
                "responses": {
                    "200": json_content(
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "deleted": {"type": "boolean"},
                            },
                        },
                        "removed",
                    ),
                    **error_responses(400, 401, 403, 404, 429, 502, 503),
                },
            },
        },
        "/v1/items/{item_id}/similar": {
            "get": {
                "summary": "Nearest neighbours of a catalog item (itself excluded)",
                "operationId": "similar",
                "parameters": [ITEM_ID, *item_params],
                "responses": {
                    "200": json_content(ref("SimilarResult"), "neighbours"),
                    **error_responses(400, 404, 429, 503),
                },
            }
        },
        "/v1/items/{item_id}/image": {
            "get": {
                "summary": "JPEG thumbnail of a catalog item's own image",
                "operationId": "item_image",
                "parameters": [
                    ITEM_ID,
                    {
                        "name": "v",
                        "in": "query",
                        "required": False,
                        "description": "the version in the item's image_url (keys caches)",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "thumbnail",
                        "content": {
                            "image/jpeg": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                    **error_responses(400, 404, 429, 503),
                },
            }
        },
        "/v1/info": {
            "get": {
                "summary": "Model, classes, index kind and size, limits",
                "responses": {
                    "200": json_content({"type": "object", "additionalProperties": True}, "info"),
                    **error_responses(400, 429, 503),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process answers",
                "responses": {"200": json_content({"type": "object"}, "alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: model and index loaded, following the catalog store",
                "description": "200 when ready; status 'degraded' (still 200) while the "
                "catalog store cannot be reached: reads answer from the last state, writes "
                "get 503. 'replica' says how far behind the store this process is.",
                "responses": {
                    "200": json_content({"type": "object"}, "ready (or degraded)"),
                    "503": json_content({"type": "object"}, "not ready, or lagging"),
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
                "responses": {"200": json_content({"type": "object"}, "OpenAPI 3 document")},
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
                "responses": {"200": {"description": "file"}, **error_responses(404)},
            }
        },
    }
    for path, methods in paths.items():  # a name for each operation, for generated clients
        for method, operation in methods.items():
            if method in _METHODS and "operationId" not in operation:
                operation["operationId"] = OPERATION_IDS[(method, path)]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "phonesim lookup server",
            "version": "1",
            "description": "Upload a phone photo, get its predicted class and the nearest "
            'catalog phones. Every error is JSON: {"error": {"code", "message"}}, including '
            "those of the HTTP layer (400 malformed request, 408 headers or body too slow, 413 "
            "body over the limit, 414 URL too long, 431 headers too large, 501 unknown "
            "transfer coding) and 429 when a per-client rate limit is set. Every answer of the "
            "app carries an X-Request-ID header (the request's own, when it sent a plain one of "
            "at most 128 characters of A-Z a-z 0-9 . _ : -), which the server's log lines for "
            "that request name: quote it when reporting an error.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                **SCHEMAS,
                **BATCH_SCHEMAS,
                "SearchQuery": query_schema(json_filter, dim, text_modes),
            },
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
                "Bearer": {"type": "http", "scheme": "bearer", "description": "the same key"},
            },
        },
    }
