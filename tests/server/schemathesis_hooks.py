"""Generators for the formats of the server's OpenAPI document that schemathesis cannot guess
(loaded by tests/server/test_schemathesis.py through ``SCHEMATHESIS_HOOKS``).

The spec says an image is a binary (or base64) string; the server also needs it to decode, so
schema-valid requests carry real images: every seed file of tests/imagefuzz.py (each accepted
format and mode). A ``cursor`` is one this server returned: the encoding of an item id.
"""

from __future__ import annotations

import base64

import schemathesis
from hypothesis import strategies as st

from server.inputs import encode_cursor
from tests.imagefuzz import seed_files

IMAGES = list(seed_files().values())

schemathesis.openapi.format("binary", st.sampled_from(IMAGES))
schemathesis.openapi.format("byte", st.sampled_from([base64.b64encode(i).decode() for i in IMAGES]))
schemathesis.openapi.format(
    "cursor", st.text(min_size=1, max_size=40).filter(str.isprintable).map(encode_cursor)
)
