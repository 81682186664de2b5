"""Checks on text that has to be written somewhere (a file, a database) or was read from one."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

#: The longest CSV cell a catalog may hold: Python's csv module refuses cells over 128 KiB,
#: and one long product description then refused the whole catalog.
MAX_CSV_CELL = 16 * 2**20


def allow_long_csv_cells() -> None:
    """Raise the csv module's cell limit (process-wide) to :data:`MAX_CSV_CELL`."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_CELL))


def csv_rows(reader: csv.DictReader) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a reader made with ``strict=True``, its header read. A quote never
    closed is a :class:`csv.Error` naming the last good line before it: a lenient reader takes
    the rest of the file as that one cell, so a catalog lost every row after it without a
    word. Text after a closing quote (``"6.1" screen``) is refused with its line too: a lenient
    reader had dropped the quotes (``6.1 screen``)."""
    last = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise csv.Error(f'a quote (") opened after line {last} is never closed') from exc
            raise csv.Error(f"line {reader.reader.line_num}: {exc}") from exc
        yield reader.line_num, row
        last = reader.line_num


#: How a spreadsheet saves what phonesim reads (Excel's name for it).
SAVE_AS_CSV = "save it from the spreadsheet as 'CSV UTF-8 (comma delimited)'"


def header_hint(fieldnames: list[str] | None) -> str:
    """Where a CSV's header lacks its columns because a spreadsheet saved it with another
    separator (Excel does with ';' in many European locales), what to do; else ""."""
    if fieldnames and len(fieldnames) == 1:
        for sep, name in ((";", "semicolon"), ("\t", "tab")):
            if sep in fieldnames[0]:
                return f"; its header is {name}-separated, not comma-separated: {SAVE_AS_CSV}"
    return ""


def not_utf8_detail(path: Path, data: bytes | None = None) -> str:
    """Where a text file that should be UTF-8 is not, and what it looks like instead: the
    decoder's "invalid continuation byte" had been all a user of Excel's other encodings got."""
    try:
        data = path.read_bytes() if data is None else data
    except OSError:
        return ""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"it is UTF-16 text (Excel's 'Unicode Text'); {SAVE_AS_CSV}"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return (
            f"line {line}, byte {exc.start}: {exc.reason}; perhaps Latin-1 or Windows-1252 "
            f"text: {SAVE_AS_CSV}"
        )
    return ""


#: A URI's scheme (RFC 3986) then "//", or a data URI.
_URI = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|data:)")


def is_uri(text: object) -> bool:
    """Whether ``text`` (a catalog's ``image`` cell) is a URI (``https://...``, ``s3://...``,
    ``data:...``) rather than a file path."""
    return isinstance(text, str) and bool(_URI.match(text))


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


# A blank header cell's name as :func:`name_blank_columns` gives it (no CSV header holds NUL).
UNNAMED = "\0unnamed column "


def name_blank_columns(names: list[str]) -> list[str]:
    """``names`` with each blank one made unique (``UNNAMED`` + its position), so that a dict
    reader keeps every blank column's value apart: a value under one has no field name and
    must be refused, not lost under a later blank column's."""
    return [n if n.strip() else f"{UNNAMED}{i + 1}" for i, n in enumerate(names)]


def unnamed_value(row: dict[str, str | None]) -> str | None:
    """The first value a dict reader's ``row`` holds under a blank header cell, if any."""
    return next((v for k, v in row.items() if k.startswith(UNNAMED) and v and v.strip()), None)


# What a spreadsheet reads as the start of a formula (OWASP's CSV injection list).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(text: str) -> str:
    """``text`` for a CSV cell a person opens in a spreadsheet: a leading ``'`` where the
    spreadsheet would run it as a formula (a photo named ``=HYPERLINK(...).jpg``)."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: East Asian wide and full-width characters take
    two, combining marks and invisible format characters none (``len`` had misaligned a table
    of CJK or decomposed class names)."""
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) == "Cf":
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def pad_to(text: str, width: int) -> str:
    """``text`` followed by the spaces that make it ``width`` columns wide (none if wider)."""
    return text + " " * max(0, width - display_width(text))


__all__ = [
    "UNNAMED",
    "is_utf8",
    "name_blank_columns",
    "repeated_columns",
    "spreadsheet_cell",
    "unnamed_value",
]
