"""The metadata field names the HTTP API takes: usable as a query parameter (``?brand=x``).

The index stores any field name (a catalog CSV's ``RAM (GB)`` column included) and filters on
it everywhere, but a client can write only fields named by :data:`FIELD_NAME_PATTERN`. The
server refuses other names (``server.limits``); ``index build`` warns about such columns.
"""

from __future__ import annotations

import re

MAX_FIELD_NAME_LENGTH = 64
# "id" and "image" are the server's own, "image_url" and "score" what it computes for each
# answer.
FIELD_NAME_PATTERN = r"^(?!(?:id|image|image_url|score)$)[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
FIELD_NAME_RULE = (
    f"1-{MAX_FIELD_NAME_LENGTH} ASCII letters, digits, '_', '.' or '-', starting with a letter "
    "or '_'"
)

_FIELD_RE = re.compile(FIELD_NAME_PATTERN.replace("$", r"\Z"))


def is_api_field_name(name: str) -> bool:
    """Whether a client may write metadata field ``name`` through the HTTP API."""
    return bool(_FIELD_RE.match(name))
