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


def test_a_spreadsheets_other_separators_are_named():
    """Excel saves CSV with ';' in many European locales: "missing column(s) id, image"
    (found "id;image;label") had not said why."""
    from common.text import header_hint

    assert "semicolon-separated" in header_hint(["id;image;label"])
    assert "tab-separated" in header_hint(["id\timage"])
    assert header_hint(["id", "image"]) == header_hint(["title"]) == header_hint(None) == ""


def test_text_that_is_not_utf8_is_located_and_its_likely_encoding_named(tmp_path):
    from common.text import not_utf8_detail

    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,image\na,caf\u00e9.jpg\n".encode("latin-1"))
    assert not_utf8_detail(latin).startswith("line 2, byte 14: invalid continuation byte")
    assert "Windows-1252" in not_utf8_detail(latin)
    wide = tmp_path / "wide.csv"
    wide.write_bytes("id,image\n".encode("utf-16"))
    assert not_utf8_detail(wide).startswith("it is UTF-16 text")
    fine = tmp_path / "fine.csv"
    fine.write_text("id,image\n", encoding="utf-8-sig")
    assert not_utf8_detail(fine) == not_utf8_detail(tmp_path / "missing.csv") == ""


def test_wide_and_combining_characters_are_padded_to_the_columns_they_take():
    """The evaluate table padded class names by len(): CJK names pushed their rows right."""
    from common.text import display_width, pad_to

    assert display_width("Apple") == 5
    assert display_width("华为") == 4  # two columns a character
    assert display_width("Cafe\u0301") == 4  # the accent combines
    assert display_width("Xiao\u200bmi") == 6  # invisible
    rows = [pad_to(name, 10) + "|" for name in ("Apple", "华为", "Cafe\u0301")]
    assert {display_width(row) for row in rows} == {11}
    assert pad_to("a-very-long-name", 4) == "a-very-long-name"
