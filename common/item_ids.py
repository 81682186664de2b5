"""Item ids: what a catalog item is named by, and addressed by below the API's /v1/items/.

The rule lives on the ground floor because three layers apply it: the embedder names photos
by their paths, the index refuses ids no request could reach, the server checks a client's.
"""

from __future__ import annotations

import re

# Characters no id may hold: control characters (no URL path can reach them), and the
# invisible ones that make two ids look alike or an id read backwards: zero-width space, word
# joiner and invisible operators, byte-order mark, soft hyphen, Mongolian vowel separator,
# line and paragraph separators, and every bidirectional control (marks, embeddings,
# overrides, isolates). The zero-width (non-)joiners stay: Persian and Indic spelling need
# them. The invisible ones were allowed before 2026-12: items stored with them stay
# reachable (see is_item_address), but no new item takes one.
# An id is a unique key in both stores: PostgreSQL's btree refuses keys over about 2.7 KB.
MAX_ID_BYTES = 1024
_CONTROL = r"\x00-\x1f\x7f-\x9f"
_INVISIBLE = (
    r"\u00ad\u061c\u180e\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064"
    r"\u2066-\u2069\ufeff"
)


def _id_pattern(banned: str) -> str:
    # An id is a path below /v1/items/: segments of allowed characters, never empty, "." or
    # "..", not starting or ending with a space, not ending in /similar or /image, and not
    # "batch" (those URLs are other endpoints).
    return (
        r"^(?!batch$)(?!.*//)(?!\.\.?(?:/|$))(?!.*/\.\.?(?:/|$))(?!.*/(?:similar|image)$)"
        rf"[^\s/{banned}](?:[^{banned}]*[^\s/{banned}])?$"
    )


ID_PATTERN = _id_pattern(_CONTROL + _INVISIBLE)
ID_RULES = (
    "printable characters (no control, bidirectional or zero-width ones) without leading or "
    "trailing spaces, empty, '.' or '..' path segments, must not end with /similar or /image, "
    "and must not be 'batch'"
)

_ID_RE = re.compile(ID_PATTERN.replace("$", r"\Z"))
_ADDRESS_RE = re.compile(_id_pattern(_CONTROL).replace("$", r"\Z"))


def is_item_id(text: str) -> bool:
    """Whether a new item may take the id ``text``: ``/v1/items/<text>`` reaches that item
    and no other endpoint, and it holds no invisible character (see :data:`ID_PATTERN`)."""
    return _ID_RE.match(text) is not None


def is_catalog_id(text: str) -> bool:
    """Whether ``phonesim index build`` takes ``text`` as a new item's id: :func:`is_item_id`
    and at most :data:`MAX_ID_BYTES` bytes of UTF-8."""
    return is_item_id(text) and len(text.encode("utf-8")) <= MAX_ID_BYTES


def is_item_address(text: str) -> bool:
    """Whether ``/v1/items/<text>`` reaches the item ``text`` and no other endpoint: what a
    client checks before addressing an item, which may predate the invisible-character
    rule of :func:`is_item_id`."""
    return _ADDRESS_RE.match(text) is not None


__all__ = [
    "ID_PATTERN",
    "ID_RULES",
    "MAX_ID_BYTES",
    "is_catalog_id",
    "is_item_address",
    "is_item_id",
]
