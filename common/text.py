"""Checks on text that has to be written somewhere: a file, a database."""

from __future__ import annotations


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: a string parsed from JSON may hold a lone
    surrogate ("\\ud800"), which no UTF-8 file or database takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = ["is_utf8"]
