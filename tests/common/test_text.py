"""Reading catalog CSVs: a quote never closed, and the other malformed rows, name their line."""

from __future__ import annotations

import csv
import io

import pytest

from common.text import csv_rows


def _rows(text: str) -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text), strict=True)
    assert reader.fieldnames
    return list(csv_rows(reader))


def test_rows_come_with_the_line_they_end_on():
    rows = _rows('id,title\na,"two\nlines"\n\nb,"say ""hi"", twice"\n')
    assert rows == [
        (3, {"id": "a", "title": "two\nlines"}),
        (5, {"id": "b", "title": 'say "hi", twice'}),
    ]


def test_a_quote_never_closed_names_its_line_instead_of_eating_the_rows_after_it():
    """A lenient reader took the rest of the file as one title: rc 0, one row of three."""
    with pytest.raises(csv.Error, match=r"a quote \(\"\) opened after line 2 is never closed"):
        _rows('id,title\na,ok\nb,"Phone 6.1 screen\nc,ok\nd,ok\n')


def test_text_after_a_closing_quote_names_its_line():
    with pytest.raises(csv.Error, match="line 3: ',' expected after '\"'"):
        _rows('id,title\na,ok\nb,"6.1" screen\n')
