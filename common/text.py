"""Checks on text that has to be written somewhere (a file, a database) or was read from one."""

from __future__ import annotations


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: a string parsed from JSON may hold a lone
    surrogate ("\\ud800"), which no UTF-8 file or database takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def repeated_columns(names: list[str]) -> str:
    """The header names a CSV repeats, quoted and comma-separated ("" for none): a dict
    reader keeps only the last column of a name, so the others' values would be lost. Blank
    names are not counted: a spreadsheet's export ends its header with empty cells."""
    seen: set[str] = set()
    repeated = [n for n in names if n.strip() and (n in seen or seen.add(n))]
    return ", ".join(repr(n) for n in dict.fromkeys(repeated))


__all__ = ["is_utf8", "repeated_columns"]
