"""Item ids: what a catalog item is named by, and addressed by below the API's /v1/items/.

The rule lives on the ground floor because three layers apply it: the embedder names photos
by their paths, the index refuses ids no request could reach, the server checks a client's.
"""

from __future__ import annotations

import re

# Characters no id may hold: control characters, and the invisible ones that make two ids
# look alike or an id read backwards (zero-width space, word joiner, byte-order mark, line and
# paragraph separators, bidirectional embeddings, overrides and isolates). The zero-width
# (non-)joiners stay: scripts such as Persian and Devanagari need them.
_NOT_IN_ID = r"\x00-\x1f\x7f-\x9f\u200b\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff"
# An id is a path below /v1/items/: segments of printable characters (see above), never
# empty, "." or "..", not starting or ending with a space, not ending in /similar or /image,
# and not "batch" (those URLs are other endpoints).
ID_PATTERN = (
    r"^(?!batch$)(?!.*//)(?!\.\.?(?:/|$))(?!.*/\.\.?(?:/|$))(?!.*/(?:similar|image)$)"
    rf"[^\s/{_NOT_IN_ID}](?:[^{_NOT_IN_ID}]*[^\s/{_NOT_IN_ID}])?$"
)
ID_RULES = (
    "printable characters (no control, bidirectional or zero-width ones) without leading or "
    "trailing spaces, empty, '.' or '..' path segments, must not end with /similar or /image, "
    "and must not be 'batch'"
)

_ID_RE = re.compile(ID_PATTERN.replace("$", r"\Z"))


def is_item_id(text: str) -> bool:
    """Whether ``text`` can name an item: ``/v1/items/<text>`` reaches that item and no
    other endpoint (see :data:`ID_PATTERN`)."""
    return _ID_RE.match(text) is not None


__all__ = ["ID_PATTERN", "ID_RULES", "is_item_id"]
